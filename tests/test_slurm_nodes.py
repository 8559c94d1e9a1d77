"""The multi-node path for real (issue 18), on a two-node Slurm cluster (tests/slurm_nodes.py): the tiny run's
pretrain on 2 nodes x 2 CPU ranks, through Snakemake's Slurm executor as the paper's sft is (an `mpi` job whose
`cumo launch --nodes 2` runs srun), trains, checkpoints and exports the weights of the same 4 ranks under
torchrun on one machine."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.slurm_nodes import NODES, slurm_nodes  # noqa: F401 (the session fixture)
from tests.test_slurm import ON_THIS_CLUSTER, scale_to_the_node
from tests.test_slurm_profile import make_slurm_profile, user_env
from tests.tiny_dag import snakemake, started, tiny_repository, wait_until  # noqa: F401 (started: a fixture)

CUMO = str(Path(sys.executable).with_name("cumo"))
PRETRAIN = "results/tiny/models/tiny/pretrain"
# 64 samples, one epoch, global batch 16 = 4 ranks x micro-batch 4 (the tiny recipe's 8 fits 2 ranks only).
SIZES, RECIPE, STEPS = {"pretrain": 64, "pft": 32, "sft": 32}, {"micro_batch_size": 4, "epochs": 1}, 4


def test_tasks_run_on_both_nodes_each_under_its_own_name_and_address(slurm_nodes):  # noqa: F811
    script = 'echo "$(hostname) $SLURM_PROCID $(getent hosts "$(hostname)" | cut -d" " -f1)"'
    lines = slurm_nodes.run("srun", "--nodes=2", "--ntasks-per-node=2", "sh", "-c", script).splitlines()
    assert sorted(lines) == sorted(
        f"{node} {rank} {address}"
        for index, (node, address) in enumerate(NODES.items())
        for rank in (2 * index, 2 * index + 1)
    )


def two_node_repository(root: Path) -> Path:
    """The tiny run with pretrain on 2 nodes (train.nodes) on a 64-sample world."""
    repository = tiny_repository(root)
    path = repository / "config" / "tiny.yaml"
    config = yaml.safe_load(path.read_text())
    config["synthetic"]["sizes"] = SIZES
    config["train"]["nodes"]["pretrain"] = 2
    config["train"]["recipe"] = {"pretrain": RECIPE}
    path.write_text(yaml.safe_dump(config))
    return repository


def curve(model: Path) -> list[tuple]:
    """(step, loss, grad norm) of each step: the metrics without their timings."""
    rows = (json.loads(line) for line in (model / "metrics.jsonl").read_text().splitlines())
    return [(row["step"], row["loss"], row["grad_norm"]) for row in rows]


@pytest.mark.slow
def test_a_two_node_stage_through_the_slurm_executor_equals_one_node(slurm_nodes, tmp_path, started):  # noqa: F811
    repository = two_node_repository(tmp_path / "run")
    scale_to_the_node(repository)
    home = tmp_path / "home"  # `make slurm-profile` of a user with this home, as tests/test_slurm.py does
    assert make_slurm_profile(home).returncode == 0
    user = user_env(slurm_nodes.env, home)
    run = snakemake(
        repository, user, "--profile", "slurm", *ON_THIS_CLUSTER, PRETRAIN, enter=slurm_nodes.enter
    )
    started.append(run)
    data, world = repository / "results/tiny/data/pretrain.arrow", repository / "results/tiny/world"
    wait_until("the pretrain mixture", lambda: (data.parent / "pretrain.stats.json").is_file(), run)
    one = tmp_path / "one"
    overrides = [arg for field, value in RECIPE.items() for arg in ("--set", f"{field}={value}")]
    local = subprocess.Popen(
        [CUMO, "launch", "--processes", "4", "--device", "cpu", "--", "train", "--stage", "pretrain",
         "--preset", "tiny", "--data", str(data), "--data-root", str(world), "--out", str(one / "model"),
         "--checkpoints", str(one / "checkpoints"), "--workers", "0", *overrides],
        env=slurm_nodes.env, stdout=open(tmp_path / "one.log", "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    started.append(local)
    log, _ = run.communicate(timeout=900)
    train_log = repository / "results/tiny/logs/train/tiny/pretrain.log"
    assert run.returncode == 0, f"{log}\n{train_log.read_text()[-5000:] if train_log.is_file() else ''}"
    assert local.wait(timeout=600) == 0, (tmp_path / "one.log").read_text()[-5000:]

    # The train rule's job: an mpi job of 2 nodes x 2 tasks, whose step's tasks both slurmd started.
    assert "nodes=2, tasks_per_node=2, cpus_per_task=1, mpi=srun" in log, log
    assert "cumo launch --nodes 2 --cpus-per-task 1 --processes 2 --device cpu -- train" in log, log
    (job,) = [line.split("SLURM jobid ")[1].split()[0] for line in log.splitlines() if "rule_train" in line]
    for node in NODES:
        assert f"launch task StepId={job}.0 " in (slurm_nodes.root / f"slurmd-{node}.log").read_text(), node
    assert (repository / f"checkpoints/tiny/tiny/pretrain/checkpoint-{STEPS}").is_dir()
    model = repository / PRETRAIN
    assert (model / "finished.json").is_file()
    assert len(curve(model)) == STEPS and curve(model) == curve(one / "model")
    weights, expected = (load_file(path / "model.safetensors") for path in (model, one / "model"))
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], expected[name]) for name in weights)
