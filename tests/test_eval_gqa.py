"""GQA: the reader on LLaVA's question file, the clean-up and breakdown on hand-made entries, and end-to-end
scores worked out from testdev_balanced_questions.json."""

import json

import pytest

from cumo.eval.benchmarks import get
from cumo.eval.metrics.gqa import accuracy_breakdown, normalize
from tests.predictions import answered

SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def folder(eval_root):
    return eval_root / "gqa"


@pytest.fixture(scope="module")
def asked(folder):
    return get("gqa").questions(folder)


@pytest.fixture(scope="module")
def truth(folder):
    return json.loads((folder / "data" / "testdev_balanced_questions.json").read_text())


def test_reader(folder, asked, truth):
    rows = [
        json.loads(line) for line in (folder / "llava_gqa_testdev_balanced.jsonl").read_text().splitlines()
    ]
    assert len(asked) == len(rows) == len(truth) == 40
    assert len({question.question_id for question in asked}) == len(asked)
    for question, row in zip(asked, rows, strict=True):
        assert question.text == row["text"] == truth[question.question_id]["question"] + SUFFIX
        assert question.load_image().size == (64, 64)


@pytest.mark.parametrize(
    ("reply", "cleaned"),
    [("Yes.", "yes"), ("Red...", "red"), ("Yes, it is.", "yes, it is"), ("left.", "left"), ("U.S.", "u.s")],
)
def test_normalize(reply, cleaned):
    assert normalize(reply) == cleaned


def entry(answer, structural, semantic, balanced=True):
    return {
        "answer": answer,
        "isBalanced": balanced,
        "types": {"structural": structural, "semantic": semantic},
    }


def test_accuracy_breakdown():
    answers = [
        ("red", entry("red", "query", "attr")),  # right, open
        ("blue", entry("red", "query", "attr")),  # wrong, open
        ("yes", entry("yes", "verify", "attr")),  # right, binary
        ("no", entry("no", "logical", "obj")),  # right, binary
        ("yes", entry("no", "verify", "obj", balanced=False)),  # not balanced: not counted
    ]
    metrics = accuracy_breakdown(answers)
    assert metrics["accuracy"] == 75.0
    assert metrics["open"] == 50.0
    assert metrics["binary"] == 100.0
    assert metrics["structural/query"] == 50.0
    assert metrics["structural/verify"] == 100.0
    assert metrics["semantic/attr"] == pytest.approx(200 / 3)
    assert metrics["semantic/obj"] == 100.0
    assert metrics["balanced_questions"] == 4


def test_oracle_scores_100(folder, asked, truth):
    replies = [truth[q.question_id]["answer"].capitalize() + "." for q in asked]
    result = get("gqa").score(folder, answered(asked, replies))
    assert result.headline == 100.0
    assert result.n == len(asked)


def test_all_yes_scores_the_share_of_yes(folder, asked, truth):
    answers = [truth[q.question_id]["answer"] for q in asked]
    binary = [q for q in asked if truth[q.question_id]["types"]["structural"] != "query"]
    result = get("gqa").score(folder, answered(asked, ["Yes"] * len(asked)))
    assert result.headline == pytest.approx(100 * answers.count("yes") / len(asked))
    assert result.metrics["binary"] == pytest.approx(100 * answers.count("yes") / len(binary))
    assert result.metrics["open"] == 0.0
