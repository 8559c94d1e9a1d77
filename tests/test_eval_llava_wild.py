"""LLaVA-Bench (in-the-wild): the reader, eval_gpt_review_bench.py's request and score parsing, and
summarize_gpt_review.py's relative scores over judge runs, computed by hand."""

import json
import re
from collections import Counter

import pytest

from cumo.data.skips import TooManySkipped
from cumo.eval.benchmarks import get
from cumo.eval.benchmarks.llava_wild import parse_review, review_messages
from cumo.eval.judge import Judge
from tests.openai_server import OpenAIServer
from tests.predictions import answered
from tests.servers import local_only

BENCHMARK = get("llava_wild")


@pytest.fixture
def folder(eval_root):
    return eval_root / "llava-bench-in-the-wild"


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_questions_carry_their_category(folder):
    questions = BENCHMARK.questions(folder)
    rows = lines(folder / "questions.jsonl")
    assert [q.question_id for q in questions] == [row["question_id"] for row in rows] == list(range(42))
    assert [q.text for q in questions] == [row["text"] for row in rows]
    assert Counter(q.metadata["category"] for q in questions) == {"conv": 14, "detail": 14, "complex": 14}
    assert questions[0].image == folder / "images" / "001.png"
    assert questions[0].load_image().size == (64, 64)
    assert BENCHMARK.max_new_tokens == 1024 and BENCHMARK.judged


def test_the_review_request_is_llavas():
    system, user = review_messages("A red circle.", "What color?", "It is red.", "Red.")
    assert system == {
        "role": "system",
        "content": "You are a helpful and precise assistant for checking the quality of the answer.",
    }
    assert user["role"] == "user"
    assert user["content"].startswith(
        "[Context]\nA red circle.\n\n[Question]\nWhat color?\n\n"
        "[Assistant 1]\nIt is red.\n\n[End of Assistant 1]\n\n[Assistant 2]\nRed.\n\n[End of Assistant 2]\n\n"
        "[System]\nWe would like to request your feedback on the performance of two AI assistants in response "
        "to the user question displayed above. The user asks the question on observing an image. For your "
        "reference, the visual content in the image is represented with a few sentences describing the image. \n"
        "Please rate the helpfulness"
    )
    assert user["content"].endswith("does not affect your judgment.\n\n")
    # a caption given as a list of sentences is joined with newlines
    assert review_messages(["One.", "Two."], "Q", "A", "B")[1]["content"].startswith(
        "[Context]\nOne.\nTwo.\n\n"
    )


@pytest.mark.parametrize(
    "review, expected",
    [
        ("8 9\nAssistant 2 is more detailed.", (8.0, 9.0)),
        ("8,9", (8.0, 9.0)),
        ("7.5 6", (7.5, 6.0)),
        ("8, 9", None),  # the comma becomes a second space: three parts
        ("8 9 ", None),
        ("Assistant 1: 8", None),
        ("", None),
        ("high low", None),
    ],
)
def test_parse_review(review, expected):
    assert parse_review(review) == expected


def test_score_is_the_model_over_the_reference_per_category_averaged_over_runs(folder, tmp_path, monkeypatch):
    local_only(monkeypatch)
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    questions = BENCHMARK.questions(folder)
    texts = [f"answer {q.question_id} ({q.metadata['category']})" for q in questions]
    seen = Counter()
    model_scores = {"conv": 6, "detail": 4, "complex": 10}

    def reviewer(messages):
        # The reference always gets 8; the model its category's score, one more in each later run; question 0
        # is reviewed without a score line.
        content = messages[1]["content"]
        seen[content] += 1
        answer = re.search(r"\[Assistant 2\]\n(.*)\n\n\[End of Assistant 2\]", content).group(1)
        if answer.startswith("answer 0 "):
            return "Assistant 1 scores 8 and Assistant 2 scores 6."
        category = answer.split("(")[1].rstrip(")")
        return f"8 {model_scores[category] + seen[content] - 1}\nExplanation."

    with OpenAIServer(reviewer) as server:
        judge = Judge(model="gpt-4-0613", cache_dir=tmp_path, base_url=server.base_url, runs=3)
        result = BENCHMARK.score(folder, answered(questions, texts), judge=judge)
    assert len(server.bodies) == 3 * 42
    assert {(b["model"], b["temperature"], b["max_tokens"]) for b in server.bodies} == {
        ("gpt-4-0613", 0.2, 1024)
    }
    # every request pairs the question with its caption (by image) and GPT-4's answer (line by line)
    captions = {c["image"]: c["caption"] for c in lines(folder / "context.jsonl")}
    references = lines(folder / "answers_gpt4.jsonl")
    for body, row, reference, text in zip(
        server.bodies[:42], lines(folder / "questions.jsonl"), references, texts, strict=True
    ):
        assert body["messages"] == review_messages(
            captions[row["image"]], row["text"], reference["text"], text
        )

    # By hand: run r gives the model conv 6+r (13 reviews scored), detail 4+r, complex 10+r (14 each), the
    # reference 8. Over all: (13*6 + 14*4 + 14*10) / 41 = 6.6829 -> 6.683 + r; / 8 -> 83.5, 96.0, 108.5.
    metrics = result.metrics
    assert metrics["runs"] == [83.5, 96.0, 108.5]
    assert result.headline == metrics["all"]["relative"] == 96.0
    assert metrics["all"]["model"] == 7.683 and metrics["all"]["reference"] == 8.0
    assert metrics["conv"] == {"relative": 87.5, "model": 7.0, "reference": 8.0}  # 75, 87.5, 100
    assert metrics["detail"]["relative"] == 62.5  # 50, 62.5, 75
    assert metrics["complex"]["relative"] == 137.5  # 125, 137.5, 150
    assert metrics["judge_gave_up"]["seen"] == 3 * 42 and metrics["judge_gave_up"]["skipped"] == 3
    assert result.n == 42


def test_reviews_that_never_score_are_an_error_not_a_number(folder, tmp_path, monkeypatch):
    local_only(monkeypatch)
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    questions = BENCHMARK.questions(folder)
    with OpenAIServer(lambda messages: "I cannot judge this.") as server:
        judge = Judge(model="local-judge", cache_dir=tmp_path, base_url=server.base_url)
        with pytest.raises(TooManySkipped, match=r"llava_wild: judge local-judge: skipped 42 of 42 \(review"):
            BENCHMARK.score(folder, answered(questions, ["x"] * 42), judge=judge)
        # even where every give-up is allowed, no review read is no number
        judge = Judge(
            model="local-judge", cache_dir=tmp_path, base_url=server.base_url, max_gave_up_share=1.0
        )
        with pytest.raises(ValueError, match="none of the judge local-judge's reviews"):
            BENCHMARK.score(folder, answered(questions, ["x"] * 42), judge=judge)


def test_scoring_needs_a_judge(folder):
    questions = BENCHMARK.questions(folder)
    with pytest.raises(ValueError, match="reviewed by a judge"):
        BENCHMARK.score(folder, answered(questions, ["x"] * 42))
