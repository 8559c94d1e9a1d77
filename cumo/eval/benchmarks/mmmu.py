"""MMMU, validation split: 900 college-level questions in 30 subjects, multiple choice and open.

Files (CuMo scripts/cumo/eval/mmmu.sh): `eval/MMMU/` holds the Hub dataset MMMU/MMMU as downloaded (README.md
and `<Subject>/validation-*.parquet`), the rows `datasets.load_dataset(folder, subject, split="validation")` gives
CuMo's cumo/eval/model_vqa_mmmu.py with --data_path (read here from the parquet files themselves); `eval/MMMU/eval/answer_dict_val.json` is the
ground truth of MMMU-Benchmark/MMMU eval/, which main_eval_only.py scores against.

Questions: the subjects in model_vqa_mmmu.py's order, each in file order; the text is
`cumo.eval.metrics.mmmu.prompt`; the image is `image_1` only (model_vqa_mmmu.py's `process_single_sample`
would drop it for options with several images, but it looks for them in the options' characters, so it never
does). Metadata: the options, which a letter is read against.
Answers may run to 1024 new tokens, model_vqa_mmmu.py's limit.

Score (`cumo.eval.metrics.mmmu`): multiple-choice answers parsed to a letter in dataset order with one
`random.Random(42)`, as CuMo parses them while generating; open answers parsed and compared as eval_open does;
accuracy overall (the headline, in percent), per domain and per subject, plus how many letters were guesses.
Every question must be answered (main_eval_only.py would score only the questions it finds answers to).
"""

import ast
import random
from pathlib import Path

from cumo.eval.benchmark import Benchmark, Question, Result
from cumo.eval.benchmarks.common import read_json, read_parquet_rows, replies
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
    asked = []
    for subject in SUBJECTS:
        for row in read_parquet_rows(
            folder / subject, f"{SPLIT}-*.parquet", f"MMMU's {subject} (Hub MMMU/MMMU)"
        ):
            options = options_list(row["options"], row["id"])
            asked.append(
                Question(
                    question_id=row["id"],
                    text=prompt(row["question"], row["question_type"], options),
                    image=None if row["image_1"] is None else row["image_1"]["bytes"],
                    metadata={"options": options},
                )
            )
    return asked


def subject_of(question_id: str) -> str:
    """main_eval_only.py's category: "validation_Art_Theory_12" -> "Art_Theory"."""
    return "_".join(question_id.split("_")[1:-1])


def score(folder: Path, predictions: list[dict], judge=None) -> Result:
    """MMMU's accuracy against answer_dict_val.json; `judge` is unused (MMMU parses answers by rule)."""
    path = Path(folder) / ANSWERS
    truth = read_json(path, "MMMU's ground truth (MMMU-Benchmark/MMMU eval/answer_dict_val.json)")
    asked = questions(folder)
    unanswerable = [question.question_id for question in asked if question.question_id not in truth]
    if unanswerable:
        raise ValueError(
            f"{path} has no answer to {len(unanswerable)} question(s) (first: {unanswerable[:5]})"
        )
    rng = random.Random(SEED)  # drawn from in dataset order, as model_vqa_mmmu.py parses while it generates
    correct: dict[str, list[bool]] = {}
    guessed = 0
    for question, reply in zip(asked, replies("mmmu", asked, predictions), strict=True):
        entry = truth[question.question_id]
        if entry["question_type"] == MULTIPLE_CHOICE:
            letter, guess = parse_choice(reply, question.metadata["options"], rng)
            guessed += guess
            right = choice_correct(entry["ground_truth"], letter)
        else:
            right = open_correct(entry["ground_truth"], parse_open(reply))
        correct.setdefault(subject_of(question.question_id), []).append(right)
    report = accuracy_report(correct)
    return Result(
        headline=report["overall"]["accuracy"],
        metrics={**report, "guessed_letters": guessed},
        n=report["overall"]["n"],
    )


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
