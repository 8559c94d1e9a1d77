"""One writer at a time (cumo/writer_lock.py): a second writer stops naming the holder, a lock whose holder is
gone is taken over, on this host by pid and start time, across hosts by the Slurm job's state."""

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from cumo import writer_lock
from cumo.writer_lock import LockHeld, WriterLock
from tests.factories import write_lock

# A second process that holds the lock until its stdin closes.
HOLDER = """
import sys
from cumo.writer_lock import WriterLock
with WriterLock(sys.argv[1], "the checkpoints"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_stops_naming_the_holder_and_the_fix(tmp_path):
    lock = tmp_path / "writer.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(LockHeld) as error:
            with WriterLock(lock, "the checkpoints in ckpt/sft"):
                pytest.fail("two writers at once")
        message = str(error.value)
        assert (
            f"the checkpoints in ckpt/sft are being written by process {holder.pid} on {socket.gethostname()}"
            in message
        )
        assert f"stop process {holder.pid}" in message and f"delete {lock}" in message
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0 and not lock.exists()  # released at the end of the holder's block
    with WriterLock(lock, "the checkpoints"):  # and free again
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / "writer.lock"
    write_lock(lock, dead.pid, process_start=1)
    with caplog.at_level(logging.WARNING), WriterLock(lock, "the answers"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"process {dead.pid} has ended on this host" in caplog.text
    assert not lock.exists()


def test_a_reused_pid_is_not_the_holder(tmp_path):
    """The pid lives, but its process started at another time than the holder's: another process."""
    lock = tmp_path / "writer.lock"
    started = writer_lock._process_start(os.getpid())
    write_lock(lock, os.getpid(), process_start=started - 1)
    with WriterLock(lock, "the answers"):
        assert json.loads(lock.read_text())["process_start"] == started


def test_a_requeued_run_of_the_same_slurm_job_takes_its_own_lock_over(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    lock = tmp_path / "writer.lock"
    write_lock(lock, 7, host="node-that-died", process_start=1, job="4242")
    with WriterLock(lock, "the checkpoints"):
        assert json.loads(lock.read_text())["job"] == "4242"


@pytest.mark.parametrize("active, held", [(True, True), (None, True), (False, False)])
def test_on_another_host_slurm_says_whether_the_holder_is_gone(tmp_path, monkeypatch, active, held):
    """squeue lists the job (held), cannot be asked (held: nothing can tell), or no longer lists it (taken)."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    asked = []
    monkeypatch.setattr(writer_lock, "_slurm_job_active", lambda job: asked.append(job) or active)
    lock = tmp_path / "writer.lock"
    write_lock(lock, os.getpid(), host="gpu07", job="977")
    if held:
        with pytest.raises(LockHeld, match=r"Slurm job 977, process \d+ on gpu07 .* or `scancel 977`"):
            WriterLock(lock, "the checkpoints").__enter__()
    else:
        with WriterLock(lock, "the checkpoints"):
            assert json.loads(lock.read_text())["host"] == socket.gethostname()
    assert asked == ["977"]


def test_on_another_host_without_slurm_the_lock_is_held(tmp_path, monkeypatch):
    lock = tmp_path / "writer.lock"
    write_lock(lock, 1, host="elsewhere", process_start=1)
    with pytest.raises(LockHeld, match="if it is gone already, delete"):
        WriterLock(lock, "the checkpoints").__enter__()


def test_a_lock_that_changed_hands_is_not_removed_at_the_end(tmp_path):
    lock = tmp_path / "writer.lock"
    with WriterLock(lock, "the answers"):
        lock.unlink()  # taken over by someone who judged this process gone
        write_lock(lock, 1, process_start=1)
    assert json.loads(lock.read_text())["pid"] == 1
