"""What one benchmark declares, and the records that pass between generation and scoring.

A benchmark module in `cumo/eval/benchmarks/` defines one `BENCHMARK = Benchmark(...)`: where its files lie
under `<data_root>/eval/`, how its questions are read from them (the official formats, LLaVA-1.5's question
files by default), how long an answer may be, and how predictions are scored by the benchmark's own rules.
Generation (`cumo.eval.generate`) knows nothing of any benchmark beyond `Question`; scoring knows nothing of
the model beyond the predictions.

Predictions follow LLaVA's answer files (llava/eval/model_vqa_loader.py): one JSON object per line with
`question_id`, `prompt` (the question text as asked), `text` (the model's answer), `answer_id`, `model_id`
and `metadata` (the question's metadata, passed through for the scorer).
"""

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class Question:
    # Unique within the benchmark (answers are keyed by it); as the files spell it, so predictions keep the type.
    question_id: str | int
    text: str  # what the user turn says, prompt suffix included, without the image placeholder
    image: Path | bytes | None  # a file, encoded image bytes (MMBench's base64, parquet), or text-only
    metadata: dict[str, Any] = field(default_factory=dict)  # whatever the scorer needs back (category, ...)

    def load_image(self) -> Image.Image | None:
        if self.image is None:
            return None
        source = io.BytesIO(self.image) if isinstance(self.image, bytes) else self.image
        return Image.open(source).convert("RGB")


@dataclass(frozen=True)
class Result:
    """A benchmark's score: the headline number of the paper's table, and everything else it reports."""

    headline: float  # on the paper's scale (percent, or MME's summed points)
    metrics: dict[str, Any]  # sub-metrics: per split, category, subject, ...; JSON-serialisable
    n: int  # questions scored


@dataclass(frozen=True)
class Benchmark:
    name: str  # the DAG's and the CLI's name: "textvqa"
    title: str  # the paper's column: "TextVQA"
    split: str  # "val", "testdev_balanced", "dev", ...
    folder: str  # under <data_root>/eval/, as CuMo's scripts/cumo/eval/*.sh name it
    headline_metric: str  # what `Result.headline` is, said in the table: "accuracy", "mean F1 of 3 splits"
    questions: Callable[[Path], list[Question]]  # <data_root>/eval/<folder> -> the questions, in file order
    score: Callable[..., Result]  # (folder, predictions: list[dict], judge=None) -> Result
    max_new_tokens: int = 128
    judge_model: str | None = None  # the paper's judge where `score` needs a `cumo.eval.judge.Judge`
    # (folder, predictions, out_dir) -> files written for an evaluation server (VQAv2, MMBench test, ...)
    submission: Callable[[Path, list[dict], Path], list[Path]] | None = None
    # Splits scored here besides `split`, name -> (questions, score, headline_metric): VQAv2's val, where
    # test-dev needs the server.
    other_splits: dict[str, tuple[Callable, Callable, str]] = field(default_factory=dict)

    @property
    def judged(self) -> bool:
        return self.judge_model is not None

    def at_split(self, split: str | None) -> "Benchmark":
        """This benchmark asked and scored on `split` (None: its own)."""
        if split is None or split == self.split:
            return self
        if split not in self.other_splits:
            known = ", ".join([self.split, *self.other_splits])
            raise ValueError(f"{self.title} is evaluated here on: {known}; not on {split!r}")
        questions, score, headline_metric = self.other_splits[split]
        return replace(
            self,
            split=split,
            questions=questions,
            score=score,
            headline_metric=headline_metric,
            submission=None,
            other_splits={},
        )


class IncompletePredictions(ValueError):
    """The predictions do not answer every question exactly once (a ValueError: the scorers' bad input too)."""


def question_key(question_id) -> str:
    # JSON spelling, so 7 and "7" stay different ids, as they are in the benchmark's files.
    return json.dumps(question_id)


def pair_with_questions(
    predictions: list[dict], questions: list[Question], source: str, fix: str
) -> list[dict]:
    """Each question's prediction, in question order.

    Every question must be answered exactly once and every prediction must answer one of them: a missing answer
    would otherwise quietly shrink (or, scored as wrong, quietly lower) the number. Otherwise the error starts
    with `source` (which predictions, for what), names the ids at fault and ends with `fix`."""
    by_key: dict[str, dict] = {}
    repeated = []
    for prediction in predictions:
        key = question_key(prediction["question_id"])
        if key in by_key:
            repeated.append(key)
        by_key[key] = prediction
    wanted = [question_key(question.question_id) for question in questions]
    missing = [key for key in wanted if key not in by_key]
    unknown = sorted(set(by_key) - set(wanted))
    if missing or repeated or unknown:

        def some(keys):
            return ", ".join(keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")

        problems = [
            f"{len(missing)} question(s) unanswered: {some(missing)}" if missing else "",
            f"{len(repeated)} answered more than once: {some(repeated)}" if repeated else "",
            f"{len(unknown)} answer(s) to questions not in the benchmark: {some(unknown)}" if unknown else "",
        ]
        raise IncompletePredictions(f"{source}: {'; '.join(p for p in problems if p)}. {fix}")
    return [by_key[key] for key in wanted]
