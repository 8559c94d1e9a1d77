"""The paper presets' path on 2 CPU ranks, at a tiny scale: each stage under its paper ZeRO config.

Pretrain of `cumo-mixtral-8x7b` and `cumo-mistral-7b` starts from CLIP and LLM model directories (tiny
towers saved as the Hub holds them: Mixtral's experts one by one), pft and sft from the stage before, with
CuMo's ZeRO configs (Mixtral: zero3, zero3_offload, zero3_offload; Mistral's pretrain: zero2). Under ZeRO-3
the model is built inside `zero.Init` and streamed in a tensor at a time; the export is written in shards.
The frozen towers of pretrain come out of training, export and reload equal to the files they came from:
nothing was lost or mixed up in the partitioning. sft's batches mix text-only and image samples across the
ranks in one step (the gloo size mismatch of issue 13).
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler
from transformers import CLIPVisionModel, MistralForCausalLM, MixtralForCausalLM

from cumo.bench.memory import PRESETS, write_towers
from cumo.model.modeling_cumo import CumoForConditionalGeneration
from cumo.model.presets import TINY_TEXT, TINY_VISION
from cumo.train.checkpoint import FINISHED
from cumo.train.memory import ENVIRONMENT, PHASES
from cumo.train.stages import stage_config
from tests.factories import world_with_mixtures
from tests.test_trainer import launch, stage_args, succeeded

SIZES = {"pretrain": 16, "pft": 16, "sft": 24}
SHARD_BYTES = 200_000  # several export shards even for the tiny towers
LLMS = {"cumo-mixtral-8x7b": MixtralForCausalLM, "cumo-mistral-7b": MistralForCausalLM}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return world_with_mixtures(tmp_path_factory.mktemp("world"), SIZES)


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> dict[str, Path]:
    """CLIP and both LLMs as `python -m cumo.bench memory` writes them (the Hub's layouts, the LLMs in bf16
    in several shards, the shapes world's tokenizer beside each), at the tiny preset's sizes."""
    root = tmp_path_factory.mktemp("towers")
    text = {key: TINY_TEXT[key] for key in ("hidden_size", "intermediate_size", "num_hidden_layers")}
    dims = (TINY_VISION, text | {"num_attention_heads": 4})
    paths = {llm: write_towers(root, llm, "tiny", dims) for llm in ("mistral", "mixtral")}
    return {"clip": paths["mistral"][0], **{PRESETS[llm]: paths[llm][1] for llm in paths}}


def recipe(stage: str, preset: str, **changes) -> dict:
    """The preset's paper recipe for `stage`, ZeRO config included, with a batch the tiny world fills."""
    config = stage_config(stage, preset, global_batch_size=4, micro_batch_size=1, max_length=256, **changes)
    return dataclasses.asdict(config)


def run_stage(world, runs, stage, preset, previous=None, sources=None, ranks=2, **changes):
    args = stage_args(world, runs, stage, previous, save_every=1000, max_shard_bytes=SHARD_BYTES)
    args |= {"stage": recipe(stage, preset, **changes), "preset": preset}
    if sources:
        args["sources"] = {part: str(path) for part, path in sources.items()}
    return succeeded(launch(ranks, timeout=240, **args))


def reloaded(directory: Path) -> dict[str, torch.Tensor]:
    model, info = CumoForConditionalGeneration.from_pretrained(directory, output_loading_info=True)
    assert not any(info.values()), info
    return model.state_dict()


@pytest.mark.parametrize("preset", list(LLMS))
def test_pretrain_streams_the_towers_in_and_exports_them_unchanged(world, towers, tmp_path, preset):
    run_stage(world, tmp_path, "pretrain", preset, sources={"clip": towers["clip"], "llm": towers[preset]})
    out = tmp_path / "out" / "pretrain"
    finished = json.loads((out / FINISHED).read_text())
    assert (
        finished["deepspeed_config"]["zero_optimization"]["stage"]
        == {
            "cumo-mixtral-8x7b": 3,
            "cumo-mistral-7b": 2,
        }[preset]
    )
    assert len([f for f in finished["files"] if f.endswith(".safetensors")]) > 1  # sharded
    exported = reloaded(out)
    clip = CLIPVisionModel.from_pretrained(towers["clip"]).state_dict()
    llm = LLMS[preset].from_pretrained(towers[preset], dtype=torch.float32).state_dict()
    # pretrain trains the connector only: CLIP (less its post-layernorm) and the LLM are the files' weights.
    for name, tensor in clip.items():
        if not name.startswith(("post_layernorm", "vision_model.post_layernorm")):
            key = "model.vision_tower.vision_model." + name.removeprefix("vision_model.")
            assert torch.equal(exported[key], tensor), key
    for name, tensor in llm.items():
        key = name if name == "lm_head.weight" else "model.language_model." + name.removeprefix("model.")
        assert torch.equal(exported[key], tensor), key


def test_mixtral_trains_pft_and_sft_under_zero3_offload_on_two_ranks(world, towers, tmp_path, monkeypatch):
    preset = "cumo-mixtral-8x7b"
    memory_log = tmp_path / "memory.jsonl"
    run_stage(world, tmp_path, "pretrain", preset, sources={"clip": towers["clip"], "llm": towers[preset]})
    run_stage(world, tmp_path, "pft", preset, previous="pretrain")
    # sft's micro-batches in the seeded order (no modality grouping): some step puts an image sample on one
    # rank and a text-only one on the other.
    entries = json.loads((world / "jsons" / "synthetic_sft.json").read_text())
    has_image = [("image" in entry) for entry in entries]
    orders = [list(DistributedSampler(range(len(entries)), 2, rank, shuffle=True, seed=0)) for rank in (0, 1)]
    assert any(has_image[a] != has_image[b] for a, b in zip(*orders, strict=True))
    monkeypatch.setenv(ENVIRONMENT, str(memory_log))
    run_stage(world, tmp_path, "sft", preset, previous="pft", group_by_modality=False)

    for stage in ("pft", "sft"):
        finished = json.loads((tmp_path / "out" / stage / FINISHED).read_text())
        zero = finished["deepspeed_config"]["zero_optimization"]
        assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu"
        reloaded(tmp_path / "out" / stage)
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "out" / "sft" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(losses) == SIZES["sft"] // 4 and all(0 < loss < 20 for loss in losses)

    # Every rank measured every phase of its run (cumo/train/memory.py), each against its own baseline.
    records = [json.loads(line) for line in memory_log.read_text().splitlines()]
    assert sorted((r["rank"], r["phase"]) for r in records) == sorted(
        (rank, p) for rank in (0, 1) for p in PHASES
    )
    assert all(r["world_size"] == 2 and r["peak_bytes"] > 0 and r["params"] > 0 for r in records)
