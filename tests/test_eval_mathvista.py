"""MathVista: the reader on the Hub layout, extract_answer.py's rules, calculate_score.py's normalisation,
and scoring where only the responses the rules cannot read reach the judge."""

import json
import re

import pyarrow.parquet as pq
import pytest

from cumo.eval.benchmarks import get
from cumo.eval.benchmarks.mathvista import DEMO_PROMPT, extraction_messages
from cumo.eval.judge import Judge
from cumo.eval.metrics.mathvista import (
    breakdown,
    edit_distance,
    most_similar,
    normalize_extracted_answer,
    rule_extraction,
)
from tests.openai_server import OpenAIServer
from tests.servers import local_only

BENCHMARK = get("mathvista")


@pytest.fixture
def folder(eval_root):
    return eval_root / "mathvista"


@pytest.fixture
def problems(folder):
    return json.loads((folder / "data" / "testmini.json").read_text())  # lupantech's ground-truth file


def test_questions_are_the_rows_question_and_image(folder, problems):
    questions = BENCHMARK.questions(folder)
    assert [q.question_id for q in questions] == list(problems)
    assert [q.text for q in questions] == [p["question"] for p in problems.values()]
    first = questions[0]
    assert first.load_image().size == (64, 64)
    assert first.image == (folder / problems[first.question_id]["image"]).read_bytes()
    assert BENCHMARK.max_new_tokens == 1024 and BENCHMARK.judged


@pytest.mark.parametrize(
    "response, question_type, answer_type, choices, expected",
    [
        ("", "free_form", "integer", None, ""),
        ("7", "free_form", "integer", None, "7"),
        (" 7\n", "free_form", "integer", None, "7"),  # int() strips white space
        ("7.0", "free_form", "integer", None, None),  # int("7.0") fails: the judge reads it
        ("There are 7.", "free_form", "integer", None, None),
        ("0.50", "free_form", "float", None, "0.5"),
        ("1e2", "free_form", "float", None, "100.0"),
        ("about 0.5", "free_form", "float", None, None),
        ("blue", "multi_choice", "text", ["red", "blue"], "blue"),
        ("Blue", "multi_choice", "text", ["red", "blue"], None),  # exact match only
        ("B", "multi_choice", "text", ["red", "blue"], None),  # a letter is the judge's to read
        ("[1, 2]", "free_form", "list", None, None),
    ],
)
def test_rule_extraction(response, question_type, answer_type, choices, expected):
    assert rule_extraction(response, question_type, answer_type, choices) == expected


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("flaw", "lawn") == 2
    assert edit_distance("same", "same") == 0
    assert most_similar("gren", ["red", "green", "grey"]) == "green"
    assert most_similar("xx", ["ab", "cd"]) == "ab"  # equal distances: the first


CHOICES = ["red circle", "blue square", "green star", "orange triangle"]


@pytest.mark.parametrize(
    "extraction, question_type, answer_type, precision, expected",
    [
        # integers: through float, truncated
        ("3", "free_form", "integer", None, "3"),
        ("3.0", "free_form", "integer", None, "3"),
        ("3.7", "free_form", "integer", None, "3"),
        ("-2.5", "free_form", "integer", None, "-2"),
        ("three", "free_form", "integer", None, None),
        ("", "free_form", "integer", None, None),
        # floats: rounded to the precision, written as Python writes them
        ("0.333", "free_form", "float", 2, "0.33"),
        ("0.50", "free_form", "float", 2, "0.5"),
        ("1.25", "free_form", "float", 1, "1.2"),  # round half to even
        ("2", "free_form", "float", 2, "2.0"),
        ("1.456", "free_form", "float", 2.0, "1.46"),  # the Hub's float precision
        ("$1.45", "free_form", "float", 2, None),
        # lists: the text as it is
        ("[2007, 2008]", "free_form", "list", None, "[2007, 2008]"),
        # choices: a letter in parentheses, a bare letter, else the nearest choice's text
        ("(B) blue square", "multi_choice", "text", None, "blue square"),
        ("the answer is (d)", "multi_choice", "text", None, "orange triangle"),
        (" C ", "multi_choice", "text", None, "green star"),
        ("c", "multi_choice", "text", None, "red circle"),  # lower case is not a letter: nearest text
        ("a blue square", "multi_choice", "text", None, "blue square"),
        ("E", "multi_choice", "text", None, "red circle"),  # beyond the options: nearest text
    ],
)
def test_normalization(extraction, question_type, answer_type, precision, expected):
    choices = CHOICES if question_type == "multi_choice" else None
    assert normalize_extracted_answer(extraction, choices, question_type, answer_type, precision) == expected


def test_breakdown_counts_every_skill_and_sorts_by_accuracy():
    problems = [
        {"question_type": "free_form", "skills": ["arithmetic", "counting"]},
        {"question_type": "free_form", "skills": ["arithmetic"]},
        {"question_type": "multi_choice", "skills": ["logic"]},
    ]
    problems = [
        {
            **p,
            **dict.fromkeys(
                ("answer_type", "language", "source", "category", "task", "context", "grade"), "x"
            ),
        }
        for p in problems
    ]
    scores = breakdown(problems, [True, False, True])
    assert scores["question_type"] == {
        "multi_choice": {"accuracy": 100.0, "correct": 1, "total": 1},
        "free_form": {"accuracy": 50.0, "correct": 1, "total": 2},
    }
    assert list(scores["question_type"]) == ["multi_choice", "free_form"]
    assert scores["skills"]["arithmetic"] == {"accuracy": 50.0, "correct": 1, "total": 2}
    assert scores["skills"]["counting"]["accuracy"] == 100.0
    assert scores["grade"] == {"x": {"accuracy": 66.67, "correct": 2, "total": 3}}


def test_the_extraction_prompt_is_upstreams():
    messages = extraction_messages("Question: How many?", "I see 3 things.")
    assert messages[0] == {
        "role": "system",
        "content": "You are a helpful and precis!ee assistant for checking the quality of the answer.",
    }
    prompt = messages[1]["content"]
    assert prompt.startswith(
        "Please read the following example. Then extract the answer from the model response"
    )
    assert prompt.endswith(
        "(D) 3/5\n\nModel response: The correct answer is (B) 8/11.\n\nExtracted answer: B\n\n"
        "Question: How many?\n\nI see 3 things.\n\nExtracted answer: "
    )
    assert DEMO_PROMPT.count("Extracted answer: ") == 5


def plan(problems: dict) -> dict[str, tuple[str, bool, bool]]:
    """pid -> (response, read by the judge?, correct?), built by hand from the ground truth."""
    out = {}
    for n, (pid, p) in enumerate(problems.items()):
        answer, kind = p["answer"], p["answer_type"]
        if kind == "integer":
            out[pid] = [
                (answer, False, True),
                (str(int(answer) + 1), False, False),
                (f"I count {answer} of them.", True, True),
                (f"I count {int(answer) + 2} of them.", True, False),
            ][n % 4]
        elif kind == "float":
            out[pid] = [(answer + "0", False, True), (f"It is {answer}.", True, True)][n % 2]
        else:
            letter = "ABCD"[p["choices"].index(answer)]
            wrong = next(c for c in p["choices"] if c != answer)
            out[pid] = [
                (answer, False, True),
                (f"The answer is ({letter}).", True, True),
                (wrong, False, False),
            ][n % 3]
    out["1"] = ("", False, False)  # an empty response: no answer, no judge
    return out


def read_answer(messages: list[dict]) -> str:
    """The local judge: the last number or option letter of the response in the extraction prompt."""
    response = messages[-1]["content"].removesuffix("\n\nExtracted answer: ").rsplit("\n\n", 1)[1]
    letters = re.findall(r"\(([A-D])\)", response)
    return letters[-1] if letters else re.findall(r"\d+(?:\.\d+)?", response)[-1]


def test_score_sends_only_what_the_rules_cannot_read_to_the_judge(folder, problems, tmp_path, monkeypatch):
    local_only(monkeypatch)
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    planned = plan(problems)
    predictions = [{"question_id": pid, "text": response} for pid, (response, _, _) in planned.items()]
    with OpenAIServer(lambda messages: " " + read_answer(messages) + "\n") as server:
        judge = Judge(model="gpt-3.5-turbo", cache_dir=tmp_path, base_url=server.base_url)
        result = BENCHMARK.score(folder, predictions, judge=judge)
    judged = {pid for pid, (_, by_judge, _) in planned.items() if by_judge}
    # (query, response) of every request: the prompt is the demo, the query, the response, "Extracted answer: "
    sent = [
        tuple(
            m.removeprefix(DEMO_PROMPT.strip() + "\n\n").removesuffix("\n\nExtracted answer: ").split("\n\n")
        )
        for m in server.user_messages()
    ]
    rows = pq.read_table(
        folder / "data" / "testmini-00000-of-00001.parquet", columns=["pid", "query"]
    ).to_pylist()
    queries = {row["pid"]: row["query"] for row in rows}
    expected = {(queries[pid], planned[pid][0]) for pid in judged}
    assert len(sent) == len(set(sent)) == len(expected)  # a repeated (query, response) is asked once
    assert set(sent) == expected
    assert judge.usage()["cached"] == len(judged) - len(expected)
    assert {body["model"] for body in server.bodies} == {"gpt-3.5-turbo"}
    assert {(body["temperature"], body["max_tokens"]) for body in server.bodies} == {(0, 256)}

    correct = sum(right for _, _, right in planned.values())
    assert result.n == len(problems) == 40
    assert result.headline == round(correct / 40 * 100, 2)
    assert result.metrics["correct"] == correct
    assert result.metrics["extracted_by"] == {
        "rule": 40 - len(judged) - 1,
        "judge": len(judged),
        "empty": 1,
        "no extraction": 0,
    }
    assert result.metrics["judge_gave_up"]["seen"] == 40 and result.metrics["judge_gave_up"]["skipped"] == 0
    floats = [planned[pid][2] for pid, p in problems.items() if p["answer_type"] == "float"]
    assert result.metrics["answer_type"]["float"]["correct"] == sum(floats)


def test_without_a_judge_rule_readable_answers_still_score(folder, problems):
    exact = [{"question_id": pid, "text": p["answer"]} for pid, p in problems.items()]
    assert BENCHMARK.score(folder, exact).headline == 100.0
    exact[0]["text"] = "I think 1"
    with pytest.raises(ValueError, match="mathvista 1: the response 'I think 1' needs the judge"):
        BENCHMARK.score(folder, exact)


def test_a_missing_answer_is_an_error(folder, problems):
    partial = [{"question_id": pid, "text": p["answer"]} for pid, p in list(problems.items())[1:]]
    with pytest.raises(ValueError, match="unanswered"):
        BENCHMARK.score(folder, partial)
