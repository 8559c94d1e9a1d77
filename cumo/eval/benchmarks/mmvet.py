"""MM-Vet: open questions that integrate recognition, OCR, knowledge, generation, spatial awareness and math,
graded 0.0-1.0 by a GPT model against reference answers; the headline is the grader's total score (%).

Files under eval/mm-vet/ (CuMo scripts/cumo/eval/mmvet.sh): LLaVA's question file llava-mm-vet.jsonl, and
MM-Vet's release (mm-vet.zip) extracted into mm-vet/: mm-vet.json (id "v1_<i>" -> question, answer,
capability list) and images/.

Prompt: the question file's text as it is, 1024 new tokens (CuMo cumo/eval/model_vqa.py). LLaVA's
scripts/convert_mmvet_for_eval.py names the answer to question_id i "v1_<i>".

Grading reproduces yuweihao/MM-Vet mm-vet_evaluator.py with its default grader, gpt-4-0613: the few-shot
table prompt below, one row "question | answer | prediction | " to complete, 3 tokens, temperature 0. A reply
whose first word is not a score in [0, 1] is asked again with "Predict the correctness of the answer
(digit): " appended, at temperatures 0.0, 0.5, 1.0, 1.5; after five unreadable replies the question scores
0.0, as upstream does (it also makes a sixth call whose reply it never reads; that call is not made here).
Those give-ups are counted in the metrics (`judge_gave_up`), and past the judge's `max_gave_up_share` of the
(question, run) pairs the benchmark is not scored: a grader that never gives a score is not grading. A call
that fails is an error (cumo.eval.judge), never a 0.0.

Scores (`export_result`): per run, the mean score x100 over all questions ("total"), over the questions of
each capability, and over each capability integration (the exact set of a question's capabilities, named by
its capabilities sorted and joined with "_"; upstream joins a Python set, in no fixed order); each is averaged
over the judge's runs and rounded to one decimal; "std" is the population deviation of the runs' totals.
"""

import statistics
from collections import Counter
from pathlib import Path

from cumo.eval.benchmark import Benchmark, Question, Result
from cumo.eval.benchmarks.common import read_json, read_jsonl, replies

JUDGE_MODEL = "gpt-4-0613"  # MM-Vet's default --gpt_model; the paper's grader
QUESTION_FILE = "llava-mm-vet.jsonl"
ANNOTATIONS = "mm-vet/mm-vet.json"
IMAGES = "mm-vet/images"

# mm-vet_evaluator.py `prompt`, verbatim (it ends with a newline).
PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""  # noqa: E501 (the prompt's lines are the upstream's)
ASK_FOR_DIGIT = "\nPredict the correctness of the answer (digit): "
# The grader's tries: the first as asked, the others asking for a digit, each hotter than the one before.
TEMPERATURES = (0.0, 0.0, 0.5, 1.0, 1.5)
DECIMALS = 1  # mm-vet_evaluator.py --decimal_places
GAVE_UP = "no score in 5 replies (scored 0.0, as upstream)"


def grading_prompt(question: str, answer: str, prediction: str, ask_for_digit: bool = False) -> str:
    answer = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    row = " | ".join([question, answer, prediction, ""])
    return PROMPT + "\n" + row + (ASK_FOR_DIGIT if ask_for_digit else "")


def parse_grade(reply: str) -> float | None:
    """The score in the reply's first word, if it is one of [0, 1] (NaN is not)."""
    try:
        score = float(reply.split(" ")[0].strip())
    except ValueError:
        return None
    return score if 0.0 <= score <= 1.0 else None


def grade(
    judge, question: str, answer: str, prediction: str, run: int, what: str
) -> tuple[float | None, str]:
    """(the grader's score, its last reply); the score is None when five replies in a row were not a score."""
    for attempt, temperature in enumerate(TEMPERATURES):
        messages = [{"role": "user", "content": grading_prompt(question, answer, prediction, attempt > 0)}]
        reply = judge.complete(
            messages,
            temperature=temperature,
            max_tokens=3,
            run=run,
            what=f"{what}, try {attempt + 1}",
            parse=parse_grade,
        )
        score = parse_grade(reply)
        if score is not None:
            return score, reply
    return None, reply


def questions(folder: Path) -> list[Question]:
    rows = read_jsonl(folder / QUESTION_FILE, "MM-Vet question file (LLaVA-1.5's eval.zip)")
    return [
        Question(question_id=row["question_id"], text=row["text"], image=folder / IMAGES / row["image"])
        for row in rows
    ]


def integration(entry: dict) -> str:
    """The name of a question's capability integration: its capabilities, sorted, joined with "_"."""
    return "_".join(sorted(set(entry["capability"])))


def capability_scores(annotations: dict[str, dict], scores_by_run: list[dict[str, float]]) -> dict:
    """export_result: total, per capability and per capability integration, x100, averaged over runs."""
    capabilities = Counter(c for entry in annotations.values() for c in set(entry["capability"]))
    integrations = Counter(integration(entry) for entry in annotations.values())

    def mean_over_runs(members: list[str]) -> float:
        per_run = [sum(scores[k] for k in members) / len(members) * 100 for scores in scores_by_run]
        return round(statistics.fmean(per_run), DECIMALS)

    totals = [sum(scores.values()) / len(annotations) * 100 for scores in scores_by_run]
    ordered = sorted(capabilities, key=lambda c: (-capabilities[c], c))
    return {
        "total": round(statistics.fmean(totals), DECIMALS),
        "std": round(statistics.pstdev(totals), DECIMALS),
        "runs": [round(total, DECIMALS) for total in totals],
        "capabilities": {
            c: mean_over_runs([k for k, e in annotations.items() if c in e["capability"]]) for c in ordered
        },
        "capability_integrations": {
            name: mean_over_runs([k for k, e in annotations.items() if integration(e) == name])
            for name in sorted(integrations, key=lambda n: (-integrations[n], n))
        },
    }


def score(folder: Path, predictions: list[dict], judge=None) -> Result:
    if judge is None:
        raise ValueError("mmvet is graded by a judge model: give a Judge (the paper's grader: gpt-4-0613)")
    answered = questions(folder)
    texts = {
        f"v1_{q.question_id}": text
        for q, text in zip(answered, replies("mmvet", answered, predictions), strict=True)
    }
    annotations = read_json(folder / ANNOTATIONS, "MM-Vet's mm-vet.json (mm-vet.zip)")
    unmatched = sorted(set(annotations) ^ set(texts))
    if unmatched:
        raise ValueError(
            f"{folder / ANNOTATIONS} and {folder / QUESTION_FILE} disagree on {len(unmatched)} question(s) "
            f"({', '.join(unmatched[:5])}): they come from different releases; fetch both again"
        )
    scores_by_run, gave_up = [], judge.give_ups("mmvet")
    for run in range(judge.runs):
        scores = {}
        for key, entry in annotations.items():
            graded, reply = grade(
                judge, entry["question"], entry["answer"], texts[key], run, f"mmvet {key}, run {run}"
            )
            gave_up.see()
            if graded is None:
                gave_up.skip(GAVE_UP, f"{key}, run {run}", f"last reply {reply[:60]!r}")
            scores[key] = 0.0 if graded is None else graded
        scores_by_run.append(scores)
    gave_up.check()
    metrics = capability_scores(annotations, scores_by_run)
    metrics["judge_gave_up"] = (
        gave_up.to_dict()
    )  # (question, run) pairs scored 0.0 after five unreadable replies
    return Result(headline=metrics["total"], metrics=metrics, n=len(annotations))


BENCHMARK = Benchmark(
    name="mmvet",
    title="MM-Vet",
    split="test",
    folder="mm-vet",
    headline_metric="GPT-4 grader's total score (%), mean over judge runs",
    questions=questions,
    score=score,
    max_new_tokens=1024,
    judge_model=JUDGE_MODEL,
)
