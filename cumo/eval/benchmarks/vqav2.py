"""VQAv2: open-ended questions on COCO images; the paper's number is test-dev accuracy from the EvalAI server.

Files under eval/vqav2/ (LLaVA-1.5 docs/Evaluation.md; CuMo scripts/cumo/eval/vqav2.sh):
llava_vqav2_mscoco_test-dev2015.jsonl (the questions asked, short-answer suffix included),
llava_vqav2_mscoco_test2015.jsonl (every test2015 question, which a submission must cover) and test2015/.

Test-dev has no public answers, so `score` gives NaN and says so; `submission` writes the EvalAI results file
as LLaVA's scripts/convert_vqav2_for_submission.py does: every test2015 question id in that file's order, the
answer normalised by EvalAI's processor (`cumo.eval.metrics.vqa.normalize_answer`), "" for the questions not
in test-dev. Upload it to the VQA Challenge on eval.ai (test-dev phase).

Local accuracy, for a check without the server, is on val2014: `val_questions(folder)` reads
llava_vqav2_mscoco_val2014.jsonl (the test files' schema; LLaVA ships none, so write it from
v2_OpenEnded_mscoco_val2014_questions.json with the suffix appended, images in val2014/), and
`score_val(folder, predictions)` scores answers to those questions with the official VQA evaluator's accuracy
(`cumo.eval.metrics.vqa.vqa_accuracy`, vqaEval.py as it stands since 2021; metrics.json names it under
`evaluator`) against v2_mscoco_val2014_annotations.json, overall and per answer type.
One BENCHMARK (test-dev, the paper's column) keeps the table to the paper's protocol; val is a separate
question set, run by calling these two functions with the same generation code.

Prompt: the question file's text as it is (model_vqa_loader.py), 128 new tokens (its default).
"""

import json
import math
from collections import defaultdict
from pathlib import Path

from cumo.eval.benchmark import Benchmark, Question, Result
from cumo.eval.benchmarks.common import read_json, read_jsonl, replies
from cumo.eval.metrics.vqa import VQA_EVALUATOR, normalize_answer, vqa_accuracy

TEST_DEV = "llava_vqav2_mscoco_test-dev2015.jsonl"
TEST = "llava_vqav2_mscoco_test2015.jsonl"
VAL = "llava_vqav2_mscoco_val2014.jsonl"
VAL_ANNOTATIONS = "v2_mscoco_val2014_annotations.json"
# The VQA results-file name: vqa_[task]_[data type]_[data subtype]_[algorithm]_results.json (visualqa.org).
SUBMISSION = "vqa_OpenEnded_mscoco_test-dev2015_cumo_results.json"


def read_questions(folder: Path, file: str, images: str) -> list[Question]:
    rows = read_jsonl(folder / file, f"VQAv2 question file {file}")
    return [
        Question(question_id=row["question_id"], text=row["text"], image=folder / images / row["image"])
        for row in rows
    ]


def questions(folder: Path) -> list[Question]:
    return read_questions(folder, TEST_DEV, "test2015")


def score(folder: Path, predictions: list[dict], judge=None) -> Result:
    asked = questions(folder)
    replies("vqav2", asked, predictions)  # the same completeness check as every benchmark's
    return Result(
        headline=math.nan,
        metrics={"scored_by": "EvalAI server (VQA Challenge, test-dev phase): upload the submission file"},
        n=len(asked),
    )


def submission(folder: Path, predictions: list[dict], out_dir: Path) -> list[Path]:
    asked = questions(folder)
    answers = {
        question.question_id: normalize_answer(reply)
        for question, reply in zip(asked, replies("vqav2", asked, predictions), strict=True)
    }
    test_ids = [row["question_id"] for row in read_jsonl(folder / TEST, f"VQAv2 question file {TEST}")]
    outside = sorted(set(answers) - set(test_ids))
    if outside:
        raise ValueError(f"{folder / TEST_DEV}: {len(outside)} question(s) not in {TEST} ({outside[:5]})")
    path = Path(out_dir) / SUBMISSION
    path.parent.mkdir(parents=True, exist_ok=True)
    results = [{"question_id": qid, "answer": answers.get(qid, "")} for qid in test_ids]
    path.write_text(json.dumps(results), encoding="utf-8")
    return [path]


def val_questions(folder: Path) -> list[Question]:
    return read_questions(folder, VAL, "val2014")


def score_val(folder: Path, predictions: list[dict], judge=None) -> Result:
    """VQA accuracy of answers to `val_questions(folder)`, normalised as a submission would be."""
    asked = val_questions(folder)
    annotations = read_json(folder / VAL_ANNOTATIONS, "VQAv2 val2014 annotations (visualqa.org)")[
        "annotations"
    ]
    by_id = {annotation["question_id"]: annotation for annotation in annotations}
    unknown = [question.question_id for question in asked if question.question_id not in by_id]
    if unknown:
        raise ValueError(
            f"{folder / VAL}: {len(unknown)} question(s) without annotation in {VAL_ANNOTATIONS} ({unknown[:5]})"
        )
    per_type = defaultdict(list)
    for question, reply in zip(asked, replies("vqav2 val", asked, predictions), strict=True):
        annotation = by_id[question.question_id]
        accuracy = vqa_accuracy(
            normalize_answer(reply), [answer["answer"] for answer in annotation["answers"]]
        )
        per_type["overall"].append(accuracy)
        per_type[annotation["answer_type"]].append(accuracy)
    metrics = {name: 100 * sum(values) / len(values) for name, values in per_type.items()}
    return Result(headline=metrics["overall"], metrics={**metrics, "evaluator": VQA_EVALUATOR}, n=len(asked))


BENCHMARK = Benchmark(
    name="vqav2",
    title="VQAv2",
    split="test-dev",
    folder="vqav2",
    headline_metric="test-dev accuracy (scored by the EvalAI server)",
    questions=questions,
    score=score,
    max_new_tokens=128,
    submission=submission,
    other_splits={"val": (val_questions, score_val, "val accuracy (VQA accuracy, local)")},
)
