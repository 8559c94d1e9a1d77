"""The multi-node path for real (issue 18): a stage on 2 Slurm nodes x 2 CPU ranks (tests/slurm_nodes.py), run
by `sbatch` with the `cumo launch` command the workflow's train rule builds, trains, checkpoints and exports
the weights of the same 4 ranks under torchrun on one machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.factories import world_with_mixtures
from tests.slurm_nodes import NODES, slurm_nodes  # noqa: F401 (the session fixture)

CUMO = str(Path(sys.executable).with_name("cumo"))
STEPS, SAVE_EVERY = 4, 2  # 64 samples, global batch 16 (4 ranks x micro-batch 4), one epoch


def test_tasks_run_on_both_nodes_each_under_its_own_name_and_address(slurm_nodes):  # noqa: F811
    script = 'echo "$(hostname) $SLURM_PROCID $(getent hosts "$(hostname)" | cut -d" " -f1)"'
    lines = slurm_nodes.run("srun", "--nodes=2", "--ntasks-per-node=2", "sh", "-c", script).splitlines()
    assert sorted(lines) == sorted(
        f"{node} {rank} {address}"
        for index, (node, address) in enumerate(NODES.items())
        for rank in (2 * index, 2 * index + 1)
    )


def train_command(world: Path, out: Path, *launch: str) -> list[str]:
    """`cumo launch ...` as workflow/rules/train.smk writes it, on a 64-sample pretrain world."""
    return [
        CUMO, "launch", *launch, "--device", "cpu", "--", "train", "--stage", "pretrain", "--preset", "tiny",
        "--data", str(world / "pretrain.arrow"), "--data-root", str(world), "--out", str(out / "model"),
        "--checkpoints", str(out / "checkpoints"), "--save-every", str(SAVE_EVERY), "--workers", "0",
        "--set", "micro_batch_size=4", "--set", "epochs=1",
    ]  # fmt: skip


def curve(out: Path) -> list[tuple]:
    """(step, loss, grad norm) of each step: the metrics without their timings."""
    rows = (json.loads(line) for line in (out / "model" / "metrics.jsonl").read_text().splitlines())
    return [(row["step"], row["loss"], row["grad_norm"]) for row in rows]


@pytest.mark.slow
def test_two_nodes_train_checkpoint_and_export_the_weights_of_one(slurm_nodes, tmp_path):  # noqa: F811
    world = world_with_mixtures(tmp_path / "world", {"pretrain": 64})
    # One thread per rank on both sides, as torchrun sets it: summation order then depends on the ranks only
    # (with Slurm's default, all of a node's cores, step 4's loss differed in the 8th digit).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one_node = subprocess.Popen(
        train_command(world, tmp_path / "one", "--processes", "4"),
        env=env,
        stdout=open(tmp_path / "one.log", "w"),
        stderr=subprocess.STDOUT,
    )
    two = tmp_path / "two"
    # The Slurm resources the train rule asks for a 2-node stage (workflow/rules/common.smk: train_*).
    job = slurm_nodes.run(
        "sbatch", "--parsable", "--export=ALL,OMP_NUM_THREADS=1", "--nodes=2", "--ntasks-per-node=2", "--cpus-per-task=1",
        f"--output={tmp_path / 'two.log'}", "--wrap",
        " ".join(train_command(world, two, "--nodes", "2", "--processes", "2", "--cpus-per-task", "1")),
    ).strip()  # fmt: skip
    state = slurm_nodes.wait(job, timeout_s=600)
    assert one_node.wait(timeout=600) == 0, (tmp_path / "one.log").read_text()[-5000:]
    assert state == "COMPLETED", (tmp_path / "two.log").read_text()[-5000:]

    # Both slurmd started tasks of the job's step: its ranks ran on both nodes.
    for node in NODES:
        assert f"launch task StepId={job}.0 " in (slurm_nodes.root / f"slurmd-{node}.log").read_text(), node
    saved = sorted(path.name for path in (two / "checkpoints").glob("checkpoint-*"))
    assert saved == [f"checkpoint-{step}" for step in range(SAVE_EVERY, STEPS + 1, SAVE_EVERY)]
    assert (two / "model" / "finished.json").is_file()
    assert curve(two) == curve(tmp_path / "one")
    weights, expected = (load_file(out / "model" / "model.safetensors") for out in (two, tmp_path / "one"))
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], expected[name]) for name in weights)
