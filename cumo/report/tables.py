"""The main table: rows are models, columns the benchmarks in the order of CuMo's Table 1, each cell the
reproduced number, the paper's and their difference; written as CSV, Markdown and LaTeX.

Reproduced numbers are the headlines of `<eval_dir>/<model>/<benchmark>/metrics.json` (`cumo eval`); the
paper's come from `cumo/report/paper_results.yaml` (Li et al. 2024, arXiv 2405.05949, Table 1), which also says
each column's split and metric. A headline of null/NaN is a benchmark scored by its server (VQAv2
test-dev): the cell says so. A missing file is a missing cell, never a 0; both are counted. A model the paper
does not report (`tiny`) has a reproduced row only. A column judged by another model than the paper's judge
(the tiny run's rule judge, `cumo-rules`) says so under the table: that number is not comparable; so does
a judged cell where the benchmark's own rules gave up on some questions (metrics.json `judge_gave_up`). A
model evaluated with blank images next to the same weights with their images gets a note of the differences.
"""

import io
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd
import yaml

from cumo.eval.benchmarks import NAMES, get

# Package data (pyproject.toml), read wherever cumo is installed; the workflow passes the same file.
PAPER_RESULTS = resources.files("cumo.report") / "paper_results.yaml"
METRICS_FILE = "metrics.json"
ROWS = ("reproduced", "reported", "delta")
COLUMN_KEYS = {"title", "split", "metric", "scale"}  # of a benchmark in paper_results.yaml
MISSING, PENDING = "—", "server"  # the Markdown/LaTeX text of a missing cell and of a server-scored one


@dataclass(frozen=True)
class Column:
    name: str  # our benchmark name: "textvqa"
    title: str  # the paper's column: "TextVQA"
    split: str
    metric: str
    scale: float = 100.0  # the metric's full scale (MME perception: 2000), for a plot on one axis


@dataclass(frozen=True)
class Paper:
    source: str
    columns: dict[str, Column]  # by benchmark name, in NAMES order
    reported: dict[str, dict[str, float]]  # model -> benchmark -> number


@dataclass(frozen=True)
class Cell:
    reproduced: float | None  # None: no result (see `pending`)
    reported: float | None  # None: the paper has no number for this model and benchmark
    pending: bool = False  # metrics.json is there, its headline awaits the evaluation server

    @property
    def delta(self) -> float | None:
        if self.reproduced is None or self.reported is None:
            return None
        return self.reproduced - self.reported


@dataclass(frozen=True)
class Table:
    columns: list[Column]
    cells: dict[str, dict[str, Cell]]  # model -> benchmark -> cell, both in table order
    paper_models: set[str]  # the models with reported rows
    notes: list[str]  # footnotes: the source, where a reproduced split or judge differs from the paper's
    source: str
    blank_of: dict[str, str]  # a model evaluated with every image blanked -> the same weights with images

    def counts(self) -> dict[str, int]:
        cells = [cell for row in self.cells.values() for cell in row.values()]
        return {
            "cells": len(cells),
            "missing": sum(cell.reproduced is None and not cell.pending for cell in cells),
            "pending_server": sum(cell.pending for cell in cells),
        }


def load_paper(path: Path) -> Paper:
    """Read and check `paper_results.yaml`: every benchmark known and described, every number a number."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or not {"source", "benchmarks", "models"} <= data.keys():
        raise ValueError(f"{path}: expected a mapping with keys source, benchmarks, models")
    columns = {}
    for name, column in data["benchmarks"].items():
        if name not in NAMES:
            raise ValueError(f"{path}: benchmarks.{name} is not a benchmark; known: {', '.join(NAMES)}")
        if not isinstance(column, dict) or not {"title", "split", "metric"} <= set(column) <= COLUMN_KEYS:
            raise ValueError(f"{path}: benchmarks.{name} needs title, split and metric, and may have scale")
        scale = column.get("scale", 100)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or scale <= 0:
            raise ValueError(f"{path}: benchmarks.{name}.scale is {scale!r}, not a positive number")
        columns[name] = Column(
            name, **{key: str(column[key]) for key in ("title", "split", "metric")}, scale=float(scale)
        )
    reported = {}
    for model, numbers in data["models"].items():
        for name, value in numbers.items():
            if name not in columns:
                raise ValueError(f"{path}: models.{model}.{name} has no entry under benchmarks")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{path}: models.{model}.{name} is {value!r}, not a number")
        reported[model] = {name: float(value) for name, value in numbers.items()}
    ordered = {name: columns[name] for name in NAMES if name in columns}
    return Paper(str(data["source"]), ordered, reported)


def read_metrics(path: Path, benchmark: str) -> dict:
    """One metrics.json, checked for what the table reads; errors name the file and the fix."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); rerun `cumo eval` for it") from error
    headline = data.get("headline") if isinstance(data, dict) else None
    if not isinstance(headline, dict) or "value" not in headline or "metric" not in headline:
        raise ValueError(
            f'{path}: needs "headline": {{"metric": ..., "value": ...}} as `cumo eval` writes it'
        )
    if data.get("benchmark") != benchmark:
        raise ValueError(f"{path}: is for benchmark {data.get('benchmark')!r}, but lies under {benchmark}/")
    value = headline["value"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(
            f"{path}: headline.value is {value!r}; expected a number, or null when a server scores"
        )
    return data


def _headline(data: dict) -> float | None:
    value = data["headline"]["value"]
    return None if value is None or math.isnan(value) else float(value)


def build_table(eval_dir: Path, paper: Paper, models: list[str], benchmarks: list[str]) -> Table:
    """Gather the headlines of `models` x `benchmarks` (columns in the paper's order) against the paper."""
    unknown = [name for name in benchmarks if name not in NAMES]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")
    names = [name for name in NAMES if name in benchmarks]
    cells, found = {}, {}  # found: benchmark -> the metrics.json files read, for titles and notes
    for model in models:
        cells[model] = {}
        for name in names:
            path = Path(eval_dir) / model / name / METRICS_FILE
            reported = paper.reported.get(model, {}).get(name)
            if not path.is_file():
                cells[model][name] = Cell(None, reported)
                continue
            data = read_metrics(path, name)
            found.setdefault(name, []).append((model, data))
            value = _headline(data)
            cells[model][name] = Cell(value, reported, pending=value is None)
    columns, notes = [], [f"Reported: {paper.source}."]
    for name in names:
        column = paper.columns.get(name) or _column_from_results(name, found.get(name, []))
        columns.append(column)
        # A split other than the paper's (the tiny run scores VQAv2 on val, test-dev needs the server) is a
        # different number, not a worse one: said under the table, per split with its models.
        other_splits = {}
        for model, data in found.get(name, []):
            if name in paper.columns and data.get("split") not in (None, column.split):
                other_splits.setdefault(data["split"], []).append(model)
        for split, split_models in other_splits.items():
            notes.append(
                f"{column.title}: reproduced on {split} ({', '.join(split_models)}), not {column.split}."
            )
        # So is a judge other than the paper's (metrics.json's judge.model against the benchmark's judge_model).
        other_judges = {}
        for model, data in found.get(name, []):
            judge = (data.get("judge") or {}).get("model")
            if judge is not None and judge != get(name).judge_model:
                other_judges.setdefault(judge, []).append(model)
        for judge, judged_models in other_judges.items():
            notes.append(
                f"{column.title}: judged by {judge} ({', '.join(judged_models)}), not the paper's "
                f"{get(name).judge_model}; not comparable with the paper's number."
            )
        # What the benchmark's own rules gave up on (issue 17): scored as upstream scores it, and said here.
        for model, data in found.get(name, []):
            gave_up = (data.get("metrics") or {}).get("judge_gave_up") or {}
            if gave_up.get("skipped"):
                reasons = ", ".join(f"{reason}: {count}" for reason, count in gave_up["by_reason"].items())
                notes.append(
                    f"{column.title} ({model}): the judge's rules gave up on {gave_up['skipped']} of "
                    f"{gave_up['seen']} ({reasons})."
                )
    blank_of = _blank_pairs(found)
    notes += _image_notes(found, cells, columns, blank_of)
    paper_models = {model for model in models if model in paper.reported}
    return Table(columns, cells, paper_models, notes, paper.source, blank_of)


def _blank_pairs(found: dict[str, list[tuple[str, dict]]]) -> dict[str, str]:
    """Each model evaluated with every image blanked (`cumo eval --blank-images`) -> the model evaluated with
    its images from the same weights (metrics.json's model digest), on any benchmark both have."""
    pairs = {}
    for runs in found.values():
        for blank, blank_data in runs:
            if not blank_data.get("config", {}).get("blank_images"):
                continue
            for model, data in runs:
                same = data.get("model", {}).get("digest") == blank_data.get("model", {}).get("digest")
                if same and not data.get("config", {}).get("blank_images"):
                    pairs[blank] = model
    return pairs


def _image_notes(
    found: dict[str, list[tuple[str, dict]]], cells: dict, columns: list[Column], blank_of: dict[str, str]
) -> list[str]:
    """What the images give: a model against the same weights evaluated with every image blanked, per
    benchmark both have, with the number of questions behind it: on a few dozen a difference moves by several
    points between runs. A model that scores the same without its images does not read them (issue 5 asks
    the tiny model for 15 points on GQA and POPE)."""
    questions = {(model, name): data.get("n", "?") for name, runs in found.items() for model, data in runs}
    notes = []
    for blank, model in blank_of.items():
        differences = [
            f"{column.title} {with_images.reproduced - without.reproduced:+.1f} "
            f"({questions[(model, column.name)]} questions)"
            for column in columns
            if (with_images := cells[model][column.name]).reproduced is not None
            and (without := cells[blank][column.name]).reproduced is not None
        ]
        if differences:
            notes.append(
                f"Images: {model} minus {blank} (the same weights, every image blanked): {', '.join(differences)}."
            )
    return notes


def _column_from_results(name: str, found: list[tuple[str, dict]]) -> Column:
    """A column the paper file does not describe: from a metrics.json of it, else its bare name."""
    if not found:
        return Column(name, name, "?", "?")
    data = found[0][1]
    return Column(name, data.get("title", name), data.get("split", "?"), data["headline"]["metric"])


def to_frame(table: Table) -> pd.DataFrame:
    """Rows (model, reproduced|reported|delta), columns (title, split, metric); NaN where there is no number."""
    index, rows = [], []
    for model, row in table.cells.items():
        for kind in ROWS if model in table.paper_models else ROWS[:1]:
            index.append((model, kind))
            rows.append([getattr(row[column.name], kind) for column in table.columns])
    columns = pd.MultiIndex.from_tuples(
        [(c.title, c.split, c.metric) for c in table.columns], names=["benchmark", "split", "metric"]
    )
    frame = pd.DataFrame(
        rows, index=pd.MultiIndex.from_tuples(index, names=["model", "row"]), columns=columns
    )
    return frame.astype(float)


def _format(cell: Cell, kind: str) -> str:
    value = getattr(cell, kind)
    if value is not None:
        return f"{value:+.1f}" if kind == "delta" else f"{value:.1f}"
    if kind == "reproduced" and cell.pending:
        return PENDING
    return MISSING


def _text_rows(table: Table) -> list[tuple[str, str, list[str]]]:
    """(model or "" after its first row, row kind, formatted cells) in table order."""
    rows = []
    for model, row in table.cells.items():
        for number, kind in enumerate(ROWS if model in table.paper_models else ROWS[:1]):
            cells = [_format(row[column.name], kind) for column in table.columns]
            rows.append((model if number == 0 else "", kind, cells))
    return rows


def _legend(table: Table) -> list[str]:
    columns = "; ".join(f"{c.title}: {c.metric}, {c.split}" for c in table.columns)
    return [
        f"Columns (metric, split): {columns}.",
        f"delta = reproduced - reported. {MISSING}: no result. {PENDING}: scored by the evaluation server.",
        *table.notes,
    ]


def to_markdown(table: Table) -> str:
    header = ["model", "", *(c.title for c in table.columns)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * len(table.columns)) + "|",
    ]
    lines += ["| " + " | ".join([model, kind, *cells]) + " |" for model, kind, cells in _text_rows(table)]
    return "\n".join(lines) + "\n\n" + "\n".join(_legend(table)) + "\n"


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(character, character) for character in text)


def to_latex(table: Table) -> str:
    """A booktabs tabular; the columns' split under their titles, metrics and notes below the rule."""
    width = 2 + len(table.columns)

    def line(cells):
        return " & ".join(cells) + r" \\"

    lines = [
        r"\begin{tabular}{ll" + "r" * len(table.columns) + "}",
        r"\toprule",
        line(["Model", "", *(latex_escape(c.title) for c in table.columns)]),
        line(["", "", *(r"\scriptsize " + latex_escape(c.split) for c in table.columns)]),
        r"\midrule",
    ]
    for model, kind, cells in _text_rows(table):
        if model and len(lines) > 5:
            lines.append(r"\midrule")
        cells = ["--" if cell == MISSING else latex_escape(cell) for cell in cells]
        lines.append(line([latex_escape(model), kind if kind != "delta" else r"$\Delta$", *cells]))
    lines.append(r"\bottomrule")
    for note in _legend(table):
        note = latex_escape(note.replace(MISSING, "--"))
        lines.append(rf"\multicolumn{{{width}}}{{l}}{{\scriptsize {note}}} \\")
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """Three header rows (benchmark, split, metric); empty where there is no number."""
    buffer = io.StringIO()
    to_frame(table).to_csv(buffer)
    return buffer.getvalue()


def write_tables(
    eval_dir: Path, paper_path: Path, models: list[str], benchmarks: list[str], out_dir: Path
) -> dict:
    """Write main.csv, main.md and main.tex under `out_dir`; returns the files and the cell counts."""
    table = build_table(eval_dir, load_paper(paper_path), models, benchmarks)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for suffix, render in (("csv", to_csv), ("md", to_markdown), ("tex", to_latex)):
        path = out_dir / f"main.{suffix}"
        path.write_text(render(table))
        files.append(str(path))
    return {"files": files, **table.counts()}
