"""MathVista testmini: mathematical reasoning in visual contexts; accuracy after answer extraction.

Files under eval/mathvista/: the Hub dataset AI4Math/MathVista (README.md, data/testmini-*.parquet with
`decoded_image`, `query` and the answers), as CuMo's model_vqa_mathvista.py loads it with
`load_dataset(--data_path, split="testmini")`.

Prompt: the row's `question` as it is, 1024 new tokens (SHI-Labs/CuMo cumo/eval/model_vqa_mathvista.py asks
`sample['question']`, not the hint-and-choices `query` of MathVista's build_query.py, and generates up to
1024 tokens).

Scoring (CuMo's scripts/cumo/eval/mathvista.sh): extract_answer.py, then calculate_score.py against the
row's own answer. The rules (`cumo.eval.metrics.mathvista.rule_extraction`) read what they can; only the
other responses go to the judge, gpt-3.5-turbo in CuMo's extract_answer.py, with MathVista's few-shot
extraction prompt (lupantech/MathVista evaluation/prompts/ext_ans.py, as copied into CuMo's script) and the
row's `query`. Extraction is one pass: it reads an answer, it does not grade one, so the judge's `runs` do
not apply. The answer is then normalised by its type and compared as text. A judge's extraction that is no
value of the asked kind ("I cannot ...", a word for a number: `is_answer`) is counted as no extraction
(`judge_gave_up`) and scored wrong, never matched to its nearest choice; past the judge's
`max_gave_up_share` of the questions the benchmark is not scored.
"""

from pathlib import Path

from cumo.eval.benchmark import Benchmark, Question, Result
from cumo.eval.benchmarks.common import read_parquet_rows, replies
from cumo.eval.metrics.mathvista import (
    accuracy,
    breakdown,
    is_answer,
    normalize_extracted_answer,
    rule_extraction,
)

JUDGE_MODEL = "gpt-3.5-turbo"  # CuMo cumo/eval/extract_answer.py, get_chat_response_azure
DATA = "data"
SPLIT_GLOB = "testmini-*.parquet"
NO_ANSWER = "no extraction"  # the judge's extraction is no value of the asked kind
FIELDS = (
    "pid",
    "question",
    "choices",
    "precision",
    "answer",
    "question_type",
    "answer_type",
    "query",
    "metadata",
)

# CuMo cumo/eval/extract_answer.py `demo_prompt` (= lupantech/MathVista evaluation/prompts/ext_ans.py).
DEMO_PROMPT = """
Please read the following example. Then extract the answer from the model response and type it at the end of the prompt.

Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
Question: Which number is missing?

Model response: The number missing in the sequence is 14.

Extracted answer: 14

Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.
Question: What is the fraction of females facing the camera?

Model response: The fraction of females facing the camera is 0.6, which means that six out of ten females in the group are facing the camera.

Extracted answer: 0.6

Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.
Question: How much money does Luca need to buy a sour apple candy and a butterscotch candy? (Unit: $)

Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.

Extracted answer: 1.45

Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.
Question: Between which two years does the line  graph saw its maximum peak?

Model response: The line graph saw its maximum peak between 2007 and 2008.

Extracted answer: [2007, 2008]

Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
Question: What fraction of the shape is blue?
Choices:
(A) 3/11
(B) 8/11
(C) 6/11
(D) 3/5

Model response: The correct answer is (B) 8/11.

Extracted answer: B
"""  # noqa: E501 (the prompt's lines are the upstream's)
# CuMo's system message, its typo included: the judge is asked exactly what CuMo asked.
SYSTEM = "You are a helpful and precis!ee assistant for checking the quality of the answer."


def extraction_messages(query: str, response: str) -> list[dict]:
    """extract_answer.py's `create_test_prompt`: the demo, the query and the response, "Extracted answer: "."""
    prompt = f"{DEMO_PROMPT.strip()}\n\n{query}\n\n{response}\n\nExtracted answer: "
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


def _rows(folder: Path, columns: tuple[str, ...]) -> list[dict]:
    return read_parquet_rows(
        folder / DATA, SPLIT_GLOB, "MathVista's testmini (Hub AI4Math/MathVista)", list(columns)
    )


def questions(folder: Path) -> list[Question]:
    return [
        Question(
            question_id=row["pid"], text=row["question"], image=(row["decoded_image"] or {}).get("bytes")
        )
        for row in _rows(folder, ("pid", "question", "decoded_image"))
    ]


def extract(problem: dict, response: str, judge) -> tuple[str, str]:
    """(extraction, how): by the rules where they read the response, else by the judge."""
    extraction = rule_extraction(
        response, problem["question_type"], problem["answer_type"], problem["choices"]
    )
    if extraction is not None:
        return extraction, "empty" if response == "" else "rule"
    if judge is None:
        raise ValueError(
            f"mathvista {problem['pid']}: the response {response[:80]!r} needs the judge to extract its answer "
            "(give a Judge: --judge-model gpt-3.5-turbo as CuMo did)"
        )
    # get_chat_response: temperature 0, 256 tokens, the reply stripped
    kind = (problem["question_type"], problem["answer_type"], problem["choices"])
    reply = judge.complete(
        extraction_messages(problem["query"], response),
        temperature=0,
        max_tokens=256,
        run=0,
        what=f"mathvista {problem['pid']} (answer extraction)",
        parse=lambda reply: reply if is_answer(reply, *kind) else None,
    )
    return reply.strip(), "judge" if is_answer(reply, *kind) else NO_ANSWER


def score(folder: Path, predictions: list[dict], judge=None) -> Result:
    problems = _rows(folder, FIELDS)
    texts = replies("mathvista", [Question(p["pid"], "", None) for p in problems], predictions)
    correct, how = [], {"rule": 0, "judge": 0, "empty": 0, NO_ANSWER: 0}
    gave_up = judge.give_ups("mathvista") if judge is not None else None
    for problem, response in zip(problems, texts, strict=True):
        extraction, by = extract(problem, response, judge)
        how[by] += 1
        if gave_up is not None:
            gave_up.see()
        if by == NO_ANSWER:
            gave_up.skip(NO_ANSWER, problem["pid"], f"the judge gave {extraction[:60]!r} (scored wrong)")
            correct.append(False)
            continue
        precision = problem["precision"]
        if problem["answer_type"] == "float" and precision is None:
            raise ValueError(
                f"mathvista {problem['pid']}: a float answer without a precision in {folder / DATA}"
            )
        prediction = normalize_extracted_answer(
            extraction, problem["choices"], problem["question_type"], problem["answer_type"], precision
        )
        correct.append(prediction == problem["answer"])  # calculate_score.py's safe_equal
    if gave_up is not None:
        gave_up.check()
    flat = [{**problem, **problem["metadata"]} for problem in problems]  # calculate_score.py merges metadata
    overall = accuracy(correct)
    metrics = {**overall, "extracted_by": how, **breakdown(flat, correct)}
    if gave_up is not None:
        metrics["judge_gave_up"] = gave_up.to_dict()
    return Result(headline=overall["accuracy"], metrics=metrics, n=len(problems))


BENCHMARK = Benchmark(
    name="mathvista",
    title="MathVista",
    split="testmini",
    folder="mathvista",
    headline_metric="accuracy (%), answers extracted by rules, then by the judge",
    questions=questions,
    score=score,
    max_new_tokens=1024,
    judge_model=JUDGE_MODEL,
)
