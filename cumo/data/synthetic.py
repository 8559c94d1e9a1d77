"""The tiny "shapes world": generated images of coloured shapes, their words, and a tokenizer for them.

Everything the tiny preset needs to run offline: scenes of a few shapes in a few colours at a few
positions, optionally with a rendered word (for OCR-style questions), drawn deterministically from a seed;
and a word-level tokenizer over a closed vocabulary (the world's words, the chat template's words and the
special tokens the Mistral template needs).
"""

import random
import re
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont
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
# Cell centres as fractions of the image side; a scene holds at most one thing per cell.
POSITIONS = {
    "center": (0.5, 0.5),
    "left": (0.2, 0.5),
    "right": (0.8, 0.5),
    "top": (0.5, 0.2),
    "bottom": (0.5, 0.8),
}
# Words a scene may show as text, for OCR-style questions (TextVQA-like).
SIGN_WORDS = ("cat", "dog", "sun", "tree", "star", "moon", "fish", "bird")
WORDS = (
    "a an the is are there this that what which where how many of in on at to and or with image picture shape "
    "color colour object objects one two three four five yes no answer question single word phrase describe "
    "briefly option letter from given choices directly it its please small large big written text says"
).split()


@dataclass(frozen=True)
class Thing:
    shape: str
    color: str
    position: str


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    word: str | None = None  # drawn as black text in the top-left corner


def sample_scene(rng: random.Random, max_things: int = 3, word_probability: float = 0.0) -> Scene:
    """1..max_things things at distinct positions, each of a random shape and colour; maybe a word."""
    positions = rng.sample(list(POSITIONS), rng.randint(1, min(max_things, len(POSITIONS))))
    things = tuple(Thing(rng.choice(SHAPES), rng.choice(list(COLORS)), position) for position in positions)
    word = rng.choice(SIGN_WORDS) if rng.random() < word_probability else None
    return Scene(things, word)


def render_scene(scene: Scene, size: int = 64, seed: int = 0) -> Image.Image:
    """A `size` x `size` RGB image of `scene` on a light background with a little seeded noise in its tint."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randint(225, 250) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    radius = max(2, size // 9)
    for thing in scene.things:
        if thing.shape not in SHAPES:
            raise ValueError(f"unknown shape {thing.shape!r}; known: {SHAPES}")
        fx, fy = POSITIONS[thing.position]
        cx, cy = int(fx * size), int(fy * size)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        fill = COLORS[thing.color]
        if thing.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif thing.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon(
                [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill
            )
    if scene.word:
        font = ImageFont.load_default(size=max(8, size // 8))
        draw.text((2, 1), scene.word, fill=(0, 0, 0), font=font)
    return image


def render_shape(
    shape: str, color: str, position: str = "center", size: int = 64, seed: int = 0
) -> Image.Image:
    """One `color` `shape` at `position`: the simplest scene."""
    return render_scene(Scene((Thing(shape, color, position),)), size=size, seed=seed)


def _template_words() -> list[str]:
    return re.findall(r"\w+|[^\w\s]", SYSTEM)


VOCABULARY = list(
    dict.fromkeys(
        SPECIAL_TOKENS
        + list(COLORS)
        + list(SHAPES)
        + list(POSITIONS)
        + list(SIGN_WORDS)
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
