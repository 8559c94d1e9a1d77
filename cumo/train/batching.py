"""Global batch -> per-device micro batch x gradient accumulation, for the devices actually allocated.

The config states the recipe's global batch (CuMo: pretrain 256, pft 64, sft 64, Mixtral sft 32) and the
per-device micro batch that fits in memory (pretrain 32, pft 4, sft 4, Mixtral sft 2); CuMo's scripts
hard-code the accumulation for 8 GPUs (scripts/cumo/*/*.sh: 32x1, 4x2, 4x2, 2x2). Deriving it from the
world size instead makes a run on 4 or 16 GPUs train the same recipe.
"""

from dataclasses import dataclass


class BatchError(ValueError):
    """The global batch cannot be split evenly over the devices."""


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int
    micro_batch: int  # samples per device per forward/backward
    world_size: int  # devices (ranks) in the job
    accumulation: int  # micro batches per optimizer step on each device


def plan_batch(global_batch: int, micro_batch: int, world_size: int) -> BatchPlan:
    """Split `global_batch` into `micro_batch` per device x `world_size` devices x accumulation steps."""
    for name, value in (
        ("global batch", global_batch),
        ("micro batch", micro_batch),
        ("world size", world_size),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BatchError(f"{name} must be a positive integer, got {value!r}")
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise BatchError(
            f"global batch {global_batch} does not divide into micro batch {micro_batch} x {world_size} "
            f"device(s) = {per_step} samples per step. {_fixes(global_batch, micro_batch, world_size)}"
        )
    return BatchPlan(global_batch, micro_batch, world_size, global_batch // per_step)


def _fixes(global_batch: int, micro_batch: int, world_size: int) -> str:
    """The changes of one number that would make the split exact."""
    fixes = []
    if global_batch % micro_batch == 0:
        counts = _divisors(global_batch // micro_batch)
        fixes.append(f"with micro batch {micro_batch}, run on a device count in {counts}")
    if global_batch % world_size == 0:
        micro_batches = _divisors(global_batch // world_size)
        fixes.append(f"on {world_size} device(s), set the micro batch to one of {micro_batches}")
    else:
        fixes.append(f"no micro batch splits {global_batch} over {world_size} device(s)")
    multiple = micro_batch * world_size
    fixes.append(f"or change the global batch to a multiple of {multiple} (which changes the recipe)")
    return "Fix: " + "; ".join(fixes) + "."


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
