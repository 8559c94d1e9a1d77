"""The tiny preset's rule judge: on prompts built by the three benchmark modules' own builders, parsed by their
own parsers; over HTTP through the openai client to the package's JudgeServer; and `cumo eval` of the three
judged benchmarks on the shapes world with `--judge-serve rules`."""

import json

import pyarrow.parquet as pq
import pytest

from cumo.cli import main
from cumo.eval import rule_judge
from cumo.eval.benchmarks import get
from cumo.eval.benchmarks.llava_wild import parse_review, review_messages
from cumo.eval.benchmarks.mathvista import extraction_messages
from cumo.eval.benchmarks.mmvet import grading_prompt, parse_grade
from cumo.eval.judge import Judge, JudgeError
from cumo.eval.judge_server import JudgeServer
from cumo.eval.metrics.mathvista import normalize_extracted_answer
from tests.predictions import answered
from tests.servers import local_only


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    local_only(monkeypatch)


def mmvet_grade(answer: str, prediction: str, ask_for_digit: bool = False) -> float | None:
    prompt = grading_prompt("What is x in the equation?", answer, prediction, ask_for_digit)
    return parse_grade(rule_judge.reply([{"role": "user", "content": prompt}]))


@pytest.mark.parametrize(
    "answer, prediction, score",
    [
        # The grading prompt's own few-shot rows (mm-vet_evaluator.py), with the scores it gives them.
        ("-1<AND>-5", "x = 3", 0.0),
        ("-1<AND>-5", "x = -1", 0.5),
        ("-1<AND>-5", "x = -5", 0.5),
        ("-1<AND>-5", "x = -5 or 5", 0.5),
        ("-1<AND>-5", "x = -1 or x = -5", 1.0),
        # The shapes world's answers: a phrase, a count with its number word as an alternative.
        ("purple square", "purple square", 1.0),
        ("purple square", "The object is a Purple Square.", 1.0),
        ("purple square", "square", 0.0),
        ("purple square", "square purple", 0.0),
        ("3<OR>three", "three", 1.0),
        ("3<OR>three", "There are 3.", 1.0),
        ("3<OR>three", "33", 0.0),
        ("cat", "", 0.0),
        ("red", "The circle | is red", 1.0),  # a " | " in the prediction stays the prediction's
    ],
)
def test_mmvet_grades_by_the_ground_truths_elements(answer, prediction, score):
    assert mmvet_grade(answer, prediction) == score
    assert mmvet_grade(answer, prediction, ask_for_digit=True) == score


def review(question: str, reference: str, answer: str) -> tuple[float, float] | None:
    return parse_review(rule_judge.reply(review_messages(["A caption."], question, reference, answer)))


def test_llava_wild_reviews_the_answer_against_the_reference():
    color = ("What color is the triangle at the top?", "The triangle at the top is orange.")
    assert review(*color, "The triangle at the top is orange.") == (10, 10)
    assert review(*color, "Orange.") == (10, 10)  # the question's own words are not what is asked
    assert review(*color, "blue") == (10, 1)
    assert review(*color, "") == (10, 1)
    assert review(*color, "orange or blue") == (10, 6)  # F1: precision 1/3, recall 1: 0.5 -> 5.5, half up
    remaining = (
        "Subtract all red objects. How many objects are left?",
        "The number of objects left after removing the red objects is 1.",
    )
    # Reference beyond the question: number of after removing is 1 (6 tokens); "1": F1 = 2/7 -> 1 + 2.57
    assert review(*remaining, "1") == (10, 4)
    assert review(*remaining, "2") == (10, 1)
    detail = rule_judge.reply(review_messages("c", *remaining, "1"))
    assert "not GPT-4" in detail.split("\n", 1)[1]


MULTI = (
    "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
)
INTEGER = (
    "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, "
    "at the end."
)
FLOAT = (
    "Hint: Please answer the question requiring a floating-point number with two decimal places and provide "
    "the final value, e.g., 1.23, 1.34, 1.45, at the end."
)
LIST = (
    "Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., "
    "[1, 2, 3], [1.2, 1.3, 1.4], at the end."
)
CHOICES = ["red triangle", "blue circle", "red circle", "green square"]
MULTI_QUERY = f"{MULTI}\nQuestion: What is the object on the left?\nChoices:" + "".join(
    f"\n({letter}) {choice}" for letter, choice in zip("ABCD", CHOICES, strict=True)
)


def extract(query: str, response: str) -> str:
    return rule_judge.reply(extraction_messages(query, response))


@pytest.mark.parametrize(
    "response, extracted, answer",
    [
        ("The answer is (C).", "C", "red circle"),
        ("(A) red triangle, no: (C)", "C", "red circle"),
        ("It is a red circle on the left.", "C", "red circle"),
        ("Not the red triangle but the blue circle.", "B", "blue circle"),  # the one named last
        ("B", "B", "blue circle"),
        ("a yellow star", "a yellow star", None),  # nothing to read: the response, for normalisation
    ],
)
def test_mathvista_extracts_the_option(response, extracted, answer):
    assert extract(MULTI_QUERY, response) == extracted
    if answer is not None:
        assert normalize_extracted_answer(extracted, CHOICES, "multi_choice", "text", None) == answer


@pytest.mark.parametrize(
    "hint, response, extracted",
    [
        (INTEGER, "I count 3 objects, no, 4.", "4"),
        (INTEGER, "There are three objects.", "3"),
        (INTEGER, "1,250 objects", "1250"),
        (INTEGER, "none", "none"),
        (FLOAT, "The fraction of red objects is 0.33.", "0.33"),
        (FLOAT, "-0.5", "-0.5"),
        (LIST, "It peaks between [2007, 2008].", "[2007, 2008]"),
    ],
)
def test_mathvista_extracts_the_last_number_or_list(hint, response, extracted):
    assert extract(f"{hint}\nQuestion: How many objects are there?", response) == extracted


@pytest.mark.parametrize(
    "messages, named",
    [
        ([{"role": "user", "content": "Is red a colour?"}], "none of them"),
        (extraction_messages("Question: How many?", "3"), "is not one of MathVista's hints"),
        (extraction_messages(MULTI + "\nQuestion: Which?", "3"), "no '\\(A\\) ...' choices"),
        (
            [{"role": "user", "content": grading_prompt("q", "a", "b").removesuffix(" | ")}],
            "is not 'question | ground truth | prediction | '",
        ),
        (
            [review_messages("c", "q", "r", "a")[0], {"role": "user", "content": "[Context]\nc"}],
            "not the context/question/two assistants/rule layout",
        ),
    ],
)
def test_a_prompt_it_cannot_read_is_an_error_naming_it(messages, named):
    with pytest.raises(rule_judge.UnreadablePrompt, match=named):
        rule_judge.reply(messages)


def test_over_http_an_unreadable_prompt_stops_the_judge_naming_the_question(tmp_path):
    with JudgeServer(rule_judge.reply) as server:
        judge = Judge(rule_judge.MODEL, tmp_path, base_url=server.base_url, api_key_env=None)
        grade = [{"role": "user", "content": grading_prompt("q", "red", "It is red.")}]
        assert judge.complete(grade, temperature=0.0, max_tokens=3, run=0, what="mmvet v1_0") == "1.0"
        with pytest.raises(JudgeError, match=r"mmvet v1_9: .*HTTP 400 .*none of them"):
            judge.complete(
                [{"role": "user", "content": "Hi"}], temperature=0, max_tokens=3, run=0, what="mmvet v1_9"
            )
    assert server.counts["requests"] == 1  # the refused prompt was asked once, not retried
    assert judge.usage()["calls"] == 1 and judge.usage()["retries"] == 0


# -- the world's benchmarks, scored through the server ---------------------------------------------------


def score_with_rules(eval_root, name: str, texts_of, tmp_path):
    """`name` scored on the shapes world's files with predictions `texts_of(questions)`, judged over HTTP."""
    benchmark = get(name)
    folder = eval_root / benchmark.folder
    questions = benchmark.questions(folder)
    with JudgeServer(rule_judge.reply) as server:
        judge = Judge(rule_judge.MODEL, tmp_path, base_url=server.base_url, runs=2, api_key_env=None)
        result = benchmark.score(folder, answered(questions, texts_of(folder, questions)), judge=judge)
    return result, server.counts


def mmvet_answers(folder, questions):
    annotations = json.loads((folder / "mm-vet" / "mm-vet.json").read_text())
    return [annotations[f"v1_{q.question_id}"]["answer"].split("<OR>")[-1] for q in questions]


def test_mmvet_of_the_world_scores_its_ground_truth_full_and_a_wrong_answer_nothing(eval_root, tmp_path):
    right, counts = score_with_rules(eval_root, "mmvet", mmvet_answers, tmp_path / "a")
    assert right.headline == 100.0 and right.metrics["runs"] == [100.0, 100.0]
    annotations = json.loads((eval_root / "mm-vet" / "mm-vet" / "mm-vet.json").read_text()).values()
    distinct = {(entry["question"], entry["answer"]) for entry in annotations}  # a repeat is a cache hit
    assert counts["requests"] == 2 * len(distinct) and len(annotations) == 40  # per run, one grade each
    wrong, _ = score_with_rules(eval_root, "mmvet", lambda f, qs: ["zebra"] * len(qs), tmp_path / "b")
    assert wrong.headline == 0.0


def test_llava_wild_of_the_world_scores_the_reference_as_itself(eval_root, tmp_path):
    def references(folder, questions):
        return [json.loads(line)["text"] for line in (folder / "answers_gpt4.jsonl").read_text().splitlines()]

    right, _ = score_with_rules(eval_root, "llava_wild", references, tmp_path / "a")
    assert right.headline == 100.0 and right.metrics["judge_gave_up"]["skipped"] == 0
    wrong, _ = score_with_rules(eval_root, "llava_wild", lambda f, qs: ["zebra"] * len(qs), tmp_path / "b")
    assert wrong.headline == 10.0  # 1 of the reference's 10, every question


def test_mathvista_of_the_world_reads_answers_in_sentences(eval_root, tmp_path):
    problems = json.loads((eval_root / "mathvista" / "data" / "testmini.json").read_text())

    def sentences(folder, questions):
        return [f"I think the answer is {problems[q.question_id]['answer']}." for q in questions]

    right, counts = score_with_rules(eval_root, "mathvista", sentences, tmp_path)
    assert right.headline == 100.0
    assert right.metrics["extracted_by"]["judge"] == 40  # no sentence is rule-readable
    rows = pq.read_table(
        next((eval_root / "mathvista" / "data").glob("testmini-*.parquet")), columns=["query", "answer"]
    ).to_pylist()
    assert counts["requests"] == len({(row["query"], row["answer"]) for row in rows})  # repeats: cache hits


# -- cumo eval end to end ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mmvet", "llava_wild", "mathvista"])
def test_cumo_eval_scores_a_judged_benchmark_with_the_served_rule_judge(
    name, tiny_model_dir, eval_root, tmp_path, monkeypatch
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the served judge needs no key
    out = tmp_path / name
    args = ["eval", name, "--model", str(tiny_model_dir), "--data-root", str(eval_root.parent)]
    # The untrained model's MathVista answers are no numbers or options the rules could read: all given up on.
    allowed = ["--judge-max-gave-up", "1"] if name == "mathvista" else []
    main(
        [
            *args,
            "--out",
            str(out),
            "--max-new-tokens",
            "4",
            "--judge-serve",
            "rules",
            "--judge-runs",
            "2",
            *allowed,
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    gave_up = metrics["metrics"]["judge_gave_up"]
    assert gave_up["seen"] == (40 if name == "mathvista" else 80 if name == "mmvet" else 84)
    assert metrics["judge"]["model"] == "cumo-rules" and metrics["config"]["judge_serve"] == "rules"
    usage = metrics["judge"]["usage"]
    assert usage["cost_usd"] == 0.0 and usage["retries"] == 0
    # The headline again, from the written predictions, through a judge of its own (its own server and cache).
    benchmark = get(name)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    with JudgeServer(rule_judge.reply) as server:
        judge = Judge(
            rule_judge.MODEL,
            tmp_path / "again",
            base_url=server.base_url,
            runs=2,
            api_key_env=None,
            max_gave_up_share=1.0 if name == "mathvista" else 0.05,
        )
        again = benchmark.score(eval_root / benchmark.folder, predictions, judge=judge)
    assert metrics["headline"]["value"] == again.headline
    assert usage["calls"] == server.counts["requests"] > 0
