"""The 13 benchmarks' question and annotation files, in each benchmark's own format, over the shapes world.

`write_benchmarks(data_root)` writes under `data_root/eval/` the files that LLaVA-1.5's and CuMo's evaluation
scripts read, at the paths of https://github.com/SHI-Labs/CuMo scripts/cumo/eval/*.sh (LLaVA's
scripts/v1_5/eval/*.sh with ./playground/data/eval replaced by $CuMo_DIR/data/eval), so that the evaluation
code runs on the real formats in the tiny DAG. Every answer is read off the image (colours, shapes, positions,
counts, the rendered word, existence); yes/no labels and option letters are balanced; all follows from `seed`.

Per benchmark: folder under eval/, files written, and where the format comes from.
- sqa, scienceqa/: llava_test_CQM-A.json, problems.json, pid_splits.json, images/test/<pid>/image.png.
  lupantech/ScienceQA data/scienceqa; LLaVA scripts/convert_sqa_to_llava*.py, llava/eval/eval_science_qa.py.
- textvqa, textvqa/: llava_textvqa_val_v051_ocr.jsonl, TextVQA_0.5.1_val.json, train_images/<image_id>.png.
  textvqa.org v0.5.1; LLaVA llava/eval/eval_textvqa.py (annotations found by (image_id, question)).
- gqa, gqa/: llava_gqa_testdev_balanced.jsonl, data/testdev_balanced_questions.json, data/images/<id>.png.
  GQA's eval.py (cs.stanford.edu/people/dorarad/gqa); LLaVA scripts/convert_gqa_for_eval.py.
- pope, pope/: llava_pope_test.jsonl, coco/coco_pope_{adversarial,popular,random}.json, val2014/*.png.
  AoiDragon/POPE output/coco; LLaVA llava/eval/eval_pope.py.
- mme, MME/: llava_mme.jsonl, MME_Benchmark_release_version/<subtask>/ (images with their .txt answers).
  BradyFU/Awesome-Multimodal-Large-Language-Models (Evaluation branch); LLaVA's convert_answer_to_mme.py.
- mmbench, mmbench/: mmbench_dev_20230712.tsv; mmbench_cn: mmbench_dev_cn_20231003.tsv (base64 PNGs inside).
  LLaVA llava/eval/model_vqa_mmbench.py, scripts/convert_mmbench_for_submission.py; open-compass/VLMEvalKit
  vlmeval/evaluate/multiple_choice.py (circular evaluation).
- seed, seed_bench/: llava-seed-bench.jsonl, SEED-Bench.json, SEED-Bench-image/<data_id>.png.
  AILab-CVC/SEED-Bench DATASET.md (SEED-Bench-1); LLaVA scripts/convert_seed_for_submission.py.
- mmvet, mm-vet/: llava-mm-vet.jsonl, mm-vet/mm-vet.json, mm-vet/images/v1_<i>.png.
  yuweihao/MM-Vet release mm-vet.zip; LLaVA scripts/convert_mmvet_for_eval.py; CuMo's cumo/eval/mmvet.sh.
- llava_wild, llava-bench-in-the-wild/: questions.jsonl, context.jsonl, answers_gpt4.jsonl, images/<nnn>.png.
  Hub liuhaotian/llava-bench-in-the-wild; LLaVA llava/eval/eval_gpt_review_bench.py.
- mmmu, MMMU/: README.md, <Subject>/validation-00000-of-00001.parquet for all 30 subjects,
  eval/answer_dict_val.json. Hub MMMU/MMMU; MMMU-Benchmark/MMMU eval/ (data_utils.py, main_eval_only.py).
- mathvista, mathvista/: README.md, data/testmini-00000-of-00001.parquet, data/testmini.json, images/*.png.
  Hub AI4Math/MathVista; lupantech/MathVista data/testmini.json, evaluation/{build_query,calculate_score}.py.
- vqav2, vqav2/: llava_vqav2_mscoco_test-dev2015.jsonl and llava_vqav2_mscoco_test2015.jsonl (test2015/*.png);
  for local accuracy llava_vqav2_mscoco_val2014.jsonl, v2_OpenEnded_mscoco_val2014_questions.json,
  v2_mscoco_val2014_annotations.json (val2014/*.png). visualqa.org v2; LLaVA
  scripts/convert_vqav2_for_submission.py.

Where we differ from the real files, on purpose:
- Images are PNG (lossless, so a rendered colour is exactly the colour asked about), named as the real ones
  with a .png extension; MMBench embeds them base64 in the TSV as the real one does.
- MMMU and MathVista are the Hub datasets' parquet layout with a README.md that declares the configs, so
  `datasets.load_dataset(<folder>, "<Subject>", split="validation")` and `load_dataset(<folder>,
  split="testmini")` work as CuMo's model_vqa_mmmu.py and model_vqa_mathvista.py call them with --data_path.
- MMBench-CN asks in Chinese but keeps the world's English words as options (the tiny tokenizer knows those).
- TextVQA's OCR tokens are the rendered word among two words that are not in the image (Rosetta is noisy
  too), so the tokens alone leave a one-in-three guess.
- LLaVA ships no VQAv2 val question file; ours has the test files' schema.
"""

import base64
import csv
import io
import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq
from datasets import Dataset, Features, List, Value
from datasets import Image as ImageFeature

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
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
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


# ---------------------------------------------------------------------------------------------- ScienceQA-IMG


def write_sqa(w: Writer, count: int) -> dict[str, Path]:
    """ScienceQA test: every fourth problem has no image, as in the real split (IMG accuracy skips them).

    problems.json and pid_splits.json are lupantech/ScienceQA's; llava_test_CQM-A.json is LLaVA's
    convert_sqa_to_llava.py in the CQM-A format ("Context: ...\\nQuestion: ...\\nOptions: (A) ...")."""
    problems, questions = {}, []
    kinds = ("color", "identity", "position", "count")
    for i in range(count):
        pid = str(i + 1)
        choice_count = 2 + (i // 4) % 3
        if i % 4 == 3:  # a text-only science question: which word names a colour?
            answer = w.rng.choice(list(COLORS))
            choices = w.rng.sample(SHAPES, choice_count - 1)
            choices.insert(w.rng.randrange(choice_count), answer)
            text, image = "Which of these words names a color?", None
        else:
            scene, (question,) = w.draw(kinds[i % 4])
            choices = w.options(question, choice_count)
            text, answer, image = question.text(), question.answer, "image.png"
            w.image(scene, f"images/test/{pid}/{image}")
        problems[pid] = {
            "question": text,
            "choices": choices,
            "answer": choices.index(answer),
            "hint": "",
            "image": image,
            "task": "closed choice",
            "grade": "grade1",
            "subject": "natural science",
            "topic": "shapes",
            "category": "Identify shapes and colors",
            "skill": "Identify shapes and colors",
            "lecture": "",
            "solution": "",
            "split": "test",
        }
        letters = " ".join(f"({LETTERS[k]}) {choice}" for k, choice in enumerate(choices))
        prompt = f"Context: N/A\nQuestion: {text}\nOptions: {letters}"
        # convert_sqa_to_llava.py puts the image token after the prompt
        conversation = [
            {"from": "human", "value": prompt + ("\n<image>" if image else "")},
            {"from": "gpt", "value": f"The answer is {LETTERS[choices.index(answer)]}."},
        ]
        image_field = {"image": f"{pid}/{image}"} if image else {}
        questions.append({"id": pid, **image_field, "conversations": conversation})
    splits = {split: [] for split in ("train", "val", "minitrain", "minival", "trainval")}
    return {
        "questions": w.json("llava_test_CQM-A.json", questions),
        "problems": w.json("problems.json", problems),
        "pid_splits": w.json(
            "pid_splits.json", splits | {"test": list(problems), "minitest": list(problems)}
        ),
        "images": w.folder / "images/test",
    }


# ---------------------------------------------------------------------------------------------------- TextVQA


def write_textvqa(w: Writer, count: int) -> dict[str, Path]:
    """TextVQA val: questions about the rendered word (every third image also gets a colour question).

    LLaVA's question file uses the image id as question_id (eval_textvqa.py matches annotations on
    (image_id, question)), so an image with two questions repeats its question_id, as the real file does."""
    annotations, rows = [], []
    while len(annotations) < count:
        kinds = ("word", "color") if len(annotations) % 3 == 2 else ("word",)
        scene, questions = w.draw(*kinds)
        image_id = f"{w.rng.getrandbits(64):016x}"
        w.image(scene, f"train_images/{image_id}.png")
        ocr_tokens = w.rng.sample([word for word in SIGN_WORDS if word != scene.word], 2) + [scene.word]
        w.rng.shuffle(ocr_tokens)
        for question in questions:
            text = question.text().lower()  # TextVQA's questions are lower case
            annotations.append(
                {
                    "question": text,
                    "image_id": image_id,
                    "image_classes": [],
                    "flickr_original_url": "",
                    "flickr_300k_url": "",
                    "image_width": w.image_size,
                    "image_height": w.image_size,
                    # Ten annotators: the case varies (EvalAI's normalisation folds it); one could not read.
                    "answers": [question.answer] * 8 + [question.answer.capitalize(), "unanswerable"],
                    "question_tokens": text.rstrip("?").split(),
                    "question_id": 34602 + len(annotations),
                    "set_name": "val",
                }
            )
            rows.append(
                {
                    "question_id": image_id,
                    "image": f"{image_id}.png",
                    "text": f"{text}\nReference OCR token: {', '.join(ocr_tokens)}\n{SHORT_ANSWER}",
                }
            )
    data = {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": annotations}
    return {
        "questions": w.jsonl("llava_textvqa_val_v051_ocr.jsonl", rows),
        "annotations": w.json("TextVQA_0.5.1_val.json", data),
        "images": w.folder / "train_images",
    }


# -------------------------------------------------------------------------------------------------------- GQA

# (kind, yes/no?) -> GQA's question types (structural, semantic, detailed) and program (operation, argument).
# The structural and semantic values are GQA's vocabulary; the detailed ones are our closest reading of it.
GQA_PROGRAMS = {
    ("color", False): (
        ("query", "attr", "directOf"),
        [("select", "{shape}"), ("filter", "{where}"), ("query", "color")],
    ),
    ("shape", False): (
        ("query", "cat", "categoryThat"),
        [("select", "object"), ("filter", "{where}"), ("query", "name")],
    ),
    ("position", False): (
        ("query", "attr", "positionQuery"),
        [("select", "{shape}"), ("filter color", "{color}"), ("query", "position")],
    ),
    ("color", True): (
        ("verify", "attr", "verifyAttr"),
        [("select", "{shape}"), ("filter", "{where}"), ("verify color", "{color}")],
    ),
    ("exists", True): (("verify", "obj", "exist"), [("select", "{identity}"), ("exist", "?")]),
}


def gqa_question(
    qid: str,
    image_id: str,
    text: str,
    answer: str,
    full_answer: str,
    kind: str,
    is_check: bool,
    slots: dict[str, str],
) -> dict:
    """One entry of testdev_balanced_questions.json: the fields GQA's eval.py reads, and its program."""
    (structural, semantic, detailed), steps = GQA_PROGRAMS[kind, is_check]
    program = [
        {"operation": operation, "argument": argument.format(**slots), "dependencies": [k - 1] if k else []}
        for k, (operation, argument) in enumerate(steps)
    ]
    return {
        "semantic": program,
        "entailed": [],
        "equivalent": [qid],
        "question": text,
        "imageId": image_id,
        "isBalanced": True,
        "groups": {"global": None if is_check else kind, "local": f"{detailed}-{program[0]['argument']}"},
        "answer": answer,
        "semanticStr": "->".join(
            f"{step['operation']}: {step['argument']} {step['dependencies']}" for step in program
        ),
        "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
        "types": {"structural": structural, "semantic": semantic, "detailed": detailed},
        "fullAnswer": full_answer,
    }


def write_gqa(w: Writer, count: int) -> dict[str, Path]:
    """GQA testdev-balanced: per image one open question (colour, shape, position) and one yes/no question
    (a colour check or an existence question) whose answer alternates, so "yes" and "no" are balanced."""
    questions, rows = {}, []
    open_kinds = ("color", "shape", "position")
    for i in range(math.ceil(count / 2)):
        scene, (asked, checked) = w.draw(open_kinds[i % 3], ("color", "exists")[i % 2])
        image_id = f"n{100000 + i}"
        w.image(scene, f"data/images/{image_id}.png")
        value = checked.answer if i % 4 < 2 else checked.wrong(w.rng)
        check = checked.check(value)
        for text, answer, full_answer, kind, is_check, slots in (
            (asked.text(), asked.answer, asked.statement(), asked.kind, False, asked.slots),
            (
                check.text,
                check.label,
                check.full_answer,
                checked.kind,
                True,
                checked.slots | {KINDS[checked.kind].answer: value},
            ),
        ):
            qid = str(20000000 + len(questions))
            questions[qid] = gqa_question(qid, image_id, text, answer, full_answer, kind, is_check, slots)
            rows.append({"question_id": qid, "image": f"{image_id}.png", "text": f"{text}\n{SHORT_ANSWER}"})
    return {
        "questions": w.jsonl("llava_gqa_testdev_balanced.jsonl", rows),
        "annotations": w.json("data/testdev_balanced_questions.json", questions),
        "images": w.folder / "data/images",
    }


# ------------------------------------------------------------------------------------------------------- POPE

POPE_SETTINGS = ("adversarial", "popular", "random")


def write_pope(w: Writer, count: int) -> dict[str, Path]:
    """POPE on COCO val2014: per image and setting, three objects that are there and three that are not,
    interleaved yes/no as POPE's files are. An "object" is a colour and shape ("red circle"); the absent ones
    are drawn at random (random), the most frequent in the benchmark's images (popular), or those that
    co-occur most with the image's objects (adversarial), as POPE samples them. `count` questions per setting.
    """
    images = []  # (file name, image id, exists question, the three objects present)
    for i in range(math.ceil(count / 6)):
        scene, (question,) = w.draw("exists", max_things=len(POSITIONS), min_objects=3)
        image_id = 100000 + i
        name = f"COCO_val2014_{image_id:012d}.png"
        w.image(scene, f"val2014/{name}")
        images.append((name, image_id, question, w.rng.sample(sorted(identities(scene)), 3)))
    frequency = Counter(name for _, _, question, _ in images for name in identities(question.scene))
    co_occurrence = Counter(
        (a, b)
        for _, _, question, _ in images
        for a in identities(question.scene)
        for b in identities(question.scene)
        if a != b
    )

    def absent(question: Question, setting: str) -> list[str]:
        present = identities(question.scene)
        candidates = [name for name in IDENTITIES if name not in present]
        if setting == "random":
            return w.rng.sample(candidates, 3)
        if setting == "popular":
            return sorted(candidates, key=lambda name: (-frequency[name], name))[:3]
        return sorted(candidates, key=lambda name: (-sum(co_occurrence[p, name] for p in present), name))[:3]

    paths, rows = {}, []
    for setting in POPE_SETTINGS:
        labels = []
        for name, image_id, question, positives in images:
            for positive, negative in zip(positives, absent(question, setting), strict=True):
                for value in (positive, negative):
                    check = question.check(value)
                    labels.append(
                        {
                            "question_id": len(labels),
                            "image": name,
                            "image_id": image_id,
                            "text": check.text,
                            "label": check.label,
                        }
                    )
                    rows.append(
                        {
                            "question_id": len(rows),
                            "image": name,
                            "text": f"{check.text}\n{SHORT_ANSWER}",
                            "category": setting,
                        }
                    )
        paths[setting] = w.jsonl(f"coco/coco_pope_{setting}.json", labels)  # JSON lines despite the name
    return {"questions": w.jsonl("llava_pope_test.jsonl", rows), **paths, "images": w.folder / "val2014"}


# -------------------------------------------------------------------------------------------------------- MME

# (subtask, kind, template of its yes/no question, whether images/ and questions_answers_YN/ are apart).
# Real subtask names (of MME's 10 perception and 4 cognition subtasks); artwork, celebrity, landmark, posters
# and scene keep images and answers in separate folders, the others side by side.
MME_SUBTASKS = (
    ("existence", "exists", None, False),
    ("count", "count", None, False),
    ("position", "position", None, False),
    ("color", "color", None, False),
    ("OCR", "word", None, False),
    ("posters", "word", 'Is this poster titled "{word}"?', True),
    ("numerical_calculation", "remaining", None, False),
)


def write_mme(w: Writer, count: int) -> dict[str, Path]:
    """MME: two questions per image, one answered Yes and one No, each ending in "Please answer yes or no.".

    The .txt files are the release's ground truth (question \\t Yes/No); llava_mme.jsonl is LLaVA's question
    file, whose text swaps that suffix for the short-answer one (convert_answer_to_mme.py swaps it back to
    look up the ground truth by (subtask, .txt file, question))."""
    rows = []
    release = "MME_Benchmark_release_version"
    for i in range(math.ceil(count / 2)):
        subtask, kind, template, separate = MME_SUBTASKS[i % len(MME_SUBTASKS)]
        scene, (question,) = w.draw(kind)
        stem = f"{i // len(MME_SUBTASKS):04d}"
        image = f"{subtask}/images/{stem}.png" if separate else f"{subtask}/{stem}.png"
        answers = f"{subtask}/questions_answers_YN/{stem}.txt" if separate else f"{subtask}/{stem}.txt"
        w.image(scene, f"{release}/{image}")
        checks = [question.check(question.answer, template), question.check(question.wrong(w.rng), template)]
        w.path(f"{release}/{answers}").write_text(
            "".join(
                f"{check.text} Please answer yes or no.\t{check.label.capitalize()}\n" for check in checks
            ),
            encoding="utf-8",
        )
        rows += [
            {
                "question_id": image,
                "image": image,
                "text": f"{check.text}\n{SHORT_ANSWER}",
                "category": subtask,
            }
            for check in checks
        ]
    return {"questions": w.jsonl("llava_mme.jsonl", rows), "images": w.folder / release}


# ---------------------------------------------------------------------------------------------------- MMBench

MMBENCH_COLUMNS = "index question hint A B C D answer category image source l2-category comment split".split()
MMBENCH_KINDS = {  # kind -> (category, l2-category), from MMBench's ability taxonomy
    "color": ("attribute_recognition", "finegrained_perception (instance-level)"),
    "shape": ("attribute_recognition", "finegrained_perception (instance-level)"),
    "position": ("object_localization", "finegrained_perception (instance-level)"),
    "word": ("ocr", "finegrained_perception (instance-level)"),
}
MMBENCH_HINTS = {"en": "Positions are as the viewer sees the image.", "cn": "位置按观看者所见描述。"}
MMBENCH_FILES = {"en": "mmbench_dev_20230712.tsv", "cn": "mmbench_dev_cn_20231003.tsv"}


def write_mmbench(w: Writer, count: int, lang: str) -> dict[str, Path]:
    """MMBench dev: `count` questions with 3-4 options, plus their circular copies as the dev TSV holds them:
    index + k * 1e6 shows the options rotated k places (options[k:] + options[:k]), so a question counts only
    when every rotation is answered (VLMEvalKit groups rows by index % 1e6). Position questions carry a hint.
    """
    questions = []  # (row without its options, options, answer)
    kinds = list(MMBENCH_KINDS)
    for i in range(count):
        kind = kinds[i % len(kinds)]
        scene, (question,) = w.draw(kind)
        category, l2_category = MMBENCH_KINDS[kind]
        row = {
            "index": i,
            "question": question.text(lang),
            "hint": MMBENCH_HINTS[lang] if kind == "position" else "",
            "category": category,
            "image": base64.b64encode(w.png(scene)).decode(),
            "source": "shapes-world",
            "l2-category": l2_category,
            "comment": "",
            "split": "dev",
        }
        questions.append((row, w.options(question, 4), question.answer))
    rows = []
    for k in range(4):  # the questions, then their first rotations, then their second, ...
        for row, choices, answer in questions:
            if k < len(choices):
                rotated = choices[k:] + choices[:k]
                letters = dict(zip("ABCD", rotated + [""] * (4 - len(rotated)), strict=True))
                answer_letter = LETTERS[rotated.index(answer)]
                rows.append(row | letters | {"index": row["index"] + k * 1_000_000, "answer": answer_letter})
    path = w.path(MMBENCH_FILES[lang])
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, MMBENCH_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return {"questions": path}


# ------------------------------------------------------------------------------------------------- SEED-Bench

SEED_QUESTION_TYPES = {  # SEED-Bench-1's 12 evaluation dimensions (AILab-CVC/SEED-Bench DATASET.md)
    "Scene Understanding": 1,
    "Instance Identity": 2,
    "Instance Attributes": 3,
    "Instance Location": 4,
    "Instances Counting": 5,
    "Spatial Relation": 6,
    "Instance Interaction": 7,
    "Visual Reasoning": 8,
    "Text Understanding": 9,
    "Action Recognition": 10,
    "Action Prediction": 11,
    "Procedure Understanding": 12,
}
SEED_KINDS = {
    "identity": "Instance Identity",
    "color": "Instance Attributes",
    "position": "Instance Location",
    "count": "Instances Counting",
    "word": "Text Understanding",
}


def write_seed(w: Writer, count: int) -> dict[str, Path]:
    """SEED-Bench image questions (dimensions 2-5 and 9), four choices each, letters balanced."""
    questions, rows = [], []
    kinds = list(SEED_KINDS)
    for i in range(count):
        kind = kinds[i % len(kinds)]
        scene, (question,) = w.draw(kind)
        choices = w.options(question, 4)
        data_id = f"{1000000 + i}_{w.rng.randrange(10**9, 10**10)}"  # CC3M-style name, as SEED's data_id
        w.image(scene, f"SEED-Bench-image/{data_id}.png")
        question_id = str(100000 + i)
        lines = "\n".join(f"{LETTERS[k]}. {choice}" for k, choice in enumerate(choices))
        questions.append(
            {
                "answer": LETTERS[choices.index(question.answer)],
                **{f"choice_{letter}": choice for letter, choice in zip("abcd", choices, strict=True)},
                "data_id": data_id,
                "data_type": "image",
                "question": question.text(),
                "question_id": question_id,
                "question_type_id": SEED_QUESTION_TYPES[SEED_KINDS[kind]],
            }
        )
        rows.append(
            {
                "image": f"SEED-Bench-image/{data_id}.png",
                "text": f"{question.text()}\n{lines}\n{OPTION_LETTER}",
                "category": SEED_KINDS[kind],
                "question_id": question_id,
            }
        )
    return {
        "questions": w.jsonl("llava-seed-bench.jsonl", rows),
        "annotations": w.json(
            "SEED-Bench.json", {"questions": questions, "question_type": SEED_QUESTION_TYPES}
        ),
        "images": w.folder,
    }


# ----------------------------------------------------------------------------------------------------- MM-Vet

MMVET_CAPABILITIES = {  # kind -> MM-Vet's capabilities (rec, ocr, know, gen, spat, math)
    "identity": ["rec", "spat"],
    "color": ["rec"],
    "word": ["ocr"],
    "position": ["spat"],
    "count": ["rec", "math"],
    "describe": ["rec", "gen"],
}


def write_mmvet(w: Writer, count: int) -> dict[str, Path]:
    """MM-Vet: open questions graded by a GPT model against answers that may list alternatives with <OR>.

    Layout of CuMo's scripts/cumo/eval/mmvet.sh (mm-vet.zip extracted into eval/mm-vet); LLaVA's mmvet.sh
    expects the images one level up, at eval/mm-vet/images."""
    annotations, rows = {}, []
    kinds = list(MMVET_CAPABILITIES)
    for i in range(count):
        kind = kinds[i % len(kinds)]
        scene, (question,) = w.draw(kind)
        w.image(scene, f"mm-vet/images/v1_{i}.png")
        answer = (
            f"{question.answer} <OR> {NUMBER_WORDS[int(question.answer)]}"
            if kind == "count"
            else question.answer
        )
        annotations[f"v1_{i}"] = {
            "imagename": f"v1_{i}.png",
            "capability": MMVET_CAPABILITIES[kind],
            "question": question.text(),
            "answer": answer,
        }
        rows.append({"question_id": i, "image": f"v1_{i}.png", "text": question.text()})
    return {
        "questions": w.jsonl("llava-mm-vet.jsonl", rows),
        "annotations": w.json("mm-vet/mm-vet.json", annotations),
        "images": w.folder / "mm-vet/images",
    }


# -------------------------------------------------------------------------------------- aVA-Bench in-the-wild


def write_llava_wild(w: Writer, count: int) -> dict[str, Path]:
    """LLaVA-Bench in-the-wild: per image a conversation question, a detailed description and a counting
    puzzle (its conv, detail and complex categories); GPT-4's reference answers say the scene in words.

    The judge pairs questions.jsonl and answers_gpt4.jsonl line by line, and finds the context by image."""
    questions, contexts, answers = [], [], []
    conversation_kinds = ("color", "position", "word")
    for i in range(math.ceil(count / 3)):
        scene, asked = w.draw(conversation_kinds[i % 3], "describe", "remaining")
        image = f"{i + 1:03d}.png"
        w.image(scene, f"images/{image}")
        contexts.append({"id": f"{i + 1:03d}", "image": image, "caption": describe(scene)})
        for question, category in zip(asked, ("conv", "detail", "complex"), strict=True):
            qid = len(questions)
            questions.append(
                {"question_id": qid, "image": image, "text": question.text(), "category": category}
            )
            answers.append(
                {
                    "question_id": qid,
                    "prompt": question.text(),
                    "text": question.statement(),
                    "answer_id": f"{w.rng.getrandbits(64):016x}",
                    "model_id": "gpt-4-0314",
                    "metadata": {},
                }
            )
    return {
        "questions": w.jsonl("questions.jsonl", questions),
        "context": w.jsonl("context.jsonl", contexts),
        "answers": w.jsonl("answers_gpt4.jsonl", answers),
        "images": w.folder / "images",
    }


# ------------------------------------------------------------------------------------------------------- MMMU

MMMU_SUBJECTS = (  # MMMU's 30 subjects, in the order of its CAT_SHORT2LONG (eval/utils/data_utils.py)
    "Accounting Agriculture Architecture_and_Engineering Art Art_Theory Basic_Medical_Science Biology "
    "Chemistry Clinical_Medicine Computer_Science Design Diagnostics_and_Laboratory_Medicine Economics "
    "Electronics Energy_and_Power Finance Geography History Literature Manage Marketing Materials Math "
    "Mechanical_Engineering Music Pharmacy Physics Psychology Public_Health Sociology"
).split()
MMMU_FEATURES = Features(
    {
        "id": Value("string"),
        "question": Value("string"),
        "options": Value("string"),
        "explanation": Value("string"),
        **{f"image_{k}": ImageFeature() for k in range(1, 8)},
        "img_type": Value("string"),
        "answer": Value("string"),
        "topic_difficulty": Value("string"),
        "question_type": Value("string"),
        "subfield": Value("string"),
    }
)


def hub_card(configs: dict[str, dict[str, str]]) -> str:
    """A dataset card that declares `configs` ({name: {split: file pattern}}), as the Hub's do."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {pattern}" for split, pattern in splits.items()]
    return "\n".join([*lines, "---", ""])


def write_mmmu(w: Writer, count: int) -> dict[str, Path]:
    """MMMU validation: the same number of questions in each of the 30 subjects (at least one), every fourth
    one open (a count), the rest multiple choice with four options given as a Python list literal.

    answer_dict_val.json is MMMU's eval/ ground truth, which names open questions "short-answer" where the
    dataset says "open"."""
    per_subject = math.ceil(count / len(MMMU_SUBJECTS))
    answers, card = {}, {}
    multiple_choice_kinds = ("color", "identity", "position")
    for s, subject in enumerate(MMMU_SUBJECTS):
        rows = []
        for j in range(per_subject):
            i = s * per_subject + j
            is_open = i % 4 == 3
            kind = ("count", "remaining")[i % 2] if is_open else multiple_choice_kinds[i % 3]
            scene, (question,) = w.draw(kind)
            choices = [] if is_open else w.options(question, 4)
            answer = question.answer if is_open else LETTERS[choices.index(question.answer)]
            row_id = f"validation_{subject}_{j + 1}"
            rows.append(
                {
                    "id": row_id,
                    "question": f"<image 1> {question.text()}",
                    "options": str(choices),
                    "explanation": "",
                    "image_1": {"bytes": w.png(scene), "path": None},
                    **{f"image_{k}": None for k in range(2, 8)},
                    "img_type": "['Diagrams']",
                    "answer": answer,
                    "topic_difficulty": "Easy",
                    "question_type": "open" if is_open else "multiple-choice",
                    "subfield": "Shapes",
                }
            )
            answers[row_id] = {
                "question_type": "short-answer" if is_open else "multiple-choice",
                "ground_truth": answer,
            }
        w.parquet(f"{subject}/validation-00000-of-00001.parquet", rows, MMMU_FEATURES)
        card[subject] = {"validation": f"{subject}/validation-*"}
    w.path("README.md").write_text(hub_card(card), encoding="utf-8")
    return {"questions": w.folder, "answers": w.json("eval/answer_dict_val.json", answers)}


# -------------------------------------------------------------------------------------------------- MathVista

MATHVISTA_FEATURES = Features(
    {
        "pid": Value("string"),
        "question": Value("string"),
        "image": Value("string"),
        "decoded_image": ImageFeature(),
        "choices": List(Value("string")),
        "unit": Value("string"),
        "precision": Value("float64"),
        "answer": Value("string"),
        "question_type": Value("string"),
        "answer_type": Value("string"),
        "metadata": {
            "category": Value("string"),
            "context": Value("string"),
            "grade": Value("string"),
            "img_height": Value("int64"),
            "img_width": Value("int64"),
            "language": Value("string"),
            "skills": List(Value("string")),
            "source": Value("string"),
            "split": Value("string"),
            "task": Value("string"),
        },
        "query": Value("string"),
    }
)
# kind -> (question_type, answer_type, precision): integers, two-decimal floats, or a choice's text
MATHVISTA_KINDS = {
    "count": ("free_form", "integer", None),
    "remaining": ("free_form", "integer", None),
    "fraction": ("free_form", "float", 2),
    "color": ("multi_choice", "text", None),
    "identity": ("multi_choice", "text", None),
}
MATHVISTA_METADATA = {  # question_type -> MathVista's category, task and skills
    "free_form": {
        "category": "math-targeted-vqa",
        "task": "math word problem",
        "skills": ["arithmetic reasoning"],
    },
    "multi_choice": {
        "category": "general-vqa",
        "task": "visual question answering",
        "skills": ["logical reasoning"],
    },
}
# MathVista's zero-shot hints (evaluation/build_query.py; data/query.json puts the hint first).
MATHVISTA_HINTS = {
    "text": "Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.",
    "integer": "Please answer the question requiring an integer answer and provide the final value, "
    "e.g., 1, 2, 3, at the end.",
    "float": "Please answer the question requiring a floating-point number with two decimal places and "
    "provide the final value, e.g., 1.23, 1.34, 1.45, at the end.",
}


def write_mathvista(w: Writer, count: int) -> dict[str, Path]:
    """MathVista testmini: integer and two-decimal free-form questions (counting, CLEVR-Math-style
    subtraction, fractions) and multiple choice, whose answer is the choice's text.

    data/testmini.json is lupantech/MathVista's ground truth for calculate_score.py (no query, integer
    precision); the parquet rows are the Hub's, with decoded_image and query."""
    problems, rows = {}, []
    kinds = list(MATHVISTA_KINDS)
    for i in range(count):
        kind = kinds[i % len(kinds)]
        question_type, answer_type, precision = MATHVISTA_KINDS[kind]
        scene, (question,) = w.draw(kind)
        pid = str(i + 1)
        png = w.png(scene)
        w.path(f"images/{pid}.png").write_bytes(png)
        choices = w.options(question, 4) if question_type == "multi_choice" else None
        problems[pid] = {
            "question": question.text(),
            "image": f"images/{pid}.png",
            "choices": choices,
            "unit": None,
            "precision": precision,
            "answer": question.answer,
            "question_type": question_type,
            "answer_type": answer_type,
            "pid": pid,
            "metadata": {
                "split": "testmini",
                "language": "english",
                "img_width": w.image_size,
                "img_height": w.image_size,
                "source": "shapes-world",
                **MATHVISTA_METADATA[question_type],
                "context": "synthetic scene",
                "grade": "elementary school",
            },
        }
        query = f"Hint: {MATHVISTA_HINTS[answer_type]}\nQuestion: {question.text()}"
        if choices:
            query += "\nChoices:" + "".join(f"\n({LETTERS[k]}) {choice}" for k, choice in enumerate(choices))
        rows.append(
            problems[pid]
            | {
                "decoded_image": {"bytes": png, "path": None},
                "precision": None if precision is None else float(precision),
                "query": query,
            }
        )
    card = hub_card({"default": {"testmini": "data/testmini-*"}})
    w.path("README.md").write_text(card, encoding="utf-8")
    return {
        "questions": w.folder,
        "dataset": w.parquet("data/testmini-00000-of-00001.parquet", rows, MATHVISTA_FEATURES),
        "annotations": w.json("data/testmini.json", problems),
        "images": w.folder / "images",
    }


# ------------------------------------------------------------------------------------------------------ VQAv2

VQA_TYPES = {
    "color": ("what color is the", "other"),
    "count": ("how many", "number"),
    "exists": ("is there a", "yes/no"),
}


def write_vqav2(w: Writer, count: int) -> dict[str, Path]:
    """VQAv2: `count` test-dev questions (three per image: colour, count, yes/no alternating), the rest of
    test2015 that a submission must also answer (`count // 2` more), and `count` val questions with ten
    answers each in the official question/annotation files, for local accuracy."""

    def split(image_folder: str, prefix: str, size: int, first_image_id: int):
        """(llava rows, official questions, official annotations) of `size` questions on fresh images."""
        rows, questions, annotations = [], [], []
        for i in range(math.ceil(size / 3)):
            scene, asked = w.draw("color", "count", "exists")
            image_id = first_image_id + i
            name = f"{prefix}_{image_id:012d}.png"
            w.image(scene, f"{image_folder}/{name}")
            color, number, exists = asked
            check = exists.check(exists.answer if i % 2 == 0 else exists.wrong(w.rng))
            for k, (question, text, answer) in enumerate(
                [
                    (color, color.text(), color.answer),
                    (number, number.text(), number.answer),
                    (exists, check.text, check.label),
                ]
            ):
                question_id = image_id * 1000 + k  # VQA's question ids extend the image id
                question_type, answer_type = VQA_TYPES[question.kind]
                rows.append({"question_id": question_id, "image": name, "text": f"{text}\n{SHORT_ANSWER}"})
                questions.append({"image_id": image_id, "question": text, "question_id": question_id})
                annotations.append(
                    {
                        "question_type": question_type,
                        "multiple_choice_answer": answer,
                        "answers": [
                            {"answer": answer, "answer_confidence": "yes", "answer_id": j + 1}
                            for j in range(10)
                        ],
                        "image_id": image_id,
                        "answer_type": answer_type,
                        "question_id": question_id,
                    }
                )
        return rows, questions, annotations

    test_dev, _, _ = split("test2015", "COCO_test2015", count, 1)
    test_standard, _, _ = split("test2015", "COCO_test2015", max(1, count // 2), 1 + math.ceil(count / 3))
    val_rows, val_questions, val_annotations = split("val2014", "COCO_val2014", count, 1)
    header = {"info": {"description": "synthetic shapes world"}, "license": {}, "data_subtype": "val2014"}
    return {
        "questions": w.jsonl("llava_vqav2_mscoco_test-dev2015.jsonl", test_dev),
        "test_questions": w.jsonl("llava_vqav2_mscoco_test2015.jsonl", test_dev + test_standard),
        "images": w.folder / "test2015",
        "val_questions": w.jsonl("llava_vqav2_mscoco_val2014.jsonl", val_rows),
        "val_official_questions": w.json(
            "v2_OpenEnded_mscoco_val2014_questions.json",
            header | {"task_type": "Open-Ended", "data_type": "mscoco", "questions": val_questions},
        ),
        "val_annotations": w.json(
            "v2_mscoco_val2014_annotations.json",
            header | {"data_type": "mscoco", "annotations": val_annotations},
        ),
        "val_images": w.folder / "val2014",
    }


# -------------------------------------------------------------------------------------------------- all of it

# benchmark -> (folder under eval/, writer); folders as CuMo's scripts/cumo/eval/*.sh name them.
BENCHMARKS = {
    "sqa": ("scienceqa", write_sqa),
    "textvqa": ("textvqa", write_textvqa),
    "gqa": ("gqa", write_gqa),
    "pope": ("pope", write_pope),
    "mme": ("MME", write_mme),
    "mmbench": ("mmbench", partial(write_mmbench, lang="en")),
    "mmbench_cn": ("mmbench", partial(write_mmbench, lang="cn")),
    "seed": ("seed_bench", write_seed),
    "mmvet": ("mm-vet", write_mmvet),
    "llava_wild": ("llava-bench-in-the-wild", write_llava_wild),
    "mmmu": ("MMMU", write_mmmu),
    "mathvista": ("mathvista", write_mathvista),
    "vqav2": ("vqav2", write_vqav2),
}


def write_benchmarks(
    data_root: str | Path, seed: int = 0, per_benchmark: int = 40, image_size: int = 64
) -> dict[str, dict[str, Path]]:
    """Write all 13 benchmarks under `data_root/eval/`; returns {benchmark: {role: path}}.

    `per_benchmark` is the number of questions in each benchmark's question set, rounded up to the format's
    unit: per POPE setting, MMBench's questions before their circular copies, a whole number per MMMU subject.
    Each benchmark draws from its own random stream (seeded by `seed` and its name), so adding or changing one
    leaves the others' files as they were. Below 64 pixels the rendered word may cover a shape."""
    if per_benchmark < 1:
        raise ValueError(f"per_benchmark must be at least 1 question, got {per_benchmark}")
    eval_root = Path(data_root) / "eval"
    return {
        name: writer(Writer(eval_root / folder, random.Random(f"{seed}:{name}"), image_size), per_benchmark)
        for name, (folder, writer) in BENCHMARKS.items()
    }
