"""TextVQA: the reader on LLaVA's question file joined with the annotations, EvalAI's answer normalisation and
m4c's leave-one-out accuracy on hand-worked cases, and end-to-end scores worked out from the annotations."""

import json

import pytest

from cumo.eval.benchmarks import get
from cumo.eval.metrics.vqa import normalize_answer, textvqa_accuracy
from tests.predictions import answered

SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def folder(eval_root):
    return eval_root / "textvqa"


@pytest.fixture(scope="module")
def asked(folder):
    return get("textvqa").questions(folder)


@pytest.fixture(scope="module")
def annotations(folder):
    return {
        entry["question_id"]: entry
        for entry in json.loads((folder / "TextVQA_0.5.1_val.json").read_text())["data"]
    }


def test_reader(folder, asked, annotations):
    rows = [
        json.loads(line) for line in (folder / "llava_textvqa_val_v051_ocr.jsonl").read_text().splitlines()
    ]
    assert len(asked) == len(rows) == 40
    assert len({question.question_id for question in asked}) == len(asked)
    assert len({row["question_id"] for row in rows}) < len(rows)  # LLaVA's ids repeat on two-question images
    for question, row in zip(asked, rows, strict=True):
        assert question.text == row["text"]
        assert "\nReference OCR token: " in question.text and question.text.endswith(SUFFIX)
        annotation = annotations[question.question_id]  # TextVQA's own id, found by (image, question)
        assert annotation["image_id"] == question.metadata["image_id"] == row["question_id"]
        assert question.text.split("\n")[0] == annotation["question"]
        assert question.load_image().size == (64, 64)


@pytest.mark.parametrize(
    ("answer", "normalised"),
    [
        ("Yes.", "yes"),
        ("The Dog", "dog"),  # lower case, article dropped
        ("Two dogs", "2 dogs"),
        ("none", "0"),
        ("dont", "don't"),  # contraction restored
        ("3.5", "3.5"),  # a period before a digit stays
        ("e.g.", "eg"),
        ("1,000", "1000"),
        ("What?", "what"),
        ("hello-world", "hello world"),  # a mark between letters becomes a space
        ("rock - roll", "rock roll"),  # next to a space it is removed (then spaces collapse)
        ("(A) red", "red"),  # "(" becomes a space, ")" next to a space goes, "a" is an article
        ("it's", "it 's"),
        ("a\nb", "b"),
        ("." * 40, "." * 8),  # upstream's count=re.UNICODE: at most 32 periods removed
    ],
)
def test_normalize_answer(answer, normalised):
    assert normalize_answer(answer) == normalised


def test_leave_one_out_accuracy():
    humans = ["cat"] * 8 + ["Cat", "unanswerable"]  # 9 "cat" after normalisation
    assert textvqa_accuracy("cat", humans) == 1.0
    assert textvqa_accuracy("The cat.", humans) == 1.0
    # "unanswerable": 9 subsets hold it once (1/3), the one without its annotator none: 9 * (1/3) / 10
    assert textvqa_accuracy("unanswerable", humans) == pytest.approx(0.3)
    assert textvqa_accuracy("dog", humans) == 0.0
    two = ["dog"] * 2 + ["cat"] * 8  # 2 subsets with one dog (1/3), 8 with two (2/3): 0.6, not min(1, 2/3)
    assert textvqa_accuracy("dog", two) == pytest.approx(0.6)
    three = ["dog"] * 3 + ["cat"] * 7  # 3 subsets with two dogs (2/3), 7 with three (1): 0.9
    assert textvqa_accuracy("dog", three) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="ten human answers"):
        textvqa_accuracy("dog", ["dog"] * 9)


def test_oracle_scores_100(folder, asked, annotations):
    replies = [annotations[q.question_id]["answers"][0].upper() + "." for q in asked]  # "TREE." -> "tree"
    result = get("textvqa").score(folder, answered(asked, replies))
    assert result.headline == pytest.approx(100.0)
    assert result.n == len(asked)


def test_wrong_answers_score_by_hand(folder, asked, annotations):
    """The first half says "unanswerable", which one annotator in ten said (0.3 each); the rest are right."""
    assert all(annotations[q.question_id]["answers"].count("unanswerable") == 1 for q in asked)
    half = len(asked) // 2
    replies = ["unanswerable"] * half + [annotations[q.question_id]["answers"][0] for q in asked[half:]]
    result = get("textvqa").score(folder, answered(asked, replies))
    assert result.headline == pytest.approx(100 * (0.3 * half + (len(asked) - half)) / len(asked))
