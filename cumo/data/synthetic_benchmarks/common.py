"""What the benchmark writers share: questions about a scene (their kinds, open and yes/no forms, answers as
sentences), the `Writer` that draws scenes and writes one benchmark's files, and the Hub's dataset card.

Not a benchmark itself (`BENCHMARKS` in the package names the writers).
"""

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from datasets import Dataset, Features

from cumo.data.synthetic import COLORS, POSITIONS, SHAPES, SIGN_WORDS, Scene, render_scene, sample_scene

# LLaVA-1.5's prompt suffixes (docs/Evaluation.md), part of the question files where LLaVA's have them.
SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDE"

WHERE = {
    "en": {
        "center": "in the center",
        "left": "on the left",
        "right": "on the right",
        "top": "at the top",
        "bottom": "at the bottom",
    },
    "cn": {"center": "中间", "left": "左边", "right": "右边", "top": "上方", "bottom": "下方"},
}
COUNTS = tuple(str(n) for n in range(1, len(POSITIONS) + 1))
IDENTITIES = tuple(f"{color} {shape}" for color in COLORS for shape in SHAPES)


@dataclass(frozen=True)
class Kind:
    """A kind of question about a scene: its open form, its yes/no form and its answer as a sentence."""

    ask: str | None  # the open question (None: asked only as yes/no)
    check: str | None  # the yes/no question; the checked value fills slot `answer` (None: open only)
    answer: str  # the slot that holds the answer
    statement: str  # the answer as a sentence: GQA's fullAnswer, LLaVA-Bench's reference answers
    choices: tuple[str, ...]  # every answer of this kind: options and wrong values are drawn from here


KINDS = {
    "color": Kind(
        "What color is the {shape} {where}?",
        "Is the {shape} {where} {color}?",
        "color",
        "The {shape} {where} is {color}.",
        tuple(COLORS),
    ),
    "shape": Kind(
        "What shape is {where}?",
        "Is the object {where} a {shape}?",
        "shape",
        "The object {where} is a {shape}.",
        SHAPES,
    ),
    "identity": Kind(
        "What is the object {where}?",
        "Is the object {where} {a_identity}?",
        "identity",
        "The object {where} is {a_identity}.",
        IDENTITIES,
    ),
    "position": Kind(
        "Where is the {color} {shape}?",
        "Is the {color} {shape} {where}?",
        "where",
        "The {color} {shape} is {where}.",
        tuple(POSITIONS),
    ),
    "count": Kind(
        "How many objects are there in the image?",
        "Is the number of objects in the image {count}?",
        "count",
        "The number of objects in the image is {count}.",
        COUNTS,
    ),
    "word": Kind(
        "What word is written in the image?",
        'Is the word in the image "{word}"?',
        "word",
        'The word "{word}" is written in the image.',
        SIGN_WORDS,
    ),
    # POPE's question: true for any object in the image, not only the one the question was drawn from.
    "exists": Kind(
        None,
        "Is there {a_identity} in the image?",
        "identity",
        "There is {a_identity} in the image.",
        IDENTITIES,
    ),
    # CLEVR-Math's question, as MathVista asks it.
    "remaining": Kind(
        "Subtract all {color} objects. How many objects are left?",
        "Subtract all {color} objects. Is the number of objects left {remaining}?",
        "remaining",
        "The number of objects left after removing the {color} objects is {remaining}.",
        ("0", *COUNTS),
    ),
    "fraction": Kind(
        "What fraction of the objects are {color}?",
        None,
        "fraction",
        "The fraction of {color} objects is {fraction}.",
        (),
    ),
    "describe": Kind("Describe this image in detail.", None, "description", "{description}", ()),
}
# MMBench-CN's questions; options stay the world's English words.
ASK_CN = {
    "color": "图中{where}的{shape}是什么颜色？",
    "shape": "图中{where}是什么形状？",
    "position": "{color} {shape}在图中的什么位置？",
    "word": "图中写的是什么单词？",
}


def identities(scene: Scene) -> set[str]:
    return {f"{thing.color} {thing.shape}" for thing in scene.things}


def with_article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def lower_first(text: str) -> str:
    return text[0].lower() + text[1:]


def describe(scene: Scene) -> str:
    """The scene in words: LLaVA-Bench's context caption and the reference answer to "describe"."""
    parts = [
        f"{with_article(thing.color)} {thing.shape} {WHERE['en'][thing.position]}" for thing in scene.things
    ]
    listing = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    word = f' The word "{scene.word}" is written in the top left corner.' if scene.word else ""
    return f"The image shows {listing}.{word}"


def fill(template: str, slots: dict[str, str], lang: str = "en") -> str:
    phrases = {"where": WHERE[lang][slots["where"]], "a_identity": with_article(slots["identity"])}
    return template.format(**(slots | phrases))


@dataclass(frozen=True)
class Check:
    """A yes/no question: its text, its label and its answer as a sentence (GQA's fullAnswer)."""

    text: str
    label: str  # "yes" | "no"
    full_answer: str


@dataclass(frozen=True)
class Question:
    """A question of one kind about one scene; `slots` are the facts its templates are filled with."""

    kind: str
    slots: dict[str, str]
    scene: Scene

    @property
    def answer(self) -> str:
        return self.slots[KINDS[self.kind].answer]

    def text(self, lang: str = "en") -> str:
        return fill(KINDS[self.kind].ask if lang == "en" else ASK_CN[self.kind], self.slots, lang)

    def statement(self) -> str:
        return fill(KINDS[self.kind].statement, self.slots)

    def holds(self, value: str) -> bool:
        return value in identities(self.scene) if self.kind == "exists" else value == self.answer

    def wrong(self, rng: random.Random) -> str:
        """A value the yes/no form answers "no" to."""
        return rng.choice([value for value in KINDS[self.kind].choices if not self.holds(value)])

    def check(self, value: str, template: str | None = None) -> Check:
        """The yes/no question "is `value` the answer?" (in `template` if given, else the kind's)."""
        kind = KINDS[self.kind]
        slots = {**self.slots, kind.answer: value}
        text = fill(template or kind.check, slots)
        if self.holds(value):
            return Check(text, "yes", "Yes, " + lower_first(fill(kind.statement, slots)))
        if self.kind == "exists":
            return Check(text, "no", f"No, there is no {value} in the image.")
        return Check(text, "no", "No, " + lower_first(self.statement()))


def ask(kind: str, scene: Scene, rng: random.Random) -> Question | None:
    """A question of `kind` about `scene`; None if the scene cannot answer it (no word, no unique object)."""
    thing = rng.choice(scene.things)
    if kind == "position":  # "Where is the red circle?" needs exactly one red circle
        names = [f"{t.color} {t.shape}" for t in scene.things]
        unique = [t for t, name in zip(scene.things, names, strict=True) if names.count(name) == 1]
        if not unique:
            return None
        thing = rng.choice(unique)
    if kind == "word" and scene.word is None:
        return None
    same_color = sum(t.color == thing.color for t in scene.things)
    slots = {
        "shape": thing.shape,
        "color": thing.color,
        "where": thing.position,
        "identity": f"{thing.color} {thing.shape}",
        "count": str(len(scene.things)),
        "word": scene.word or "",
        "remaining": str(len(scene.things) - same_color),
        "fraction": str(round(same_color / len(scene.things), 2)),
        "description": describe(scene),
    }
    return Question(kind, slots, scene)


class Writer:
    """One benchmark being written: its folder, its own seeded random stream and the images it renders."""

    def __init__(self, folder: Path, rng: random.Random, image_size: int):
        self.folder, self.rng, self.image_size = folder, rng, image_size
        self.places = {}  # option count -> places of the answer still to use in this round

    def options(self, question: Question, count: int) -> list[str]:
        """`count` options (fewer when the kind has fewer answers): the answer among random wrong ones.

        Each round of `count` questions puts the answer once at each place, in random order: the letters are
        balanced and say nothing about the kind of question."""
        choices = KINDS[question.kind].choices
        count = min(count, len(choices))
        places = self.places.setdefault(count, [])
        if not places:
            places += self.rng.sample(range(count), count)
        chosen = self.rng.sample([choice for choice in choices if choice != question.answer], count - 1)
        chosen.insert(places.pop(), question.answer)
        return chosen

    def draw(self, *kinds: str, max_things: int = 3, min_objects: int = 1) -> tuple[Scene, list[Question]]:
        """A scene and one question of each kind about it; scenes that cannot answer all of them are redrawn.

        A third of the scenes that are not asked about their word show one anyway, as a distractor."""
        word_probability = 1.0 if "word" in kinds else 1 / 3
        while True:
            scene = sample_scene(self.rng, max_things, word_probability)
            if len(identities(scene)) < min_objects:
                continue
            questions = [ask(kind, scene, self.rng) for kind in kinds]
            if None not in questions:
                return scene, questions

    def png(self, scene: Scene) -> bytes:
        buffer = io.BytesIO()
        render_scene(scene, self.image_size, seed=self.rng.randrange(2**31)).save(buffer, format="PNG")
        return buffer.getvalue()

    def path(self, relative: str) -> Path:
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def image(self, scene: Scene, relative: str) -> Path:
        path = self.path(relative)
        path.write_bytes(self.png(scene))
        return path

    def json(self, relative: str, data) -> Path:
        path = self.path(relative)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    def jsonl(self, relative: str, rows: list[dict]) -> Path:
        path = self.path(relative)
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        return path

    def parquet(self, relative: str, rows: list[dict], features: Features) -> Path:
        """Rows as the Hub stores them: parquet whose schema metadata carries the `datasets` features, columns
        in the features' order."""
        path = self.path(relative)
        # By column: a shard without rows is a shard too.
        columns = {name: [row[name] for row in rows] for name in features}
        pq.write_table(Dataset.from_dict(columns, features=features).data.table, path)
        return path


def hub_card(configs: dict[str, dict[str, str]]) -> str:
    """A dataset card that declares `configs` ({name: {split: file pattern}}), as the Hub's do."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {pattern}" for split, pattern in splits.items()]
    return "\n".join([*lines, "---", ""])
