"""Co-upcycling (CuMo section 3.2): the dense model after pft becomes the MoE model that sft trains.

Every expert of a CLIP block starts as a copy of that block's MLP, every expert of the connector as a copy
of the connector (CuMo's llava_arch.py `initialize_vision_modules` loads `clip.bin` / `mm_projector.bin`
into each expert); routers start fresh. Since identical experts with weights summing to 1 compute exactly
the dense MLP, the upcycled model's logits equal the dense model's: the invariant the tests check.

The upcycling is a recipe for `weights.load_weights`: each tensor of the MoE model says which dense tensor
it is made of, so sft builds its MoE model (partitioned over the ranks under ZeRO-3) and fills it one layer
at a time from the pft export, never holding the dense model next to it.
"""

import re
from pathlib import Path

import torch
from torch import nn

from cumo.model.configuration_cumo import CumoConfig
from cumo.model.modeling_cumo import CumoForConditionalGeneration
from cumo.model.processing_cumo import CumoProcessor
from cumo.model.weights import (
    Checkpoint,
    Init,
    InMemory,
    Read,
    Recipe,
    build_empty,
    load_weights,
    save_sharded,
    saved_model,
)

# An expert stack of a CLIP layer or of the connector, and the dense MLP tensor it is E copies of.
_EXPERTS = re.compile(r"(model\.(?:vision_tower\..*|mm_projector))\.experts\.(fc[12])_(weight|bias)")
_ROUTER = re.compile(r"model\.(?:vision_tower\..*\.mlp|mm_projector)\.router\.weight")


def upcycled_config(dense: CumoConfig) -> CumoConfig:
    """The dense model's config with CLIP MLPs and connector as MoE blocks."""
    if dense.clip_moe or dense.mlp_moe:
        raise ValueError(
            "the model is already MoE (clip_moe or projector_type='smoe_mlp'); upcycle the dense pft model"
        )
    return CumoConfig.from_dict(
        {**dense.to_dict(), "clip_moe": True, "projector_type": "smoe_mlp"},
        attn_implementation=dense._attn_implementation,
    )


def upcycle_recipe(dense: Checkpoint, config: CumoConfig) -> Recipe:
    """Where each tensor of the upcycled model comes from in the dense model's tensors `dense`."""
    std = config.text_config.initializer_range
    same = saved_model(dense)

    def recipe(name: str, shape: torch.Size):
        if _ROUTER.fullmatch(name):
            return Init(lambda tensor: nn.init.normal_(tensor, std=std))
        if match := _EXPERTS.fullmatch(name):
            dense_key = f"{match[1]}.{match[2]}.{match[3]}"  # ...mlp.fc1.weight (E, H, D) <- (H, D)
            return Read(dense, (dense_key,), lambda tensors: tensors[0].unsqueeze(0).expand(shape))
        return same(name, shape)

    return recipe


def upcycle(dense: CumoForConditionalGeneration) -> CumoForConditionalGeneration:
    """The co-upcycled copy of `dense` (same device and dtype): MoE CLIP MLPs and MoE connector."""
    config = upcycled_config(dense.config)
    parameter = next(dense.parameters())
    moe = build_empty(config, parameter.dtype)
    # A Mixtral LLM keeps the experts kernel the dense model ran with (grouped_mm, or eager for float64).
    moe.model.language_model.set_experts_implementation(dense.config.text_config._experts_implementation)
    load_weights(moe, upcycle_recipe(InMemory(dense.state_dict(), "the dense model"), config))
    return moe.to(parameter.device).train(dense.training)


def upcycle_directory(src: str | Path, dst: str | Path, max_shard_bytes: int = 5 * 10**9) -> None:
    """`upcycle` of a saved dense model directory into `dst`, streamed tensor by tensor; the processor
    (tokenizer) is carried over."""
    dense = Checkpoint(src)
    config = upcycled_config(CumoConfig.from_pretrained(src))
    moe = build_empty(config, dtype=config.dtype or torch.float32)
    load_weights(moe, upcycle_recipe(dense, config))
    moe.config.save_pretrained(dst)
    save_sharded(moe, dst, max_shard_bytes)
    CumoProcessor.from_pretrained(src, moe.config).save_pretrained(dst)
