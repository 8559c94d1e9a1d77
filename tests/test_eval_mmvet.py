"""MM-Vet: the reader on LLaVA's question file and MM-Vet's release, the grader's prompt and retry rule, and
the capability scores of mm-vet_evaluator.py computed by hand."""

import json
from collections import Counter

import pytest

from cumo.eval.benchmarks import get
from cumo.eval.benchmarks.mmvet import PROMPT, grading_prompt, parse_grade
from cumo.eval.judge import Judge
from tests.openai_server import OpenAIServer
from tests.predictions import answered
from tests.servers import local_only

BENCHMARK = get("mmvet")
GIVE_UP, HALF = "GIVE UP", "HALF"  # answers the test grader treats specially


@pytest.fixture
def folder(eval_root):
    return eval_root / "mm-vet"


@pytest.fixture
def annotations(folder):
    return json.loads((folder / "mm-vet" / "mm-vet.json").read_text())


def test_questions_are_llavas_question_file(folder, annotations):
    questions = BENCHMARK.questions(folder)
    assert len(questions) == len(annotations) == 40
    for question in questions:
        entry = annotations[f"v1_{question.question_id}"]
        assert question.text == entry["question"]
        assert question.image == folder / "mm-vet" / "images" / entry["imagename"]
    assert questions[0].load_image().size == (64, 64)
    assert BENCHMARK.max_new_tokens == 1024 and BENCHMARK.judged


def test_the_grading_prompt_is_mm_vets():
    prompt = grading_prompt("How many?", "3<OR>three", "There are 3.")
    assert prompt.startswith(
        "Compare the ground truth and prediction from AI models, to give a correctness score"
    )
    assert prompt.endswith("physical characteristics. | 1.0\n\nHow many? | 3 <OR> three | There are 3. | ")
    assert PROMPT.count("\n") == 11
    digit = grading_prompt("How many?", "3", "3", ask_for_digit=True)
    assert digit.endswith("| 3 | 3 | \nPredict the correctness of the answer (digit): ")


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("0.6", 0.6),
        ("1.0", 1.0),
        ("0", 0.0),
        ("0.4 because", 0.4),
        ("1.2", None),
        ("-0.1", None),
        ("nan", None),
    ]
    + [
        ("Score: 1", None),
        ("", None),
        (" 0.5", None),
    ],  # the first word of " 0.5" is empty, as upstream splits
)
def test_parse_grade(reply, expected):
    assert parse_grade(reply) == expected


def row_of(prompt: str) -> list[str]:
    """question, ground truth, prediction of the row the grader completes."""
    return (
        prompt.removesuffix("\nPredict the correctness of the answer (digit): ")
        .split("\n")[-1]
        .split(" | ")[:3]
    )


def test_score_is_the_graders_total_per_capability_and_integration(
    folder, annotations, tmp_path, monkeypatch
):
    local_only(monkeypatch)
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    questions = BENCHMARK.questions(folder)
    texts = [annotations[f"v1_{q.question_id}"]["answer"].split("<OR>")[0].strip() for q in questions]
    # question 0 (rec, spat): the grader never gives a number; 1 (rec): 0.5 when asked for a digit;
    # 2 (ocr): a wrong answer; 3 (spat): right in the first run, wrong in the second
    texts[0], texts[1], texts[2] = GIVE_UP, HALF, "no idea"
    seen = Counter()

    def grader(messages):
        prompt = messages[0]["content"]
        question, truth, prediction = row_of(prompt)
        seen[prompt] += 1
        if prediction == GIVE_UP:
            return "Sure!"
        if prediction == HALF:
            return "0.5" if prompt.endswith("(digit): ") else "Half right."
        if question == annotations["v1_3"]["question"] and seen[prompt] == 2:
            return "0.0"
        return "1.0" if prediction in truth else "0.0"

    with OpenAIServer(grader) as server:
        judge = Judge(model="gpt-4-0613", cache_dir=tmp_path, base_url=server.base_url, runs=2)
        result = BENCHMARK.score(folder, answered(questions, texts), judge=judge)
        again = BENCHMARK.score(folder, answered(questions, texts), judge=judge)  # all from the cache
    assert again == result

    # Each run: every distinct row once (questions asked alike and answered alike are one cached call), 4 more
    # tries for question 0 and 1 more for question 1.
    rows = {(e["question"], e["answer"], text) for e, text in zip(annotations.values(), texts, strict=True)}
    assert len(rows) < 40
    assert len(server.bodies) == 2 * (len(rows) + 4 + 1)
    give_up = [body for body in server.bodies if row_of(body["messages"][0]["content"])[2] == GIVE_UP]
    assert [body["temperature"] for body in give_up] == [0.0, 0.0, 0.5, 1.0, 1.5] * 2
    assert {body["max_tokens"] for body in server.bodies} == {3}
    assert {(body["messages"][0]["role"], len(body["messages"])) for body in server.bodies} == {("user", 1)}
    counts = [
        b for b in server.bodies if row_of(b["messages"][0]["content"])[0].startswith("How many objects")
    ]
    assert all(
        " <OR> " in row_of(b["messages"][0]["content"])[1] for b in counts
    )  # "<OR>" spaced as upstream

    # By hand. Kinds cycle identity (rec, spat), color (rec), word (ocr), position (spat), count (rec, math),
    # describe (rec, gen): 7, 7, 7, 7, 6, 6 questions; rec 26, spat 14, ocr 7, math 6, gen 6.
    # Run 0: q0 0.0, q1 0.5, q2 0.0, the other 37 1.0 -> 37.5 / 40 = 93.75. Run 1: q3 0.0 too -> 91.25.
    metrics = result.metrics
    assert result.headline == metrics["total"] == 92.5 and result.n == 40
    assert metrics["runs"] == [93.8, 91.2] and metrics["std"] == 1.2  # std of (93.75, 91.25): 1.25
    assert metrics["capabilities"] == {
        "rec": round(24.5 / 26 * 100, 1),  # 94.2 both runs
        "spat": round((13 / 14 + 12 / 14) / 2 * 100, 1),  # 89.3
        "ocr": round(6 / 7 * 100, 1),  # 85.7
        "gen": 100.0,
        "math": 100.0,
    }
    assert list(metrics["capabilities"]) == ["rec", "spat", "ocr", "gen", "math"]  # most common first
    assert metrics["capability_integrations"] == {
        "ocr": 85.7,  # 6/7
        "rec": 92.9,  # 6.5/7
        "rec_spat": 85.7,  # 6/7
        "spat": 92.9,  # (7/7 + 6/7) / 2
        "gen_rec": 100.0,
        "math_rec": 100.0,
    }
    assert metrics["judge_gave_up"]["seen"] == 80 and metrics["judge_gave_up"]["skipped"] == 2
    assert [o["id"] for o in metrics["judge_gave_up"]["first"]] == ["v1_0, run 0", "v1_0, run 1"]


def test_scoring_needs_a_judge_and_every_answer(folder, tmp_path, monkeypatch):
    questions = BENCHMARK.questions(folder)
    with pytest.raises(ValueError, match="graded by a judge"):
        BENCHMARK.score(folder, answered(questions, ["x"] * 40))
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    judge = Judge(model="gpt-4-0613", cache_dir=tmp_path, base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="1 question\\(s\\) unanswered"):
        BENCHMARK.score(folder, answered(questions[1:], ["x"] * 39), judge=judge)
