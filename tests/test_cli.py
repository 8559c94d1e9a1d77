"""`cumo --help` and `cumo demo`: the commands the README shows."""

import json
import subprocess
import sys

import pytest

from cumo.cli import main
from cumo.model.modeling_cumo import CumoForConditionalGeneration
from cumo.train.stages import STAGES


def test_help_lists_every_step():
    result = subprocess.run(
        [sys.executable, "-m", "cumo", "--help"], capture_output=True, text=True, check=True
    )
    for step in ("demo", "upcycle", "convert"):
        assert step in result.stdout


def test_demo_upcycles_answers_and_saves_a_loadable_model(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["sft_mixture"].endswith("skipped 0 of 3000 (none)")
    assert len(report["benchmarks"]) == 13
    assert report["upcycle_max_abs_logit_diff"] < 1e-5
    assert report["parameters"]["moe"] > report["parameters"]["dense"]
    assert len(report["answers"]["moe"]) == len(report["questions"]) == 2
    # dense and upcycled models compute the same function, so greedy decoding agrees
    assert report["answers"]["moe"] == report["answers"]["dense"]
    model = CumoForConditionalGeneration.from_pretrained(tmp_path / "model")
    assert model.config.clip_moe and model.config.mlp_moe
    assert (tmp_path / "model" / "tokenizer.json").exists()
    assert "demo.json" not in capsys.readouterr().err


def test_a_step_that_fails_says_why_and_exits_nonzero(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cumo",
            "upcycle",
            "--model",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert f"{tmp_path / 'missing'} is not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_synthetic_world_goes_through_the_mixture_step(tmp_path, capsys):
    """The two data steps chained as the workflow chains them: the world's sft JSON validates with no drop."""
    data = tmp_path / "data"
    main(
        [
            "synthetic",
            "--data-root",
            str(data),
            "--per-benchmark",
            "2",
            "--sizes",
            "pretrain=20,pft=10,sft=30",
        ]
    )
    assert (data / "eval" / "pope" / "llava_pope_test.jsonl").exists()
    sizes = {
        stage: len(json.loads((data / "jsons" / f"synthetic_{stage}.json").read_text())) for stage in STAGES
    }
    assert sizes == {"pretrain": 20, "pft": 10, "sft": 30}
    out, stats = tmp_path / "sft.arrow", tmp_path / "sft.stats.json"
    main(
        [
            "mixture",
            str(data / "jsons" / "synthetic_sft.json"),
            "--data-root",
            str(data),
            "--out",
            str(out),
            "--stats",
            str(stats),
        ]
    )
    report = json.loads(stats.read_text())
    assert report["skipped"]["skipped"] == 0 and out.exists()
    assert "skipped 0" in capsys.readouterr().out


@pytest.mark.parametrize(
    "sizes", ["pretrain=20,pft=10", "pretrain=20,pft=0,sft=3", "pretrain=1,pft=1,sft=1,sft=2", "pt=1"]
)
def test_synthetic_sizes_name_every_stage_once(sizes, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cumo", "synthetic", "--data-root", str(tmp_path), "--sizes", sizes],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "argument --sizes" in result.stderr and "Traceback" not in result.stderr
    assert "pretrain, pft, sft" in result.stderr or "lacks" in result.stderr
    assert not (tmp_path / "jsons").exists()
