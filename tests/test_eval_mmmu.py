"""MMMU (validation): the reader on the Hub parquet layout, MMMU's eval_utils.py parsing and scoring on
hand-traced cases (its quirks included), and end-to-end scores worked out from answer_dict_val.json."""

import ast
import json
import random

import pyarrow.parquet as pq
import pytest

from cumo.data.synthetic_benchmarks import MMMU_SUBJECTS
from cumo.eval.benchmarks import get
from cumo.eval.metrics.mmmu import (
    DOMAINS,
    SUBJECTS,
    accuracy_report,
    choice_correct,
    extract_numbers,
    open_correct,
    parse_choice,
    parse_open,
    prompt,
)
from tests.predictions import answered

BENCHMARK = get("mmmu")
CHOICE_SUFFIX = "\n\nAnswer with the option's letter from the given choices directly"  # no period, as CuMo's
SHORT_SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def folder(eval_root):
    return eval_root / "MMMU"


@pytest.fixture(scope="module")
def asked(folder):
    return BENCHMARK.questions(folder)


@pytest.fixture(scope="module")
def rows(folder):
    """The parquet rows in model_vqa_mmmu.py's order, read without `datasets`."""
    return [
        row
        for subject in MMMU_SUBJECTS
        for row in pq.read_table(folder / subject / "validation-00000-of-00001.parquet").to_pylist()
    ]


@pytest.fixture(scope="module")
def truth(folder):
    return json.loads((folder / "eval" / "answer_dict_val.json").read_text())


# ---------------------------------------------------------------------------------------------------- reader


def test_subjects_in_cat_short2long_order():
    assert SUBJECTS == list(MMMU_SUBJECTS)  # the writer lists them as data_utils.py's CAT_SHORT2LONG does
    assert sorted(s for subjects in DOMAINS.values() for s in subjects) == sorted(SUBJECTS)


def test_reader(asked, rows):
    assert len(asked) == len(rows) == 60  # 40 rounded up to 2 per subject
    assert [q.question_id for q in asked] == [row["id"] for row in rows]
    assert len({q.question_id for q in asked}) == len(asked)
    for question, row in zip(asked, rows, strict=True):
        assert "<image 1>" not in question.text
        assert question.image == row["image_1"]["bytes"]  # the first image only
        if row["question_type"] == "multiple-choice":
            assert question.text.endswith(CHOICE_SUFFIX) and "\n(A) " in question.text
        else:
            assert question.text.endswith(SHORT_SUFFIX)
    assert {row["question_type"] for row in rows} == {"multiple-choice", "open"}
    assert asked[0].load_image().size == (64, 64)
    assert BENCHMARK.max_new_tokens == 1024 and BENCHMARK.split == "validation"


def test_prompt_as_model_vqa_mmmu_builds_it():
    assert prompt("<image 1> What is shown?", "multiple-choice", ["x", "y"]) == (
        "What is shown?\n(A) x\n(B) y\n\nAnswer with the option's letter from the given choices directly"
    )
    # <image 1> is replaced by nothing and only the ends are stripped: the space before the line break stays
    assert prompt("How many? <image 1>", "open", []) == (
        "How many? \nAnswer the question using a single word or phrase."
    )


# ---------------------------------------------------------------------------------------------------- parsing

OPTIONS = ["red", "blue", "green circle", "purple"]
GUESS = None  # no letter named: a random one from random.Random(42)


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("(B)", "B"),
        ("The answer is (C).", "C"),
        ("B", "B"),
        ("B.", "B"),
        ("A and B", "B"),  # several bare letters: the last one
        ("(A) is wrong; (B) is right", "B"),  # several bracketed: the last one
        ("(B) or maybe A", "B"),  # a bracketed letter wins over bare ones
        ("I would say the answer is green circle here", "C"),  # more than 5 words: an option's text
        ("It is either red or blue, I think, yes", "B"),  # the last text named
        ("green circle", GUESS),  # 5 words or fewer: texts are not looked for
        ("b", GUESS),  # letters are upper-case
        ("D, probably", GUESS),  # "D," is no bare letter
        ("(E)", GUESS),  # not an option
    ],
)
def test_parse_choice(response, letter):
    parsed, guessed = parse_choice(response, OPTIONS, random.Random(42))
    assert guessed is (letter is GUESS)
    assert parsed == (random.Random(42).choice(["A", "B", "C", "D"]) if letter is GUESS else letter)


def test_guesses_follow_one_seeded_stream():
    """eval_utils.py seeds the module's random once: successive guesses are successive draws."""
    rng, reference = random.Random(42), random.Random(42)
    guesses = [parse_choice("no idea", OPTIONS[:k], rng)[0] for k in (4, 2, 3, 4)]
    assert guesses == [reference.choice("ABCD"[:k]) for k in (4, 2, 3, 4)]


@pytest.mark.parametrize(
    ("response", "truth", "right"),
    [
        ("3", "3", True),
        ("3.0", "3", True),  # numbers compare as floats
        ("The answer is 3.", "3", True),
        ("three", "3", False),
        ("1,000", "1000", True),
        ("The total is 12 apples", "12", True),
        ("3.14159", "3.14", True),  # rounded to 2 decimals
        ("x = 5", "5", True),  # "=" counts in the last line
        ("Step 1: add\nSo the answer is 7", "7", True),
        ("7 or 8", "8", True),  # every number of the answer is a candidate
        ("5%", "5", True),
        ("The capital is Paris", "Paris", True),  # text: lower-cased, the truth inside the answer
        ("parisian", "Paris", True),
        ("a", "a", True),  # a one-letter truth must stand next to a space or an end
        ("it is a", "a", True),
        ("banana", "a", False),
        ("1.2", ["1.20", "x"], True),  # a list of acceptable answers
    ],
)
def test_open_answers(response, truth, right):
    assert open_correct(truth, parse_open(response)) is right


def test_extract_numbers():
    # commas, then scientific, then plain numbers; the plain pattern also finds the pieces "234" and "-3"
    assert extract_numbers("-1,234 and 5e-3 and 0.5") == ["-1,234", "5e-3", "234", "-3", "0.5"]


def test_choice_correct():
    assert choice_correct("B", "B") and not choice_correct("B", "C") and choice_correct(["A", "B"], "B")


def test_accuracy_report():
    report = accuracy_report({"Art": [True, False], "Math": [True]})
    assert report["overall"] == {"accuracy": pytest.approx(200 / 3), "n": 3}  # pooled over questions
    assert report["domain"]["Art and Design"] == {"accuracy": 50.0, "n": 2}
    assert report["domain"]["Science"] == {"accuracy": 100.0, "n": 1}
    assert report["domain"]["Business"] == {"accuracy": 0.0, "n": 0}
    assert report["subject"] == {"Art": {"accuracy": 50.0, "n": 2}, "Math": {"accuracy": 100.0, "n": 1}}


# ------------------------------------------------------------------------------------------------ end to end


def test_oracle_scores_100(folder, asked, truth):
    result = BENCHMARK.score(folder, answered(asked, [truth[q.question_id]["ground_truth"] for q in asked]))
    assert result.headline == 100.0 and result.n == 60 and result.metrics["guessed_letters"] == 0
    assert set(result.metrics["subject"]) == set(SUBJECTS)
    json.dumps(result.metrics)  # metrics.json takes them as they are


def test_wrong_answers_score_as_worked_out(folder, asked, truth):
    """Science's subjects answered wrong ("(next letter)" or the truth plus one), the rest right in sentences."""
    science = set(DOMAINS["Science"])
    replies = []
    for question in asked:
        entry = truth[question.question_id]
        wrong = question.question_id.split("_")[1] in science
        if entry["question_type"] == "multiple-choice":
            letter = "ABCD"[("ABCD".index(entry["ground_truth"]) + wrong) % 4]
            replies.append(f"The answer is ({letter}).")
        else:
            replies.append(f"The answer is {int(entry['ground_truth']) + wrong}")
    result = BENCHMARK.score(folder, answered(asked, replies))
    wrong_count = 2 * len(science)  # 2 questions per subject
    assert result.headline == pytest.approx(100 * (60 - wrong_count) / 60)
    assert result.metrics["domain"]["Science"] == {"accuracy": 0.0, "n": wrong_count}
    assert result.metrics["domain"]["Business"]["accuracy"] == 100.0
    assert result.metrics["guessed_letters"] == 0


def test_unreadable_answers_are_guessed_in_dataset_order(folder, asked, rows, truth):
    result = BENCHMARK.score(folder, answered(asked, ["no idea"] * len(asked)))
    rng = random.Random(42)
    multiple_choice = [row for row in rows if row["question_type"] == "multiple-choice"]
    hits = sum(
        rng.choice("ABCD"[: len(ast.literal_eval(row["options"]))]) == truth[row["id"]]["ground_truth"]
        for row in multiple_choice
    )
    assert result.metrics["guessed_letters"] == len(multiple_choice) == 45
    assert result.headline == pytest.approx(100 * hits / 60)  # the open ones are all wrong


def test_an_unanswered_question_is_an_error(folder, asked):
    with pytest.raises(ValueError, match="1 question"):
        BENCHMARK.score(folder, answered(asked[1:], ["A"] * (len(asked) - 1)))
