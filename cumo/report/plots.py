"""The run's figures, PNG and PDF: reproduced vs reported per benchmark, and per model its training curves
(loss per stage, the MoE auxiliary losses of sft) and the expert load of CLIP's and the connector's MoE.

Training figures read the `metrics.jsonl` each stage exports next to its model
(`<models_dir>/<model>/<stage>/metrics.jsonl`, one line per optimiser step, `cumo.train.trainer._MetricsLog`):
`loss` (the total), `lm_loss`, `{clip,mlp}_balance_loss` and `{clip,mlp}_router_z_loss` (CuMo's auxiliary
losses, cumo/model/moe.py), `clip_tokens_per_expert` (CLIP layers x experts) and `mlp_tokens_per_expert`
(experts), token counts of the step's top-1 routing summed over ranks. A figure whose inputs are missing is
not drawn and its reason is returned, never dropped silently.
"""

import json
import math
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


def plot_benchmarks(table, out_dir: Path) -> list[str]:
    """One panel per benchmark (each on its own scale: MME's points beside percentages), a bar per model's
    reproduced number and a hatched one beside it for the paper's."""
    columns, models = table.columns, list(table.cells)
    per_row = min(5, len(columns))
    rows = math.ceil(len(columns) / per_row)
    figure, axes = plt.subplots(rows, per_row, figsize=(3.0 * per_row, 2.8 * rows), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for axis, column in zip(axes.flat, columns, strict=False):
        for number, model in enumerate(models):
            cell = table.cells[model][column.name]
            colour = colours[number % len(colours)]
            reproduced = np.nan if cell.reproduced is None else cell.reproduced
            axis.bar(number - 0.2, reproduced, width=0.4, color=colour)
            if cell.reproduced is None:  # a missing bar is marked, not drawn as 0
                label = "server" if cell.pending else "n/a"
                axis.text(number - 0.2, 0, label, rotation=90, ha="center", va="bottom", fontsize=7)
            if cell.reported is not None:
                axis.bar(number + 0.2, cell.reported, width=0.4, color=colour, alpha=0.4, hatch="//")
        axis.set_xlim(-0.6, len(models) - 0.4)
        axis.set_title(f"{column.title}\n{column.split}", fontsize=9)
        axis.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=7)
        axis.tick_params(axis="y", labelsize=7)
    for axis in axes.flat[len(columns) :]:
        axis.axis("off")
    handles = [
        matplotlib.patches.Patch(color="grey", label="reproduced"),
        matplotlib.patches.Patch(color="grey", alpha=0.4, hatch="//", label="reported (paper)"),
    ]
    figure.tight_layout()
    figure.legend(handles=handles, loc="lower right", fontsize=8)
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
