"""What every benchmark of `python -m cumo.bench` shares: the dtypes it takes, the machine it reports, and
interleaved timing."""

import platform
import time
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def machine(device: torch.device) -> dict:
    """What the figures were measured on."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.exists():
            for line in cpuinfo.read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    return {"device": name, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def time_interleaved(steps: dict, repeats: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Milliseconds of each step per repeat. The steps take turns within a repeat, so noise hits all alike,
    and the order rotates from one repeat to the next, so none always follows the same one."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    names = list(steps)
    times = {name: [] for name in names}
    for repeat in range(warmup + repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            steps[name]()
            sync()
            if repeat >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return times
