"""Resumable training state: complete checkpoints, resume, keep-K pruning, preemption, the finished mark.

A stage checkpoints into `checkpoints/<model>/<stage>/checkpoint-<step>/`, outside Snakemake's declared
outputs (Snakemake deletes those before a job runs). One checkpoint holds

- what DeepSpeed's `engine.save_checkpoint` writes: weights, optimizer and LR scheduler, and the trainer's
  `client_state` (position in the data, metrics so far) with `"step"` added;
- `rng-rank<r>.pt`, every rank's Python, NumPy and torch (CPU, CUDA) generator states, so dropout and
  sampling after a resume draw what they would have drawn without the interruption;
- `complete.json`, the completion marker, written by rank 0 last, after every rank has written its files,
  with the size of every file and the identity of the run (`run`: the recipe, the data, the stage it
  started from), so a changed run never resumes from another's state. A directory without it (a kill
  during the save) or whose files do not have the recorded sizes (a copy cut short, a crash that lost
  unflushed data) is *half-written*: ignored, reported, and overwritten when training reaches its step
  again.

DeepSpeed's own `latest` tag file says which tag was saved last, not whether it was saved completely (it
is written by rank 0 without waiting for the other ranks' ZeRO files, `engine.py` `save_checkpoint`), so
it is neither written (`save_latest=False`) nor read (the tag is passed to `load_checkpoint`).

Preemption: Slurm sends SIGTERM ahead of a time limit or a preemption (`--signal=TERM@300`). Each rank
only sets a flag; at a step boundary `Preemption.agree()` tells every rank whether any rank got it, they
save together and exit with `EXIT_PREEMPTED`, and the retried job resumes from that checkpoint. A rank whose
launcher died (torchrun killed, Snakemake's process group killed) gets the same SIGTERM from the kernel and
stops the same way, so no rank trains on, or writes an output, with nothing watching it.
"""

import ctypes
import json
import logging
import os
import random
import re
import shutil
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL: "a temporary failure ... the user is invited to retry"
# (https://man.freebsd.org/cgi/man.cgi?query=sysexits). Non-zero so that Snakemake and Slurm count the
# job as failed and retry it (Snakemake `--retries`, Slurm requeue), which resumes from the checkpoint;
# distinct from 1 (a crash), 2 (bad usage) and 128+N (killed by signal N) so logs tell a preemption apart.
EXIT_PREEMPTED = 75

MARKER = "complete.json"
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
FINISHED = "finished.json"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _world_size() -> int:
    return dist.get_world_size() if _distributed() else 1


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def rank0_decides(value):
    """Rank 0's `value` on every rank: ranks must agree on which checkpoint they touch (a shared file system
    may show nodes different listings for a moment, NFS attribute caching), and on what is worked out once."""
    if not _distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --- preemption --------------------------------------------------------------------------------------


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def signal_on_parent_death(sig: signal.Signals) -> None:
    """Have the kernel send `sig` to this process when its parent dies (Linux's PR_SET_PDEATHSIG; elsewhere
    nothing). torchrun starts every rank in a session of its own (`start_new_session`,
    torch/distributed/elastic/multiprocessing/subprocess_handler), so neither a SIGKILL to torchrun nor one to
    Snakemake's process group reaches the ranks: they trained on and exported with nothing watching
    (issue 16). With this they stop as on a preemption: save at the next step boundary, exit."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl(PR_SET_PDEATHSIG, {sig}) failed")
    if os.getppid() == 1:  # the parent died before the request: adopted by init already
        os.kill(os.getpid(), sig)


class Preemption:
    """Installs a handler for `signals` (SIGTERM: what Slurm sends with `--signal=TERM@300` before a time
    limit or a preemption) that only records the signal; the trainer polls `agree()` at step boundaries.

    The handler replaces Python's default one, which would end the process at once. A second SIGTERM (Slurm
    sends one again at the time limit itself, then SIGKILL after `KillWait`) is recorded the same way.
    Under `torchrun`, the agent forwards SIGTERM to the ranks and SIGKILLs them after
    `TORCH_ELASTIC_SHUTDOWN_TIMEOUT` seconds (default 30, torch `distributed/launcher/api.py`), which
    `launch.local_command` raises to cover a save.
    """

    def __init__(self, signals=(signal.SIGTERM,)):
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "Preemption() must be created in the main thread: Python runs signal handlers only there "
                "(https://docs.python.org/3/library/signal.html#signals-and-threads). Create it in the "
                "training entry point before starting other threads."
            )
        self._received = None
        for sig in signals:
            signal.signal(sig, self._record)
        signal_on_parent_death(signals[0])

    def _record(self, signum, frame):
        # No logging here: a handler runs between two bytecodes of the main thread, possibly inside
        # logging's own lock; `agree()` reports it.
        self._received = signum

    @property
    def requested(self) -> bool:
        """This rank received one of the signals."""
        return self._received is not None

    def agree(self) -> bool:
        """Collective: True on every rank when any rank received a signal (an all-reduce MAX of one
        integer over the default process group; just `requested` when not distributed). Every rank must
        call it at the same step boundary."""
        if _distributed():
            # gloo reduces CPU tensors; NCCL and the other accelerator backends only device tensors
            device = "cpu" if dist.get_backend() == "gloo" else _accelerator_device()
            flag = torch.tensor([int(self.requested)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            agreed = bool(flag.item())
        else:
            agreed = self.requested
        if agreed:
            received = signal.Signals(self._received).name if self.requested else "none"
            logger.warning(f"rank {_rank()}: stopping for preemption (signal received here: {received})")
        return agreed


def _accelerator_device() -> str:
    from deepspeed.accelerator import get_accelerator  # deferred: importing DeepSpeed takes seconds

    return get_accelerator().current_device_name()


# --- RNG ---------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """This process's Python, NumPy and torch (CPU, and the current CUDA device's) generator states.

    Only tensors, ints, floats, strings, lists and tuples, so `torch.load(..., weights_only=True)` reads it
    back (NumPy's state array is stored as a list).
    """
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            **numpy_state,
            "state": {**numpy_state["state"], "key": numpy_state["state"]["key"].tolist()},
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        # The current device's only: a rank trains on one device, and touching every visible one (the
        # `_all` variants) would create a CUDA context per rank on every GPU of the node.
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state()` returned."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    key = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        if not torch.cuda.is_available():
            raise ValueError(
                "this RNG state was saved on a CUDA device and no CUDA device is visible here: resume on "
                "GPUs, as the run that saved it"
            )
        torch.cuda.set_rng_state(state["cuda"])


# --- which checkpoints exist -------------------------------------------------------------------------


def _checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """Every `checkpoint-<step>` directory, complete or not, newest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        match = CHECKPOINT_NAME.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def _why_incomplete(path: Path) -> str | None:
    """None for a complete checkpoint, else what is wrong with it."""
    marker = path / MARKER
    if not marker.is_file():
        return f"no {MARKER} (the save did not finish)"
    try:
        sizes = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as error:
        return f"unreadable {MARKER}: {error}"
    for name, size in sizes.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} were written"
    return None


def latest_complete(checkpoint_dir: Path) -> Path | None:
    """The newest complete `checkpoint-<step>` in `checkpoint_dir`, or None. Newer half-written ones are
    skipped with a warning that says what is wrong with them."""
    for _, path in _checkpoints(Path(checkpoint_dir)):
        reason = _why_incomplete(path)
        if reason is None:
            return path
        logger.warning(
            f"ignoring half-written checkpoint {path}: {reason}; it is overwritten when training gets there"
        )
    return None


# --- save, prune, load -------------------------------------------------------------------------------


def _write_json_atomically(path: Path, content: dict) -> None:
    """Write a temporary file, flush it to disk, rename it over `path`: readers see no file or the whole
    file, also after a crash (rename is atomic in POSIX; without the fsync ext4 may persist the rename
    before the data, https://lwn.net/Articles/322823/)."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as file:
        json.dump(content, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _remove(path: Path) -> None:
    """Delete a checkpoint directory, marker first: a deletion cut short leaves it half-written, not a
    complete-looking checkpoint with files missing."""
    (path / MARKER).unlink(missing_ok=True)
    shutil.rmtree(path)


def _file_sizes(path: Path) -> dict[str, int]:
    return {
        str(file.relative_to(path)): file.stat().st_size
        for file in sorted(path.rglob("*"))
        if file.is_file() and file.name != MARKER
    }


def save(
    engine, checkpoint_dir: Path, step: int, client_state: dict, keep: int, run: dict | None = None
) -> Path:
    """Collective: write `checkpoint_dir/checkpoint-<step>`, mark it complete, keep the newest `keep`.

    `run`: what makes the training run what it is (JSON; the same on every rank), kept in the marker for
    `load` to compare.

    `client_state` must be the same on every rank: under ZeRO-1/2 DeepSpeed stores rank 0's copy only (in
    `mp_rank_00_model_states.pt`) and hands it to every rank on load (ZeRO-3 keeps one per rank,
    `engine.py` `_get_ckpt_name`). What differs per rank belongs in the RNG files this writes. `"step"` is
    added to it. An existing `checkpoint-<step>` is deleted first. Returns the checkpoint's path.
    """
    if keep < 1:
        raise ValueError(
            f"keep={keep}: keep at least 1 checkpoint (the one just written), e.g. keep: 2 in the config"
        )
    if client_state.get("step", step) != step:
        raise ValueError(
            f"client_state['step'] is {client_state['step']} but step={step}: drop it or pass the same step"
        )
    rng = rng_state()  # before DeepSpeed runs: the state the next training step starts from
    checkpoint_dir = Path(checkpoint_dir)
    path = checkpoint_dir / f"checkpoint-{step}"
    rank = _rank()
    if rank == 0 and path.exists():
        # a half-written leftover of a killed run, or a complete one when a run saves again the step it
        # resumed from: its marker must not survive into a save of other files that may itself be cut short
        _remove(path)
    _barrier()

    engine.save_checkpoint(
        str(checkpoint_dir), tag=path.name, client_state={**client_state, "step": step}, save_latest=False
    )
    path.mkdir(parents=True, exist_ok=True)  # DeepSpeed creates it only on ranks that write a file there
    torch.save(rng, path / f"rng-rank{rank}.pt")

    # Every rank lists the files after writing its own; a file's writer sees its true size, other nodes on
    # a shared file system may see it late or short, hence the maximum. Gathering also waits for all ranks.
    sizes = [_file_sizes(path)]
    if _distributed():
        mine, sizes = sizes[0], [None] * _world_size()
        dist.all_gather_object(sizes, mine)
    if rank == 0:
        files = {}
        for listing in sizes:
            for name, size in listing.items():
                files[name] = max(size, files.get(name, 0))
        _write_json_atomically(
            path / MARKER, {"step": step, "world_size": _world_size(), "run": run, "files": files}
        )
        prune(checkpoint_dir, keep, newest=path)
    # No rank returns before the marker exists: a rank that then exits (preemption) makes torchrun kill
    # the others, which must not happen to rank 0 while it writes the marker.
    _barrier()
    logger.info(f"saved {path}")
    return path


def prune(checkpoint_dir: Path, keep: int, newest: Path) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints, and the half-written ones older than
    `newest` (the one just written, never deleted). Half-written ones past it are left: training overwrites
    them when it gets there. Returns what was deleted. Rank 0 only."""
    newest_step = int(CHECKPOINT_NAME.fullmatch(newest.name).group(1))
    kept = 0
    deleted = []
    for step, path in _checkpoints(Path(checkpoint_dir)):
        complete = _why_incomplete(path) is None
        if path == newest or (complete and kept < keep):
            kept += complete
            continue
        if complete or step < newest_step:
            _remove(path)
            deleted.append(path)
    return deleted


def load(engine, checkpoint_dir: Path, run: dict | None = None) -> dict | None:
    """Collective: restore the latest complete checkpoint in `checkpoint_dir` (weights, optimizer and LR
    scheduler through `engine.load_checkpoint`, and this rank's RNG states) and return its client_state
    (with `"step"`); None when there is no complete checkpoint (a fresh start).

    A checkpoint saved with another `run` than this one is refused before anything is loaded: resuming it
    would finish the old run under the new one's name. (A rerun after the recipe or the data changed finds
    the old run's checkpoint at its last step, and would only export the old weights again.)

    Call it right after `deepspeed.initialize`: under ZeRO-3 DeepSpeed loads only into an engine that has
    not been saved from (`engine.load_checkpoint` docstring). DeepSpeed 0.19.8 reads its files with
    `torch.load(..., weights_only=False)` itself (`TorchCheckpointEngine.load`), as they hold non-tensor
    objects; the RNG files need no unpickling of arbitrary objects and are read with `weights_only=True`.
    """
    path = rank0_decides(latest_complete(Path(checkpoint_dir)) if _rank() == 0 else None)
    if path is None:
        return None
    marker = json.loads((path / MARKER).read_text())
    _check_same_run(path, marker.get("run"), run)
    saved_world_size = marker["world_size"]
    if saved_world_size != _world_size():
        raise ValueError(
            f"{path} was saved by {saved_world_size} ranks and this run has {_world_size()}: DeepSpeed "
            f"ZeRO checkpoints load into the same number of ranks. Resume with {saved_world_size} ranks, or "
            "convert it with DeepSpeed's ds_to_universal.py and load the result as a universal checkpoint."
        )
    load_path, client_state = engine.load_checkpoint(str(path.parent), tag=path.name)
    if load_path is None:
        raise RuntimeError(
            f"DeepSpeed could not load {path} (see its log above); delete that directory to resume from "
            "the one before"
        )
    set_rng_state(torch.load(path / f"rng-rank{_rank()}.pt", weights_only=True))
    logger.info(f"resumed from {path} (step {client_state['step']})")
    return client_state


def _check_same_run(path: Path, saved: dict | None, run: dict | None) -> None:
    if run is None:
        return
    run = json.loads(json.dumps(run))  # as the marker holds it: tuples as lists
    if saved == run:
        return
    if saved is None:
        logger.warning(f"{path} does not say which run saved it (an older cumo): resuming it unchecked")
        return
    saved, run = _flat(saved), _flat(run)
    changed = sorted(key for key in saved.keys() | run.keys() if saved.get(key) != run.get(key))
    details = "; ".join(f"{key}: saved {saved.get(key)!r}, now {run.get(key)!r}" for key in changed)
    raise ValueError(
        f"{path} was saved by another run ({details}), and resuming it would carry that run on under this "
        f"one's name. Delete {path.parent} to train this run from the start, or put back what changed to "
        "resume the old one."
    )


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"stage": {"epochs": 3}} -> {"stage.epochs": 3}: a changed recipe names the field that changed."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# --- a finished stage --------------------------------------------------------------------------------


def mark_finished(output_dir: Path, metadata: dict) -> None:
    """Write `output_dir/finished.json` (the stage's metadata) atomically; call it after everything else of
    the export is written, so that its presence means the export is whole."""
    _write_json_atomically(Path(output_dir) / FINISHED, metadata)


def is_finished(output_dir: Path) -> bool:
    """The stage's export in `output_dir` was completed (`mark_finished`), so a rerun must not retrain.

    Snakemake deletes a job's declared outputs before it runs it, so under Snakemake this is False for a
    retried job even when training had finished; saving a checkpoint at the last step makes such a retry
    resume there and only export again.
    """
    return (Path(output_dir) / FINISHED).is_file()
