"""The tiny "shapes world": generated images of coloured shapes, training corpora about them, and a tokenizer.

Everything the tiny preset needs to train offline and really learn (issue 3, "The tiny synthetic world"):

1. The world: scenes of a few shapes in a few colours at a few positions, optionally with a rendered word
   (for OCR-style questions), drawn deterministically from a seed.
2. Three training corpora in the LLaVA conversation schema, one per stage, written into the same data tree
   as the real sources so the same mixture and training code reads them:
   pretrain captions (like LLaVA-Pretrain's BLIP captions), pft detailed descriptions (like ALLaVA's) and
   sft multi-turn question answering (like LLaVA-665K, with LIMA-like text-only chats).
   Every answer is a function of the image and answers are balanced (colours, shapes, positions, counts,
   words uniform; yes/no 50/50; the right letter of a multiple choice uniform), so a model that ignores the
   image scores near chance.
3. A byte-level BPE tokenizer trained on the text the model is trained on, with the special tokens of the
   Mistral template at fixed ids.

Every entry is drawn from its own generator seeded by (seed, stage, index): an entry does not depend on the
corpus size, so a small corpus is a prefix of a larger one.
"""

import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cumo.data.conversation import IMAGE_PLACEHOLDER, render

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]
IMAGE_TOKEN_ID = SPECIAL_TOKENS.index("<image>")
# The tiny preset's vocab_size (cumo.model.presets): 256 bytes + 9 special tokens + merges. The default corpus
# needs about 610 for every one of its words to be a single token (so a one-word answer is one prediction);
# 512 would leave the words, yes, the option letters and the plurals in pieces.
TINY_VOCAB_SIZE = 1024

# ---------------------------------------------------------------------------------------------------------
# The world

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
# Centres of five cells of a 3 x 3 grid, as fractions of the image side; a scene holds at most one thing per
# cell, and the top-left corner cell is the word's.
POSITIONS = {
    "center": (1 / 2, 1 / 2),
    "left": (1 / 6, 1 / 2),
    "right": (5 / 6, 1 / 2),
    "top": (1 / 2, 1 / 6),
    "bottom": (1 / 2, 5 / 6),
}
# Words a scene may show as text, for OCR-style questions (TextVQA-like).
SIGN_WORDS = ("cat", "dog", "sun", "tree", "star", "moon", "fish", "bird")


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


def thing_radius(size: int) -> int:
    """Half the side of a thing's box: it fills its cell (a third of the image side) but for a pixel's margin.

    Large on purpose: the tiny preset's CLIP is a random init, and its 3 x 3 patches are these cells. In the
    first world (radius size // 9, cells centred at 0.2 and 0.8, 4 x 4 patches) a thing covered a fifth of
    each of the four patches it straddled, and the tiny model trained on it never used the images: the same
    loss with each sample's own image as with its neighbour's (tests/test_grounding.py).
    """
    return max(2, size // 6 - 1)


def render_scene(scene: Scene, size: int = 64, seed: int = 0) -> Image.Image:
    """A `size` x `size` RGB image of `scene` on a light background with a little seeded noise in its tint."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randint(225, 250) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    radius = thing_radius(size)
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


# ---------------------------------------------------------------------------------------------------------
# Words about the world

POSITION_PHRASES = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
# Scenes of the corpora hold 1..MAX_THINGS things, so a count question's possible answers are exactly these.
MAX_THINGS = 3
WORD_PROBABILITY = 0.5  # half the scenes show a word, so "is there any text?" is balanced
# LLaVA-1.5's prompt suffixes (LLaVA-665K's VQA entries, and the evaluation's; DESIGN section 4).
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def join_and(phrases: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def count_phrase(count: int, noun: str) -> str:
    return f"{NUMBER_WORDS[count]} {noun}" + ("" if count == 1 else "s")


def thing_phrase(thing: Thing) -> str:
    """'an orange circle on the left'."""
    return f"{with_article(f'{thing.color} {thing.shape}')} {POSITION_PHRASES[thing.position]}"


# ---------------------------------------------------------------------------------------------------------
# Pretrain: one short caption per image, like LLaVA-Pretrain's blip_laion_cc_sbu_558k.json, e.g.
# {"id": "004539375", "image": "00453/004539375.jpg", "conversations": [{"from": "human", "value":
# "Render a clear and concise summary of the photo.\n<image>"}, {"from": "gpt", "value": "select luxury ..."}]}
# The instructions come from LLaVA's brief-description list (LLaVA paper, Table 11); the placeholder is before
# or after them, as in the real file.

BRIEF_INSTRUCTIONS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Summarize the visual content of the image.",
    "Render a clear and concise summary of the photo.",
)


def caption(scene: Scene) -> str:
    """BLIP-style: lower case, no full stop. 'a red circle on the left and a blue square at the top'."""
    text = join_and([thing_phrase(thing) for thing in scene.things])
    return text + (f" with the word {scene.word}" if scene.word else "")


def caption_conversation(rng: random.Random, scene: Scene) -> list[tuple[str, str]]:
    instruction = rng.choice(BRIEF_INSTRUCTIONS)
    human = rng.choice([f"{IMAGE_PLACEHOLDER}\n{instruction}", f"{instruction}\n{IMAGE_PLACEHOLDER}"])
    return [(human, caption(scene))]


# ---------------------------------------------------------------------------------------------------------
# Pft: one detailed description per image, like ALLaVA's captions (cumo_pft_allava.json): every thing with
# its colour, shape and position, the count per shape, and the word when there is one.

DETAIL_INSTRUCTIONS = (
    "Describe the image in detail.",
    "Please depict the image in words.",
    "What do you see in this image?",
    "Tell me about this image.",
)


def description(scene: Scene) -> str:
    things = scene.things
    sentences = [f"The image shows {count_phrase(len(things), 'shape')} on a light background."]
    sentences += [f"There is {thing_phrase(thing)}." for thing in things]
    per_shape = sorted(Counter(thing.shape for thing in things).items())
    totals = join_and([count_phrase(count, shape) for shape, count in per_shape])
    sentences.append(f"In total there {'is' if per_shape[0][1] == 1 else 'are'} {totals}.")
    if scene.word:
        sentences.append(f"The word {scene.word} is written in the top left corner.")
    else:
        sentences.append("There is no text in the image.")
    return " ".join(sentences)


def description_conversation(rng: random.Random, scene: Scene) -> list[tuple[str, str]]:
    return [(f"{IMAGE_PLACEHOLDER}\n{rng.choice(DETAIL_INSTRUCTIONS)}", description(scene))]


# ---------------------------------------------------------------------------------------------------------
# Sft: multi-turn question answering about one image, like LLaVA-665K. Each kind of question below picks what
# it asks about at random from the scene, so its answer is uniform over its possible values; it returns None
# where it does not apply to the scene. A turn asks it in one of LLaVA-665K's forms: a short answer (the VQA
# suffix), a sentence (LLaVA-Instruct's conversations) or, where it has options, a multiple choice
# (A-OKVQA's letters).


@dataclass(frozen=True)
class Question:
    text: str
    answer: str  # a single word or phrase
    sentence: str  # the same answer as a full sentence
    options: tuple[str, ...] = ()  # every possible answer, for the multiple-choice form; () for yes/no


def ask_color(rng: random.Random, scene: Scene) -> Question:
    thing = rng.choice(scene.things)
    where = POSITION_PHRASES[thing.position]
    return Question(
        f"What color is the shape {where}?",
        thing.color,
        f"The {thing.shape} {where} is {thing.color}.",
        tuple(COLORS),
    )


def ask_shape(rng: random.Random, scene: Scene) -> Question:
    thing = rng.choice(scene.things)
    return Question(
        f"What shape is {POSITION_PHRASES[thing.position]}?",
        thing.shape,
        f"There is {thing_phrase(thing)}.",
        SHAPES,
    )


def ask_position(rng: random.Random, scene: Scene) -> Question | None:
    kinds = Counter((thing.color, thing.shape) for thing in scene.things)
    unique = [thing for thing in scene.things if kinds[thing.color, thing.shape] == 1]
    if not unique:
        return None  # "where is the red circle?" has no single answer when there are two
    thing = rng.choice(unique)
    return Question(
        f"Where is the {thing.color} {thing.shape}?",
        thing.position,
        f"The {thing.color} {thing.shape} is {POSITION_PHRASES[thing.position]}.",
        tuple(POSITIONS),
    )


def ask_count(rng: random.Random, scene: Scene) -> Question:
    count = len(scene.things)
    return Question(
        "How many shapes are there in the image?",
        NUMBER_WORDS[count],
        f"There {'is' if count == 1 else 'are'} {count_phrase(count, 'shape')} in the image.",
        NUMBER_WORDS[1 : MAX_THINGS + 1],
    )


def ask_word(rng: random.Random, scene: Scene) -> Question | None:
    # Asked whatever the scene, so its yes/no is as balanced as WORD_PROBABILITY makes the scenes.
    if rng.random() < 0.5:
        if scene.word:
            return Question("Is there any text in the image?", "yes", f"Yes, the word {scene.word}.")
        return Question("Is there any text in the image?", "no", "No, there is no text in the image.")
    if not scene.word:
        return None
    return Question(
        "What is written in the image?",
        scene.word,
        f"The word {scene.word} is written in the image.",
        SIGN_WORDS,
    )


def ask_exists(rng: random.Random, scene: Scene) -> Question:
    """POPE-like: half the time a thing of the scene, otherwise a colour and shape the scene lacks."""
    present = {(thing.color, thing.shape) for thing in scene.things}
    if rng.random() < 0.5:
        thing = rng.choice(scene.things)
        return Question(
            f"Is there {with_article(f'{thing.color} {thing.shape}')} in the image?",
            "yes",
            f"Yes, there is {thing_phrase(thing)}.",
        )
    absent = [(color, shape) for color in COLORS for shape in SHAPES if (color, shape) not in present]
    color, shape = rng.choice(absent)
    return Question(
        f"Is there {with_article(f'{color} {shape}')} in the image?",
        "no",
        f"No, there is no {color} {shape} in the image.",
    )


QUESTION_KINDS = (ask_color, ask_shape, ask_position, ask_count, ask_word, ask_exists)
# Existence (POPE's question) is the kind the tiny model learns last: it must match a named thing against every
# cell, not read one. Drawn 5 times in the 10 kinds a conversation picks from, it is about half of sft's
# questions (cumo/train/README.md, "The tiny recipe": at 1 of 6 the tiny run's POPE answers were all "no").
EXISTENCE_DRAWS = 5
SFT_KINDS = QUESTION_KINDS + (ask_exists,) * (EXISTENCE_DRAWS - 1)
# Up to 10 questions about one image in one conversation, as LLaVA-1.5 merges an image's VQA questions into one.
# Turns are cheap here (a step's cost is mostly DeepSpeed's, not tokens): one sft epoch on ZeRO-3 took 116 s
# with up to 3 turns, 120 s with up to 10.
MAX_TURNS = len(SFT_KINDS)
CHOICE_LETTERS = "ABCD"


def as_turn(rng: random.Random, question: Question) -> tuple[str, str]:
    """(human, gpt) in one of the three forms; distractors drawn uniformly, so the letter tells nothing."""
    form = rng.choice(["short", "sentence", "choice"] if question.options else ["short", "sentence"])
    if form == "short":
        return f"{question.text}\n{SHORT_ANSWER_PROMPT}", question.answer
    if form == "sentence":
        return question.text, question.sentence
    wrong = [option for option in question.options if option != question.answer]
    options = rng.sample(wrong, min(len(CHOICE_LETTERS), len(question.options)) - 1) + [question.answer]
    rng.shuffle(options)
    lines = [f"{letter}. {option}" for letter, option in zip(CHOICE_LETTERS, options, strict=False)]
    return "\n".join([question.text, *lines, CHOICE_PROMPT]), CHOICE_LETTERS[options.index(question.answer)]


def qa_conversation(rng: random.Random, scene: Scene) -> list[tuple[str, str]]:
    """1..MAX_TURNS turns, the kinds of SFT_KINDS in a random order; the image placeholder opens the first."""
    kinds = rng.sample(SFT_KINDS, len(SFT_KINDS))
    questions = [question for kind in kinds if (question := kind(rng, scene)) is not None]
    turns = [as_turn(rng, question) for question in questions[: rng.randint(1, MAX_TURNS)]]
    turns[0] = (f"{IMAGE_PLACEHOLDER}\n{turns[0][0]}", turns[0][1])
    return turns


# Text-only chats (LLaVA-665K's ShareGPT part, CuMo's LIMA): knowledge about the world's words, no image.
TEXT_ONLY_SHARE = 0.1
OPPOSITES = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


def text_only_conversation(rng: random.Random) -> list[tuple[str, str]]:
    kinds = {**dict.fromkeys(COLORS, "color"), **dict.fromkeys(SHAPES, "shape")}
    word = rng.choice(list(kinds))
    side = rng.choice(list(OPPOSITES))
    number = rng.randrange(1, len(NUMBER_WORDS) - 1)
    turns = [
        (f"Is {word} a color or a shape?", f"{word.capitalize()} is {with_article(kinds[word])}."),
        (f"What is the opposite of {side}?", f"The opposite of {side} is {OPPOSITES[side]}."),
        (f"What number comes after {NUMBER_WORDS[number]}?", f"{NUMBER_WORDS[number + 1].capitalize()}."),
    ]
    return rng.sample(turns, rng.randint(1, len(turns)))


# ---------------------------------------------------------------------------------------------------------
# Corpora

STAGE_CONVERSATIONS = {
    "pretrain": caption_conversation,
    "pft": description_conversation,
    "sft": qa_conversation,
}
# The template each stage renders its samples with (DESIGN section 4): what the tokenizer is trained on.
STAGE_TEMPLATES = {"pretrain": "plain", "pft": "mistral_instruct_system", "sft": "mistral_instruct_system"}
# Where the corpora go under the data root: images next to the real sources' trees, JSONs with theirs.
IMAGE_DIR = "synthetic/images"
JSON_DIR = "jsons"
TOKENIZER_DIR = "synthetic/tokenizer"
# What `make demo` trains on, and the corpus build_tokenizer() is trained on.
DEFAULT_SEED = 0
DEFAULT_SIZES = {"pretrain": 2000, "pft": 1000, "sft": 3000}


def json_name(stage: str) -> str:
    return f"synthetic_{stage}.json"


@dataclass(frozen=True)
class Sample:
    entry: dict  # the LLaVA schema: id, image (relative to the data root; absent for text), conversations
    scene: Scene | None  # what the image shows; None for a text-only entry
    image_seed: int  # render_scene's seed, for the background tint


def generate_sample(stage: str, index: int, seed: int = DEFAULT_SEED) -> Sample:
    """The `index`-th entry of `stage`'s corpus; its own generator, so it does not depend on the corpus size."""
    if stage not in STAGE_CONVERSATIONS:
        raise ValueError(f"unknown stage {stage!r}; known: {sorted(STAGE_CONVERSATIONS)}")
    # A string seed is hashed with SHA-512 by `random`, so it is the same in every process.
    rng = random.Random(f"{seed}/{stage}/{index}")
    entry_id = f"synthetic_{stage}_{index:06d}"
    if stage == "sft" and rng.random() < TEXT_ONLY_SHARE:
        return Sample(_entry(entry_id, None, text_only_conversation(rng)), None, 0)
    scene = sample_scene(rng, max_things=MAX_THINGS, word_probability=WORD_PROBABILITY)
    image_seed = rng.randrange(2**32)
    turns = STAGE_CONVERSATIONS[stage](rng, scene)
    return Sample(_entry(entry_id, f"{IMAGE_DIR}/{stage}/{entry_id}.png", turns), scene, image_seed)


def _entry(entry_id: str, image: str | None, turns: list[tuple[str, str]]) -> dict:
    conversations = []
    for human, gpt in turns:
        conversations += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return {"id": entry_id} | ({"image": image} if image else {}) | {"conversations": conversations}


def generate_corpus(stage: str, size: int, seed: int = DEFAULT_SEED) -> list[Sample]:
    return [generate_sample(stage, index, seed) for index in range(size)]


def write_world(
    data_root: str | Path,
    seed: int = DEFAULT_SEED,
    sizes: dict[str, int] | None = None,
    image_size: int = 42,
) -> dict[str, Path]:
    """Write the corpora's images and JSONs under `data_root`, and the tokenizer trained on them.

    `image_size` defaults to the tiny preset's CLIP input (presets.TINY_VISION), so no resampling blurs the
    shapes. Returns the paths: one JSON per stage of `sizes` (keyed by stage) and "tokenizer".
    """
    data_root = Path(data_root)
    corpora = {}
    paths = {}
    for stage, size in (sizes or DEFAULT_SIZES).items():
        samples = generate_corpus(stage, size, seed)
        (data_root / IMAGE_DIR / stage).mkdir(parents=True, exist_ok=True)
        for sample in samples:
            if sample.scene is not None:
                image = render_scene(sample.scene, size=image_size, seed=sample.image_seed)
                image.save(data_root / sample.entry["image"], format="PNG")
        corpora[stage] = [sample.entry for sample in samples]
        paths[stage] = data_root / JSON_DIR / json_name(stage)
        paths[stage].parent.mkdir(parents=True, exist_ok=True)
        paths[stage].write_text(json.dumps(corpora[stage], indent=1))
    paths["tokenizer"] = data_root / TOKENIZER_DIR
    train_tokenizer(corpus_text(corpora)).save_pretrained(paths["tokenizer"])
    return paths


# ---------------------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE (as GPT-2's), so no text is ever <unk> (the benchmarks' prompts may hold words
# the corpora lack) and decoding gives back the exact text, spaces and punctuation included.

_SPECIAL_TOKEN = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))


def corpus_text(corpora: dict[str, list[dict]]) -> Iterator[str]:
    """The text each entry is trained on, rendered with its stage's template, cut at the special tokens.

    Rendered rather than raw turns, so the merges see words as the model does (" red" after "[/INST]", the
    system sentence once per pft and sft sample); special tokens are cut out because they have ids already.
    """
    for stage, entries in corpora.items():
        for entry in entries:
            messages = [turn["value"] for turn in entry["conversations"]]
            turns = list(zip(messages[::2], messages[1::2], strict=True))
            text = render(STAGE_TEMPLATES[stage], turns, has_image="image" in entry)
            yield from filter(None, _SPECIAL_TOKEN.split(text))


def train_tokenizer(texts: Iterator[str]) -> PreTrainedTokenizerFast:
    """BPE trained on `texts`; the special tokens first, so their ids are their index in SPECIAL_TOKENS."""
    # No prefix space: it would be added after every special token too, and decoding could not give it back.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    if tokenizer.get_vocab_size() > TINY_VOCAB_SIZE:
        raise ValueError(f"trained vocabulary of {tokenizer.get_vocab_size()} exceeds {TINY_VOCAB_SIZE}")
    return _as_transformers(tokenizer)


def _as_transformers(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
        # transformers' clean-up would turn "user 's" into "user's": decoding must give back the text as is.
        clean_up_tokenization_spaces=False,
    )


@cache
def _default_tokenizer_json() -> str:
    corpora = {
        stage: [sample.entry for sample in generate_corpus(stage, size)]
        for stage, size in DEFAULT_SIZES.items()
    }
    return train_tokenizer(corpus_text(corpora)).backend_tokenizer.to_str()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer of the default world (DEFAULT_SEED, DEFAULT_SIZES): the one `write_world()` saves.

    Trained once per process; every call returns a fresh object, so a caller that adds tokens changes no other.
    """
    return _as_transformers(Tokenizer.from_str(_default_tokenizer_json()))
