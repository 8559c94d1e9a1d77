"""MMMU, validation split: 900 college-level questions in 30 subjects, multiple choice and open.

Files (CuMo scripts/cumo/eval/mmmu.sh): `eval/MMMU/` holds the Hub dataset MMMU/MMMU as downloaded (README.md
and `<Subject>/validation-*.parquet`), read with `datasets.load_dataset(folder, subject, split="validation")` as
CuMo's cumo/eval/model_vqa_mmmu.py reads it with --data_path; `eval/MMMU/eval/answer_dict_val.json` is the
ground truth of MMMU-Benchmark/MMMU eval/, which main_eval_only.py scores against.

Questions: the subjects in model_vqa_mmmu.py's order, each in file order; the text is
`cumo.eval.metrics.mmmu.prompt`; the image is `image_1` only (model_vqa_mmmu.py's `process_single_sample`
would drop it for options with several images, but it looks for them in the options' characters, so it never
does). Metadata: the question type and the options, which the scorer needs to read a letter off an answer.
Answers may run to 1024 new tokens, model_vqa_mmmu.py's limit.

Score (`cumo.eval.metrics.mmmu`): multiple-choice answers parsed to a letter in dataset order with one
`random.Random(42)`, as CuMo parses them while generating; open answers parsed and compared as eval_open does;
accuracy overall (the headline, in percent), per domain and per subject, plus how many letters were guesses.
Unlike main_eval_only.py, which scores only the questions it finds answers to, an unanswered question counts
as wrong and is counted.
"""

import ast
import json
import random
from pathlib import Path

from datasets import Image as ImageFeature
from datasets import load_dataset

from cumo.eval.benchmark import Benchmark, Question, Result
from cumo.eval.metrics.mmmu import (
    MULTIPLE_CHOICE,
    SEED,
    SUBJECTS,
    accuracy_report,
    choice_correct,
    open_correct,
    parse_choice,
    parse_open,
    prompt,
)

SPLIT = "validation"
ANSWERS = "eval/answer_dict_val.json"


def options_list(options: str, question_id: str) -> list[str]:
    """MMMU's `options` column, a Python list literal: model_vqa_mmmu.py `eval`s it, `ast.literal_eval` reads
    the same without running anything."""
    value = ast.literal_eval(options)
    if not isinstance(value, list) or not all(isinstance(option, str) for option in value):
        raise ValueError(f"MMMU {question_id}: options must be a list of strings, got {options!r}")
    return value


def questions(folder: Path) -> list[Question]:
    """All 30 subjects' validation questions, as model_vqa_mmmu.py asks them."""
    result = []
    for subject in SUBJECTS:
        rows = load_dataset(str(folder), subject, split=SPLIT).cast_column(
            "image_1", ImageFeature(decode=False)
        )
        for row in rows:
            options = options_list(row["options"], row["id"])
            result.append(
                Question(
                    question_id=row["id"],
                    text=prompt(row["question"], row["question_type"], options),
                    image=None if row["image_1"] is None else row["image_1"]["bytes"],
                    metadata={"question_type": row["question_type"], "options": options},
                )
            )
    return result


def subject_of(question_id: str) -> str:
    """main_eval_only.py's category: "validation_Art_Theory_12" -> "Art_Theory"."""
    return "_".join(question_id.split("_")[1:-1])


def dataset_order(question_id: str) -> tuple[int, int]:
    return SUBJECTS.index(subject_of(question_id)), int(question_id.rsplit("_", 1)[1])


def score(folder: Path, predictions: list[dict], judge=None) -> Result:
    """MMMU's accuracy against answer_dict_val.json; `judge` is unused (MMMU parses answers by rule)."""
    path = Path(folder) / ANSWERS
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: MMMU's ground truth (MMMU-Benchmark/MMMU eval/) goes there"
        )
    truth = json.loads(path.read_text(encoding="utf-8"))
    by_id = {p["question_id"]: p for p in predictions}
    unknown = sorted(set(by_id) - set(truth))
    if unknown:
        raise ValueError(f"{len(unknown)} prediction(s) for questions not in {path} (first: {unknown[:5]})")
    rng = random.Random(SEED)
    correct: dict[str, list[bool]] = {}
    missing = guessed = 0
    for question_id in sorted(truth, key=dataset_order):
        entry, prediction = truth[question_id], by_id.get(question_id)
        if prediction is None:
            missing += 1
            right = False
        elif entry["question_type"] == MULTIPLE_CHOICE:
            letter, guess = parse_choice(prediction["text"], options_of(prediction), rng)
            guessed += guess
            right = choice_correct(entry["ground_truth"], letter)
        else:
            right = open_correct(entry["ground_truth"], parse_open(prediction["text"]))
        correct.setdefault(subject_of(question_id), []).append(right)
    report = accuracy_report(correct)
    return Result(
        headline=report["overall"]["accuracy"],
        metrics={**report, "guessed_letters": guessed, "unanswered": missing},
        n=report["overall"]["n"],
    )


def options_of(prediction: dict) -> list[str]:
    options = prediction.get("metadata", {}).get("options")
    if options is None:
        raise ValueError(
            f"MMMU prediction {prediction['question_id']} has no metadata.options: score predictions made from "
            "cumo.eval.benchmarks.mmmu questions (their metadata is passed through)"
        )
    return options


BENCHMARK = Benchmark(
    name="mmmu",
    title="MMMU",
    split=SPLIT,
    folder="MMMU",
    headline_metric="accuracy (%)",
    questions=questions,
    score=score,
    max_new_tokens=1024,
)
