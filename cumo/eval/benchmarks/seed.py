"""SEED-Bench (SEED-Bench-1), image questions: four-option multiple choice in 9 image dimensions; CuMo's SEED-IMG.

Files (CuMo scripts/cumo/eval/seed.sh, LLaVA scripts/v1_5/eval/seed.sh): `eval/seed_bench/llava-seed-bench.jsonl`
(LLaVA's question file: image, text with the options and the letter instruction, category, question_id),
`eval/seed_bench/SEED-Bench.json` (AILab-CVC/SEED-Bench's annotations: answer, data_type, question_type_id
per question, and the dimension names) and the images under `eval/seed_bench/` (SEED-Bench-image/...).
CuMo's script names its question file llava-seed-bench-new.jsonl; LLaVA's, the one its eval download holds, is
read here.

Questions: the question file's rows whose annotation says `data_type` "image" (LLaVA's file also holds the
video questions, asked on a middle frame; they are counted and left out, as SEED-IMG leaves them out); the
text is the file's own. Answers are a letter: 128 new tokens, model_vqa_loader.py's default, is plenty.

Score (`cumo.eval.metrics.seed`, from LLaVA's convert_seed_for_submission.py): exact letter match against
the annotations, accuracy per dimension and over all image questions (the headline, in percent). Every
image question must be answered (LLaVA would count a missing answer as wrong; here it is an error).
"""

import logging
from pathlib import Path

from cumo.eval.benchmark import Benchmark, Question, Result
from cumo.eval.benchmarks.common import read_json, read_jsonl, replies
from cumo.eval.metrics.seed import accuracy_report, is_right

logger = logging.getLogger(__name__)

QUESTIONS = "llava-seed-bench.jsonl"
ANNOTATIONS = "SEED-Bench.json"
DATA_TYPE = "image"


def read_annotations(folder: Path) -> dict:
    return read_json(
        Path(folder) / ANNOTATIONS, "SEED-Bench's annotations (AILab-CVC/SEED-Bench SEED-Bench.json)"
    )


def questions(folder: Path) -> list[Question]:
    """The image questions of LLaVA's question file, in file order."""
    folder = Path(folder)
    data_types = {str(q["question_id"]): q["data_type"] for q in read_annotations(folder)["questions"]}
    path = folder / QUESTIONS
    rows = read_jsonl(path, "LLaVA's SEED-Bench question file (llava-seed-bench.jsonl)")
    unknown = [row["question_id"] for row in rows if str(row["question_id"]) not in data_types]
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} question(s) not in {ANNOTATIONS} (first: {unknown[:5]})")
    kept = [row for row in rows if data_types[str(row["question_id"])] == DATA_TYPE]
    if len(kept) < len(rows):
        logger.info(
            "%s: %d of %d questions are not image questions, left out", path, len(rows) - len(kept), len(rows)
        )
    return [
        Question(question_id=row["question_id"], text=row["text"], image=folder / row["image"])
        for row in kept
    ]


def score(folder: Path, predictions: list[dict], judge=None) -> Result:
    """Exact-match accuracy over the image questions, dimensions in SEED's order; `judge` is unused."""
    asked = questions(folder)
    annotations = read_annotations(folder)
    names = {type_id: name for name, type_id in annotations["question_type"].items()}
    by_id = {str(q["question_id"]): q for q in annotations["questions"]}
    results = []  # (question_type_id, right)
    for question, reply in zip(asked, replies("seed", asked, predictions), strict=True):
        annotation = by_id[str(question.question_id)]
        results.append((annotation["question_type_id"], is_right(reply, annotation["answer"])))
    results.sort(key=lambda result: result[0])  # stable: dimension by dimension, each in file order
    report = accuracy_report([(names[type_id], right) for type_id, right in results])
    return Result(headline=report["overall"], metrics=report, n=len(results))


BENCHMARK = Benchmark(
    name="seed",
    title="SEED-IMG",
    split="image",
    folder="seed_bench",
    headline_metric="accuracy (%)",
    questions=questions,
    score=score,
    max_new_tokens=128,
)
