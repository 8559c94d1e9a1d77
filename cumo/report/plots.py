"""The run's figures, PNG and PDF: reproduced vs reported on every benchmark, and per model its training curves
(loss per stage, the MoE auxiliary losses of sft) and the expert load of CLIP's and the connector's MoE.

Training figures read the `metrics.jsonl` each stage exports next to its model
(`<models_dir>/<model>/<stage>/metrics.jsonl`, one line per optimiser step, `cumo.train.trainer._MetricsLog`):
`loss` (the total), `lm_loss`, `{clip,mlp}_balance_loss` and `{clip,mlp}_router_z_loss` (CuMo's auxiliary
losses, cumo/model/moe.py), `clip_tokens_per_expert` (CLIP layers x experts) and `mlp_tokens_per_expert`
(experts), token counts of the step's top-1 routing summed over ranks. A figure whose inputs are missing is
not drawn and its reason is returned, never dropped silently.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cumo.report.tables import Paper, build_table, load_paper  # noqa: E402

STAGES = ("pretrain", "pft", "sft")
METRICS_FILE = "metrics.jsonl"
# (title, balance key, z-loss key) of each MoE that has auxiliary losses.
AUX_PARTS = (
    ("CLIP", "clip_balance_loss", "clip_router_z_loss"),
    ("connector", "mlp_balance_loss", "mlp_router_z_loss"),
)


def _save(figure, out_dir: Path, stem: str) -> list[str]:
    paths = []
    for suffix in ("png", "pdf"):
        path = out_dir / f"{stem}.{suffix}"
        figure.savefig(path, dpi=120, bbox_inches="tight")
        paths.append(str(path))
    plt.close(figure)
    return paths


def read_metrics_log(path: Path) -> list[dict]:
    """The records of one stage's metrics.jsonl; an unreadable line names the file and the line."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}:{number}: not a JSON line ({error}); retrain the stage or cut the line"
            ) from error
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{path}:{number}: expected an object with a step, as cumo train writes")
        records.append(record)
    return records


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that carry `key` (an aux term is null on a step without images)."""
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    steps, values = zip(*points, strict=True) if points else ((), ())
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


@dataclass(frozen=True)
class Point:
    """One mark of the benchmarks figure, on `line` (a model; its blank-images run marks its model's line)."""

    row: int  # the benchmark's, in the table's column order
    line: str
    kind: str  # "reproduced", "reported" or "blanked"
    value: float  # in the metric's own unit
    share: float  # % of the metric's full scale


def benchmark_points(table) -> tuple[list[Point], list[str]]:
    """The marks of the benchmarks figure, every value as a share of its benchmark's full scale
    (`Column.scale`: MME's 2000 points beside percentages), and the cells with no number, named."""
    points, unscored = [], []
    for row, column in enumerate(table.columns):
        for model, cells in table.cells.items():
            cell, line = cells[column.name], table.blank_of.get(model, model)
            if model in table.blank_of:
                kinds = (("blanked", cell.reproduced),)
            else:
                kinds = (("reproduced", cell.reproduced), ("reported", cell.reported))
                if cell.reproduced is None:
                    unscored.append(
                        f"{column.title} ({model}{': the server scores it' if cell.pending else ''})"
                    )
            points += [
                Point(row, line, kind, value, 100 * value / column.scale)
                for kind, value in kinds
                if value is not None
            ]
    return points, unscored


MARKERS = {
    "reproduced": {"marker": "o"},
    "reported": {"marker": "D", "mfc": "none"},
    "blanked": {"marker": "x", "mew": 2},
}


def plot_benchmarks(table, out_dir: Path) -> list[str]:
    """Every benchmark on one axis as a share of its full scale: per model a dot for the reproduced number
    (labelled with it), joined to an open diamond for the paper's; a model evaluated with its images blanked
    is a cross on its model's line, so what the images give is the gap. No bar of 0 for a missing number: it
    is named under the figure."""
    points, unscored = benchmark_points(table)
    lines = [model for model in table.cells if model not in table.blank_of]
    colours = dict(zip(lines, plt.get_cmap("tab10").colors * (len(lines) // 10 + 1), strict=False))
    height = 0.8 / len(lines)  # the lines of one benchmark share its row

    def y(point: Point) -> float:
        return point.row + (lines.index(point.line) - (len(lines) - 1) / 2) * height

    figure, axis = plt.subplots(figsize=(8, 0.5 + len(table.columns) * max(0.45, 0.25 * len(lines))))
    by_place = {(point.row, point.line, point.kind): point for point in points}
    for (row, line, kind), point in by_place.items():
        axis.plot(point.share, y(point), ls="", color=colours[line], ms=6, **MARKERS[kind])
        if kind == "reproduced":
            axis.annotate(
                f"{point.value:.1f}", (point.share, y(point)), xytext=(5, 2), textcoords="offset points",
                fontsize=7, va="bottom", color=colours[line],
            )  # fmt: skip
            if (reported := by_place.get((row, line, "reported"))) is not None:
                axis.plot([point.share, reported.share], [y(point)] * 2, color=colours[line], lw=1, alpha=0.5)
    axis.set_yticks(range(len(table.columns)), [f"{c.title}  ({c.split})" for c in table.columns], fontsize=8)
    axis.invert_yaxis()  # the paper's column order, top to bottom
    axis.set_xlim(-1, 101)  # a mark at 0 or 100 drawn whole
    axis.set_xlabel("% of the benchmark's full scale (MME: of 2000 points; the number by a dot is its own)")
    axis.grid(axis="x", alpha=0.3)
    handles = [matplotlib.lines.Line2D([], [], color=colours[m], marker="o", ls="", label=m) for m in lines]
    handles += [
        matplotlib.lines.Line2D([], [], color="grey", ls="", label=label, **MARKERS[kind])
        for kind, label in (("reported", "reported (paper)"), ("blanked", "images blanked"))
    ]
    axis.legend(handles=handles, loc="lower right", fontsize=7)
    if unscored:
        figure.text(0, -0.02, "No number: " + ", ".join(unscored), fontsize=7, va="top", wrap=True)
    figure.tight_layout()
    return _save(figure, out_dir, "benchmarks")


def plot_losses(stages: dict[str, list[dict]], model: str, out_dir: Path) -> list[str]:
    """Total and language-model loss against the optimiser step, one panel per stage."""
    figure, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3), squeeze=False)
    for axis, (stage, records) in zip(axes.flat, stages.items(), strict=True):
        for key in ("loss", "lm_loss"):
            steps, values = _series(records, key)
            axis.plot(steps, values, label=key, linewidth=1)
        axis.set_title(f"{model}: {stage}", fontsize=9)
        axis.set_xlabel("optimiser step")
        axis.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, out_dir, f"loss_{model}")


def plot_aux(records: list[dict], model: str, out_dir: Path) -> list[str]:
    """Balance loss (1.0 at perfect balance) and router z-loss of the CLIP and connector MoE in sft."""
    parts = [part for part in AUX_PARTS if _series(records, part[1])[0].size]
    figure, axes = plt.subplots(len(parts), 2, figsize=(8, 2.8 * len(parts)), squeeze=False)
    for (title, balance, z_loss), row in zip(parts, axes, strict=True):
        for axis, key, label in ((row[0], balance, "balance loss"), (row[1], z_loss, "router z-loss")):
            axis.plot(*_series(records, key), linewidth=1)
            axis.set_title(f"{model} sft, {title}: {label}", fontsize=9)
            axis.set_xlabel("optimiser step")
        row[0].axhline(1.0, color="grey", linestyle=":", linewidth=1)  # E^2 * sum(P f) at uniform routing
    figure.tight_layout()
    return _save(figure, out_dir, f"aux_{model}")


def expert_share(records: list[dict], key: str) -> np.ndarray | None:
    """Tokens per expert summed over the stage, as each layer's share: (layers, E); None when not logged."""
    counts = [np.atleast_2d(np.asarray(r[key], dtype=float)) for r in records if r.get(key) is not None]
    if not counts:
        return None
    total_LE = np.sum(counts, axis=0)
    return total_LE / np.maximum(total_LE.sum(axis=1, keepdims=True), 1.0)


def plot_expert_load(shares: dict[str, np.ndarray], model: str, out_dir: Path) -> list[str]:
    """Heat maps of each layer's share of top-1 tokens per expert (1/E everywhere is perfect balance), on one
    colour scale so that CLIP's and the connector's balance compare at a glance."""
    heights = [share.shape[0] for share in shares.values()]
    figure, axes = plt.subplots(
        len(shares), 1, figsize=(5, 1.5 + 0.25 * sum(heights)), squeeze=False, height_ratios=heights,
        layout="constrained",
    )  # fmt: skip
    top = max(share.max() for share in shares.values())
    for axis, (title, share_LE) in zip(axes.flat, shares.items(), strict=True):
        image = axis.imshow(share_LE, aspect="auto", cmap="viridis", vmin=0, vmax=max(top, 1e-9))
        layers, experts = share_LE.shape
        axis.set_title(
            f"{model} sft, {title}: share of top-1 tokens (balanced = {1 / experts:.2f})", fontsize=9
        )
        axis.set_xticks(range(experts), [f"expert {e}" for e in range(experts)], fontsize=7)
        axis.set_yticks(
            range(layers), [str(layer) for layer in range(layers)] if layers > 1 else [""], fontsize=6
        )
        axis.set_ylabel("layer" if layers > 1 else "")
    figure.colorbar(image, ax=axes.ravel().tolist())
    return _save(figure, out_dir, f"expert_load_{model}")


def write_plots(
    eval_dir: Path,
    models_dir: Path,
    paper_path: Path,
    models: list[str],
    benchmarks: list[str],
    out_dir: Path,
) -> dict:
    """Draw every figure whose inputs exist under `out_dir`; returns the files and what was not drawn, why."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paper: Paper = load_paper(paper_path)
    files = plot_benchmarks(build_table(eval_dir, paper, models, benchmarks), out_dir)
    skipped = []
    for model in models:
        stages = {}
        for stage in STAGES:
            path = Path(models_dir) / model / stage / METRICS_FILE
            if path.is_file():
                stages[stage] = read_metrics_log(path)
            else:
                skipped.append(f"{model} {stage}: no {path}")
        if stages:
            files += plot_losses(stages, model, out_dir)
        sft = stages.get("sft", [])
        if any(_series(sft, part[1])[0].size for part in AUX_PARTS):
            files += plot_aux(sft, model, out_dir)
        else:
            skipped.append(f"{model}: aux losses not drawn (no sft steps with CLIP or connector MoE losses)")
        shares = {
            title: share
            for title, key in (("CLIP", "clip_tokens_per_expert"), ("connector", "mlp_tokens_per_expert"))
            if (share := expert_share(sft, key)) is not None
        }
        if shares:
            files += plot_expert_load(shares, model, out_dir)
        else:
            skipped.append(f"{model}: expert load not drawn (no sft steps with tokens per expert)")
    return {"files": files, "skipped": skipped}
