"""The multi-node path for real (issue 18), on a two-node Slurm cluster (tests/slurm_nodes.py): the tiny run's
pretrain on 2 nodes x 2 CPU ranks, through Snakemake's Slurm executor as the paper's sft is (an `mpi` job
whose `cumo launch --nodes 2` runs srun), survives a SIGTERM to its steps and the loss of one node's ranks,
and exports the weights of the same 4 ranks under torchrun on one machine, uninterrupted."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cumo.train.checkpoint import latest_complete
from cumo.train.trainer import METRICS_FILE as METRICS
from tests.slurm_nodes import NODES, slurm_nodes  # noqa: F401 (the session fixture)
from tests.test_slurm import ON_THIS_CLUSTER, running_jobs, scale_to_the_node, submissions
from tests.test_slurm_profile import make_slurm_profile, user_env
from tests.tiny_dag import (  # noqa: F401 (started: a fixture)
    LOCAL_TINY,
    snakemake,
    started,
    tiny_repository,
    wait_until,
)

CUMO = str(Path(sys.executable).with_name("cumo"))
PRETRAIN = "results/tiny/models/tiny/pretrain"
# 128 samples, one epoch, global batch 16 = 4 ranks x micro-batch 4 (the tiny recipe's 8 fits 2 ranks only):
# 8 steps, room for a save mid-stage and for steps after each resume.
SIZES, RECIPE, STEPS = {"pretrain": 128, "pft": 32, "sft": 32}, {"micro_batch_size": 4, "epochs": 1}, 8


def test_tasks_run_on_both_nodes_each_under_its_own_name_and_address(slurm_nodes):  # noqa: F811
    script = 'echo "$(hostname) $SLURM_PROCID $(getent hosts "$(hostname)" | cut -d" " -f1)"'
    lines = slurm_nodes.run("srun", "--nodes=2", "--ntasks-per-node=2", "sh", "-c", script).splitlines()
    assert sorted(lines) == sorted(
        f"{node} {rank} {address}"
        for index, (node, address) in enumerate(NODES.items())
        for rank in (2 * index, 2 * index + 1)
    )


def two_node_repository(root: Path) -> Path:
    """The tiny run with pretrain on 2 nodes (train.nodes) on a 128-sample world."""
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


def rank_processes(job: int, node: str) -> dict[int, int]:
    """{pid: rank} of the tasks of `job`'s step 0 on `node`: the nodes share this machine's pids, and a task's
    environment says which node's slurmd started it (srun, on the first node, has that node's name)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            raw = (entry / "environ").read_bytes() if entry.name.isdigit() else b""
        except OSError:  # gone meanwhile
            continue
        env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
        if (env.get("SLURM_JOB_ID"), env.get("SLURM_STEP_ID"), env.get("SLURMD_NODENAME")) == (
            str(job),
            "0",
            node,
        ):
            found[int(entry.name)] = int(env["SLURM_PROCID"])
    return found


def first_step(train_log: str) -> int:
    """The step a job's progress bar started at (tqdm's initial=step): 0, or the step it resumed from."""
    return int(re.search(rf"pretrain:\s+\d+%\|[^|]*\|\s*(\d+)/{STEPS}", train_log).group(1))


@pytest.mark.slow
def test_a_two_node_stage_through_the_slurm_executor_survives_faults_and_equals_one_node(
    slurm_nodes,  # noqa: F811
    tmp_path,
    started,  # noqa: F811
):
    """One run of the two-node pretrain through `snakemake --profile slurm`, and two faults on the way:

    1. SIGTERM to the job's steps mid-stage (what the profile's --signal=TERM@300 sends): every rank on both
       nodes gets it, they save one complete checkpoint together and exit 75;
    2. the resubmitted job resumes from that step and then loses one node: its ranks are SIGKILLed (a node
       that died, an OOM kill); srun ends the job and names the node;
    3. the next resubmission resumes from the last complete checkpoint, and the stage ends with the weights
       and the loss curve of the same 4 ranks under torchrun on one machine, uninterrupted, bit for bit."""
    repository = two_node_repository(tmp_path / "run")
    scale_to_the_node(repository)
    # The data on this machine: the data rules' Slurm path is tests/test_slurm.py's, and each Slurm job costs
    # the executor's status checks (1, 11, 21, ... s apart) on top of its run.
    data, world = repository / "results/tiny/data/pretrain.arrow", repository / "results/tiny/world"
    prepared = snakemake(repository, dict(os.environ), *LOCAL_TINY, str(data.relative_to(repository)))
    started.append(prepared)
    assert prepared.wait(timeout=300) == 0, prepared.communicate()[0]
    home = tmp_path / "home"  # `make slurm-profile` of a user with this home, as tests/test_slurm.py does
    assert make_slurm_profile(home).returncode == 0
    user = user_env(slurm_nodes.env, home)
    run = snakemake(
        repository, user, "--profile", "slurm", *ON_THIS_CLUSTER, PRETRAIN, enter=slurm_nodes.enter
    )
    started.append(run)
    checkpoints = repository / "checkpoints/tiny/tiny/pretrain"
    metrics = checkpoints / METRICS
    train_log = repository / "results/tiny/logs/train/tiny/pretrain.log"

    def steps() -> int:
        return len(metrics.read_text().splitlines()) if metrics.is_file() else 0

    # 1. SIGTERM to the steps of the first job, once it trains.
    wait_until("pretrain's first step", lambda: steps() >= 1, run)
    (first,) = running_jobs(slurm_nodes, "train")
    slurm_nodes.run("scancel", "--signal=TERM", str(first))  # to the job's steps, as --signal=TERM@300 does

    # The same 4 ranks on one machine, uninterrupted, while Snakemake sees the first job end and resubmits.
    one = tmp_path / "one"
    overrides = [arg for field, value in RECIPE.items() for arg in ("--set", f"{field}={value}")]
    local = subprocess.Popen(
        [CUMO, "launch", "--processes", "4", "--device", "cpu", "--", "train", "--stage", "pretrain",
         "--preset", "tiny", "--data", str(data), "--data-root", str(world), "--out", str(one / "model"),
         "--checkpoints", str(one / "checkpoints"), "--workers", "0", *overrides],
        env=slurm_nodes.env, stdout=open(tmp_path / "one.log", "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    started.append(local)

    # 2. The resubmission resumes from the saved step; once it trained one more, node 2's ranks die.
    (second,) = wait_until(
        "the resubmitted pretrain", lambda: set(running_jobs(slurm_nodes, "train")) - {first}, run
    )
    saved = latest_complete(checkpoints)  # the first job's last save, over by now
    assert saved is not None and 1 <= int(saved.name.split("-")[1]) < STEPS, sorted(checkpoints.iterdir())
    saved_step = int(saved.name.split("-")[1])
    wait_until(f"step {saved_step + 1}", lambda: steps() > saved_step, run)
    resumed = train_log.read_text()
    assert first_step(resumed) == saved_step, resumed
    ranks = rank_processes(second, "cumo2")
    assert sorted(ranks.values()) == [2, 3], ranks
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)

    # 3. The next resubmission resumes from the last complete checkpoint and finishes.
    log, _ = run.communicate(timeout=900)
    assert run.returncode == 0, f"{log}\n{train_log.read_text()[-5000:]}"
    assert local.wait(timeout=600) == 0, (tmp_path / "one.log").read_text()[-5000:]
    assert submissions(log, "train")[:2] == [first, second] and len(submissions(log, "train")) == 3, log
    assert "rule mixture" not in log and "rule synthetic" not in log, log  # the data made above was kept
    failed = dict(re.findall(r"SLURM-job '(\d+)' failed, SLURM status is: '(\w+)'", log))
    assert failed == {str(first): "FAILED", str(second): "FAILED"}, failed
    # Each failed job's rule log, as Snakemake printed it when the job failed (profiles/slurm:
    # show-failed-logs).
    preempted, lost = (
        log.split(f"SLURM-job '{job}' failed")[1].split("Error in rule")[0] for job in (first, second)
    )
    for rank in range(4):  # every rank got the signal itself, not only the others' word for it ...
        assert f"rank {rank}: stopping for preemption (signal received here: SIGTERM)" in preempted, preempted
    for index, node in enumerate(NODES):  # ... and exited 75 once they had all saved
        tasks = f"tasks {2 * index}-{2 * index + 1}"
        assert f"srun: error: {node}: {tasks}: Exited with exit code 75" in preempted, preempted
    assert first_step(preempted) == 0
    assert json.loads((saved / "complete.json").read_text())["world_size"] == 4
    assert {path.name for path in saved.glob("rng-rank*.pt")} == {f"rng-rank{rank}.pt" for rank in range(4)}
    assert "srun: error: cumo2: tasks 2-3: Killed" in lost, lost  # the lost node, by name
    assert first_step(train_log.read_text()) == saved_step, train_log.read_text()
    assert sorted(int(path.name.split("-")[1]) for path in checkpoints.glob("checkpoint-*")) == [
        saved_step,
        STEPS,
    ]

    # The train rule's job: an mpi job of 2 nodes x 2 tasks, whose step's tasks both slurmd started.
    assert "nodes=2, tasks_per_node=2, cpus_per_task=1, mpi=srun" in log, log
    assert "cumo launch --nodes 2 --cpus-per-task 1 --processes 2 --device cpu -- train" in log, log
    for node in NODES:
        assert f"launch task StepId={first}.0 " in (slurm_nodes.root / f"slurmd-{node}.log").read_text(), node
    model = repository / PRETRAIN
    assert (model / "finished.json").is_file()
    assert len(curve(model)) == STEPS and curve(model) == curve(one / "model")  # every step logged once
    weights, expected = (load_file(path / "model.safetensors") for path in (model, one / "model"))
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], expected[name]) for name in weights)
