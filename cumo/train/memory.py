"""Peak host memory of a training rank, phase by phase: what `python -m cumo.bench memory` holds the plan to.

With `CUMO_MEMORY_LOG=<file>` in its environment, every rank appends one JSON line per phase to the file:

    {"rank": 0, "world_size": 2, "phase": "setup", "peak_bytes": ..., "baseline_bytes": ..., "params": ...}

- `baseline_bytes`: the resident set (RSS) once the imports and the process group are up, before anything of
  the model exists; the phases are measured over it;
- `peak_bytes`: the highest RSS during the phase minus that baseline (Linux `VmHWM`, reset at the start of
  every phase by writing 5 to /proc/self/clear_refs, proc(5));
- phases: `setup` (the model built and its weights loaded: under ZeRO-3 a rank's partition, issue 13's
  "fp32 partition plus one shard"), `first_step` (DeepSpeed's engine with its gradient and optimizer
  partitions, then the first optimiser step: its micro-batches' forward and backward, and the step),
  `checkpoint_save`, `export`;
- `params`: the model's parameter count (ZeRO-3's full shapes, not a rank's partition).

Without the variable nothing is measured or written. Appends of a few hundred bytes with O_APPEND do not
interleave between ranks on a local file system.
"""

import json
import os
from pathlib import Path

ENVIRONMENT = "CUMO_MEMORY_LOG"
PHASES = ("setup", "first_step", "checkpoint_save", "export")
_STATUS = Path("/proc/self/status")


def _status_bytes(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # "VmHWM:   525384 kB"
    raise RuntimeError(f"{_STATUS} has no {field} line: peak memory is measured on Linux only")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


class PhaseMemory:
    """Records each phase's peak RSS over the baseline into $CUMO_MEMORY_LOG (a no-op without it)."""

    def __init__(self, rank: int, world_size: int):
        path = os.environ.get(ENVIRONMENT)
        self.path = Path(path) if path else None
        self.rank, self.world_size = rank, world_size
        self.params = None
        if self.path:
            self.baseline = _status_bytes("VmRSS")
            _reset_peak()

    def start(self) -> None:
        """A phase begins: its peak is counted from here."""
        if self.path:
            _reset_peak()

    def end(self, phase: str) -> None:
        """`phase` ended: append its peak over the baseline."""
        if phase not in PHASES:
            raise ValueError(f"unknown memory phase {phase!r}; phases: {PHASES}")
        if not self.path:
            return
        record = {
            "rank": self.rank,
            "world_size": self.world_size,
            "phase": phase,
            "peak_bytes": _status_bytes("VmHWM") - self.baseline,
            "baseline_bytes": self.baseline,
            "params": self.params,
        }
        with open(self.path, "a") as file:
            file.write(json.dumps(record) + "\n")
