"""MME: the reader on LLaVA's question file (unique ids for an image's two questions), calculation.py's yes/no
rule and subtask score on hand-worked cases, and end-to-end scores worked out from the release's .txt files."""

import json
from pathlib import Path

import pytest

from cumo.eval.benchmarks import get
from cumo.eval.metrics.mme import parse_yes_no, subtask_score
from tests.predictions import answered

SUFFIX = "\nAnswer the question using a single word or phrase."
RELEASE = "MME_Benchmark_release_version"


@pytest.fixture(scope="module")
def folder(eval_root):
    return eval_root / "MME"


@pytest.fixture(scope="module")
def rows(folder):
    return [json.loads(line) for line in (folder / "llava_mme.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def asked(folder):
    return get("mme").questions(folder)


@pytest.fixture(scope="module")
def truths(folder, rows):
    """Each question's Yes/No from the release: the .txt next to the image (or in questions_answers_YN/),
    the line whose question is the asked one with "Please answer yes or no." for the suffix."""
    found = []
    for row in rows:
        image = folder / RELEASE / row["image"]
        txt = image.with_suffix(".txt")
        if image.parent.name == "images":
            txt = image.parent.parent / "questions_answers_YN" / txt.name
        lines = dict(line.split("\t") for line in txt.read_text().splitlines())
        found.append(lines[row["text"].removesuffix(SUFFIX) + " Please answer yes or no."])
    return found


def test_reader(folder, rows, asked):
    assert len(asked) == len(rows) == 40
    assert len({question.question_id for question in asked}) == len(asked)
    assert len({row["question_id"] for row in rows}) == len(rows) // 2  # LLaVA's ids: the image, twice
    for question, row in zip(asked, rows, strict=True):
        assert question.text == row["text"] and question.text.endswith(SUFFIX)
        assert question.metadata == {"category": row["category"], "image": row["question_id"]}
        assert question.question_id.split("#")[0] == row["question_id"]
        assert Path(question.image) == folder / RELEASE / row["image"]
    assert asked[0].load_image().size == (64, 64)


@pytest.mark.parametrize(
    ("reply", "read"),
    [
        ("Yes", "yes"),
        ("no", "no"),
        ("No, there is not.", "no"),
        ("Not really", "no"),
        ("none", "no"),
        ("Yesterday", "yes"),  # only the first four characters count
        (" yes", "yes"),
        ("The answer is yes", "other"),
        ("I don't know", "other"),
        ("Y", "other"),
    ],
)
def test_parse_yes_no(reply, read):
    assert parse_yes_no(reply) == read


def test_subtask_score():
    images = [
        [("Yes", "Yes"), ("No", "No")],  # both right
        [("Yes", "Yes"), ("Yes", "No")],  # one right
        [("maybe", "Yes"), ("no", "No")],  # one right, one "other"
    ]
    metrics = subtask_score(images)
    assert metrics["accuracy"] == pytest.approx(100 * 4 / 6)
    assert metrics["accuracy_plus"] == pytest.approx(100 / 3)
    assert metrics["score"] == pytest.approx(100 * 4 / 6 + 100 / 3)
    assert metrics["other"] == 1
    with pytest.raises(ValueError, match="two questions"):
        subtask_score([[("Yes", "Yes")] * 3])


PERCEPTION_PRESENT = {"existence", "count", "position", "color", "OCR", "posters"}  # the shapes world's


def test_oracle_scores_the_maximum(folder, asked, truths):
    result = get("mme").score(folder, answered(asked, truths))
    assert all(
        result.metrics[name]["score"] == 200.0 for name in PERCEPTION_PRESENT | {"numerical_calculation"}
    )
    assert result.headline == 200.0 * len(PERCEPTION_PRESENT)
    assert result.metrics["cognition"] == 200.0
    assert set(result.metrics["missing_subtasks"]) == {
        "celebrity", "scene", "landmark", "artwork", "commonsense_reasoning", "text_translation", "code_reasoning"
    }  # fmt: skip


def test_always_yes_scores_by_hand(folder, asked):
    """Each image has one Yes and one No question: accuracy 50, accuracy+ 0, 50 points per subtask."""
    result = get("mme").score(folder, answered(asked, ["Yes"] * len(asked)))
    assert result.headline == 50.0 * len(PERCEPTION_PRESENT)
    assert result.metrics["cognition"] == 50.0


def test_one_wrong_per_image_by_hand(folder, asked, truths):
    """The first question of each image answered wrong: accuracy 50, accuracy+ 0 again. The second answered
    wrong on every other image of a subtask instead (the first, third, ...): one wrong answer per such image."""
    flip = {"Yes": "No", "No": "Yes"}
    replies = [
        flip[truth] if q.question_id.endswith("#1") else truth for q, truth in zip(asked, truths, strict=True)
    ]
    assert get("mme").score(folder, answered(asked, replies)).metrics["count"]["score"] == 50.0
    seen, replies = {}, []
    for question, truth in zip(asked, truths, strict=True):
        category, image = question.metadata["category"], question.metadata["image"]
        rank = seen.setdefault(category, {}).setdefault(image, len(seen[category]))
        replies.append(flip[truth] if question.question_id.endswith("#2") and rank % 2 == 0 else truth)
    result = get("mme").score(folder, answered(asked, replies))
    for name in PERCEPTION_PRESENT:
        images = result.metrics[name]["images"]
        wrong = (images + 1) // 2
        assert result.metrics[name]["accuracy"] == pytest.approx(100 * (2 * images - wrong) / (2 * images))
        assert result.metrics[name]["accuracy_plus"] == pytest.approx(100 * (images - wrong) / images)
