"""The tiny "shapes world": generated images of coloured shapes, their words, and a tokenizer for them.

Everything the tiny preset needs to run offline: a word-level tokenizer over a closed vocabulary (the
world's words, the chat template's words and special tokens) and images drawn from a seed.
"""

import random
import re

from PIL import Image, ImageDraw
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from cumo.data.conversation import SYSTEM

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]
IMAGE_TOKEN_ID = SPECIAL_TOKENS.index("<image>")

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom", "center")
WORDS = (
    "a an the is are there this that what which where how many of in on at to and or with image picture shape "
    "color colour object objects one two three yes no answer question single word phrase describe briefly "
    "option letter from given choices directly it its please small large big"
).split()


def _template_words() -> list[str]:
    return re.findall(r"\w+|[^\w\s]", SYSTEM)


VOCABULARY = list(
    dict.fromkeys(
        SPECIAL_TOKENS
        + list(COLORS)
        + list(SHAPES)
        + list(POSITIONS)
        + WORDS
        + _template_words()
        + list(".,?!:'\"-")
    )
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over `VOCABULARY`; special tokens are matched before words are split."""
    tokenizer = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(VOCABULARY)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )


def render_shape(
    shape: str, color: str, position: str = "center", size: int = 64, seed: int = 0
) -> Image.Image:
    """A `size` x `size` RGB image: one `color` `shape` at `position` on a light, slightly noisy background."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randint(225, 250) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    radius = size // 5
    cx, cy = {
        "center": (size // 2, size // 2),
        "left": (size // 4, size // 2),
        "right": (3 * size // 4, size // 2),
        "top": (size // 2, size // 4),
        "bottom": (size // 2, 3 * size // 4),
    }[position]
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return image
