"""Co-upcycling (CuMo section 3.2): the dense model after pft becomes the MoE model that sft trains.

Every expert of a CLIP block starts as a copy of that block's MLP, every expert of the connector as a copy
of the connector (CuMo's llava_arch.py `initialize_vision_modules` loads `clip.bin` / `mm_projector.bin`
into each expert); routers start fresh. Since identical experts with weights summing to 1 compute exactly
the dense MLP, the upcycled model's logits equal the dense model's: the invariant the tests check.
"""

from pathlib import Path

import torch
from torch import nn

from cumo.model.configuration_cumo import CumoConfig
from cumo.model.modeling_cumo import CumoForConditionalGeneration
from cumo.model.moe import SparseMoeBlock
from cumo.model.processing_cumo import CumoProcessor


def upcycle(dense: CumoForConditionalGeneration) -> CumoForConditionalGeneration:
    """The co-upcycled copy of `dense` (same device and dtype): MoE CLIP MLPs and MoE connector."""
    if dense.config.clip_moe or dense.config.mlp_moe:
        raise ValueError(
            "the model is already MoE (clip_moe or projector_type='smoe_mlp'); upcycle the dense pft model"
        )
    config = CumoConfig.from_dict(
        {**dense.config.to_dict(), "clip_moe": True, "projector_type": "smoe_mlp"},
        attn_implementation=dense.config._attn_implementation,
    )

    # Built on the meta device and filled from the dense model: no time spent on a random init of 8B weights.
    parameter = next(dense.parameters())
    with torch.device("meta"):
        moe = CumoForConditionalGeneration(config).to(parameter.dtype)
    # A Mixtral LLM keeps the experts kernel the dense model ran with (grouped_mm, or eager for float64).
    moe.model.language_model.set_experts_implementation(dense.config.text_config._experts_implementation)
    moe.to_empty(device=parameter.device)

    dense_tensors = dict(dense.named_parameters()) | dict(dense.named_buffers())
    written = set()
    with torch.no_grad():
        for name, tensor in (*moe.named_parameters(), *moe.named_buffers()):
            if name in dense_tensors:
                tensor.copy_(dense_tensors[name])
                written.add(name)
        for name, block in moe.named_modules():
            if isinstance(block, SparseMoeBlock):
                block.experts.load_from_dense(dense.get_submodule(name))
                nn.init.normal_(block.router.weight, std=config.text_config.initializer_range)
                written.update(f"{name}.{p}" for p, _ in block.named_parameters())
    unwritten = {name for name, _ in (*moe.named_parameters(), *moe.named_buffers())} - written
    if unwritten:
        raise RuntimeError(f"upcycling left tensors of the MoE model unset: {sorted(unwritten)[:10]}")
    return moe.train(dense.training)


def upcycle_directory(src: str | Path, dst: str | Path) -> None:
    """`upcycle` on a saved dense model directory; the processor (tokenizer) is carried over."""
    dense = CumoForConditionalGeneration.from_pretrained(src, dtype="auto")
    moe = upcycle(dense)
    moe.save_pretrained(dst)
    CumoProcessor.from_pretrained(src, moe.config).save_pretrained(dst)
