"""What the benchmark declarations share: reading their files with errors that say what is missing, and
pairing predictions with the questions they answer.

Not a benchmark itself (the registry only imports the names in `NAMES`).
"""

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from cumo.eval.benchmark import Question

# LLaVA-1.5's prompt suffixes (docs/Evaluation.md).
SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."


def existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: {what} not found. Put the benchmark's files under <data_root>/eval/ as LLaVA-1.5's "
            f"docs/Evaluation.md lays them out (`cumo synthetic` writes the same layout for the tiny run)."
        )
    return path


def read_json(path: Path, what: str) -> Any:
    return json.loads(existing(path, what).read_text(encoding="utf-8"))


def read_parquet_rows(folder: Path, pattern: str, what: str, columns: list[str] | None = None) -> list[dict]:
    """Rows of a Hub dataset split stored as `folder/<pattern>` parquet shards, in shard order. Read directly
    rather than through `datasets.load_dataset`, whose cache could hand back an older copy of changed files."""
    files = sorted(existing(folder, what).glob(pattern))
    if not files:
        raise FileNotFoundError(
            f"{folder}: no {pattern}; {what} is expected there as the Hub dataset lays it out"
        )
    return [row for path in files for row in pq.read_table(path, columns=columns).to_pylist()]


def read_jsonl(path: Path, what: str) -> list[dict]:
    lines = existing(path, what).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _key(question_id) -> str:
    # JSON spelling, as cumo.eval.generate keys answers: 7 and "7" are different ids.
    return json.dumps(question_id)


def replies(benchmark: str, questions: list[Question], predictions: list[dict]) -> list[str]:
    """The reply (`text`) to each question, in question order.

    Every question must be answered exactly once and every prediction must answer one of them: a missing
    answer would otherwise quietly shrink (or, scored as wrong, quietly lower) the number."""
    by_key: dict[str, dict] = {}
    repeated = []
    for prediction in predictions:
        key = _key(prediction["question_id"])
        if key in by_key:
            repeated.append(key)
        by_key[key] = prediction
    wanted = [_key(question.question_id) for question in questions]
    missing = [key for key in wanted if key not in by_key]
    unknown = sorted(set(by_key) - set(wanted))
    problems = [
        f"{len(missing)} question(s) unanswered ({', '.join(missing[:5])})" if missing else "",
        f"{len(repeated)} answered twice ({', '.join(repeated[:5])})" if repeated else "",
        f"{len(unknown)} answer(s) to unknown questions ({', '.join(unknown[:5])})" if unknown else "",
    ]
    if any(problems):
        raise ValueError(
            f"{benchmark}: predictions do not match its {len(questions)} questions: "
            f"{'; '.join(p for p in problems if p)}. Score the merged predictions of a finished run "
            f"(cumo.eval.generate.merge checks them)."
        )
    return [by_key[key]["text"] for key in wanted]
