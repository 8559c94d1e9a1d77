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
one (`processing_cumo.image_token_vocab`), and the embeddings and the head a row for it (`weights.resize_rows`); the way back drops them.

Both directions stream (`weights.save_from_recipe`): one tensor is read, renamed, stacked or split and
written at a time, in safetensors shards, so a conversion holds at most one shard it writes and the tensors
it is making, never the model (`python -m cumo.bench convert` measures it at CuMo-7B's size).
"""

import json
import re
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPVisionConfig, MistralConfig, MixtralConfig

from cumo.model.configuration_cumo import CumoConfig
from cumo.model.modeling_cumo import CumoForConditionalGeneration
from cumo.model.presets import CLIP_VIT_L_14_336, build_config
from cumo.model.processing_cumo import (
    CumoProcessor,
    image_token_vocab,
    load_llm_tokenizer,
    save_tokenizer,
    without_image_token,
)
from cumo.model.weights import (
    Checkpoint,
    CheckpointError,
    InMemory,
    Read,
    Recipe,
    build_empty,
    build_meta,
    llm_tensor,
    load_weights,
    resize_rows,
    save_from_recipe,
    saved_model,
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

_LLM = "model.language_model."
# Our tensors whose rows are the vocabulary: a token added to the tokenizer adds a row to each.
_VOCABULARY_ROWS = (_LLM + "embed_tokens.weight", "lm_head.weight")


def _experts_to_released(prefix: str, name: str, tensor: torch.Tensor, fc_names: dict) -> dict:
    fc, kind = name.split("_")  # fc1_weight -> fc1, weight
    return {f"{prefix}experts.{e}.{fc_names[fc]}.{kind}": tensor[e] for e in range(tensor.shape[0])}


def to_released(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict (or any part of it, down to one tensor) -> the released checkpoint's keys."""
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
        elif key.startswith(_LLM):
            out["model." + key.removeprefix(_LLM)] = tensor
        else:
            out[key] = tensor
    return {key: tensor.contiguous() for key, tensor in out.items()}


def released_reads(checkpoint: Checkpoint) -> dict[str, Read]:
    """Each of our tensors that a released checkpoint holds, as a `Read` of its tensors (expert stacks, and
    Mixtral's experts fused as `weights.llm_tensor` fuses the Hub's per-expert files): the inverse of
    `to_released`, from the checkpoint's keys alone. Every key of the checkpoint is in exactly one read."""
    reads, experts = {}, {}  # experts: our stack -> {expert: released key}
    for key in sorted(checkpoint.keys()):
        if m := re.fullmatch(r"(model\.vision_tower\.vision_model\.encoder\.layers\.\d+\.)gate\.weight", key):
            reads[m[1] + "mlp.router.weight"] = Read(checkpoint, (key,))
        elif m := re.fullmatch(
            r"(model\.vision_tower\.vision_model\.encoder\.layers\.\d+\.)experts\.(\d+)\.(fc[12])\.(\w+)", key
        ):
            experts.setdefault(f"{m[1]}mlp.experts.{m[3]}_{m[4]}", {})[int(m[2])] = key
        elif key == "model.mm_projector.gate.weight":
            reads["model.mm_projector.router.weight"] = Read(checkpoint, (key,))
        elif m := re.fullmatch(r"model\.mm_projector\.experts\.(\d+)\.([02])\.(\w+)", key):
            experts.setdefault(f"model.mm_projector.experts.fc{int(m[2]) // 2 + 1}_{m[3]}", {})[int(m[1])] = (
                key
            )
        elif m := re.fullmatch(r"model\.mm_projector\.([02])\.(\w+)", key):
            reads[f"model.mm_projector.fc{int(m[1]) // 2 + 1}.{m[2]}"] = Read(checkpoint, (key,))
        elif m := re.fullmatch(r"model\.(layers\.\d+\.)block_sparse_moe\..*", key):
            for suffix in ("mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
                reads[_LLM + m[1] + suffix] = llm_tensor(checkpoint, "model.", m[1] + suffix)
        elif key.startswith("model.") and not key.startswith(("model.vision_tower.", "model.mm_projector.")):
            reads[_LLM + key.removeprefix("model.")] = Read(checkpoint, (key,))
        else:
            reads[key] = Read(checkpoint, (key,))
    for name, by_expert in experts.items():
        if sorted(by_expert) != list(range(len(by_expert))):
            raise CheckpointError(
                f"{checkpoint.directory}: the experts of {name} are numbered {sorted(by_expert)}, not 0 to "
                f"{len(by_expert) - 1}: a released checkpoint has them all (download it again)"
            )
        reads[name] = Read(checkpoint, tuple(by_expert[e] for e in range(len(by_expert))), torch.stack)
    return reads


def from_released(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released checkpoint's keys -> our state dict (experts stacked), all in memory."""
    reads = released_reads(InMemory(state_dict, "the released state dict"))
    return {key: read.value() for key, read in reads.items()}


def released_recipe(checkpoint: Checkpoint, model: torch.nn.Module) -> Recipe:
    """Where each tensor of `model` (our layout, built from the checkpoint's config) comes from in a released
    checkpoint; the vocabulary rows of an added image token start as the mean row (`weights.resize_rows`).
    Raises unless every tensor of the model is there and every tensor of the checkpoint is used."""
    reads = released_reads(checkpoint)
    names = set(model.state_dict())
    missing = sorted(names - reads.keys())
    unexpected = sorted(key for name in reads.keys() - names for key in reads[name].keys)
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint.directory}: {len(missing)} missing keys {missing[:5]} and {len(unexpected)} unexpected "
            f"keys {unexpected[:5]}: not a CuMo checkpoint of the released layout, or its config.json is not its own"
        )

    return resized_vocabulary(lambda name, shape: reads[name])


def resized_vocabulary(recipe: Recipe) -> Recipe:
    """`recipe` with the embeddings and the head cut or grown to the model's vocabulary (`weights.resize_rows`):
    the image token's rows dropped for the released layout, added for ours."""

    def resized(name: str, shape: torch.Size) -> Read:
        return resize_rows(recipe(name, shape), shape[0]) if name in _VOCABULARY_ROWS else recipe(name, shape)

    return resized


def config_to_released(config: CumoConfig) -> dict:
    text = config.text_config.to_dict()
    is_mixtral = isinstance(config.text_config, MixtralConfig)
    released = {
        key: value
        for key, value in text.items()
        if key not in ("model_type", "architectures", "transformers_version")
    }
    # An image token outside the vocabulary has no id in the released config (CuMo's images are at -200).
    released |= {
        theirs: getattr(config, ours) for theirs, ours in FIELDS.items() if getattr(config, ours) is not None
    }
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
    # The weights' dtype (bfloat16 for the released ones: CuMo trains with --bf16), kept when converting.
    dtype = released.get("torch_dtype") or released.get("dtype") or "float32"
    return CumoConfig(vision_config=vision, text_config=text_class(**text), dtype=dtype, **ours)


# What a preset fixes of the architecture: the sizes of every tensor (the memory plan counts them) and the MoE;
# by sub-config, None for CumoConfig's own fields.
ARCHITECTURE = {
    "vision_config": ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size"),
    "text_config": ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "num_local_experts", "vocab_size"),
    None: ("projector_type", "clip_moe", "num_experts", "num_experts_per_tok"),
}  # fmt: skip


def check_preset(config: CumoConfig, preset: str, source: str) -> None:
    """A released checkpoint's config must have the architecture of `preset` after sft (co-upcycled), which
    the workflow planned its evaluation from before the download."""
    expected = build_config(preset, moe=True)
    differences = []
    for part, keys in ARCHITECTURE.items():
        ours, theirs = (getattr(config, part), getattr(expected, part)) if part else (config, expected)
        differences += [
            f"{part + '.' if part else ''}{key} {getattr(ours, key, None)} (the preset's {getattr(theirs, key, None)})"
            for key in keys
            if getattr(ours, key, None) != getattr(theirs, key, None)
        ]
    if differences:
        raise ValueError(
            f"{source}: not the architecture of preset {preset}: {', '.join(differences)}. Name the preset it has "
            "(the config's models.<name>.preset), or leave it out for a local directory"
        )


def read_released_config(directory: str | Path) -> CumoConfig:
    path = Path(directory) / "config.json"
    return config_from_released(json.loads(path.read_text()), str(path))


def load_released(directory: str | Path, dtype: torch.dtype = torch.float32) -> CumoForConditionalGeneration:
    """A released CuMo checkpoint as our model, read a tensor at a time; raises unless every key maps (0
    missing, 0 unexpected)."""
    config = read_released_config(directory)
    model = build_empty(config, dtype)
    load_weights(model, released_recipe(Checkpoint(directory), model))
    return model


def save_released(
    model: CumoForConditionalGeneration, directory: str | Path, max_shard_bytes: int = 5 * 10**9
) -> None:
    """Write `model` in the released layout: config.json and its safetensors shards (with their index when
    there are several)."""
    state = InMemory(model.state_dict(), "the model")
    write_released(model, lambda name, shape: Read(state, (name,)), directory, max_shard_bytes)


def write_released(
    model: CumoForConditionalGeneration, recipe: Recipe, directory: str | Path, max_shard_bytes: int
) -> list[str]:
    """The released layout's config.json and shards of `model` (only its names, shapes, dtype and config are
    used: it may be on the meta device), each of our tensors made by `recipe` and written in turn."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # The weights' dtype under the name CuMo's transformers (4.37) reads.
    config = config_to_released(model.config) | {"torch_dtype": str(model.dtype).removeprefix("torch.")}
    (directory / "config.json").write_text(json.dumps(config, indent=2, default=str))
    return save_from_recipe(
        model, recipe, directory, max_shard_bytes, layout=lambda name, tensor: to_released({name: tensor})
    )


def convert_directory(
    src: str | Path,
    out: str | Path,
    direction: str,
    max_shard_bytes: int = 5 * 10**9,
    preset: str | None = None,
) -> None:
    """`from-released`: a released checkpoint (with its tokenizer) -> our model directory, image token added;
    with `preset`, the checkpoint must have its architecture. `to-released`: our model directory -> the
    released layout, tokenizer alongside. Both in the checkpoint's dtype, streamed tensor by tensor into shards
    of at most `max_shard_bytes`."""
    if direction == "from-released":
        config = read_released_config(src)
        if preset:
            check_preset(config, preset, str(Path(src) / "config.json"))
        tokenizer = load_llm_tokenizer(src, config.text_config)
        config.text_config.vocab_size = image_token_vocab(tokenizer, config)
        model = build_meta(config, config.dtype)
        save_from_recipe(
            model, released_recipe(Checkpoint(src), model), out, max_shard_bytes, description="convert"
        )
        config.save_pretrained(out)
        CumoProcessor(tokenizer, config).save_pretrained(out)
    elif direction == "to-released":
        config = CumoConfig.from_pretrained(src)
        tokenizer = without_image_token(AutoTokenizer.from_pretrained(src), config.image_token)
        if config.image_token_id >= len(tokenizer):  # CuMo's vocabulary has no image token (images at -200)
            config.text_config.vocab_size, config.image_token_id = len(tokenizer), None
        model = build_meta(config, config.dtype or torch.float32)
        write_released(model, resized_vocabulary(saved_model(Checkpoint(src))), out, max_shard_bytes)
        save_tokenizer(tokenizer, out)
    else:
        raise ValueError(f"direction {direction!r}: use 'from-released' or 'to-released'")
