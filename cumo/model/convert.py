"""Released CuMo checkpoints (shi-labs/CuMo-mistral-7b, shi-labs/CuMo-mixtral-8x7b) <-> our layout.

The released layout is CuMo's code (LlavaMistralForCausalLM / LlavaMixtralForCausalLM):

    model.vision_tower.vision_model.encoder.layers.{i}.gate.weight            ours: ...layers.{i}.mlp.router.weight
    model.vision_tower.vision_model.encoder.layers.{i}.experts.{e}.fc1.weight ours: ...mlp.experts.fc1_weight[e]
    model.mm_projector.gate.weight                                            ours: model.mm_projector.router.weight
    model.mm_projector.experts.{e}.0.weight / .2.weight                       ours: ...experts.fc1_weight[e] / fc2
    model.mm_projector.0.weight / .2.weight (dense)                           ours: model.mm_projector.fc1 / fc2
    model.layers.*, model.embed_tokens.weight, model.norm.weight              ours: model.language_model.*
    model.layers.{i}.block_sparse_moe.gate.weight (Mixtral)                   ours: ...layers.{i}.mlp.gate.weight
    model.layers.{i}.block_sparse_moe.experts.{e}.w1/w3/w2.weight             ours: mlp.experts.gate_up_proj[e] / down_proj[e]
    lm_head.weight                                                            ours: lm_head.weight

and no CLIP post-layernorm. Its config.json is a Mistral/Mixtral config with CuMo's `mm_*` fields; the
vision tower is named, not described (`mm_vision_tower`), so we write its config as an extra
`vision_config` key, which CuMo's loader ignores, and read it back when present. A released checkpoint
has no image token in its vocabulary (CuMo splices images in at the sentinel id -200): its tokenizer gets
one with `processing_cumo.add_image_token`.
"""

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, CLIPVisionConfig, MistralConfig, MixtralConfig

from cumo.model.configuration_cumo import CumoConfig
from cumo.model.modeling_cumo import CumoForConditionalGeneration
from cumo.model.presets import CLIP_VIT_L_14_336
from cumo.model.processing_cumo import (
    CumoProcessor,
    add_image_token,
    load_llm_tokenizer,
    save_tokenizer,
    without_image_token,
)

CLIP_L_336 = "openai/clip-vit-large-patch14-336"
# CuMo config fields -> ours (the rest of the released config is the LLM's).
FIELDS = {
    "mm_projector_type": "projector_type",
    "clip_smoe": "clip_moe",
    "num_experts": "num_experts",
    "num_selected": "num_experts_per_tok",
    "balance_loss_coef": "balance_loss_coef",
    "router_z_loss_coef": "router_z_loss_coef",
    "scales": "scales",
    "mm_vision_select_layer": "vision_feature_layer",
    "mm_vision_select_feature": "vision_feature_select",
    "image_aspect_ratio": "image_aspect_ratio",
    # Ours only, ignored by CuMo's loader: CuMo splices images in at a sentinel id (-200), not a vocabulary token.
    "image_token_id": "image_token_id",
}
# Fields of CuMo's config that describe its training run or its LLaVA options, not the architecture.
IGNORED = {
    "mm_vision_tower", "mm_hidden_size", "mlp_smoe", "use_mm_proj", "mm_patch_merge_type", "mm_use_im_start_end",
    "mm_use_im_patch_token", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "mm_projector_lr", "num_layers",
    "dropout", "tokenizer_model_max_length", "tokenizer_padding_side", "training", "local_rank", "use_cache",
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "vision_config", "image_grid_pinpoints",
}  # fmt: skip

VISION = "model.vision_tower.vision_model.encoder.layers."


def _experts_to_released(prefix: str, name: str, tensor: torch.Tensor, fc_names: dict) -> dict:
    fc, kind = name.split("_")  # fc1_weight -> fc1, weight
    return {f"{prefix}experts.{e}.{fc_names[fc]}.{kind}": tensor[e] for e in range(tensor.shape[0])}


def to_released(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the released checkpoint's keys."""
    out = {}
    for key, tensor in state_dict.items():
        if m := re.fullmatch(
            r"(model\.vision_tower\.vision_model\.encoder\.layers\.\d+\.)mlp\.router\.weight", key
        ):
            out[m[1] + "gate.weight"] = tensor
        elif m := re.fullmatch(
            r"(model\.vision_tower\.vision_model\.encoder\.layers\.\d+\.)mlp\.experts\.(\w+)", key
        ):
            out |= _experts_to_released(m[1], m[2], tensor, {"fc1": "fc1", "fc2": "fc2"})
        elif key == "model.mm_projector.router.weight":
            out["model.mm_projector.gate.weight"] = tensor
        elif m := re.fullmatch(r"model\.mm_projector\.experts\.(\w+)", key):
            out |= _experts_to_released("model.mm_projector.", m[1], tensor, {"fc1": "0", "fc2": "2"})
        elif m := re.fullmatch(r"model\.mm_projector\.fc([12])\.(\w+)", key):
            out[f"model.mm_projector.{2 * int(m[1]) - 2}.{m[2]}"] = tensor
        elif m := re.fullmatch(r"model\.language_model\.(layers\.\d+\.)mlp\.gate\.weight", key):
            out[f"model.{m[1]}block_sparse_moe.gate.weight"] = tensor
        elif m := re.fullmatch(r"model\.language_model\.(layers\.\d+\.)mlp\.experts\.gate_up_proj", key):
            for e, (w1, w3) in enumerate(t.chunk(2, dim=0) for t in tensor):
                out[f"model.{m[1]}block_sparse_moe.experts.{e}.w1.weight"] = w1
                out[f"model.{m[1]}block_sparse_moe.experts.{e}.w3.weight"] = w3
        elif m := re.fullmatch(r"model\.language_model\.(layers\.\d+\.)mlp\.experts\.down_proj", key):
            for e, w2 in enumerate(tensor):
                out[f"model.{m[1]}block_sparse_moe.experts.{e}.w2.weight"] = w2
        elif key.startswith("model.language_model."):
            out["model." + key.removeprefix("model.language_model.")] = tensor
        else:
            out[key] = tensor
    return {key: tensor.contiguous() for key, tensor in out.items()}


def _stack(groups: dict, key: str, parts: dict) -> None:
    """Collect expert e's tensor under groups[key][e]."""
    groups.setdefault(key, {}).update(parts)


def from_released(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released checkpoint's keys -> our state dict (experts stacked)."""
    out, stacks = {}, {}
    for key, tensor in state_dict.items():
        if m := re.fullmatch(r"(model\.vision_tower\.vision_model\.encoder\.layers\.\d+\.)gate\.weight", key):
            out[m[1] + "mlp.router.weight"] = tensor
        elif m := re.fullmatch(
            r"(model\.vision_tower\.vision_model\.encoder\.layers\.\d+\.)experts\.(\d+)\.(fc[12])\.(\w+)", key
        ):
            _stack(stacks, f"{m[1]}mlp.experts.{m[3]}_{m[4]}", {int(m[2]): tensor})
        elif key == "model.mm_projector.gate.weight":
            out["model.mm_projector.router.weight"] = tensor
        elif m := re.fullmatch(r"model\.mm_projector\.experts\.(\d+)\.([02])\.(\w+)", key):
            _stack(stacks, f"model.mm_projector.experts.fc{int(m[2]) // 2 + 1}_{m[3]}", {int(m[1]): tensor})
        elif m := re.fullmatch(r"model\.mm_projector\.([02])\.(\w+)", key):
            out[f"model.mm_projector.fc{int(m[1]) // 2 + 1}.{m[2]}"] = tensor
        elif m := re.fullmatch(r"model\.(layers\.\d+\.)block_sparse_moe\.gate\.weight", key):
            out[f"model.language_model.{m[1]}mlp.gate.weight"] = tensor
        elif m := re.fullmatch(
            r"model\.(layers\.\d+\.)block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight", key
        ):
            _stack(stacks, f"model.language_model.{m[1]}mlp.experts.{m[3]}", {int(m[2]): tensor})
        elif key.startswith("model.") and not key.startswith(("model.vision_tower.", "model.mm_projector.")):
            out["model.language_model." + key.removeprefix("model.")] = tensor
        else:
            out[key] = tensor

    def stacked(experts: dict) -> torch.Tensor:
        return torch.stack([experts[e] for e in range(len(experts))])

    for key, experts in stacks.items():
        if key.endswith(".w1"):
            w3 = stacks[key.removesuffix("w1") + "w3"]
            out[key.removesuffix("w1") + "gate_up_proj"] = torch.cat([stacked(experts), stacked(w3)], dim=1)
        elif key.endswith(".w2"):
            out[key.removesuffix("w2") + "down_proj"] = stacked(experts)
        elif not key.endswith(".w3"):
            out[key] = stacked(experts)
    return out


def config_to_released(config: CumoConfig) -> dict:
    text = config.text_config.to_dict()
    is_mixtral = isinstance(config.text_config, MixtralConfig)
    released = {
        key: value
        for key, value in text.items()
        if key not in ("model_type", "architectures", "transformers_version")
    }
    released |= {theirs: getattr(config, ours) for theirs, ours in FIELDS.items()}
    released |= {
        "model_type": "llava_mixtral" if is_mixtral else "llava_mistral",
        "architectures": ["LlavaMixtralForCausalLM" if is_mixtral else "LlavaMistralForCausalLM"],
        "mm_vision_tower": CLIP_L_336,
        "mm_hidden_size": config.vision_config.hidden_size,
        "mlp_smoe": config.mlp_moe,
        "use_mm_proj": True,
        "mm_patch_merge_type": "flat",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "vision_config": config.vision_config.to_dict(),
    }
    return released


def config_from_released(released: dict, source: str = "config.json") -> CumoConfig:
    model_type = released.get("model_type")
    if model_type not in ("llava_mistral", "llava_mixtral"):
        raise ValueError(
            f"{source}: model_type {model_type!r} is not a released CuMo checkpoint (llava_mistral or llava_mixtral)"
        )
    if "vision_config" in released:
        vision = CLIPVisionConfig(**released["vision_config"])
    elif released.get("mm_vision_tower") == CLIP_L_336:
        vision = CLIPVisionConfig(**CLIP_VIT_L_14_336)
    else:
        raise ValueError(
            f"{source}: mm_vision_tower {released.get('mm_vision_tower')!r} has no known config; add a "
            f"'vision_config' entry with the CLIP vision config"
        )
    text_class = MixtralConfig if model_type == "llava_mixtral" else MistralConfig
    text = {key: value for key, value in released.items() if key not in FIELDS and key not in IGNORED}
    ours = {FIELDS[key]: value for key, value in released.items() if key in FIELDS}
    return CumoConfig(vision_config=vision, text_config=text_class(**text), **ours)


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: safetensors shards, or PyTorch .bin shards."""
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *.safetensors or pytorch_model*.bin weights")
    state = {}
    for file in files:
        state |= (
            load_file(file)
            if file.suffix == ".safetensors"
            else torch.load(file, map_location="cpu", weights_only=True)
        )
    return state


def load_released(directory: str | Path, dtype: torch.dtype = torch.float32) -> CumoForConditionalGeneration:
    """A released CuMo checkpoint as our model; raises unless every key maps (0 missing, 0 unexpected)."""
    directory = Path(directory)
    config = config_from_released(
        json.loads((directory / "config.json").read_text()), str(directory / "config.json")
    )
    state = from_released(read_state_dict(directory))
    # transformers' loader builds the model without a random init and makes the non-persistent buffers.
    model, info = CumoForConditionalGeneration.from_pretrained(
        None, config=config, state_dict=state, dtype=dtype, output_loading_info=True
    )
    if info["missing_keys"] or info["unexpected_keys"]:
        raise ValueError(
            f"{directory}: {len(info['missing_keys'])} missing keys {sorted(info['missing_keys'])[:5]} and "
            f"{len(info['unexpected_keys'])} unexpected keys {sorted(info['unexpected_keys'])[:5]}: not a CuMo "
            "checkpoint of the released layout"
        )
    return model


def save_released(
    model: CumoForConditionalGeneration, directory: str | Path, vocab_size: int | None = None
) -> None:
    """Write `model` in the released layout: config.json and model.safetensors. `vocab_size`: the LLM's own
    vocabulary, the rows after it (the image token's, which CuMo's vocabulary has not) left out."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config, state = config_to_released(model.config), to_released(model.state_dict())
    if vocab_size is not None:
        config["vocab_size"] = vocab_size
        if config.get("image_token_id", 0) >= vocab_size:  # images at -200, as CuMo; ours adds it back
            del config["image_token_id"]
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            state[key] = state[key][:vocab_size].contiguous()
    (directory / "config.json").write_text(json.dumps(config, indent=2, default=str))
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})


def convert_directory(src: str | Path, out: str | Path, direction: str) -> None:
    """`from-released`: a released checkpoint (with its tokenizer) -> our model directory, image token added.
    `to-released`: our model directory -> the released layout, tokenizer alongside."""
    if direction == "from-released":
        model = load_released(src)
        tokenizer = load_llm_tokenizer(src, model.config.text_config)
        add_image_token(tokenizer, model)
        model.save_pretrained(out)
        CumoProcessor(tokenizer, model.config).save_pretrained(out)
    elif direction == "to-released":
        model = CumoForConditionalGeneration.from_pretrained(src, dtype="auto")
        tokenizer = without_image_token(AutoTokenizer.from_pretrained(src), model.config.image_token)
        save_released(model, out, vocab_size=len(tokenizer))  # the image token's rows go with it
        save_tokenizer(tokenizer, out)
    else:
        raise ValueError(f"direction {direction!r}: use 'from-released' or 'to-released'")
