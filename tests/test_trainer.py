"""The DeepSpeed training loop on CPU: one rank, then two (ZeRO-2, then ZeRO-3), on the shapes world.

Each run is a subprocess (DeepSpeed's process group lives for the process): `python` with RANK=0 and
WORLD_SIZE=1 for one rank, `torchrun --nproc_per_node 2` for two, running tests/train_scripts/trainer_run.py.
"""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cumo.model.modeling_cumo import CumoForConditionalGeneration
from cumo.train.checkpoint import EXIT_PREEMPTED, FINISHED
from cumo.train.stages import TINY_RECIPE, MissingPredecessor
from cumo.train.trainer import _forward, train
from cumo.writer_lock import WRITER_LOCK, LockHeld
from tests.factories import make_batch, make_model, world_with_mixtures, write_lock

SCRIPT = Path(__file__).parent / "train_scripts" / "trainer_run.py"
SIZES = {"pretrain": 512, "pft": 256, "sft": 512}  # 32, 16 and 32 steps per epoch of the tiny global batch 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(ranks: int, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run trainer_run.py with `kwargs` (as JSON) on `ranks` CPU ranks; fails the test on a timeout."""
    port = free_port()
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    args = [f"{key}={json.dumps(value)}" for key, value in kwargs.items()]
    if ranks == 1:
        env |= {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        command = [sys.executable, str(SCRIPT), *args]
    else:
        torchrun = Path(sys.executable).with_name("torchrun")
        command = [str(torchrun), f"--nproc_per_node={ranks}", f"--master_port={port}", str(SCRIPT), *args]
    try:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"training did not finish in {timeout} s (a hang?): {str(error.stderr)[-3000:]}")


def succeeded(run: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert run.returncode == 0, run.stderr[-5000:]
    return run


def losses(metrics: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in metrics.read_text().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The shapes world (SIZES entries per stage) with each stage's Arrow mixture next to its JSON."""
    return world_with_mixtures(tmp_path_factory.mktemp("world"), SIZES)


def stage_args(world: Path, runs: Path, stage: str, previous: str | None = None, **extra) -> dict:
    return {
        "stage": stage,
        "preset": "tiny",
        "data": str(world / f"{stage}.arrow"),
        "data_root": str(world),
        "output_dir": str(runs / "out" / stage),
        "checkpoint_dir": str(runs / "checkpoints" / stage),
        "previous_output_dir": str(runs / "out" / previous) if previous else None,
        "num_workers": 0,
        **extra,
    }


def test_one_rank_preempted_and_resumed_trains_as_an_uninterrupted_run(world, tmp_path):
    """SIGTERM's path (save at a step boundary, exit EXIT_PREEMPTED), then a rerun resumes: same losses at every
    step and same final weights as a run never stopped; a rerun of the finished stage trains nothing."""
    whole = stage_args(world, tmp_path / "whole", "pretrain", save_every=1000)
    succeeded(launch(1, **whole))

    cut = stage_args(world, tmp_path / "cut", "pretrain", save_every=1000)
    stopped = launch(1, **cut, preempt_at_step=13)
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-3000:]
    assert not (Path(cut["output_dir"]) / FINISHED).exists()
    # The same checkpoints under a changed recipe are refused (they would finish the old run), and kept.
    epochs = TINY_RECIPE["pretrain"].epochs
    changed = dataclasses.replace(TINY_RECIPE["pretrain"], epochs=epochs + 1)
    refused = launch(1, **cut | {"stage": dataclasses.asdict(changed)})
    assert refused.returncode != 0
    assert f"checkpoint-13 was saved by another run (stage.epochs: saved {epochs}, now {epochs + 1})" in (
        refused.stderr
    )
    assert f"Delete {cut['checkpoint_dir']} to train this run from the start" in refused.stderr
    succeeded(launch(1, **cut))

    expected, resumed = Path(whole["output_dir"]), Path(cut["output_dir"])
    assert losses(resumed / "metrics.jsonl") == pytest.approx(losses(expected / "metrics.jsonl"), rel=1e-6)
    expected_weights, resumed_weights = (load_file(d / "model.safetensors") for d in (expected, resumed))
    for name, tensor in expected_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, msg=name)

    metadata = json.loads((resumed / FINISHED).read_text())
    assert (
        metadata["world_size"] == 1
        and metadata["steps"] == 32 * TINY_RECIPE["pretrain"].epochs
        and metadata["stage"]["name"] == "pretrain"
    )
    assert {"git_commit", "mixture_sha256", "packages", "wall_time_s", "deepspeed_config"} <= metadata.keys()
    rerun = succeeded(launch(1, **cut))
    assert "not training it again" in rerun.stderr
    assert json.loads((resumed / FINISHED).read_text()) == metadata


@pytest.fixture(scope="module")
def three_stages(world, tmp_path_factory) -> tuple[Path, dict, dict]:
    """pretrain, pft and sft (the tiny recipe's ZeRO stages) in sequence on 2 ranks; their outputs, wall
    times and standard errors."""
    runs = tmp_path_factory.mktemp("runs")
    seconds, stderr, previous = {}, {}, None
    for stage in SIZES:
        started = time.monotonic()
        stderr[stage] = succeeded(
            launch(2, **stage_args(world, runs, stage, previous, save_every=1000))
        ).stderr
        seconds[stage] = time.monotonic() - started
        previous = stage
    return runs, seconds, stderr


@pytest.mark.parametrize("stage", list(SIZES))
def test_the_tiny_preset_learns_in_every_stage_on_two_ranks(three_stages, stage):
    runs, seconds, stderr = three_stages
    output = runs / "out" / stage
    curve = losses(output / "metrics.jsonl")
    window = len(curve) // 5
    first, last = sum(curve[:window]) / window, sum(curve[-window:]) / window
    # Measured (2 CPU ranks): pretrain 6.46 -> 2.96, pft 7.08 -> 4.55, sft 5.15 -> 2.69.
    print(f"{stage}: loss {first:.3f} -> {last:.3f} in {seconds[stage]:.0f} s")
    assert last < 0.8 * first, f"{stage}: loss {first:.3f} -> {last:.3f}"

    metadata = json.loads((output / FINISHED).read_text())
    assert metadata["world_size"] == 2
    assert (
        metadata["deepspeed_config"]["zero_optimization"]["stage"]
        == {"zero2": 2, "zero3": 3}[TINY_RECIPE[stage].zero]
    )
    record = json.loads((output / "metrics.jsonl").read_text().splitlines()[-1])
    if stage == "sft":  # the MoE stage logs its aux losses and the load of every expert of every layer
        assert {
            "clip_balance_loss",
            "clip_router_z_loss",
            "mlp_balance_loss",
            "mlp_router_z_loss",
        } <= record.keys()
        assert torch.tensor(record["clip_tokens_per_expert"]).shape == (2, 4)
        assert len(record["mlp_tokens_per_expert"]) == 4
    assert "model.safetensors" in metadata["files"] and "tokenizer.json" in metadata["files"]
    # The export holds every weight (under ZeRO-3 they are gathered from the ranks' shards).
    _, loading = CumoForConditionalGeneration.from_pretrained(output, output_loading_info=True)
    assert not any(loading.values()), loading
    # ZeRO-3's deprecated collectives warned on every step (trainer.DEPRECATED_COLLECTIVES): not in the log.
    assert "is deprecated" not in stderr[stage], stderr[stage][-3000:]


def test_zero3_step_completes_when_a_rank_sends_no_token_to_an_expert(world, three_stages, tmp_path):
    """Rank 1's connector router never picks its last expert; rank 0's does: the sft steps still complete.

    Under ZeRO-3 whatever the tiny recipe's sft uses (the paper's sft is ZeRO-3 with offload)."""
    runs, _, _ = three_stages
    zero3 = dataclasses.replace(TINY_RECIPE["sft"], zero="zero3", epochs=1)
    args = stage_args(world, tmp_path, "sft", save_every=1000) | {"stage": dataclasses.asdict(zero3)}
    args["previous_output_dir"] = str(runs / "out" / "pft")
    succeeded(launch(2, timeout=180, **args, bias_router_on_rank=1))
    loads = {
        rank: json.loads((tmp_path / "checkpoints" / "sft" / f"expert-load-rank{rank}.json").read_text())
        for rank in (0, 1)
    }
    assert all(load[-1] == 0 for load in loads[1]) and len(loads[1]) > 10
    assert sum(load[-1] for load in loads[0]) > 0


class ModelAsEngine(torch.nn.Module):
    """What `_forward` uses of a DeepSpeed engine: calling it, `.module`, `.device`."""

    def __init__(self, model):
        super().__init__()
        self.module, self.device = model, torch.device("cpu")

    def forward(self, **batch):
        return self.module(**batch)


def test_a_text_only_batch_runs_the_vision_tower_on_a_blank_image_without_changing_the_loss():
    model = make_model("tiny", moe=True).train()
    engine, blank = ModelAsEngine(model), torch.zeros(1, 3, 42, 42)

    def with_grad(batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        output = _forward(engine, batch | {"labels": batch["input_ids"]}, blank)
        output.loss.backward()
        return output.loss, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    text_loss, text_grads = with_grad(make_batch(model.config, images=(False, False)))
    _, image_grads = with_grad(make_batch(model.config, images=(True, False)))
    text_batch = make_batch(model.config, images=(False, False))
    torch.testing.assert_close(
        text_loss, model(**text_batch, labels=text_batch["input_ids"]).loss, rtol=0, atol=0
    )
    # The parameters a batch with an image reaches (under ZeRO-3: gathers and reduces) are reached without
    # one too, with zero gradients where only the image reaches them.
    assert text_grads.keys() == image_grads.keys()
    vision = [n for n in text_grads if n.startswith(("model.vision_tower.", "model.mm_projector."))]
    assert vision and all(text_grads[n].abs().max() == 0 for n in vision)


def test_text_only_and_image_batches_run_the_same_modules_in_the_same_order():
    """ZeRO-3 gathers each module's parameters when it runs and prefetches in the order of the first step: ranks
    with and without images must run every module, parameterless ones included, in one order (a rank whose
    order differed from its trace stopped prefetching while the other did: gloo "4096 vs 1024")."""
    model = make_model("tiny", moe=True).train()
    engine, blank = ModelAsEngine(model), torch.zeros(1, 3, 42, 42)
    order = []

    def differentiable_outputs(output) -> int:
        if isinstance(output, torch.Tensor):
            return int(output.requires_grad)
        values = output.values() if isinstance(output, dict) else output if isinstance(output, tuple) else ()
        return sum(differentiable_outputs(value) for value in values)

    # ZeRO-3 also hooks every module's output tensors for the backward: a module whose output held fewer of
    # them was met at another point of the backward (seen: "expected module CumoModel, but got MixtralModel").
    for name, module in model.named_modules():
        module.register_forward_pre_hook(lambda module, args, name=name: order.append(name))
        module.register_forward_hook(
            lambda module, args, output, name=name: order.append((name, differentiable_outputs(output)))
        )

    def modules_run(images):
        order.clear()
        batch = make_batch(model.config, images=images)
        _forward(engine, batch | {"labels": batch["input_ids"]}, blank)
        return list(order)

    with_images = modules_run((True, False))
    assert modules_run((False, False)) == with_images
    parts = [name for name in with_images if isinstance(name, str) and name.count(".") == 1]
    assert parts == ["model.vision_tower", "model.mm_projector", "model.language_model"]
    assert with_images.index("model.language_model.embed_tokens") > with_images.index("model.mm_projector")


def test_a_stage_without_its_predecessor_stops_before_any_process_group_or_model(tmp_path):
    with pytest.raises(MissingPredecessor, match="--stage pretrain"):
        train("pft", "tiny", tmp_path / "pft.arrow", tmp_path / "out", tmp_path / "ck", data_root=tmp_path)
    assert not torch.distributed.is_initialized() and not (tmp_path / "ck").exists()


def test_a_second_job_training_into_the_same_checkpoints_stops_before_any_process_group(tmp_path):
    """Issue 18: a rerun's job while the job of a lost Snakemake still trains into the checkpoint folder."""
    running = subprocess.Popen(["sleep", "300"])  # the first job's rank 0
    try:
        write_lock(tmp_path / "ck" / WRITER_LOCK, running.pid)
        with pytest.raises(
            LockHeld,
            match=rf"the checkpoints in {tmp_path / 'ck'} are being written by process {running.pid}",
        ):
            train(
                "pretrain",
                "tiny",
                tmp_path / "p.arrow",
                tmp_path / "out",
                tmp_path / "ck",
                data_root=tmp_path,
            )
    finally:
        running.kill()
        running.wait()
    assert not torch.distributed.is_initialized()
    assert (tmp_path / "ck" / WRITER_LOCK).is_file()  # the holder's lock is left to it
