"""CuMo's DeepSpeed configs with their "auto" values filled (cumo/train/deepspeed_config.py)."""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cumo.train.batching import plan_batch
from cumo.train.deepspeed_config import (
    DeepSpeedConfigError,
    fill_deepspeed_config,
    load_deepspeed_config,
    upstream_config,
)

SHIPPED = ["zero2", "zero3", "zero3_offload"]
# CuMo's sft on 8 GPUs (scripts/cumo/mistral_7b/sft_mistral_7b.sh), Mistral-7B's hidden size 4096.
SFT = dict(
    lr=4e-6, weight_decay=0.0, warmup_steps=77, total_steps=2577, bf16=True, grad_clip=1.0, hidden_size=4096
)


# Upstream's bytes: LLaVA's files are git-lfs objects, these are their oids (scripts/zero2.json, zero3.json at
# haotian-liu/LLaVA 5a5bda8 / defced7); CuMo's is scripts/zero3_offload.json at SHI-Labs/CuMo d1afd4a.
UPSTREAM_SHA256 = {
    "zero2": "bb7d7a3360f8181c132e8666e6045cb75fa8a1a225d2b79148c1136fe99eaaa4",
    "zero3": "8d25d1f104be517b09152d6398a7352a8db4956f956565ec2ed8af58feba7a81",
    "zero3_offload": "8b1a4cbf2a238895d32707281fe88ba3865ea550203d0f78ee44632397122cf0",
}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_are_upstreams_byte_for_byte(name):
    # What differs from upstream (CPU adaptation) is done in code, where it is visible and tested.
    assert hashlib.sha256((upstream_config(name)).read_bytes()).hexdigest() == UPSTREAM_SHA256[name]


def leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaves(value, prefix + key + ".")
        else:
            yield prefix + key, value


@pytest.mark.parametrize("name", SHIPPED)
def test_every_auto_is_filled_from_the_trainer(name):
    raw = dict(leaves(load_deepspeed_config(upstream_config(name))))
    filled = dict(
        leaves(fill_deepspeed_config(upstream_config(name), batch=plan_batch(64, 4, 8), device="cuda", **SFT))
    )
    assert "auto" not in filled.values()
    # Only the "auto" entries change on GPU: the rest is the upstream file.
    assert {key: value for key, value in raw.items() if value != "auto"} == {
        key: filled[key] for key, value in raw.items() if value != "auto"
    }
    assert (filled["train_batch_size"], filled["train_micro_batch_size_per_gpu"]) == (64, 4)
    assert filled["gradient_accumulation_steps"] == 2
    assert (filled["bf16.enabled"], filled["fp16.enabled"]) == (True, False)
    assert filled["zero_optimization.reduce_bucket_size"] == 4096 * 4096


def test_zero3_offload_gets_the_optimizer_and_schedule_of_the_recipe():
    filled = fill_deepspeed_config(
        upstream_config("zero3_offload"), batch=plan_batch(64, 4, 8), device="cuda", **SFT
    )
    assert filled["optimizer"]["params"] == {
        "lr": 4e-6,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": 0.0,
    }
    assert filled["scheduler"]["params"] == {
        "cos_min_ratio": 0.0,
        "warmup_num_steps": 77,
        "total_num_steps": 2577,
    }
    assert filled["gradient_clipping"] == 1.0
    zero = filled["zero_optimization"]
    assert (zero["stage3_prefetch_bucket_size"], zero["stage3_param_persistence_threshold"]) == (
        15099494,
        40960,
    )


def test_no_warmup_still_gives_deepspeed_a_positive_warmup():
    filled = fill_deepspeed_config(
        upstream_config("zero3_offload"),
        batch=plan_batch(64, 4, 8),
        device="cuda",
        **{**SFT, "warmup_steps": 0},
    )
    assert filled["scheduler"]["params"]["warmup_num_steps"] == 1


def test_on_cpu_offloading_uses_torchs_adamw_and_refuses_bf16():
    tiny = {**SFT, "bf16": False, "hidden_size": 16}
    offload = fill_deepspeed_config(
        upstream_config("zero3_offload"), batch=plan_batch(4, 2, 2), device="cpu", **tiny
    )
    assert offload["optimizer"]["params"]["torch_adam"] is True
    assert offload["bf16"]["enabled"] is False
    zero2 = fill_deepspeed_config(upstream_config("zero2"), batch=plan_batch(4, 2, 2), device="cpu", **tiny)
    assert "optimizer" not in zero2
    with pytest.raises(DeepSpeedConfigError, match="set bf16: false"):
        fill_deepspeed_config(
            upstream_config("zero2"), batch=plan_batch(4, 2, 2), device="cpu", **{**tiny, "bf16": True}
        )


def test_a_config_that_does_not_parse_names_file_line_and_column(tmp_path):
    broken = tmp_path / "zero2.json"
    broken.write_text('{\n    "bf16": {"enabled": "auto"},\n    "train_batch_size": "auto",\n}\n')
    with pytest.raises(DeepSpeedConfigError, match=r"zero2\.json:4:1: not valid JSON .*no trailing commas"):
        fill_deepspeed_config(broken, batch=plan_batch(64, 4, 8), device="cuda", **SFT)
    with pytest.raises(DeepSpeedConfigError, match="cannot read"):
        load_deepspeed_config(tmp_path / "missing.json")


def test_an_auto_the_trainer_has_no_value_for_is_named(tmp_path):
    config = tmp_path / "custom.json"
    config.write_text(
        json.dumps(
            {"train_batch_size": "auto", "zero_optimization": {"stage": 2, "allgather_bucket_size": "auto"}}
        )
    )
    with pytest.raises(
        DeepSpeedConfigError, match=r"zero_optimization\.allgather_bucket_size; replace them with numbers"
    ):
        fill_deepspeed_config(config, batch=plan_batch(64, 4, 8), device="cuda", **SFT)


# One process, gloo, DeepSpeed's CPU accelerator: every shipped config as filled for the tiny preset is
# accepted by deepspeed.initialize and takes an optimizer step. A subprocess keeps torch.distributed's
# global state out of the test process.
INITIALIZE = """
import json, sys
import deepspeed, torch
from cumo.train.batching import plan_batch
from cumo.train.deepspeed_config import fill_deepspeed_config
from cumo.train.trainer import exit_rank

deepspeed.init_distributed(dist_backend="gloo")
for path in sys.argv[1:]:
    config = fill_deepspeed_config(path, batch=plan_batch(4, 2, 1), lr=1e-2, weight_decay=0.0, warmup_steps=0,
                                   total_steps=10, bf16=False, grad_clip=1.0, hidden_size=8, device="cpu")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    # zero2/zero3 leave the optimizer to the trainer (transformers builds torch's AdamW).
    optimizer = None if "optimizer" in config else torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), optimizer=optimizer, config=config)
    for _ in range(config["gradient_accumulation_steps"]):
        engine.backward(engine(torch.randn(2, 8)).pow(2).mean())
        engine.step()
    print(json.dumps({"config": path, "steps": engine.global_steps, "zero": engine.zero_optimization_stage()}))
exit_rank(0)  # as `cumo train` ends: gloo's threads must not be torn down in interpreter finalization
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_filled_configs_initialise_deepspeed_on_cpu():
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    paths = [str(upstream_config(name)) for name in SHIPPED]
    result = subprocess.run(
        [sys.executable, "-c", INITIALIZE, *paths], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(Path(r["config"]).stem, r["steps"], r["zero"]) for r in reports] == [
        ("zero2", 1, 2),
        ("zero3", 1, 3),
        ("zero3_offload", 1, 3),
    ]
