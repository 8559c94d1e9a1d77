"""DeepSpeed configs: CuMo's JSON files with every "auto" filled from the trainer's values.

`cumo/train/deepspeed/` holds the upstream files byte for byte (tests/test_deepspeed_config.py checks their sha256):
  zero2.json          https://github.com/haotian-liu/LLaVA/blob/main/scripts/zero2.json  (CuMo's pretrain)
  zero3.json          https://github.com/haotian-liu/LLaVA/blob/main/scripts/zero3.json  (CuMo's pft)
  zero3_offload.json  https://github.com/SHI-Labs/CuMo/blob/main/scripts/zero3_offload.json  (CuMo's sft)

Upstream, transformers' `HfTrainerDeepSpeedConfig` fills the "auto" values at run time
(transformers/integrations/deepspeed.py, `trainer_config_process` and `trainer_config_finalize`). We fill
them here, with the same rules, so the resolved config can be checked before any GPU is allocated, saved
next to the checkpoint, and handed to `deepspeed.initialize` or to the Trainer as a dict (whose own
filling then finds nothing left to fill, and checks that our values match its arguments).
"""

import json
from importlib import resources
from pathlib import Path

from cumo.train.batching import BatchPlan

# The upstream files, package data (pyproject.toml) so that an installed cumo finds them wherever it runs.
UPSTREAM = resources.files("cumo.train") / "deepspeed"

# transformers' TrainingArguments defaults for adam_beta1/adam_beta2/adam_epsilon: CuMo's scripts do not
# set them (scripts/cumo/*/*.sh), so these are the values its runs used.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8


class DeepSpeedConfigError(ValueError):
    """A DeepSpeed config that cannot be used: it does not parse, or an "auto" has no value."""


def upstream_config(zero: str) -> Path:
    """The upstream file of a stage's `zero` (cumo/train/stages.py ZERO_CONFIGS): an installed wheel is
    unpacked on disk, so the resource is a path that the trainer can save next to the checkpoint."""
    return Path(str(UPSTREAM / f"{zero}.json"))


def load_deepspeed_config(path: str | Path) -> dict:
    """Parse a DeepSpeed JSON config; a syntax error names the file, line and column and how to fix it."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise DeepSpeedConfigError(
            f"{path}: cannot read the DeepSpeed config ({error.strerror}); the stages' configs ship with cumo "
            "(cumo/train/deepspeed/, package data in pyproject.toml): reinstall cumo if that folder is missing"
        ) from error
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise DeepSpeedConfigError(
            f"{path}:{error.lineno}:{error.colno}: not valid JSON ({error.msg}). DeepSpeed configs are strict "
            "JSON: no comments, no trailing commas, double-quoted keys; compare with the upstream file "
            "named in cumo/train/deepspeed_config.py"
        ) from error
    if not isinstance(config, dict):
        raise DeepSpeedConfigError(
            f"{path}: a DeepSpeed config is a JSON object {{...}}, not {type(config).__name__}"
        )
    return config


def fill_deepspeed_config(
    path: str | Path,
    *,
    batch: BatchPlan,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    bf16: bool,
    grad_clip: float,
    hidden_size: int,
    device: str,
) -> dict:
    """Load a DeepSpeed config and replace every "auto" with the trainer's value, adapted to `device`.

    `batch` is the plan from `cumo.train.batching.plan_batch` (micro batch, accumulation, world size);
    `hidden_size` is the LLM's, from which transformers derives the ZeRO bucket sizes; `device` is "cuda"
    or "cpu" (the tiny preset: DeepSpeed's CPU accelerator, fp32).
    """
    if device not in ("cuda", "cpu"):
        raise DeepSpeedConfigError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if device == "cpu" and bf16:
        raise DeepSpeedConfigError(
            f"{path}: bf16 was asked for on CPU; CPU runs (the tiny preset) train in fp32, so that a resumed "
            "run repeats an uninterrupted one exactly: set bf16: false in the config, or run on GPUs"
        )
    config = load_deepspeed_config(path)
    values = {
        # DeepSpeed checks train_batch_size == micro batch * accumulation * world size at initialisation.
        "train_micro_batch_size_per_gpu": batch.micro_batch,
        "gradient_accumulation_steps": batch.accumulation,
        "train_batch_size": batch.global_batch,
        "gradient_clipping": grad_clip,
        "optimizer.params.lr": lr,
        "optimizer.params.betas": list(ADAM_BETAS),
        "optimizer.params.eps": ADAM_EPSILON,
        "optimizer.params.weight_decay": weight_decay,
        "scheduler.params.warmup_min_lr": 0,
        "scheduler.params.warmup_max_lr": lr,
        "scheduler.params.total_num_steps": total_steps,
        # deepspeed>=0.19.6 rejects warmup_num_steps <= 0; transformers fills max(1, warmup) for that reason.
        "scheduler.params.warmup_num_steps": max(1, warmup_steps),
        # CuMo trains in bf16 (`--bf16 True` in every script), never fp16.
        "fp16.enabled": False,
        "bf16.enabled": bf16,
        # transformers' sizes (trainer_config_finalize): buckets of one hidden x hidden matrix.
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }
    unresolved = _fill_autos(config, values, prefix="")
    if unresolved:
        raise DeepSpeedConfigError(
            f'{path}: no trainer value for the "auto" entries {", ".join(unresolved)}; '
            "replace them with numbers in the file (cumo fills: " + ", ".join(sorted(values)) + ")"
        )
    if device == "cpu":
        _adapt_to_cpu(config)
    return config


def _fill_autos(node: dict, values: dict, prefix: str) -> list[str]:
    """Replace "auto" leaves in place from `values` (keyed by dotted path); return the paths left unresolved."""
    unresolved = []
    for key, value in node.items():
        dotted = prefix + key
        if isinstance(value, dict):
            unresolved += _fill_autos(value, values, prefix=dotted + ".")
        elif value == "auto":
            if dotted in values:
                node[key] = values[dotted]
            else:
                unresolved.append(dotted)
    return unresolved


def _adapt_to_cpu(config: dict) -> None:
    """What DeepSpeed's CPU accelerator needs from a GPU config: an optimizer it need not compile.

    With offloading, DeepSpeed swaps the configured AdamW for DeepSpeedCPUAdam, a C++ op it compiles on
    first use (minutes); torch's AdamW computes the same decoupled-weight-decay update
    (deepspeed/runtime/engine.py, get_optimizer_configuration: `torch_adam` is checked first). The rest
    carries over: `pin_memory` is a no-op on the CPU accelerator (deepspeed/accelerator/cpu_accelerator.py).
    """
    if "optimizer" in config:
        config["optimizer"]["params"]["torch_adam"] = True
