"""POPE: the reader on LLaVA's question file, eval_pope.py's yes/no rule and confusion-matrix numbers on
hand-worked cases, and end-to-end scores worked out from the label files."""

import json
import shutil

import pytest

from cumo.eval.benchmarks import get
from cumo.eval.metrics.pope import binary_metrics, parse_yes_no
from tests.predictions import answered

SUFFIX = "\nAnswer the question using a single word or phrase."
SETTINGS = ("adversarial", "popular", "random")


@pytest.fixture(scope="module")
def folder(eval_root):
    return eval_root / "pope"


@pytest.fixture(scope="module")
def asked(folder):
    return get("pope").questions(folder)


def labels_of(folder, setting):
    return [
        json.loads(line) for line in (folder / "coco" / f"coco_pope_{setting}.json").read_text().splitlines()
    ]


def label_replies(folder, asked):
    """Each question's label, read by position within its setting (as eval_pope.py pairs them)."""
    labels = {setting: iter(labels_of(folder, setting)) for setting in SETTINGS}
    return [next(labels[q.metadata["category"]])["label"] for q in asked]


def test_reader(folder, asked):
    rows = [json.loads(line) for line in (folder / "llava_pope_test.jsonl").read_text().splitlines()]
    assert len(asked) == len(rows) == sum(len(labels_of(folder, setting)) for setting in SETTINGS)
    assert len({question.question_id for question in asked}) == len(asked)
    assert {question.metadata["category"] for question in asked} == set(SETTINGS)
    for question, row in zip(asked, rows, strict=True):
        assert question.text == row["text"] and question.text.endswith(SUFFIX)
    assert asked[0].load_image().size == (64, 64)


@pytest.mark.parametrize(
    ("reply", "read"),
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("No.", "no"),
        ("no, there is not.", "no"),
        ("There is not a dog.", "no"),
        ("Yes, there is no dog.", "no"),  # "no" anywhere in the first sentence
        ("Yes. There is no dog.", "yes"),  # ... and only there
        ("NO", "yes"),  # only "No", "no" and "not" count
        ("Nope", "yes"),
        ("Not sure", "yes"),
        ("No\nthere is none", "yes"),  # words are split on spaces only
        ("", "yes"),
    ],
)
def test_parse_yes_no(reply, read):
    assert parse_yes_no(reply) == read


def test_binary_metrics():
    metrics = binary_metrics(["yes", "yes", "no", "no", "yes"], ["yes", "no", "no", "yes", "yes"])
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (2, 1, 1, 1)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["yes_ratio"] == pytest.approx(3 / 5)
    never_yes = binary_metrics(["no", "no"], ["yes", "no"])  # upstream divides by zero here
    assert never_yes["precision"] == never_yes["recall"] == never_yes["f1"] == 0.0
    assert never_yes["accuracy"] == 0.5


def test_oracle_scores_100(folder, asked):
    result = get("pope").score(
        folder, answered(asked, [label.capitalize() for label in label_replies(folder, asked)])
    )
    assert result.headline == 100.0
    for setting in SETTINGS:
        assert result.metrics[setting]["f1"] == result.metrics[setting]["accuracy"] == 100.0
    assert result.n == len(asked)


def test_always_yes_scores_by_hand(folder, asked):
    """All yes: recall 1, precision = the share p of yes labels, F1 = 2p / (1 + p), accuracy p."""
    result = get("pope").score(folder, answered(asked, ["Yes"] * len(asked)))
    f1s = []
    for setting in SETTINGS:
        labels = [label["label"] for label in labels_of(folder, setting)]
        p = labels.count("yes") / len(labels)
        metrics = result.metrics[setting]
        assert metrics["precision"] == pytest.approx(100 * p)
        assert metrics["recall"] == 100.0
        assert metrics["accuracy"] == pytest.approx(100 * p)
        assert metrics["yes_ratio"] == 100.0
        assert metrics["f1"] == pytest.approx(100 * 2 * p / (1 + p))
        f1s.append(100 * 2 * p / (1 + p))
    assert result.headline == pytest.approx(sum(f1s) / 3)


def test_labels_out_of_order_are_an_error(folder, asked, tmp_path):
    copy = tmp_path / "pope"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.png"))
    random_file = copy / "coco" / "coco_pope_random.json"
    random_file.write_text("".join(reversed(random_file.read_text().splitlines(keepends=True))))
    with pytest.raises(ValueError, match="not in the same order"):
        get("pope").score(copy, answered(asked, ["Yes"] * len(asked)))
