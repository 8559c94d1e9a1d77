"""Resume and preemption (`cumo.train.checkpoint`): complete checkpoints, keep-K, RNG, SIGTERM.

The fast tests drive save/load in one process with a stand-in engine that writes files as DeepSpeed does;
the slow ones run real DeepSpeed on 2 CPU ranks with torchrun (`train_scripts/toy_resume.py`) and compare
an interrupted-and-resumed run with an uninterrupted one, bit for bit.
"""

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cumo.train.checkpoint import (
    EXIT_PREEMPTED,
    MARKER,
    Preemption,
    is_finished,
    latest_complete,
    load,
    mark_finished,
    prune,
    rng_state,
    save,
    set_rng_state,
)
from tests.slurm_cluster import slurm_cluster  # noqa: F401 (the session fixture)

TOY_RUN = Path(__file__).parent / "train_scripts" / "toy_resume.py"
SUPERVISE = Path(__file__).parent / "train_scripts" / "supervise.py"


class FakeEngine:
    """What `save`/`load` use of a DeepSpeed engine: a tag directory under `save_dir` with the
    client_state in it, and `(path, client_state)` back from load."""

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        assert not save_latest, "the `latest` file says nothing about completeness"
        (Path(save_dir) / tag).mkdir(parents=True)
        torch.save(client_state, Path(save_dir) / tag / "mp_rank_00_model_states.pt")

    def load_checkpoint(self, load_dir, tag):
        path = Path(load_dir) / tag
        return str(path), torch.load(path / "mp_rank_00_model_states.pt")


def draws() -> tuple:
    return random.random(), np.random.rand(), torch.rand(1).item()


def names(checkpoint_dir: Path) -> list[str]:
    return sorted(
        (path.name for path in checkpoint_dir.glob("checkpoint-*")), key=lambda name: int(name.split("-")[1])
    )


# --- RNG, save and load in one process ----------------------------------------------------------------


def test_rng_round_trip_through_a_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draws()  # move off the seeds' initial states, including NumPy's cached Gaussian
    np.random.normal()
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = draws() + (np.random.normal(),)
    draws()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() + (np.random.normal(),) == expected


def test_save_then_load_returns_client_state_and_the_rng_of_the_save(tmp_path):
    save(FakeEngine(), tmp_path, 3, {"data_position": 17, "losses": [0.5, 0.25]}, keep=2)
    expected = draws()
    draws()
    client_state = load(FakeEngine(), tmp_path)
    assert client_state == {"data_position": 17, "losses": [0.5, 0.25], "step": 3}
    assert draws() == expected
    assert json.loads((tmp_path / "checkpoint-3" / MARKER).read_text())["world_size"] == 1


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert load(FakeEngine(), tmp_path / "never-written") is None


def test_a_client_state_step_that_disagrees_is_refused(tmp_path):
    with pytest.raises(ValueError, match="client_state\\['step'\\] is 2 but step=3"):
        save(FakeEngine(), tmp_path, 3, {"step": 2}, keep=1)


def test_a_checkpoint_of_another_world_size_is_refused_with_the_fix(tmp_path):
    save(FakeEngine(), tmp_path, 1, {}, keep=1)
    marker = tmp_path / "checkpoint-1" / MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "world_size": 8}))
    with pytest.raises(ValueError, match="saved by 8 ranks and this run has 1.*Resume with 8 ranks"):
        load(FakeEngine(), tmp_path)


RUN = {"stage": {"epochs": 3, "trainable": ("connector",)}, "mixture_sha256": "a" * 64}


def test_a_checkpoint_of_another_run_is_refused_naming_what_changed(tmp_path):
    save(FakeEngine(), tmp_path, 5, {}, keep=1, run=RUN)
    assert load(FakeEngine(), tmp_path, RUN)["step"] == 5  # tuples come back as lists: still the same run
    changed = {"stage": {"epochs": 4, "trainable": ("connector",)}, "mixture_sha256": "b" * 64}
    with pytest.raises(ValueError) as refused:
        load(FakeEngine(), tmp_path, changed)
    message = str(refused.value)
    assert f"{tmp_path / 'checkpoint-5'} was saved by another run" in message
    assert "mixture_sha256: saved 'aaaa" in message and "stage.epochs: saved 3, now 4" in message
    assert "trainable" not in message and f"Delete {tmp_path} to train this run from the start" in message


def test_a_checkpoint_that_does_not_say_its_run_is_resumed_with_a_warning(tmp_path, caplog):
    save(FakeEngine(), tmp_path, 2, {}, keep=1)  # as cumo saved before checkpoints named their run
    with caplog.at_level(logging.WARNING):
        assert load(FakeEngine(), tmp_path, RUN)["step"] == 2
    assert "does not say which run saved it" in caplog.text


def test_half_written_checkpoints_are_reported_and_the_previous_one_is_used(tmp_path, caplog):
    for step in (2, 4, 6):
        save(FakeEngine(), tmp_path, step, {"position": step}, keep=3)
    (tmp_path / "checkpoint-6" / MARKER).unlink()  # killed before the marker
    with open(tmp_path / "checkpoint-4" / "rng-rank0.pt", "r+b") as file:  # a file cut short
        file.truncate(100)
    (tmp_path / "checkpoint-8").mkdir()  # killed right after DeepSpeed created the directory

    assert latest_complete(tmp_path) == tmp_path / "checkpoint-2"
    assert load(FakeEngine(), tmp_path)["position"] == 2
    report = caplog.text
    assert f"ignoring half-written checkpoint {tmp_path / 'checkpoint-8'}: no {MARKER}" in report
    assert f"ignoring half-written checkpoint {tmp_path / 'checkpoint-6'}: no {MARKER}" in report
    assert "checkpoint-4: rng-rank0.pt has 100 bytes" in report

    # training passes step 4 again: the truncated one is replaced by a complete one
    save(FakeEngine(), tmp_path, 4, {"position": 4}, keep=3)
    assert latest_complete(tmp_path) == tmp_path / "checkpoint-4"


def test_keep_k_keeps_the_newest_complete_ones(tmp_path):
    for step in range(1, 6):
        save(FakeEngine(), tmp_path, step, {}, keep=2)
        assert names(tmp_path) == [f"checkpoint-{s}" for s in range(max(1, step - 1), step + 1)]

    (tmp_path / "checkpoint-3").mkdir()  # half-written, older than the next save: deleted
    (tmp_path / "checkpoint-9").mkdir()  # half-written, newer: left for training to overwrite
    save(FakeEngine(), tmp_path, 6, {}, keep=2)
    assert names(tmp_path) == ["checkpoint-5", "checkpoint-6", "checkpoint-9"]


def test_prune_never_deletes_the_checkpoint_just_written(tmp_path):
    """After resuming from an older checkpoint (the newer one was chosen away), the one just written stays
    even when `keep` newer complete ones exist."""
    for step in (5, 10):
        save(FakeEngine(), tmp_path, step, {}, keep=2)
    save(FakeEngine(), tmp_path, 3, {}, keep=1)
    assert names(tmp_path) == ["checkpoint-3", "checkpoint-10"]
    assert prune(tmp_path, 1, newest=tmp_path / "checkpoint-3") == []


def test_keep_must_be_at_least_one(tmp_path):
    with pytest.raises(ValueError, match="keep at least 1"):
        save(FakeEngine(), tmp_path, 1, {}, keep=0)


# --- preemption and the finished mark ----------------------------------------------------------------


@pytest.fixture
def restore_sigterm():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_is_recorded_not_fatal(restore_sigterm):
    preemption = Preemption()
    assert not preemption.requested and not preemption.agree()
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.requested and preemption.agree()


def test_preemption_outside_the_main_thread_says_why(restore_sigterm):
    errors = []

    def create():
        try:
            Preemption()
        except RuntimeError as error:
            errors.append(str(error))

    thread = threading.Thread(target=create)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "must be created in the main thread" in errors[0]


def test_finished_mark(tmp_path):
    assert not is_finished(tmp_path)
    mark_finished(tmp_path, {"world_size": 2})
    assert is_finished(tmp_path)
    assert json.loads((tmp_path / "finished.json").read_text()) == {"world_size": 2}


# --- real DeepSpeed, 2 CPU ranks ---------------------------------------------------------------------


def toy_command(
    checkpoints: Path, result: Path, zero: int, *extra: str, supervised: bool = False
) -> list[str]:
    """torchrun on 2 ranks of the toy run; `supervised`: under `cumo launch`'s supervisor (launch.supervise)."""
    command = [sys.executable, str(SUPERVISE)] if supervised else []
    command += [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(TOY_RUN), "--checkpoints", str(checkpoints), "--result", str(result)]
    return command + ["--zero", str(zero), "--keep", "3", *extra]


TOY_ENVIRONMENT = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def toy_run(
    checkpoints: Path, result: Path, zero: int, *extra: str, supervised: bool = False
) -> subprocess.CompletedProcess:
    # The first DeepSpeed run on a machine compiles its shared-memory comm op (about 2 min on 2 cores).
    command = toy_command(checkpoints, result, zero, *extra, supervised=supervised)
    return subprocess.run(command, capture_output=True, text=True, env=TOY_ENVIRONMENT, timeout=300)


def succeeded(run: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return run


def assert_same_run(result: Path, reference: dict, resumed_from: int) -> None:
    resumed = torch.load(result)
    assert resumed["resumed_from"] == resumed_from
    assert resumed["losses"] == reference["losses"]  # every step's loss, exactly
    assert resumed["lrs"] == reference["lrs"]
    assert resumed["weights"].keys() == reference["weights"].keys()
    for name, value in reference["weights"].items():
        assert torch.equal(resumed["weights"][name], value), name


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def reference(request, tmp_path_factory):
    """An uninterrupted 8-step run: its result, and its checkpoints (4, 6 and 8 with keep 3)."""
    directory = tmp_path_factory.mktemp(f"reference-zero{request.param}")
    succeeded(toy_run(directory / "checkpoints", directory / "result.pt", request.param))
    result = torch.load(directory / "result.pt")
    assert result["resumed_from"] == 0 and len(result["losses"]) == 8
    assert len(set(result["losses"])) == 8  # training moves: the comparison below is not trivially true
    assert not (directory / "checkpoints" / "latest").exists()  # DeepSpeed's tag file is not what we trust
    return request.param, directory, result


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights_and_losses(reference, tmp_path):
    zero, _, expected = reference
    killed = toy_run(tmp_path / "checkpoints", tmp_path / "unused.pt", zero, "--crash-after", "5")
    assert killed.returncode != 0 and not (tmp_path / "unused.pt").exists()
    assert names(tmp_path / "checkpoints") == ["checkpoint-2", "checkpoint-4"]

    succeeded(toy_run(tmp_path / "checkpoints", tmp_path / "result.pt", zero))
    assert_same_run(tmp_path / "result.pt", expected, resumed_from=4)
    assert names(tmp_path / "checkpoints") == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]


# The marker and its sizes, and agreeing on a signal, do not depend on the ZeRO stage: ZeRO-2 only.
@pytest.mark.slow
@pytest.mark.parametrize("reference", [2], ids=["zero2"], indirect=True)
def test_half_written_checkpoints_are_skipped_by_a_real_restart(reference, tmp_path):
    zero, directory, expected = reference
    shutil.copytree(directory / "checkpoints", tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "checkpoint-8" / MARKER).unlink()
    with open(tmp_path / "checkpoints" / "checkpoint-6" / "mp_rank_00_model_states.pt", "r+b") as file:
        file.truncate(1000)

    run = succeeded(toy_run(tmp_path / "checkpoints", tmp_path / "result.pt", zero))
    assert_same_run(tmp_path / "result.pt", expected, resumed_from=4)
    assert f"checkpoint-8: no {MARKER}" in run.stderr
    assert "checkpoint-6: mp_rank_00_model_states.pt has 1000 bytes" in run.stderr
    assert latest_complete(tmp_path / "checkpoints") == tmp_path / "checkpoints" / "checkpoint-8"


@pytest.mark.slow
@pytest.mark.parametrize("reference", [2], ids=["zero2"], indirect=True)
def test_sigterm_to_one_rank_saves_on_every_rank_and_resumes_there(reference, tmp_path):
    zero, _, expected = reference
    preempted = toy_run(tmp_path / "checkpoints", tmp_path / "unused.pt", zero, "--sigterm-at", "3")
    # torchrun exits 1 when a rank fails and tears down the others: the first rank out exits with
    # EXIT_PREEMPTED, the rest either do too or are stopped by torchrun (-15) after the save is complete
    exit_codes = re.findall(r"exitcode  : (-?\d+)", preempted.stderr)
    assert preempted.returncode != 0 and exit_codes, preempted.stderr[-6000:]
    assert str(EXIT_PREEMPTED) in exit_codes and set(exit_codes) <= {str(EXIT_PREEMPTED), "-15"}, exit_codes
    assert "rank 1: stopping for preemption (signal received here: SIGTERM)" in preempted.stderr
    assert "rank 0: stopping for preemption (signal received here: none)" in preempted.stderr
    # off the every-2-steps schedule: the step the signal came in
    checkpoint = tmp_path / "checkpoints" / "checkpoint-3"
    assert latest_complete(tmp_path / "checkpoints") == checkpoint
    assert {"rng-rank0.pt", "rng-rank1.pt"} <= set(json.loads((checkpoint / MARKER).read_text())["files"])

    succeeded(toy_run(tmp_path / "checkpoints", tmp_path / "result.pt", zero))
    assert_same_run(tmp_path / "result.pt", expected, resumed_from=3)


def processes_naming(text: str) -> list[int]:
    """The live processes whose command line holds `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:  # ended while read
            continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("reference", [2], ids=["zero2"], indirect=True)
def test_the_ranks_of_a_killed_launcher_save_stop_and_resume(reference, tmp_path):
    """SIGKILL to torchrun mid-run (as when Snakemake's process group is killed): the ranks, each in a session
    of its own, get SIGTERM from the kernel, save at the step boundary and exit; none trains on. The run
    resumes from that checkpoint to the uninterrupted run's weights."""
    zero, _, expected = reference
    checkpoints = tmp_path / "checkpoints"
    killed = toy_run(checkpoints, tmp_path / "unused.pt", zero, "--kill-launcher-at", "3")
    # toy_run returns once every rank has closed torchrun's stdout and stderr: the ranks have exited.
    log = killed.stderr[-6000:]
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "unused.pt").exists(), log
    assert processes_naming(str(checkpoints)) == []
    assert "rank 0: stopping for preemption (signal received here: SIGTERM)" in log
    # The step torchrun died in (rank 0 waits in it for the kernel's SIGTERM).
    assert latest_complete(checkpoints) == checkpoints / "checkpoint-3", names(checkpoints)

    succeeded(toy_run(checkpoints, tmp_path / "result.pt", zero))
    assert_same_run(tmp_path / "result.pt", expected, resumed_from=3)


def wait_for_file(path: Path, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-6000:]
        assert time.monotonic() < deadline, f"no {path} after {timeout_s} s"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("reference", [2], ids=["zero2"], indirect=True)
def test_sigterm_to_every_process_of_a_launch_saves_and_exits_75(reference, tmp_path):
    """SIGTERM to every process of the job at once, as Slurm sends it (`scancel --signal=TERM --full`, a
    preemption): `cumo launch`'s supervisor, torchrun and the ranks. torchrun gets the signal twice (from Slurm
    and from the supervisor) and may die of the second while its ranks save; the supervisor waits for them
    and exits 75, where torchrun alone exits 1. The same command then resumes to the uninterrupted weights."""
    zero, _, expected = reference
    checkpoints = tmp_path / "checkpoints"
    command = toy_command(
        checkpoints, tmp_path / "unused.pt", zero, "--wait-for-signal-at", "3", supervised=True
    )
    job = subprocess.Popen(command, env=TOY_ENVIRONMENT, stderr=subprocess.PIPE, text=True)
    wait_for_file(Path(f"{checkpoints}.waiting"), job)
    for pid in processes_naming(str(checkpoints)):  # the supervisor, torchrun and both ranks
        os.kill(pid, signal.SIGTERM)
    _, log = job.communicate(timeout=300)
    assert job.returncode == EXIT_PREEMPTED, log[-6000:]
    assert "the ranks saved a checkpoint and stopped on a signal (exit 75)" in log
    assert processes_naming(str(checkpoints)) == []
    assert latest_complete(checkpoints) == checkpoints / "checkpoint-3", names(checkpoints)

    resumed = toy_run(checkpoints, tmp_path / "result.pt", zero, supervised=True)
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    assert_same_run(tmp_path / "result.pt", expected, resumed_from=3)


def sbatch_toy(cluster, directory: Path, command: list[str]) -> str:
    """Submit `command` as a batch job that execs it (the shell must not stay between Slurm and the job: it
    would die of a SIGTERM to the whole job, and Slurm kills what is left of a batch step when its script
    ends); its job id."""
    script = directory / "job.sh"
    script.write_text("#!/bin/sh\nexec " + " ".join(command) + "\n")
    return cluster.run(
        "sbatch",
        "--parsable",
        "--export=ALL,DS_ACCELERATOR=cpu,OMP_NUM_THREADS=1",
        f"--output={directory / 'job-%j.log'}",
        f"--chdir={directory}",
        "--cpus-per-task=2",
        "--mem=4000",
        str(script),
    ).strip()


@pytest.mark.slow
@pytest.mark.parametrize("reference", [2], ids=["zero2"], indirect=True)
def test_slurm_sigterm_to_the_whole_job_saves_exits_75_and_resumes(reference, slurm_cluster, tmp_path):  # noqa: F811
    """On the real cluster, a batch job that execs the supervised toy run gets `scancel --signal=TERM --full`
    mid-run (what a preemption and `--signal=B:TERM` deliver: every process of the batch step): it saves,
    Slurm records exit code 75, and the resubmitted job resumes to the uninterrupted run's weights."""
    zero, _, expected = reference
    checkpoints = tmp_path / "checkpoints"
    command = toy_command(
        checkpoints, tmp_path / "unused.pt", zero, "--wait-for-signal-at", "3", supervised=True
    )
    job = sbatch_toy(slurm_cluster, tmp_path, command)
    log = lambda job: (tmp_path / f"job-{job}.log").read_text()[-6000:]  # noqa: E731
    deadline = time.monotonic() + 300
    while not Path(f"{checkpoints}.waiting").exists():
        state = slurm_cluster.run(
            "squeue", "--noheader", "--states=all", f"--jobs={job}", "--format=%T"
        ).strip()
        assert state in ("PENDING", "CONFIGURING", "RUNNING"), f"{state}: {log(job)}"
        assert time.monotonic() < deadline, f"job {job} not at step 3 after 300 s"
        time.sleep(0.2)
    slurm_cluster.run("scancel", "--signal=TERM", "--full", job)
    assert slurm_cluster.wait(job, timeout_s=300) == "FAILED", log(job)
    assert "ExitCode=75:0" in slurm_cluster.run("scontrol", "show", "job", job), log(job)
    assert latest_complete(checkpoints) == checkpoints / "checkpoint-3", names(checkpoints)

    again = sbatch_toy(
        slurm_cluster, tmp_path, toy_command(checkpoints, tmp_path / "result.pt", zero, supervised=True)
    )
    assert slurm_cluster.wait(again, timeout_s=300) == "COMPLETED", log(again)
    assert_same_run(tmp_path / "result.pt", expected, resumed_from=3)
