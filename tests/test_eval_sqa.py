"""ScienceQA-IMG: the reader on LLaVA's question file, eval_science_qa.py's parsing rules case by case, and
scores of answer sets whose accuracy follows from problems.json by hand."""

import json

import pytest

from cumo.eval.benchmarks import get
from cumo.eval.metrics.sqa import choice_index, parse_letter
from tests.predictions import answered

SUFFIX = "\nAnswer with the option's letter from the given choices directly."


@pytest.fixture(scope="module")
def folder(eval_root):
    return eval_root / "scienceqa"


@pytest.fixture(scope="module")
def asked(folder):
    return get("sqa").questions(folder)


@pytest.fixture(scope="module")
def problems(folder):
    return json.loads((folder / "problems.json").read_text())


def test_reader(folder, asked):
    entries = json.loads((folder / "llava_test_CQM-A.json").read_text())
    assert len(asked) == len(entries) == 40
    assert len({question.question_id for question in asked}) == len(asked)
    for question, entry in zip(asked, entries, strict=True):
        human = entry["conversations"][0]["value"]
        # model_vqa_science.py: the placeholder out, stripped, the suffix on its own line
        assert question.text == human.replace("<image>", "").strip() + SUFFIX
        assert "<image>" not in question.text
        assert (question.image is None) == ("image" not in entry)
    with_image = [question for question in asked if question.image is not None]
    assert 0 < len(with_image) < len(asked)  # text-only problems are asked too, and left out of IMG
    assert all(question.load_image().size == (64, 64) for question in with_image)


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("A", "A"),
        ("E", "E"),
        ("B. green", "B"),  # a letter, a period and a space
        ("The answer is C.", "C"),
        ("The answer is C, the red one", "C"),  # any character after the letter
        ("The answer is C", "FAILED"),  # ... but there must be one: upstream's unescaped "."
        ("Because red. The answer is D.", "D"),
        ("The answer is A. The answer is B.", "FAILED"),  # two answers: none
        ("B.", "FAILED"),  # no space after the period
        ("b", "FAILED"),  # lower case is not a letter option
        (" A", "FAILED"),  # upstream does not strip
        ("AB", "FAILED"),  # not a letter of the list
        ("", "FAILED"),
        ("The answer is F.", "F"),  # parsed, then out of range (below)
    ],
)
def test_parse_letter(reply, letter):
    assert parse_letter(reply) == letter


def test_choice_index():
    assert choice_index("B", 2) == 1
    assert choice_index("C", 2) == -1  # past the problem's choices
    assert choice_index("F", 5) == -1
    assert choice_index("FAILED", 5) == -1


def letter_of(problem):
    return "ABCDE"[problem["answer"]]


def test_oracle_scores_100(folder, asked, problems):
    replies = [f"The answer is {letter_of(problems[q.question_id])}." for q in asked]
    result = get("sqa").score(folder, answered(asked, replies))
    assert result.headline == 100.0
    assert result.metrics["accuracy"] == 100.0
    assert result.metrics["unparsed"] == 0
    assert result.n == sum(q.image is not None for q in asked)


def test_wrong_answers_score_by_hand(folder, asked, problems):
    """Image problems: every third right (bare letter), the others a wrong letter ("X. ") or unparseable;
    text-only problems all right, which counts for the overall accuracy but not for IMG."""
    replies, image_rank = [], 0
    for question in asked:
        problem = problems[question.question_id]
        if question.image is None:
            replies.append(letter_of(problem))
            continue
        wrong = "ABCDE"[(problem["answer"] + 1) % len(problem["choices"])]
        replies.append([letter_of(problem), f"{wrong}. no", "The answer is"][image_rank % 3])
        image_rank += 1
    images = image_rank
    texts = len(asked) - images
    right_images = (images + 2) // 3
    result = get("sqa").score(folder, answered(asked, replies))
    assert result.headline == pytest.approx(100 * right_images / images)
    assert result.metrics["accuracy"] == pytest.approx(100 * (right_images + texts) / len(asked))
    assert result.metrics["unparsed"] == images // 3


def test_incomplete_predictions_are_an_error(folder, asked):
    """Every question answered exactly once (cumo.eval.generate.pair_with_questions), or the scorer says why."""
    complete = answered(asked, ["A"] * len(asked))
    for broken, message in (
        (complete[1:], "1 question.s. unanswered"),
        (complete + complete[:2], "2 answered more than once"),
        (
            complete + [dict(complete[0], question_id="no-such-problem")],
            "1 answer.s. to questions not in the benchmark",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            get("sqa").score(folder, broken)
