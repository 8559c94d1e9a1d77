"""SEED-Bench (SEED-Bench-1), image questions: four-option multiple choice in 9 image dimensions; CuMo's SEED-IMG.

Files (CuMo scripts/cumo/eval/seed.sh, LLaVA scripts/v1_5/eval/seed.sh): `eval/seed_bench/llava-seed-bench.jsonl`
(LLaVA's question file: image, text with the options and the letter instruction, category, question_id),
`eval/seed_bench/SEED-Bench.json` (AILab-CVC/SEED-Bench's annotations: answer, data_type, question_type_id
per question, and the dimension names) and the images under `eval/seed_bench/` (SEED-Bench-image/...).
CuMo's script names its question file llava-seed-bench-new.jsonl, which is not published; LLaVA's is read.

Questions: the question file's rows whose annotation says `data_type` "image" (LLaVA's file also holds the
video questions, asked on a middle frame; they are counted and left out, as SEED-IMG leaves them out); the
text is the file's own. Answers are a letter: 128 new tokens, model_vqa_loader.py's default, is plenty.

Score (`cumo.eval.metrics.seed`, from LLaVA's convert_seed_for_submission.py): exact letter match against
the annotations, accuracy per dimension and over all image questions (the headline, in percent); a question
without an answer counts as wrong and is counted, as LLaVA counts it.
"""

import json
import logging
from pathlib import Path

from cumo.eval.benchmark import Benchmark, Question, Result
from cumo.eval.metrics.seed import accuracy_report, is_right

logger = logging.getLogger(__name__)

QUESTIONS = "llava-seed-bench.jsonl"
ANNOTATIONS = "SEED-Bench.json"
DATA_TYPE = "image"


def read_annotations(folder: Path) -> dict:
    path = Path(folder) / ANNOTATIONS
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: SEED-Bench's annotations (AILab-CVC/SEED-Bench) go there")
    return json.loads(path.read_text(encoding="utf-8"))


def questions(folder: Path) -> list[Question]:
    """The image questions of LLaVA's question file, in file order."""
    folder = Path(folder)
    data_types = {str(q["question_id"]): q["data_type"] for q in read_annotations(folder)["questions"]}
    path = folder / QUESTIONS
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    unknown = [row["question_id"] for row in rows if str(row["question_id"]) not in data_types]
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} question(s) not in {ANNOTATIONS} (first: {unknown[:5]})")
    kept = [row for row in rows if data_types[str(row["question_id"])] == DATA_TYPE]
    if len(kept) < len(rows):
        logger.info(
            "%s: %d of %d questions are not image questions, left out", path, len(rows) - len(kept), len(rows)
        )
    return [
        Question(
            question_id=row["question_id"],
            text=row["text"],
            image=folder / row["image"],
            metadata={"category": row["category"]},
        )
        for row in kept
    ]


def score(folder: Path, predictions: list[dict], judge=None) -> Result:
    """Exact-match accuracy over the image questions of SEED-Bench.json; `judge` is unused."""
    annotations = read_annotations(folder)
    names = {type_id: name for name, type_id in annotations["question_type"].items()}
    image_questions = sorted(
        (q for q in annotations["questions"] if q["data_type"] == DATA_TYPE),
        key=lambda q: q["question_type_id"],
    )
    texts = {str(p["question_id"]): p["text"] for p in predictions}
    unknown = sorted(set(texts) - {str(q["question_id"]) for q in image_questions})
    if unknown:
        raise ValueError(
            f"{len(unknown)} prediction(s) for no image question of {ANNOTATIONS} (first: {unknown[:5]})"
        )
    results, missing = [], 0
    for question in image_questions:
        text = texts.get(str(question["question_id"]))
        missing += text is None
        results.append(
            (names[question["question_type_id"]], text is not None and is_right(text, question["answer"]))
        )
    report = accuracy_report(results)
    return Result(headline=report["overall"], metrics={**report, "unanswered": missing}, n=len(results))


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
