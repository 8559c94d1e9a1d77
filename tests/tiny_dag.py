"""The tiny DAG run as a user runs it, for the tests that run the whole workflow (tests/test_slurm.py,
tests/test_rerun.py): a copy of the repository's workflow on a smaller world, snakemake as a process."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPOSITORY = Path(__file__).resolve().parents[1]

# The tiny DAG on a smaller world, so that it runs twice (locally and through Slurm) in a few minutes: every
# rule and benchmark of `make demo`, 45 + 8 + 30 training steps (against its 375 + 125 + 562). These tests
# check what the DAG does with the runs (resumption, resubmission, provenance, equality), not what the model
# learns: tests/test_trainer.py does. Pretrain keeps 45 steps, so it is still running when a test interrupts
# it after STOP_AT.
SMALL_WORLD = {"seed": 0, "per_benchmark": 12, "sizes": {"pretrain": 240, "pft": 64, "sft": 160}}


# `make demo`'s command: this machine, the tiny config in place of the workflow's default (the paper's). Targets
# go after it: --configfile takes every file that follows it.
LOCAL_TINY = ("--configfile", "config/tiny.yaml", "--profile", "profiles/local")


def tiny_repository(root: Path) -> Path:
    """A copy of what a run needs (workflow, config, profiles, envs) with the tiny config on SMALL_WORLD."""
    for folder in ("workflow", "config", "profiles", "envs"):
        shutil.copytree(REPOSITORY / folder, root / folder)
    config_path = root / "config" / "tiny.yaml"
    config_path.write_text(
        yaml.safe_dump(yaml.safe_load(config_path.read_text()) | {"synthetic": SMALL_WORLD})
    )
    return root


def snakemake(
    repository: Path, env: dict, *args: str, new_session: bool = False, enter: tuple[str, ...] = ()
) -> subprocess.Popen:
    """`snakemake *args` in `repository`, output collected; `new_session`: in a process group of its own;
    `enter`: the command it runs under (a cluster's `SlurmCluster.enter`)."""
    bin_dir = str(Path(sys.executable).parent)  # the jobs run `cumo` and `python -m snakemake`: this venv's
    return subprocess.Popen(
        [*enter, f"{bin_dir}/snakemake", *args],
        cwd=repository,
        env={**env, "PATH": bin_dir + ":" + env["PATH"]},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_session,
    )


@pytest.fixture
def started():
    """Processes a test starts and waits for; killed if the test fails first."""
    processes = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_until(what: str, condition, run: subprocess.Popen, timeout_s: float = 600):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert run.poll() is None, f"snakemake ended before {what}:\n{run.communicate()[0]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.2)
    return value


PRETRAIN = "results/tiny/models/tiny/pretrain"
STEPS_LOG = "checkpoints/tiny/tiny/pretrain/metrics.jsonl"  # the running stage's log, one line per step
STOP_AT = 10  # steps pretrain has logged when the tests interrupt it


def wait_for_pretrain_steps(repository: Path, run: subprocess.Popen) -> None:
    log = repository / STEPS_LOG
    wait_until(
        f"{STOP_AT} pretrain steps",
        lambda: log.is_file() and len(log.read_text().splitlines()) >= STOP_AT,
        run,
    )


def resumed_pretrain(repository: Path) -> tuple[int, int]:
    """(step saved when interrupted, total steps) of a finished pretrain that was interrupted once: two
    checkpoints (the interruption's save, then the end) and every step logged exactly once."""
    log = repository / STEPS_LOG
    total = json.loads((repository / PRETRAIN / "finished.json").read_text())["steps"]
    saved = sorted(int(path.name.split("-")[1]) for path in log.parent.glob("checkpoint-*"))
    assert len(saved) == 2 and STOP_AT <= saved[0] < saved[1] == total, saved
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, total + 1))  # resumed at the saved step, not at 0
    return saved[0], total
