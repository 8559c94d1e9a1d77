"""Report: the main table from hand-written metrics.json files (values, deltas, missing and server cells, the
paper's column order, LaTeX escapes), the paper file as published, the figures, and errors naming the file."""

import json

import pandas as pd
import pytest
import yaml

from cumo.cli import main
from cumo.eval.benchmarks import NAMES, get
from cumo.report.plots import benchmark_points, expert_share, write_plots
from cumo.report.tables import (
    PAPER_RESULTS,
    build_table,
    latex_escape,
    load_paper,
    to_latex,
    to_markdown,
    write_tables,
)

# Li et al. 2024 (arXiv 2405.05949) Table 1, in its column order, typed again here from the paper.
TABLE_1 = {
    "cumo-mistral-7b": [73.9, 67.0, 64.9, 86.7, 1548.6, 73.0, 66.6, 51.0, 82.2, 85.7, 72.1, 39.1, 35.1],
    "cumo-mixtral-8x7b": [77.9, 66.0, 63.8, 85.7, 1639.5, 75.3, 68.0, 48.7, 81.8, 84.7, 73.2, 45.0, 38.2],
}
TITLES = [
    "SQA-IMG", "TextVQA", "GQA", "POPE", "MME", "MMB-EN", "MMB-CN", "MM-Vet", "VQAv2", "LLaVA-W", "SEED-IMG",
    "MMMU", "MathVista",
]  # fmt: skip


def write_metrics(
    eval_dir,
    model,
    benchmark,
    value,
    split="val",
    metric="accuracy",
    judge=None,
    weights=None,
    blank=False,
    n=40,
):
    path = eval_dir / model / benchmark / "metrics.json"
    path.parent.mkdir(parents=True)
    record = {
        "benchmark": benchmark,
        "title": benchmark.upper(),
        "split": split,
        "headline": {"metric": metric, "value": value},
        "metrics": {},
        "n": n,
        "prompt_variant": "default",
        "judge": None if judge is None else {"model": judge, "runs": 1, "usage": {}},
        "model": {"path": f"models/{weights or model}", "digest": (weights or model).ljust(64, "0")},
        "config": {"blank_images": blank},
        "git_commit": "abc",
    }
    path.write_text(json.dumps(record))
    return path


def test_paper_file_is_table_1():
    paper = load_paper(PAPER_RESULTS)
    assert list(paper.columns) == list(NAMES)
    assert [column.title for column in paper.columns.values()] == TITLES
    for model, numbers in TABLE_1.items():
        assert [paper.reported[model][name] for name in NAMES] == numbers


def test_paper_columns_are_the_benchmarks_declarations():
    """A reproduced split other than the column's is noted under the table: the two must name them alike."""
    for name, column in load_paper(PAPER_RESULTS).columns.items():
        benchmark = get(name)
        assert (column.title, column.split) == (benchmark.title, benchmark.split), name


@pytest.fixture
def eval_dir(tmp_path):
    root = tmp_path / "eval"
    write_metrics(root, "cumo-mistral-7b", "textvqa", 65.25, split="val")
    write_metrics(root, "cumo-mistral-7b", "mme", 1500.0, split="test", metric="perception score")
    write_metrics(root, "cumo-mistral-7b", "sqa", 80.0, split="test")
    write_metrics(root, "cumo-mistral-7b", "vqav2", None, split="test-dev")  # the server scores it
    write_metrics(root, "tiny", "gqa", 12.5, split="testdev_balanced")
    write_metrics(root, "tiny", "vqav2", 30.0, split="val2014")  # scored locally, on another split
    write_metrics(root, "tiny", "mmvet", 15.0, split="test", judge="cumo-rules")  # the tiny run's judge
    write_metrics(root, "cumo-mistral-7b", "mathvista", 35.0, split="testmini", judge="gpt-3.5-turbo")
    return root


def test_cells_deltas_and_missing(eval_dir):
    table = build_table(
        eval_dir, load_paper(PAPER_RESULTS), ["cumo-mistral-7b", "tiny"], ["mme", "textvqa", "vqav2"]
    )
    assert [column.title for column in table.columns] == ["TextVQA", "MME", "VQAv2"]  # the paper's order
    mistral, tiny = table.cells["cumo-mistral-7b"], table.cells["tiny"]
    assert mistral["textvqa"].reproduced == 65.25 and mistral["textvqa"].reported == 67.0
    assert mistral["textvqa"].delta == pytest.approx(-1.75)
    assert mistral["mme"].delta == pytest.approx(1500.0 - 1548.6)
    assert mistral["vqav2"].reproduced is None and mistral["vqav2"].pending and mistral["vqav2"].delta is None
    assert tiny["textvqa"].reproduced is None and not tiny["textvqa"].pending  # no file: missing, not 0
    assert tiny["mme"].reported is None and tiny["vqav2"].delta is None  # the paper has no tiny
    assert table.counts() == {"cells": 6, "missing": 2, "pending_server": 1}
    assert "VQAv2: reproduced on val2014 (tiny), not test-dev." in table.notes


def test_a_judge_other_than_the_papers_is_noted(eval_dir):
    table = build_table(
        eval_dir, load_paper(PAPER_RESULTS), ["cumo-mistral-7b", "tiny"], ["mmvet", "mathvista"]
    )
    assert table.cells["tiny"]["mmvet"].reproduced == 15.0
    judged = [note for note in table.notes if "judged by" in note]
    # MathVista's gpt-3.5-turbo is the paper's own extraction judge: no note.
    assert judged == [
        "MM-Vet: judged by cumo-rules (tiny), not the paper's gpt-4-0613; not comparable with the paper's number."
    ]


def test_what_a_judged_benchmark_gave_up_on_is_noted(tmp_path):
    path = write_metrics(tmp_path, "tiny", "mmvet", 40.0, judge="gpt-4-0613")
    record = json.loads(path.read_text())
    gave_up = {"seen": 80, "skipped": 3, "by_reason": {"no score in 5 replies (scored 0.0, as upstream)": 3}}
    path.write_text(json.dumps(record | {"metrics": {"judge_gave_up": gave_up}}))
    write_metrics(tmp_path, "tiny", "mathvista", 30.0, judge="gpt-3.5-turbo")  # none given up: no note
    table = build_table(tmp_path, load_paper(PAPER_RESULTS), ["tiny"], ["mmvet", "mathvista"])
    assert [note for note in table.notes if "gave up" in note] == [
        "MM-Vet (tiny): the judge's rules gave up on 3 of 80 (no score in 5 replies (scored 0.0, as upstream): 3)."
    ]


def test_what_the_images_give_is_noted(tmp_path):
    """A blank-images run is set against the run of the same weights with images, per benchmark both have."""
    for bench, with_images, blank, n in (
        ("gqa", 40.0, 25.0, 40),
        ("pope", 60.5, 40.0, 126),
        ("mme", 50.0, None, 40),
    ):
        write_metrics(tmp_path, "tiny", bench, with_images, n=n)
        if blank is not None:
            write_metrics(tmp_path, "tiny-blank-images", bench, blank, weights="tiny", blank=True, n=n)
    write_metrics(tmp_path, "other", "gqa", 90.0)  # other weights: not the blank run's counterpart
    table = build_table(
        tmp_path, load_paper(PAPER_RESULTS), ["tiny", "tiny-blank-images", "other"], ["gqa", "pope", "mme"]
    )
    images = [note for note in table.notes if note.startswith("Images:")]
    assert images == [
        "Images: tiny minus tiny-blank-images (the same weights, every image blanked): "
        "GQA +15.0 (40 questions), POPE +20.5 (126 questions)."
    ]


def test_written_files(eval_dir, tmp_path):
    out = tmp_path / "tables"
    written = write_tables(eval_dir, PAPER_RESULTS, ["cumo-mistral-7b", "tiny"], list(NAMES), out)
    assert written["missing"] == 2 * 13 - 8 and written["pending_server"] == 1

    frame = pd.read_csv(out / "main.csv", header=[0, 1, 2], index_col=[0, 1])
    assert list(frame.columns.get_level_values(0)) == TITLES
    assert frame.columns[1] == ("TextVQA", "val", "VQA accuracy (%)")  # the split and metric of each column
    assert list(frame.index) == [
        ("cumo-mistral-7b", "reproduced"),
        ("cumo-mistral-7b", "reported"),
        ("cumo-mistral-7b", "delta"),
        ("tiny", "reproduced"),  # no reported or delta row for a model the paper does not have
    ]
    assert frame.loc[("cumo-mistral-7b", "delta"), "SQA-IMG"].item() == pytest.approx(80.0 - 73.9)
    assert frame.loc[("cumo-mistral-7b", "reported"), "MathVista"].item() == 35.1
    assert frame.loc[("tiny", "reproduced"), "GQA"].item() == 12.5
    assert frame.loc[("tiny", "reproduced"), "POPE"].isna().all()  # missing stays missing
    assert frame.loc[("cumo-mistral-7b", "reproduced"), "VQAv2"].isna().all()

    markdown = (out / "main.md").read_text().splitlines()
    assert markdown[0] == "| model |  | " + " | ".join(TITLES) + " |"
    assert markdown[2].split(" | ")[2:5] == ["80.0", "65.2", "—"]  # 65.25 rounds half to even
    assert markdown[4].split(" | ")[2] == "+6.1" and markdown[4].split(" | ")[6] == "-48.6"
    assert markdown[2].split(" | ")[10] == "server"
    assert any("TextVQA: VQA accuracy (%), val" in line for line in markdown)
    assert (out / "main.tex").read_text().startswith(r"\begin{tabular}{ll" + "r" * 13 + "}")


def test_latex_escapes(tmp_path):
    assert latex_escape(r"a_b & 5% $x$ #1 {y} ~^\ ") == (
        r"a\_b \& 5\% \$x\$ \#1 \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{} "
    )
    write_metrics(tmp_path, "my_model", "gqa", 50.0)
    latex = to_latex(build_table(tmp_path, load_paper(PAPER_RESULTS), ["my_model"], ["gqa", "pope"]))
    assert r"my\_model & reproduced & 50.0 & -- \\" in latex
    assert r"\scriptsize testdev\_balanced" in latex and r"accuracy (\%)" in latex
    assert "_" not in latex.replace(r"\_", "") and "—" not in latex


def test_paper_numbers_only(tmp_path):
    """No results at all: every reproduced cell missing, reported rows still there."""
    markdown = to_markdown(
        build_table(tmp_path, load_paper(PAPER_RESULTS), ["cumo-mixtral-8x7b"], ["mme", "mmmu"])
    )
    rows = markdown.splitlines()
    assert rows[2] == "| cumo-mixtral-8x7b | reproduced | — | — |"
    assert rows[3] == "|  | reported | 1639.5 | 45.0 |"
    assert rows[4] == "|  | delta | — | — |"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"benchmark": "gqa", "headline": 50.0}), '"headline"'),
        (json.dumps({"benchmark": "pope", "headline": {"metric": "a", "value": 1.0}}), "lies under gqa/"),
        (json.dumps({"benchmark": "gqa", "headline": {"metric": "a", "value": "50"}}), "expected a number"),
    ],
)
def test_bad_metrics_names_the_file(tmp_path, content, message):
    path = tmp_path / "tiny" / "gqa" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        build_table(tmp_path, load_paper(PAPER_RESULTS), ["tiny"], ["gqa"])
    assert str(path) in str(error.value)


def test_bad_paper_file(tmp_path):
    data = yaml.safe_load(open(PAPER_RESULTS))
    data["models"]["cumo-mistral-7b"]["pope"] = "86.7%"
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"models.cumo-mistral-7b.pope is '86.7%', not a number"):
        load_paper(path)


def step_record(step, clip_LE=None, mlp_E=None, aux=True):
    """A metrics.jsonl line as cumo.train.trainer._MetricsLog writes it."""
    record = {
        "step": step,
        "epoch": 0,
        "loss": 3.0 / step,
        "lm_loss": 2.9 / step,
        "lr": 1e-3,
        "grad_norm": 1.0,
    }
    if clip_LE is not None:
        record |= {"clip_balance_loss": 1.1 if aux else None, "clip_router_z_loss": 0.5 if aux else None}
        record["clip_tokens_per_expert"] = clip_LE
    if mlp_E is not None:
        record |= {"mlp_balance_loss": 1.2, "mlp_router_z_loss": 0.4, "mlp_tokens_per_expert": mlp_E}
    return record


def write_log(path, records):
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def test_expert_share():
    records = [step_record(1, [[3, 1], [0, 0]], [1, 3]), step_record(2, [[1, 3], [2, 2]], [2, 2], aux=False)]
    assert expert_share(records, "clip_tokens_per_expert").tolist() == [[0.5, 0.5], [0.5, 0.5]]
    assert expert_share(records, "mlp_tokens_per_expert").tolist() == [[3 / 8, 5 / 8]]
    assert expert_share([step_record(1)], "mlp_tokens_per_expert") is None


def test_the_benchmarks_figure_puts_every_number_on_one_scale_and_names_what_is_missing(tmp_path):
    """MME's points as a share of its 2000 beside percentages, the paper's numbers on their model's line, a
    blank-images run on the line of its weights' model; no mark for a missing number, which is named."""
    write_metrics(tmp_path, "tiny", "gqa", 40.0)
    write_metrics(tmp_path, "tiny", "mme", 150.0)
    write_metrics(tmp_path, "tiny-blank-images", "gqa", 25.0, weights="tiny", blank=True)
    write_metrics(tmp_path, "cumo-mistral-7b", "mme", 1500.0)
    write_metrics(tmp_path, "cumo-mistral-7b", "pope", None)  # scored by a server
    models = ["cumo-mistral-7b", "tiny", "tiny-blank-images"]
    points, unscored = benchmark_points(
        build_table(tmp_path, load_paper(PAPER_RESULTS), models, ["gqa", "pope", "mme"])
    )
    marks = {(point.row, point.line, point.kind): (point.value, round(point.share, 2)) for point in points}
    assert marks == {
        (0, "cumo-mistral-7b", "reported"): (64.9, 64.9),
        (0, "tiny", "reproduced"): (40.0, 40.0),
        (0, "tiny", "blanked"): (25.0, 25.0),
        (1, "cumo-mistral-7b", "reported"): (86.7, 86.7),
        (2, "cumo-mistral-7b", "reproduced"): (1500.0, 75.0),
        (2, "cumo-mistral-7b", "reported"): (1548.6, 77.43),
        (2, "tiny", "reproduced"): (150.0, 7.5),
    }
    assert unscored == [
        "GQA (cumo-mistral-7b)",
        "POPE (cumo-mistral-7b: the server scores it)",
        "POPE (tiny)",
    ]


def test_a_scale_is_a_positive_number(tmp_path):
    data = yaml.safe_load(open(PAPER_RESULTS))
    data["benchmarks"]["mme"]["scale"] = 0
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"benchmarks.mme.scale is 0, not a positive number"):
        load_paper(path)


def test_plots_written_and_skips_counted(eval_dir, tmp_path, capsys):
    models = tmp_path / "models"
    write_log(models / "tiny" / "pretrain" / "metrics.jsonl", [step_record(s) for s in (1, 2, 3)])
    write_log(models / "tiny" / "pft" / "metrics.jsonl", [step_record(s) for s in (1, 2)])
    sft = [step_record(s, [[s, 4 - s, 1, 0]] * 3, [2, 1, 1, s]) for s in (1, 2, 3)]
    write_log(models / "tiny" / "sft" / "metrics.jsonl", sft)
    out = tmp_path / "plots"
    main(
        ["report", "plots", "--eval", str(eval_dir), "--models-dir", str(models),
         "--model-names", "cumo-mistral-7b", "tiny", "--out", str(out)]
    )  # fmt: skip
    for stem in ("benchmarks", "loss_tiny", "aux_tiny", "expert_load_tiny"):
        for suffix in ("png", "pdf"):
            assert (out / f"{stem}.{suffix}").stat().st_size > 1000, f"{stem}.{suffix}"
    assert not list(out.glob("*cumo-mistral-7b*"))  # no training logs for it
    skipped = json.loads(capsys.readouterr().out)["skipped"]
    assert len(skipped) == 3 + 2 and all(line.startswith("cumo-mistral-7b") for line in skipped)


def test_bad_metrics_line_names_the_line(tmp_path):
    path = tmp_path / "models" / "tiny" / "sft" / "metrics.jsonl"
    write_log(path, [step_record(1)])
    path.write_text(path.read_text() + "{cut off\n")
    with pytest.raises(ValueError, match=rf"{path}:2: not a JSON line"):
        write_plots(
            tmp_path / "eval", tmp_path / "models", PAPER_RESULTS, ["tiny"], ["gqa"], tmp_path / "plots"
        )


def test_cli_tables(eval_dir, tmp_path, capsys):
    out = tmp_path / "tables"
    main(
        [
            "report",
            "tables",
            "--eval",
            str(eval_dir),
            "--models",
            "tiny",
            "--benchmarks",
            "gqa",
            "--out",
            str(out),
        ]
    )
    assert json.loads(capsys.readouterr().out)["missing"] == 0
    assert (out / "main.md").read_text().splitlines()[2] == "| tiny | reproduced | 12.5 |"
