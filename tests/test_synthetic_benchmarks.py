"""The 13 synthetic benchmarks: each file parses the way its evaluation code reads it, every answer matches
what the image shows (read back off the pixels, not taken from the generator), labels and option letters are
balanced, and the same seed writes the same bytes."""

import ast
import base64
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from PIL import Image

from cumo.data.synthetic import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIGN_WORDS,
    Scene,
    Thing,
    render_scene,
    thing_radius,
)
from cumo.data.synthetic_benchmarks import write_benchmarks

PER_BENCHMARK = 24
SIZE = 64
SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
BENCHMARKS = "sqa textvqa gqa pope mme mmbench mmbench_cn seed mmvet llava_wild mmmu mathvista vqav2".split()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_benchmarks(tmp_path_factory.mktemp("data"), seed=0, per_benchmark=PER_BENCHMARK)


# ---------------------------------------------------------------- the oracle: a scene read back off its image


def read_scene(image: Image.Image) -> tuple[dict[str, tuple[str, str]], str | None]:
    """({position: (color, shape)}, word) of a rendered scene, from its pixels: the colour at each cell
    centre, the shape from two probes (a square fills its box corner, a circle its left edge, a triangle
    neither)."""
    image = image.convert("RGB")
    assert image.size == (SIZE, SIZE)
    pixels = image.load()
    inset = thing_radius(SIZE) - 1  # a pixel inside the box's edge
    things = {}
    for position, (fx, fy) in POSITIONS.items():
        cx, cy = int(fx * SIZE), int(fy * SIZE)
        color = next((name for name, rgb in COLORS.items() if pixels[cx, cy] == rgb), None)
        if color is not None:
            rgb = COLORS[color]
            if pixels[cx - inset, cy - inset] == rgb:
                things[position] = (color, "square")
            else:
                things[position] = (color, "circle" if pixels[cx - inset, cy] == rgb else "triangle")
    return things, read_word(image)


def dark_pixels(image: Image.Image) -> set[tuple[int, int]]:
    """The text's pixels: it is drawn black in the top-left corner, clear of every shape."""
    corner = image.convert("RGB").crop((0, 0, 24, 12))
    return {(x, y) for x in range(24) for y in range(12) if max(corner.getpixel((x, y))) < 128}


WORD_PIXELS = {word: dark_pixels(render_scene(Scene((), word), SIZE)) for word in SIGN_WORDS}


def read_word(image: Image.Image) -> str | None:
    pixels = dark_pixels(image)
    if not pixels:
        return None
    overlap = {word: len(pixels & mask) / len(pixels | mask) for word, mask in WORD_PIXELS.items()}
    best, second = sorted(overlap, key=overlap.get, reverse=True)[:2]
    # Anti-aliasing against a different background tint moves a few edge pixels, never a letter.
    assert overlap[best] > 0.75 and overlap[second] < overlap[best] - 0.2, overlap
    return best


def test_the_oracle_reads_a_rendered_scene():
    scene = Scene(
        (
            Thing("circle", "red", "left"),
            Thing("square", "yellow", "top"),
            Thing("triangle", "blue", "bottom"),
        ),
        "fish",
    )
    things, word = read_scene(render_scene(scene, SIZE, seed=3))
    assert things == {"left": ("red", "circle"), "top": ("yellow", "square"), "bottom": ("blue", "triangle")}
    assert word == "fish"


# ------------------------------------------------------------- what a question asks, answered from the pixels

EN_WHERE = {
    "in the center": "center",
    "on the left": "left",
    "on the right": "right",
    "at the top": "top",
    "at the bottom": "bottom",
}
CN_WHERE = {"中间": "center", "左边": "left", "右边": "right", "上方": "top", "下方": "bottom"}
W = "(" + "|".join(EN_WHERE) + ")"
CW = "(" + "|".join(CN_WHERE) + ")"
DESCRIBE = "Describe this image in detail."


def expected_answer(question: str, scene) -> str:
    """The answer to `question` about `scene`, from the question's words alone (yes/no for the checks)."""
    things, word = scene
    identities = [f"{color} {shape}" for color, shape in things.values()]
    at = {position: f"{color} {shape}" for position, (color, shape) in things.items()}

    def yes(truth: bool) -> str:
        return "yes" if truth else "no"

    def thing(position: str, shape: str | None = None) -> tuple[str, str]:
        assert position in things, f"{question!r}: nothing {position}"
        assert shape is None or things[position][1] == shape, f"{question!r}: the shape {position} differs"
        return things[position]

    def where(identity: str) -> str:
        assert identities.count(identity) == 1, f"{question!r}: {identity} is not unique in {things}"
        return next(position for position, name in at.items() if name == identity)

    def remaining(color: str) -> int:
        assert any(c == color for c, _ in things.values()), f"{question!r}: no {color} object"
        return sum(c != color for c, _ in things.values())

    rules = [
        (rf"What color is the (\w+) {W}\?", lambda s, w: thing(EN_WHERE[w], s)[0]),
        (rf"What shape is {W}\?", lambda w: thing(EN_WHERE[w])[1]),
        (rf"What is the object {W}\?", lambda w: " ".join(thing(EN_WHERE[w]))),
        (r"Where is the (\w+ \w+)\?", where),
        (r"How many objects are there in the image\?", lambda: str(len(things))),
        (r"What word is written in the image\?", lambda: word),
        (r"Subtract all (\w+) objects\. How many objects are left\?", lambda c: str(remaining(c))),
        (
            r"What fraction of the objects are (\w+)\?",
            lambda c: str(round((len(things) - remaining(c)) / len(things), 2)),
        ),
        (r"Is there an? (\w+ \w+) in the image\?", lambda i: yes(i in identities)),
        (rf"Is the (\w+) {W} (\w+)\?", lambda s, w, c: yes(thing(EN_WHERE[w], s)[0] == c)),
        (rf"Is the object {W} an? (\w+)\?", lambda w, s: yes(thing(EN_WHERE[w])[1] == s)),
        (rf"Is the object {W} an? (\w+ \w+)\?", lambda w, i: yes(" ".join(thing(EN_WHERE[w])) == i)),
        (rf"Is the (\w+ \w+) {W}\?", lambda i, w: yes(where(i) == EN_WHERE[w])),
        (r"Is the number of objects in the image (\d)\?", lambda n: yes(len(things) == int(n))),
        (r'Is (?:the word in the image|this poster titled) "(\w+)"\?', lambda text: yes(word == text)),
        (
            r"Subtract all (\w+) objects\. Is the number of objects left (\d)\?",
            lambda c, n: yes(remaining(c) == int(n)),
        ),
        (rf"图中{CW}的(\w+?)是什么颜色？", lambda w, s: thing(CN_WHERE[w], s)[0]),
        (rf"图中{CW}是什么形状？", lambda w: thing(CN_WHERE[w])[1]),
        (r"([a-z]+ [a-z]+)在图中的什么位置？", where),
        (r"图中写的是什么单词？", lambda: word),
    ]
    for pattern, answer in rules:
        match = re.fullmatch(pattern, question)
        if match:
            return answer(*match.groups())
    raise AssertionError(f"no rule reads the question {question!r}")


def mentions_every_thing(description: str, scene) -> bool:
    things, word = scene
    phrases = {position: phrase for phrase, position in EN_WHERE.items()}
    named = all(f"{color} {shape} {phrases[p]}" in description for p, (color, shape) in things.items())
    return named and (word is None or f'"{word}"' in description)


@dataclass
class Sample:
    """One question as its scorer sees it: the image, the question, and the answer it counts as right."""

    image: Image.Image | None
    question: str
    answer: str  # the option's text for multiple choice; a reference sentence when `sentence`
    letter: str | None = None  # the right option's letter, for multiple choice
    sentence: bool = False


def check_sample(sample: Sample) -> None:
    if sample.image is None:  # ScienceQA's text-only problems
        assert sample.question == "Which of these words names a color?" and sample.answer in COLORS
        return
    scene = read_scene(sample.image)
    if sample.question == DESCRIBE:
        assert mentions_every_thing(sample.answer, scene), (sample.answer, scene)
        return
    expected = expected_answer(sample.question, scene)
    if sample.sentence:
        assert re.search(rf"\b{re.escape(expected)}\b", sample.answer), (
            sample.question,
            expected,
            sample.answer,
        )
    else:
        assert sample.answer.lower() == expected, (sample.question, sample.answer, expected, scene)


# ------------------------------------------------------------ readers: each format as its evaluation reads it


def open_image(path: Path) -> Image.Image:
    assert path.is_file(), f"missing image {path}"
    image = Image.open(path)
    assert image.format == "PNG"
    return image


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def split_prompt(text: str, suffix: str) -> str:
    question, *rest = text.split("\n")
    assert rest[-1] == suffix, text
    return question


def read_sqa(paths) -> list[Sample]:
    """llava/eval/eval_science_qa.py: problems of pid_splits["test"]; the ground truth is choices[answer]."""
    questions = json.loads(paths["questions"].read_text())
    problems = json.loads(paths["problems"].read_text())
    assert [entry["id"] for entry in questions] == json.loads(paths["pid_splits"].read_text())["test"]
    samples = []
    for entry in questions:
        problem = problems[entry["id"]]
        human, gpt = entry["conversations"]
        letter = "ABCDE"[problem["answer"]]
        assert gpt == {"from": "gpt", "value": f"The answer is {letter}."}
        match = re.fullmatch(r"Context: N/A\nQuestion: (.*)\nOptions: (.*?)(\n<image>)?", human["value"])
        question, options, has_image = match.groups()
        assert question == problem["question"]
        assert options == " ".join(f"({'ABCDE'[k]}) {c}" for k, c in enumerate(problem["choices"]))
        assert bool(has_image) == ("image" in entry) == (problem["image"] is not None)
        image = open_image(paths["images"] / entry["image"]) if "image" in entry else None
        samples.append(Sample(image, question, problem["choices"][problem["answer"]], letter))
    return samples


def read_textvqa(paths) -> list[Sample]:
    """llava/eval/eval_textvqa.py: annotations found by (question_id = image_id, question); ten answers."""
    data = json.loads(paths["annotations"].read_text())
    assert (data["dataset_name"], data["dataset_version"]) == ("textvqa", "0.5.1")
    annotations = {(a["image_id"], a["question"].lower()): a for a in data["data"]}
    rows = read_jsonl(paths["questions"])
    assert len(rows) == len(annotations)
    samples = []
    for row in rows:
        question, ocr, suffix = row["text"].split("\n")
        assert suffix == SHORT_ANSWER and ocr.startswith("Reference OCR token: ")
        annotation = annotations[row["question_id"], question.lower()]
        assert len(annotation["answers"]) == 10
        answer = Counter(a.lower() for a in annotation["answers"]).most_common(1)[0][0]
        tokens = ocr.removeprefix("Reference OCR token: ").split(", ")
        assert len(tokens) == 3 and (answer in tokens) == question.startswith("what word")
        samples.append(Sample(open_image(paths["images"] / row["image"]), question.capitalize(), answer))
    return samples


def read_gqa(paths) -> list[Sample]:
    """scripts/convert_gqa_for_eval.py and GQA's eval.py: predictions keyed by questionId, balanced ones."""
    questions = json.loads(paths["annotations"].read_text())
    rows = read_jsonl(paths["questions"])
    assert [row["question_id"] for row in rows] == list(questions)
    samples = []
    for row in rows:
        question = questions[row["question_id"]]
        assert question["isBalanced"] and row["image"] == question["imageId"] + ".png"
        assert question["types"]["structural"] in ("query", "verify") and question["semantic"]
        assert split_prompt(row["text"], SHORT_ANSWER) == question["question"]
        samples.append(
            Sample(open_image(paths["images"] / row["image"]), question["question"], question["answer"])
        )
    return samples


def read_pope(paths) -> list[Sample]:
    """llava/eval/eval_pope.py: per setting, the answers in question order zipped with the label lines."""
    rows = read_jsonl(paths["questions"])
    assert len({row["question_id"] for row in rows}) == len(rows)
    samples = []
    for setting in ("adversarial", "popular", "random"):
        labels = read_jsonl(paths[setting])
        asked = [row for row in rows if row["category"] == setting]
        assert len(asked) == len(labels) >= PER_BENCHMARK
        for row, label in zip(asked, labels, strict=True):
            assert row["image"] == label["image"] and split_prompt(row["text"], SHORT_ANSWER) == label["text"]
            samples.append(Sample(open_image(paths["images"] / row["image"]), label["text"], label["label"]))
    return samples


def mme_ground_truth(release: Path) -> dict[tuple[str, str, str], str]:
    """LLaVA's convert_answer_to_mme.py get_gt: (subtask, .txt name, question) -> Yes/No, in either layout."""
    truth = {}
    for folder in release.iterdir():
        answers = folder / "questions_answers_YN" if (folder / "images").exists() else folder
        for file in answers.glob("*.txt"):
            lines = file.read_text().splitlines()
            assert [line.split("\t")[1] for line in lines] == ["Yes", "No"], file  # one yes, one no per image
            for line in lines:
                question, answer = line.split("\t")
                truth[folder.name, file.name, question] = answer
    return truth


def read_mme(paths) -> list[Sample]:
    truth = mme_ground_truth(paths["images"])
    samples = []
    for row in read_jsonl(paths["questions"]):
        subtask = row["question_id"].split("/")[0]
        file = row["question_id"].split("/")[-1].split(".")[0] + ".txt"
        question = split_prompt(row["text"], SHORT_ANSWER)
        answer = truth[subtask, file, question + " Please answer yes or no."]
        samples.append(Sample(open_image(paths["images"] / row["image"]), question, answer))
    assert len(samples) == len(truth)
    return samples


def mmbench_options(row) -> list[str]:
    """llava/eval/model_vqa_mmbench.py get_options: A, B, ... up to the first empty (NaN) one."""
    options = []
    for letter in "ABCD":
        if pd.isna(row[letter]):
            break
        options.append(row[letter])
    return options


def read_mmbench(paths) -> list[Sample]:
    """The dev TSV read by pandas as LLaVA does; images are base64 PNGs; only main rows (index < 1e6)."""
    table = pd.read_table(paths["questions"])
    assert list(table.columns) == (
        "index question hint A B C D answer category image source l2-category comment split".split()
    )
    samples = []
    for _, row in table[table["index"] < 1_000_000].iterrows():
        image = Image.open(io.BytesIO(base64.b64decode(row["image"])))
        assert image.format == "PNG"
        options = mmbench_options(row)
        samples.append(Sample(image, row["question"], options["ABCD".index(row["answer"])], row["answer"]))
    return samples


def read_seed(paths) -> list[Sample]:
    """scripts/convert_seed_for_submission.py: SEED-Bench.json's answer letter per question_id."""
    annotation = json.loads(paths["annotations"].read_text())
    types = {type_id: name for name, type_id in annotation["question_type"].items()}
    questions = {q["question_id"]: q for q in annotation["questions"]}
    samples = []
    for row in read_jsonl(paths["questions"]):
        question = questions[row["question_id"]]
        choices = [question[f"choice_{letter}"] for letter in "abcd"]
        lines = row["text"].split("\n")
        assert lines == [
            question["question"],
            *(f"{'ABCD'[k]}. {c}" for k, c in enumerate(choices)),
            OPTION_LETTER,
        ]
        assert question["data_type"] == "image" and row["category"] == types[question["question_type_id"]]
        assert row["image"] == f"SEED-Bench-image/{question['data_id']}.png"
        answer = choices["ABCD".index(question["answer"])]
        samples.append(
            Sample(
                open_image(paths["images"] / row["image"]), question["question"], answer, question["answer"]
            )
        )
    return samples


def read_mmvet(paths) -> list[Sample]:
    """scripts/convert_mmvet_for_eval.py keys predictions v1_<question_id>; answers may list <OR>
    alternatives."""
    annotations = json.loads(paths["annotations"].read_text())
    samples = []
    for row in read_jsonl(paths["questions"]):
        annotation = annotations[f"v1_{row['question_id']}"]
        assert row["text"] == annotation["question"] and row["image"] == annotation["imagename"]
        assert set(annotation["capability"]) <= {"rec", "ocr", "know", "gen", "spat", "math"}
        answer = annotation["answer"].split(" <OR> ")[0]
        samples.append(Sample(open_image(paths["images"] / row["image"]), row["text"], answer))
    return samples


def read_llava_wild(paths) -> list[Sample]:
    """llava/eval/eval_gpt_review_bench.py: questions and GPT-4 answers zipped by line, context by image."""
    contexts = {context["image"]: context for context in read_jsonl(paths["context"])}
    samples = []
    for question, answer in zip(read_jsonl(paths["questions"]), read_jsonl(paths["answers"]), strict=True):
        assert question["question_id"] == answer["question_id"] and question["category"] in (
            "conv",
            "detail",
            "complex",
        )
        image = open_image(paths["images"] / question["image"])
        assert mentions_every_thing(contexts[question["image"]]["caption"], read_scene(image))
        samples.append(Sample(image, question["text"], answer["text"], sentence=True))
    return samples


def read_mmmu(paths) -> list[Sample]:
    """MMMU's data_utils: options are a Python list literal, the answer a letter (multiple choice) or text;
    eval/answer_dict_val.json holds the same ground truth."""
    answers = json.loads(paths["answers"].read_text())
    samples = []
    for parquet in sorted(paths["questions"].glob("*/validation-00000-of-00001.parquet")):
        for row in pq.read_table(parquet).to_pylist():
            assert row["id"].startswith(f"validation_{parquet.parent.name}_")
            assert row["question"].startswith("<image 1> ")
            truth = answers[row["id"]]
            question_type = {"open": "short-answer"}.get(row["question_type"], row["question_type"])
            assert (truth["ground_truth"], truth["question_type"]) == (row["answer"], question_type)
            options = ast.literal_eval(row["options"])
            image = Image.open(io.BytesIO(row["image_1"]["bytes"]))
            question = row["question"].removeprefix("<image 1> ")
            if row["question_type"] == "multiple-choice":
                samples.append(Sample(image, question, options["ABCD".index(row["answer"])], row["answer"]))
            else:
                assert options == []
                samples.append(Sample(image, question, row["answer"]))
    assert len(answers) == len(samples)
    return samples


def read_mathvista(paths, cache_dir: Path) -> list[Sample]:
    """The Hub dataset as CuMo's model_vqa_mathvista.py loads it, against calculate_score.py's truth."""
    truth = json.loads(paths["annotations"].read_text())
    dataset = load_dataset(str(paths["questions"]), split="testmini", cache_dir=str(cache_dir))
    samples = []
    for row in dataset:
        problem = truth[row["pid"]]
        for field in (
            "question",
            "image",
            "choices",
            "unit",
            "answer",
            "question_type",
            "answer_type",
            "metadata",
        ):
            assert row[field] == problem[field], field
        assert row["precision"] == problem["precision"] and (problem["answer_type"] == "float") == (
            problem["precision"] is not None
        )
        assert row["decoded_image"].tobytes() == open_image(paths["questions"] / row["image"]).tobytes()
        assert row["query"].startswith("Hint: ") and f"\nQuestion: {row['question']}" in row["query"]
        if row["question_type"] == "multi_choice":
            assert row["answer"] in row["choices"] and row["answer_type"] == "text"
            assert row["query"].endswith(
                "\n".join(f"({'ABCD'[k]}) {c}" for k, c in enumerate(row["choices"]))
            )
            samples.append(
                Sample(
                    row["decoded_image"],
                    row["question"],
                    row["answer"],
                    "ABCD"[row["choices"].index(row["answer"])],
                )
            )
        else:
            samples.append(Sample(row["decoded_image"], row["question"], row["answer"]))
    return samples


def read_vqav2(paths) -> list[Sample]:
    """Test-dev is a subset of test2015 (convert_vqav2_for_submission.py answers every test2015 id); val
    answers come from the official annotation file (ten per question)."""
    test = read_jsonl(paths["test_questions"])
    test_dev = read_jsonl(paths["questions"])
    assert {row["question_id"] for row in test_dev} < {row["question_id"] for row in test}
    for row in test:  # unanswered here, but each must be a question about its image
        expected_answer(
            split_prompt(row["text"], SHORT_ANSWER), read_scene(open_image(paths["images"] / row["image"]))
        )
    questions = {
        q["question_id"]: q for q in json.loads(paths["val_official_questions"].read_text())["questions"]
    }
    annotations = json.loads(paths["val_annotations"].read_text())["annotations"]
    samples = []
    for row, annotation in zip(read_jsonl(paths["val_questions"]), annotations, strict=True):
        assert row["question_id"] == annotation["question_id"] and len(annotation["answers"]) == 10
        assert {a["answer"] for a in annotation["answers"]} == {annotation["multiple_choice_answer"]}
        question = split_prompt(row["text"], SHORT_ANSWER)
        assert questions[row["question_id"]]["question"] == question
        samples.append(
            Sample(
                open_image(paths["val_images"] / row["image"]), question, annotation["multiple_choice_answer"]
            )
        )
    return samples


class Samples(dict):
    """Each benchmark's samples, read on first use: a benchmark whose files do not parse fails only its own
    tests."""

    def __init__(self, paths: dict[str, dict[str, Path]], cache_dir: Path):
        super().__init__()
        self.readers = {
            "sqa": read_sqa,
            "textvqa": read_textvqa,
            "gqa": read_gqa,
            "pope": read_pope,
            "mme": read_mme,
            "mmbench": read_mmbench,
            "mmbench_cn": read_mmbench,
            "seed": read_seed,
            "mmvet": read_mmvet,
            "llava_wild": read_llava_wild,
            "mmmu": read_mmmu,
            "mathvista": lambda paths: read_mathvista(paths, cache_dir),
            "vqav2": read_vqav2,
        }
        self.paths = paths

    def __missing__(self, name: str) -> list[Sample]:
        self[name] = self.readers[name](self.paths[name])
        return self[name]


@pytest.fixture(scope="module")
def samples(written, tmp_path_factory):
    return Samples(written, tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def other_seed_samples(tmp_path_factory):
    """The same benchmarks from another seed: what a model that never saw these images could learn from."""
    paths = write_benchmarks(tmp_path_factory.mktemp("other"), seed=1, per_benchmark=PER_BENCHMARK)
    return Samples(paths, tmp_path_factory.mktemp("hf_cache"))


# ------------------------------------------------------------------------------------------------------ tests


def test_all_13_benchmarks_are_written(written):
    assert sorted(written) == sorted(BENCHMARKS)
    for name, paths in written.items():
        for role, path in paths.items():
            assert path.exists(), f"{name} {role}: {path}"
            assert "eval" in path.parts


@pytest.mark.parametrize("name", BENCHMARKS)
def test_files_parse_as_their_evaluation_reads_them(samples, name):
    assert len(samples[name]) >= PER_BENCHMARK


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_answer_is_what_the_image_shows(samples, name):
    for sample in samples[name]:
        check_sample(sample)


def template(question: str) -> str:
    """The question with what it names (colours, shapes, positions, words, numbers) blanked out."""
    names = [*COLORS, *SHAPES, *SIGN_WORDS, *EN_WHERE, *CN_WHERE, r"\d"]
    return re.sub(r"(?<![a-z])(" + "|".join(names) + r")(?![a-z])", "_", question)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_a_model_that_ignores_the_image_scores_near_chance(samples, other_seed_samples, name):
    """A model that answers each kind of question with the answer (or option letter) most common for it in
    another seed's files scores about chance here: at most about half, where yes/no is chance."""

    def answer(sample: Sample) -> str:
        return sample.letter or sample.answer.lower()

    seen = {}
    for sample in other_seed_samples[name]:
        seen.setdefault(template(sample.question), Counter())[answer(sample)] += 1
    guesses = {question: answers.most_common(1)[0][0] for question, answers in seen.items()}
    blind = sum(guesses.get(template(s.question)) == answer(s) for s in samples[name]) / len(samples[name])
    assert blind <= 0.55, (name, blind, guesses)


@pytest.mark.parametrize("name", ["pope", "mme", "gqa", "vqav2"])
def test_yes_and_no_are_balanced(samples, name):
    labels = Counter(s.answer.lower() for s in samples[name] if s.answer.lower() in ("yes", "no"))
    assert labels["yes"] > 0 and abs(labels["yes"] - labels["no"]) <= 1, labels


@pytest.mark.parametrize("name", ["sqa", "mmbench", "mmbench_cn", "seed", "mmmu", "mathvista"])
def test_right_option_letters_are_spread(samples, name):
    letters = Counter(s.letter for s in samples[name] if s.letter)
    assert set(letters) >= set("ABC") and max(letters.values()) <= 0.5 * sum(letters.values()), letters


@pytest.mark.parametrize("name", ["mmbench", "mmbench_cn"])
def test_mmbench_circular_copies_rotate_the_options(written, name):
    """Copy k of a question (index + k * 1e6) shows options[k:] + options[:k], its answer letter following."""
    table = pd.read_table(written[name]["questions"])
    main = table[table["index"] < 1_000_000].set_index("index")
    for index, row in main.iterrows():
        options = mmbench_options(row)
        copies = table[table["index"] % 1_000_000 == index].sort_values("index")
        assert list(copies["index"]) == [index + k * 1_000_000 for k in range(len(options))]
        for k, (_, copy) in enumerate(copies.iterrows()):
            rotated = options[k:] + options[:k]
            assert mmbench_options(copy) == rotated
            assert rotated["ABCD".index(copy["answer"])] == options["ABCD".index(row["answer"])]
            for column in ("question", "hint", "image", "category", "l2-category"):
                assert copy[column] == row[column] or pd.isna(copy[column]) and pd.isna(row[column])


def top_three(scores: dict[str, int]) -> list[str]:
    return sorted(scores, key=lambda name: (-scores[name], name))[:3]


def test_pope_negatives_are_sampled_as_pope_does(samples):
    """random: absent objects; popular: the absent objects most frequent over the images; adversarial: the
    absent objects that co-occur most with the image's objects (ties by name). Read off the images."""
    pope = samples["pope"]
    per_setting = len(pope) // 3
    scenes = []  # the objects of each image, in question order (six questions per image and setting)
    for sample in pope[:per_setting:6]:
        things, _ = read_scene(sample.image)
        scenes.append({f"{color} {shape}" for color, shape in things.values()})
    frequency = Counter(name for scene in scenes for name in scene)
    co_occurrence = Counter((a, b) for scene in scenes for a in scene for b in scene if a != b)
    everything = [f"{color} {shape}" for color in COLORS for shape in SHAPES]
    for block, setting in enumerate(("adversarial", "popular", "random")):
        settings_samples = pope[block * per_setting : (block + 1) * per_setting]
        for image_index, present in enumerate(scenes):
            asked = settings_samples[image_index * 6 : image_index * 6 + 6]
            assert [s.answer for s in asked] == ["yes", "no"] * 3
            negatives = [
                re.fullmatch(r"Is there an? (\w+ \w+) in the image\?", s.question).group(1)
                for s in asked[1::2]
            ]
            absent = [name for name in everything if name not in present]
            if setting == "popular":
                assert negatives == top_three({name: frequency[name] for name in absent})
            elif setting == "adversarial":
                co_occurring = {name: sum(co_occurrence[p, name] for p in present) for name in absent}
                assert negatives == top_three(co_occurring)
            else:
                assert set(negatives) <= set(absent)


def test_the_mmmu_folder_loads_as_cumo_loads_the_hub_dataset(written, tmp_path):
    """CuMo's model_vqa_mmmu.py calls load_dataset(data_path, subject, split="validation") for 30 subjects."""
    folder = written["mmmu"]["questions"]
    subjects = [path.name for path in folder.iterdir() if path.is_dir() and path.name != "eval"]
    assert len(subjects) == 30
    dataset = load_dataset(str(folder), "Public_Health", split="validation", cache_dir=str(tmp_path))
    row = dataset[0]
    assert row["id"].startswith("validation_Public_Health_") and row["image_1"].size == (SIZE, SIZE)
    assert row["image_2"] is None and len(dataset) == math.ceil(PER_BENCHMARK / 30)


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


def test_the_same_seed_writes_the_same_files(tmp_path):
    write_benchmarks(tmp_path / "a", seed=7, per_benchmark=6)
    write_benchmarks(tmp_path / "b", seed=7, per_benchmark=6)
    write_benchmarks(tmp_path / "c", seed=8, per_benchmark=6)
    first, again, other = tree(tmp_path / "a"), tree(tmp_path / "b"), tree(tmp_path / "c")
    assert first == again
    assert first.keys() != other.keys() or first != other


def test_no_questions_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="per_benchmark"):
        write_benchmarks(tmp_path, per_benchmark=0)
