"""What the benchmark declarations share: reading their files with errors that say what is missing, and
pairing predictions with the questions they answer.

Not a benchmark itself (the registry only imports the names in `NAMES`).
"""

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from cumo.eval.benchmark import Question, pair_with_questions

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
    return json.loads(_text(existing(path, what).read_bytes(), path, "the file"))


def _text(data: bytes, path: Path, where: str) -> str:
    """`data` decoded, or an error naming the file, where in it, and the fix."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: {where} holds bytes that are not UTF-8 ({error.reason} at byte {error.start}): the file is "
            "corrupted or in another encoding; fetch it again"
        ) from None


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
    lines = existing(path, what).read_bytes().splitlines()
    texts = [_text(line, path, f"line {number}") for number, line in enumerate(lines, start=1)]
    return [json.loads(text) for text in texts if text.strip()]


def replies(benchmark: str, questions: list[Question], predictions: list[dict]) -> list[str]:
    """The reply (`text`) to each question, in question order; each answered exactly once, or an error."""
    paired = pair_with_questions(
        predictions,
        questions,
        source=f"{benchmark}: predictions do not match its {len(questions)} questions",
        fix="Score the merged predictions of a finished run (cumo.eval.generate.merge checks them).",
    )
    return [prediction["text"] for prediction in paired]
