"""GQA: compositional questions on real scenes, the balanced test-dev split; exact-match accuracy.

Files under eval/gqa/ (LLaVA-1.5 docs/Evaluation.md; CuMo scripts/cumo/eval/gqa.sh):
llava_gqa_testdev_balanced.jsonl (LLaVA's question file, short-answer suffix included), data/images/ and
GQA's data/testdev_balanced_questions.json, which holds the answers and the question types.

Prompt: the question file's text as it is (model_vqa_loader.py), 128 new tokens (its default: the answer is a
word or a phrase). Scoring: LLaVA's scripts/convert_gqa_for_eval.py clean-up, then GQA's eval.py accuracy
(`cumo.eval.metrics.gqa`); eval.py's consistency, validity, plausibility and distribution need the scene
graphs and choices files and are not computed.
"""

from pathlib import Path

from cumo.eval.benchmark import Benchmark, Question, Result
from cumo.eval.benchmarks.common import read_json, read_jsonl, replies
from cumo.eval.metrics.gqa import accuracy_breakdown, normalize

QUESTION_FILE = "llava_gqa_testdev_balanced.jsonl"
ANSWER_FILE = "data/testdev_balanced_questions.json"


def questions(folder: Path) -> list[Question]:
    rows = read_jsonl(folder / QUESTION_FILE, "GQA question file (LLaVA-1.5's eval.zip)")
    return [
        Question(
            question_id=row["question_id"], text=row["text"], image=folder / "data" / "images" / row["image"]
        )
        for row in rows
    ]


def score(folder: Path, predictions: list[dict], judge=None) -> Result:
    asked = questions(folder)
    truth = read_json(folder / ANSWER_FILE, "GQA test-dev balanced questions (GQA's questions1.2 release)")
    asked_ids = {str(question.question_id) for question in asked}  # the answer file's keys are strings
    # eval.py scores every balanced question of the file and stops at one without a prediction.
    unasked = [qid for qid, entry in truth.items() if entry["isBalanced"] and qid not in asked_ids]
    unknown = sorted(asked_ids - set(truth))
    if unasked or unknown:
        raise ValueError(
            f"{folder / QUESTION_FILE} and {folder / ANSWER_FILE} disagree: {len(unasked)} balanced question(s) "
            f"not asked ({unasked[:5]}), {len(unknown)} asked but not in the answers ({unknown[:5]}); use the "
            f"files of one GQA release"
        )
    answers = [
        (normalize(reply), truth[str(question.question_id)])
        for question, reply in zip(asked, replies("gqa", asked, predictions), strict=True)
    ]
    metrics = accuracy_breakdown(answers)
    return Result(headline=metrics["accuracy"], metrics=metrics, n=metrics["balanced_questions"])


BENCHMARK = Benchmark(
    name="gqa",
    title="GQA",
    split="testdev_balanced",
    folder="gqa",
    headline_metric="accuracy (exact match, test-dev balanced)",
    questions=questions,
    score=score,
    max_new_tokens=128,
)
