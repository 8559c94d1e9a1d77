"""MMBench-EN, dev split: multiple choice with circular evaluation; `declare("cn")` is MMBench-CN (mmbench_cn.py).

Files (CuMo scripts/cumo/eval/mmbench.sh and mmbench_cn.sh, LLaVA scripts/v1_5/eval/mmbench*.sh):
`eval/mmbench/mmbench_dev_20230712.tsv` (English) and `eval/mmbench/mmbench_dev_cn_20231003.tsv` (Chinese), one
row per question and per rotation of its options (index + k * 1e6), the image base64-encoded in the row.

Questions: every row, asked once, read as LLaVA's llava/eval/model_vqa_mmbench.py reads it (pandas
`read_table`; a hint or an option that is empty, NaN, "nan" or "none" is absent, and the options stop at the
first absent one); the text is `cumo.eval.metrics.mmbench.prompt`. Answers may run to 1024 new tokens, the
limit model_vqa_mmbench.py generates with (a letter needs one; the limit only matters for a model that
rambles, and then the matcher sees what it wrote).

Score: VLMEvalKit's circular accuracy with exact matching (`cumo.eval.metrics.mmbench`), overall (the
headline, in percent), per l2-category and per category, and how many questions failed only because an
answer matched no option. `judge` is unused: VLMEvalKit's GPT matching is not reproduced.

Submission: the sheet LLaVA's scripts/convert_mmbench_for_submission.py writes for MMBench's evaluation server
(the TSV without hint, category, source, image, comment and l2-category, a `prediction` column after the
options), as `<tsv name>.xlsx` (`<tsv name>.tsv` where openpyxl, pandas' xlsx writer, is not installed); it is
written only when every row is answered exactly once.
"""

import base64
import logging
import math
from functools import partial
from pathlib import Path

import pandas as pd

from cumo.eval.benchmark import Benchmark, Question, Result
from cumo.eval.benchmarks.common import existing, replies
from cumo.eval.metrics.mmbench import (
    OPTION_LETTERS,
    ROTATION_STRIDE,
    accuracy_report,
    circular_outcome,
    match,
    prompt,
)

logger = logging.getLogger(__name__)

FILES = {"en": "mmbench_dev_20230712.tsv", "cn": "mmbench_dev_cn_20231003.tsv"}
TITLES = {"en": "MMB-EN", "cn": "MMB-CN"}
NAMES = {"en": "mmbench", "cn": "mmbench_cn"}
# convert_mmbench_for_submission.py: the columns the sheet leaves out, and where `prediction` goes.
NOT_SUBMITTED = ["hint", "category", "source", "image", "comment", "l2-category"]
PREDICTION_COLUMN = 6


def is_none(value) -> bool:
    """model_vqa_mmbench.py's `is_none`: what pandas reads from an empty cell, and the words "nan"/"none"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return isinstance(value, str) and value.lower() in ("nan", "none")


def options_of(row: pd.Series) -> list[str]:
    """The row's options A, B, ... up to the first absent one (model_vqa_mmbench.py's `get_options`)."""
    options = []
    for letter in OPTION_LETTERS:
        if is_none(row[letter]):
            break
        options.append(str(row[letter]))
    return options


def read_table(folder: Path, lang: str) -> pd.DataFrame:
    path = existing(Path(folder) / FILES[lang], "MMBench's dev TSV (CuMo scripts/cumo/eval/mmbench*.sh)")
    return pd.read_table(path)


def questions(folder: Path, lang: str) -> list[Question]:
    """Every row of the TSV, in file order, as model_vqa_mmbench.py asks it."""
    table = read_table(folder, lang)
    return [
        Question(
            question_id=int(row["index"]),
            text=prompt(
                row["question"], None if is_none(row["hint"]) else row["hint"], options_of(row), lang
            ),
            image=base64.b64decode(row["image"]),
        )
        for _, row in table.iterrows()
    ]


def replies_by_row(folder: Path, predictions: list[dict], lang: str) -> tuple[pd.DataFrame, list[str]]:
    """The TSV and the reply to each of its rows, every row answered exactly once (or an error naming them)."""
    table = read_table(folder, lang)
    asked = [Question(int(index), "", None) for index in table["index"]]
    return table, replies(NAMES[lang], asked, predictions)


def score(folder: Path, predictions: list[dict], judge=None, *, lang: str) -> Result:
    """Circular accuracy over the dev questions; `judge` is unused (exact matching)."""
    table, texts = replies_by_row(folder, predictions, lang)
    if "answer" not in table:
        raise ValueError(
            f"{Path(folder) / FILES[lang]} has no answer column (a test split): MMBench's server scores it "
            "(`submission` writes the sheet)"
        )
    rotations: dict[int, list[tuple[str, str | None]]] = {}
    for (_, row), text in zip(table.iterrows(), texts, strict=True):
        choices = dict(zip(OPTION_LETTERS, options_of(row), strict=False))
        rotations.setdefault(int(row["index"]) % ROTATION_STRIDE, []).append(
            (row["answer"], match(text, choices))
        )
    main = table[table["index"] < ROTATION_STRIDE]
    outcomes = [circular_outcome(rotations[int(index)]) for index in main["index"]]
    report = accuracy_report(outcomes, list(main["category"]), list(main["l2-category"]))
    counts = {outcome: outcomes.count(outcome) for outcome in ("hit", "miss", "unmatched")}
    return Result(
        headline=report["overall"],
        metrics={**report, **counts, "questions": len(outcomes), "rows": len(table)},
        n=len(outcomes),
    )


def write_sheet(sheet: pd.DataFrame, stem: Path) -> Path:
    """`<stem>.xlsx`, the upload format, written by openpyxl as LLaVA writes it; where openpyxl is not installed
    (it is not a dependency of this package), the same sheet as `<stem>.tsv`, with a warning saying so."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    try:
        import openpyxl  # noqa: F401  (pandas' xlsx engine)
    except ImportError:
        path = stem.with_suffix(".tsv")
        sheet.to_csv(path, sep="\t", index=False)
        logger.warning(
            "openpyxl is not installed: wrote %s; `pip install openpyxl` for the .xlsx to upload", path
        )
        return path
    path = stem.with_suffix(".xlsx")
    sheet.to_excel(path, index=False, engine="openpyxl")
    return path


def submission(folder: Path, predictions: list[dict], out_dir: Path, *, lang: str) -> list[Path]:
    """The upload sheet of convert_mmbench_for_submission.py; every row must be answered exactly once."""
    table, texts = replies_by_row(folder, predictions, lang)
    sheet = table.drop(columns=NOT_SUBMITTED)
    sheet.insert(PREDICTION_COLUMN, "prediction", texts)
    return [write_sheet(sheet, Path(out_dir) / Path(FILES[lang]).stem)]


def declare(lang: str) -> Benchmark:
    """MMBench's dev set in `lang` ("en" or "cn"): both sets share the folder, the reader and the scorer."""
    return Benchmark(
        name=NAMES[lang],
        title=TITLES[lang],
        split="dev",
        folder="mmbench",
        headline_metric="circular accuracy (%)",
        questions=partial(questions, lang=lang),
        score=partial(score, lang=lang),
        max_new_tokens=1024,
        submission=partial(submission, lang=lang),
    )


BENCHMARK = declare("en")
