"""One writer at a time: a lock file beside what a job writes (a training checkpoint folder, an evaluation
shard), naming the process that holds it.

Why: after Snakemake itself was killed and restarted (`--unlock`), the rerun submitted a second job for a
stage whose first Slurm job was still running, both training into one checkpoint folder; two evaluation jobs
appended to one shard file (issue 18). Snakemake's own lock covers one Snakemake process, not the Slurm jobs
it left running.

The lock is a file created with link(2), which fails if the name exists, also on NFS: the portable recipe of
open(2) ("create a unique file on the same filesystem ... and use link(2) to make a link to the lockfile"),
where O_EXCL and flock(2) on NFS depend on the server and the kernel. It holds JSON:

    {"host": ..., "pid": ..., "process_start": ..., "job": SLURM_JOB_ID or null, "started": ISO time}

A second writer stops with a `LockHeld` naming the holder and the fix. A lock whose holder is gone is taken
over; what "gone" means depends on where the holder ran:

- its Slurm job id is this process's own: an earlier run of the same job (Slurm requeued it: `--requeue`,
  profiles/slurm), which Slurm never runs twice at once;
- same host: no process with that pid and start time (the start time tells a reused pid apart), the only
  reliable answer there, with or without Slurm;
- another host, with a Slurm job id: `squeue` no longer lists the job as pending, running or completing. A
  pid means nothing across hosts, and a node that died took its processes with it without removing the file;
- another host without Slurm: nothing can tell, so the lock is held, and the message says how to remove it.

Taking over a stale lock removes it only if it still holds what was judged stale, then creates it anew with
link(2): of two processes taking over the same stale lock at once, one gets it.
"""

import json
import logging
import os
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger(__name__)

# The lock of a folder that one job writes as a whole (a training checkpoint folder, an evaluation's output).
WRITER_LOCK = "writer.lock"

ACTIVE_SLURM_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}


class LockHeld(RuntimeError):
    """Another process holds the lock: it writes what this one was about to write."""


def _process_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks after boot (proc(5), /proc/<pid>/stat field 22); None
    when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces and parentheses.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def _holder_record() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "job": os.environ.get("SLURM_JOB_ID"),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _slurm_job_active(job: str) -> bool | None:
    """Whether squeue lists `job` as not finished; None when squeue cannot be asked."""
    try:
        result = subprocess.run(
            ["squeue", "--noheader", "--states=all", f"--jobs={job}", "--format=%T"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    if result.returncode:
        # A job past MinJobAge is unknown to slurmctld: "Invalid job id specified".
        return False if "Invalid job id" in result.stderr else None
    return bool(set(result.stdout.split()) & ACTIVE_SLURM_STATES)


def why_stale(holder: dict) -> str | None:
    """Why the holder recorded in a lock is gone (the lock may be taken over), or None if it may still write."""
    job = holder.get("job")
    if job and job == os.environ.get("SLURM_JOB_ID"):
        return f"Slurm job {job} is this job: an earlier run of it, requeued"
    if holder.get("host") == socket.gethostname():
        if _process_start(holder["pid"]) != holder.get("process_start"):
            return f"process {holder['pid']} has ended on this host"
        return None
    if job and _slurm_job_active(job) is False:
        return f"Slurm job {job} has ended"
    return None


def describe(holder: dict) -> str:
    job = f"Slurm job {holder['job']}, " if holder.get("job") else ""
    return f"{job}process {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"


def _read(path: Path) -> dict | None:
    """The lock's holder; None when the file is gone. Written whole before it is linked, so never partial."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise LockHeld(
            f"{path} is not a lock of cumo's ({error}): delete it if no job writes there"
        ) from error


def _link(record: dict, path: Path) -> bool:
    """Create `path` holding `record`, atomically; False if it exists."""
    unique = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}")
    unique.write_text(json.dumps(record))
    try:
        os.link(unique, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        # NFS: the link may have been made although the reply was lost; the link count says (open(2)).
        return unique.stat().st_nlink == 2
    finally:
        unique.unlink()


class WriterLock:
    """`with WriterLock(path, what):` holds `path` while the block runs (raising LockHeld if another process
    holds it) and removes it at the end if it is still this process's. `what`: what is written, for the
    message ("the checkpoints in checkpoints/tiny/tiny/sft")."""

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self.what = what
        self.record = None

    def __enter__(self) -> "WriterLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = _holder_record()
        # Three tries: a lock removed or replaced between two steps here is looked at again.
        for _ in range(3):
            if _link(record, self.path):
                self.record = record
                return self
            holder = _read(self.path)
            if holder is None:
                continue
            reason = why_stale(holder)
            if reason is None:
                fix = f"`scancel {holder['job']}`" if holder.get("job") else f"stop process {holder['pid']}"
                raise LockHeld(
                    f"{self.what} are being written by {describe(holder)} (lock {self.path}); a second writer "
                    f"would corrupt them. Wait for it to end, or {fix}; if it is gone already, delete "
                    f"{self.path} and run again"
                )
            if _read(self.path) == holder:
                self.path.unlink(missing_ok=True)
                logger.warning(f"taking over {self.path}: {reason} ({describe(holder)})")
        raise LockHeld(f"{self.path} keeps changing hands: another process is taking it; run again")

    def __exit__(self, *exc_info) -> None:
        if _read(self.path) == self.record:
            self.path.unlink()
