"""The three training stages as data, and the model each one starts from.

Defaults are CuMo's training scripts (https://github.com/SHI-Labs/CuMo/tree/main/scripts/cumo), written on
8 GPUs as per-device batch x gradient accumulation; the global batch is what a stage states here, so a run
on another number of GPUs trains the same recipe (the accumulation is derived from the ranks at hand):

    stage     trains                          template                 ZeRO            lr    global  max len
    pretrain  connector (tune_mm_mlp_adapter)  plain                    zero2 (a)       1e-3  256     2048
    pft       CLIP, connector, LLM (--pft)     mistral_instruct_system  zero3 (b)       2e-6  64      4096
    sft       all, CLIP MLPs + connector MoE   mistral_instruct_system  zero3_offload   4e-6  64      4096
                                                                                        (Mixtral 2e-6, 32)

(a) zero3 for Mixtral (pretrain_mixtral_8x7b.sh); (b) zero3_offload for Mixtral (pft_mixtral_8x7b.sh).
Every stage: 1 epoch, warm-up ratio 0.03, cosine schedule, weight decay 0; pft and sft group batches by
modality (`--group_by_modality_length True`). Per-device batches: pretrain 32, pft 4, sft 4 (Mixtral 2).

`prepare_model` builds what a stage trains: pretrain the dense model from the preset (CLIP ViT-L/14-336 and
Mistral/Mixtral weights for the paper's presets, a random init and the shapes-world tokenizer for the tiny
ones); pft the pretrain output; sft the pft output co-upcycled (CuMo section 3.2). Parameters the stage does
not train are frozen.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, CLIPVisionConfig

import cumo.model  # noqa: F401  (registers CumoConfig with the Auto classes, for from_pretrained)
from cumo.data.conversation import TEMPLATES
from cumo.data.synthetic import build_tokenizer
from cumo.model.configuration_cumo import CumoConfig
from cumo.model.modeling_cumo import CumoForConditionalGeneration
from cumo.model.presets import PRESETS, build_config
from cumo.model.processing_cumo import CumoProcessor, image_token_vocab, load_llm_tokenizer
from cumo.model.upcycle import upcycle_recipe, upcycled_config
from cumo.model.weights import (
    WHOLE,
    Checkpoint,
    CheckpointError,
    Init,
    Partitioning,
    Read,
    Recipe,
    build_empty,
    llm_tensor,
    load_weights,
    resize_rows,
    saved_model,
)
from cumo.train.checkpoint import FINISHED, is_finished

STAGES = ("pretrain", "pft", "sft")
PREVIOUS = {"pretrain": None, "pft": "pretrain", "sft": "pft"}
ZERO_CONFIGS = ("zero2", "zero3", "zero3_offload")  # cumo/train/deepspeed/<name>.json
SCHEDULERS = ("cosine",)
# The model's parts, by the module prefixes of their parameters.
PARTS = {
    "vision": ("model.vision_tower.",),
    "connector": ("model.mm_projector.",),
    "llm": ("model.language_model.", "lm_head."),
}

# Where the paper's presets load their pretrained weights from (CuMo's --vision_tower, --model_name_or_path).
CLIP_SOURCE = "openai/clip-vit-large-patch14-336"
LLM_SOURCES = {
    "cumo-mistral-7b": "mistralai/Mistral-7B-Instruct-v0.2",
    "cumo-mixtral-8x7b": "mistralai/Mixtral-8x7B-Instruct-v0.1",
}
TINY_PRESETS = ("tiny", "tiny-mixtral")


class MissingPredecessor(FileNotFoundError):
    """A stage was started without the finished output of the stage before it."""


@dataclass(frozen=True)
class StageConfig:
    """Everything that defines how one stage trains; checked when built, saved with its output."""

    name: str
    trainable: tuple[str, ...]  # keys of PARTS
    upcycle: bool  # co-upcycle the previous stage's dense model into the MoE model first
    template: str
    zero: str
    learning_rate: float
    global_batch_size: int  # samples per optimiser step over all ranks
    micro_batch_size: int  # samples per forward pass on one rank
    max_length: int
    group_by_modality: bool
    epochs: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    seed: int = 0
    # The vision tower's learning rate where it differs from the rest (LLaVA-NeXT's --mm_vision_tower_lr); None:
    # learning_rate. Only with our AdamW: DeepSpeed's config-made optimizer and schedulers set one lr for all.
    vision_learning_rate: float | None = None
    # Recompute each layer's activations in the backward instead of keeping them (CuMo's scripts pass
    # `--gradient_checkpointing True` to every stage): the same gradients, a layer's input kept per layer.
    gradient_checkpointing: bool = True

    def __post_init__(self):
        def fail(message):
            raise ValueError(f"stage {self.name!r}: {message}")

        if self.name not in STAGES:
            fail(f"unknown stage; use one of {STAGES}")
        if not self.trainable or set(self.trainable) - set(PARTS):
            fail(f"trainable={self.trainable} must name some of {tuple(PARTS)}")
        if self.template not in TEMPLATES:
            fail(f"template={self.template!r} is unknown; use one of {sorted(TEMPLATES)}")
        if self.zero not in ZERO_CONFIGS:
            fail(f"zero={self.zero!r} is unknown; use one of {ZERO_CONFIGS}")
        if self.lr_scheduler not in SCHEDULERS:
            fail(f"lr_scheduler={self.lr_scheduler!r}; only {SCHEDULERS} is implemented (CuMo's)")
        if not self.learning_rate > 0 or self.weight_decay < 0:
            fail(f"learning_rate={self.learning_rate} must be > 0 and weight_decay={self.weight_decay} >= 0")
        if self.vision_learning_rate is not None and not self.vision_learning_rate > 0:
            fail(f"vision_learning_rate={self.vision_learning_rate} must be > 0 (or None: learning_rate)")
        if self.micro_batch_size < 1 or self.global_batch_size % self.micro_batch_size:
            fail(
                f"global_batch_size={self.global_batch_size} is not a multiple of micro_batch_size="
                f"{self.micro_batch_size}; pick a global batch of micro-batches (CuMo: 256 = 8 GPUs x 32)"
            )
        if self.max_length < 1 or self.epochs < 1 or not 0 <= self.warmup_ratio < 1:
            fail(
                f"need max_length >= 1, epochs >= 1 and 0 <= warmup_ratio < 1; got {self.max_length}, "
                f"{self.epochs}, {self.warmup_ratio}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# CuMo's scripts for Mistral-7B (scripts/cumo/mistral_7b/*_mistral_7b.sh).
MISTRAL_RECIPE = {
    "pretrain": StageConfig(
        name="pretrain",
        trainable=("connector",),
        upcycle=False,
        template="plain",
        zero="zero2",
        learning_rate=1e-3,
        global_batch_size=256,  # 8 GPUs x 32 x 1
        micro_batch_size=32,
        max_length=2048,
        group_by_modality=False,
    ),
    "pft": StageConfig(
        name="pft",
        trainable=("vision", "connector", "llm"),
        upcycle=False,
        template="mistral_instruct_system",
        zero="zero3",
        learning_rate=2e-6,
        global_batch_size=64,  # 8 GPUs x 4 x 2
        micro_batch_size=4,
        max_length=4096,
        group_by_modality=True,
    ),
    "sft": StageConfig(
        name="sft",
        trainable=("vision", "connector", "llm"),
        upcycle=True,
        template="mistral_instruct_system",
        zero="zero3_offload",
        learning_rate=4e-6,
        global_batch_size=64,  # 8 GPUs x 4 x 2
        micro_batch_size=4,
        max_length=4096,
        group_by_modality=True,
    ),
}

# scripts/cumo/mixtral_8x7b/*_mixtral_8x7b.sh: what differs from Mistral's.
MIXTRAL_RECIPE = {
    "pretrain": dataclasses.replace(MISTRAL_RECIPE["pretrain"], zero="zero3"),
    "pft": dataclasses.replace(MISTRAL_RECIPE["pft"], zero="zero3_offload"),
    "sft": dataclasses.replace(
        MISTRAL_RECIPE["sft"], learning_rate=2e-6, global_batch_size=32, micro_batch_size=2
    ),  # 8 GPUs x 2 x 2
}

# The tiny presets on the shapes world, 2 CPU ranks: the paper's stages with batches and learning rates that
# make a random init learn in a minute or two per stage (measured, see tests/test_trainer.py). Changes:
# - pretrain also trains the LLM. The paper's LLM comes pretrained (Mistral); the tiny one is random, and a
#   connector feeding a frozen random LLM leaves the loss at chance (measured: 6.87 -> 6.73 over 125 steps,
#   ln(1024) = 6.93), so nothing downstream would start from a model that reads anything.
# - more epochs: one epoch of each corpus taught the answers' form but not to read the image (the same
#   held-out accuracy with another sample's image); pretrain starts to use the image after about 150 steps.
# - the vision tower learns at 1e-4, the rest at 3e-3. It is a random init whose weights are ~0.02: at the
#   LLM's 3e-3 Adam rewrites them within steps, the features stop telling images apart (measured: pretrain
#   with it trainable at 3e-3 ends with the same loss for the right and a shifted image, 0.74 and 0.74,
#   against 0.46 and 1.20 with it frozen) and pft and sft lost what pretrain had learned.
# - sft learns at 1e-3 for 3 epochs. At 3e-3 the tiny model cannot learn whether a named thing is in the image
#   (POPE's question; measured from the trained pft model, loss on the answer only: chance for 400 steps at
#   3e-3, 82% at 1e-3 against 48% with blank images), and the skill takes steps: 1, 2 and 3 epochs at 1e-3
#   gave a held-out existence AUC of 0.50, 0.66 and 0.77 (cumo/train/README.md, "The tiny recipe"). 4 epochs did not beat 3.
# - sft runs ZeRO-2, pft ZeRO-3 (no offload: no accelerator memory to relieve). For a model this small
#   DeepSpeed's ZeRO-3 partitioning is most of a step: 0.56 s against ZeRO-2's 0.25 s on 2 CPU ranks, which
#   pays for sft's third epoch. tests/test_trainer.py still runs the MoE sft step under ZeRO-3.
TINY_RECIPE = {
    "pretrain": dataclasses.replace(
        MISTRAL_RECIPE["pretrain"],
        trainable=("connector", "llm"),
        learning_rate=3e-3,
        global_batch_size=16,
        micro_batch_size=8,
        max_length=512,
        epochs=3,
    ),
    "pft": dataclasses.replace(
        MISTRAL_RECIPE["pft"],
        learning_rate=3e-3,
        vision_learning_rate=1e-4,
        global_batch_size=16,
        micro_batch_size=4,
        max_length=512,
        epochs=2,
    ),
    "sft": dataclasses.replace(
        MISTRAL_RECIPE["sft"],
        zero="zero2",
        learning_rate=1e-3,
        vision_learning_rate=1e-4,
        global_batch_size=16,
        micro_batch_size=4,
        max_length=512,
        epochs=3,
    ),
}

RECIPES = {
    "tiny": TINY_RECIPE,
    "tiny-mixtral": TINY_RECIPE,
    "cumo-mistral-7b": MISTRAL_RECIPE,
    "cumo-mixtral-8x7b": MIXTRAL_RECIPE,
}


def parse_overrides(items: list[str]) -> dict:
    """['micro_batch_size=2', 'zero=zero3_offload'] -> {field: value}, each value read as its field's type.

    What `cumo train --set` takes: a recipe changed for a cluster (a smaller micro-batch at the same global
    batch, offloading) without editing the code."""
    types = {field.name: field.type for field in dataclasses.fields(StageConfig)}
    overrides = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in types:
            raise ValueError(f"--set {item!r}: give FIELD=VALUE with FIELD one of {sorted(types)}")
        kind = types[name]
        try:
            if kind == float | None and text.lower() == "none":
                value = None
            elif kind is bool:
                if text.lower() not in ("true", "false"):
                    raise ValueError("say true or false")
                value = text.lower() == "true"
            elif kind in (int, str):
                value = kind(text)
            elif kind in (float, float | None):
                value = float(text)
            else:  # tuple[str, ...]
                value = tuple(part for part in text.split(",") if part)
        except ValueError as error:
            raise ValueError(f"--set {item!r}: {text!r} is not a value of {kind} ({error})") from None
        overrides[name] = value
    return overrides


def stage_config(stage: str, preset: str, **overrides) -> StageConfig:
    """The preset's recipe for `stage`, with `overrides` (field=value) applied and checked."""
    if preset not in RECIPES:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(RECIPES)}")
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; use one of {STAGES}")
    unknown = set(overrides) - {field.name for field in dataclasses.fields(StageConfig)}
    if unknown:
        known = [field.name for field in dataclasses.fields(StageConfig)]
        raise ValueError(f"unknown stage field(s) {sorted(unknown)}; known: {known}")
    return dataclasses.replace(RECIPES[preset][stage], **overrides)


@dataclass
class StageStart:
    """A stage's model before any weight exists: its config and processor, and where its weights come from
    (`recipe` for `weights.load_weights`; None: a random start, the tiny presets' pretrain)."""

    config: CumoConfig
    processor: CumoProcessor
    recipe: Recipe | None
    # Checkpoints read, and the prefixes of their tensors the model does not use (CLIP's text tower, ...).
    checkpoints: tuple[Checkpoint, ...] = ()
    unused: tuple[str, ...] = ()


def stage_start(
    stage: StageConfig,
    previous_output_dir: str | Path | None,
    preset: str,
    sources: dict[str, str] | None = None,
) -> StageStart:
    """What `stage` starts from; reads configs and tokenizers only, no weights.

    `previous_output_dir`: the finished output of the stage before (pft, sft); unused by pretrain.
    `sources` (pretrain of the paper's presets): {"clip": ..., "llm": ...} Hub ids or local directories,
    by default CLIP_SOURCE and LLM_SOURCES[preset]. Raises `MissingPredecessor` before any compute when the
    previous stage's output is absent or unfinished.
    """
    if sources and (PREVIOUS[stage.name] is not None or preset in TINY_PRESETS):
        raise ValueError(
            f"base weights ({', '.join(sources)}) are where a paper preset's pretrain starts; {stage.name} of "
            f"{preset} starts from {'random weights' if PREVIOUS[stage.name] is None else 'the previous stage'}: "
            "drop --clip/--llm"
        )
    if PREVIOUS[stage.name] is None:
        start = _pretrain_start(preset, sources or {})
    else:
        require_previous(stage.name, previous_output_dir, preset)
        previous = Checkpoint(previous_output_dir)
        config = CumoConfig.from_pretrained(previous_output_dir)
        processor = CumoProcessor.from_pretrained(previous_output_dir, config)
        if stage.upcycle:
            config = upcycled_config(config)
            start = StageStart(config, processor, upcycle_recipe(previous, config), (previous,))
        else:
            start = StageStart(config, processor, saved_model(previous), (previous,))
    start.config.conversation_template = stage.template
    start.processor.template = stage.template
    return start


def build_model(
    start: StageStart,
    stage: StageConfig,
    dtype: torch.dtype = torch.float32,
    partitioning: Partitioning = WHOLE,
) -> CumoForConditionalGeneration:
    """The model `stage` trains, in `dtype`: built under `partitioning` (ZeRO-3: split over the ranks as it is
    made) and filled one module at a time; in train mode, untrained parts frozen, activation checkpointing
    as the stage says."""
    model = build_empty(start.config, dtype, partitioning, initialise=start.recipe is None)
    if start.recipe is not None:
        load_weights(model, start.recipe, partitioning, description=f"{stage.name}: load")
        for checkpoint in start.checkpoints:
            checkpoint.close()
            if partitioning.writer or not partitioning.partitioned:
                if unused := checkpoint.unread(ignore=start.unused):
                    raise CheckpointError(
                        f"{checkpoint.directory} holds {len(unused)} tensor(s) the {stage.name} model has no place "
                        f"for, e.g. {unused[:5]}: it is not of the preset's architecture"
                    )
    freeze_untrained(model, stage.trainable)
    if stage.gradient_checkpointing:
        model.activation_checkpointing_enable()
    return model.train()


def prepare_model(
    stage: StageConfig,
    previous_output_dir: str | Path | None,
    preset: str,
    sources: dict[str, str] | None = None,
    dtype: torch.dtype = torch.float32,
    partitioning: Partitioning = WHOLE,
) -> tuple[CumoForConditionalGeneration, CumoProcessor]:
    """`stage_start` then `build_model`: the model `stage` trains and its processor."""
    start = stage_start(stage, previous_output_dir, preset, sources)
    return build_model(start, stage, dtype, partitioning), start.processor


def require_previous(stage: str, directory: str | Path | None, preset: str) -> None:
    """Raise `MissingPredecessor`, naming what makes it, unless `directory` holds the finished stage before."""
    previous = PREVIOUS[stage]
    if previous is None or (directory is not None and is_finished(directory)):
        return
    where = "no directory was given" if directory is None else f"{Path(directory) / FINISHED} does not exist"
    raise MissingPredecessor(
        f"stage {stage} starts from the finished {previous} stage, but {where}. Train it first: "
        f"`cumo train --stage {previous} --preset {preset} --data <{previous} mixture> --out <dir> ...` "
        f"(the workflow's train rule for stage {previous}), then pass `--previous <dir>` to {stage}."
    )


# What of CLIP's Hub checkpoint CuMo's tower does not use: the text tower and the projections of the full
# CLIPModel (openai/clip-vit-large-patch14-336 ships one), and the post-layernorm (features come from hidden
# state -2); position ids are a buffer transformers no longer saves.
CLIP_UNUSED = (
    "text_model.",
    "text_projection.",
    "visual_projection.",
    "logit_scale",
    "vision_model.post_layernorm.",
    "post_layernorm.",
)
_VISION = "model.vision_tower.vision_model."
_CONNECTOR = "model.mm_projector."
_LLM = "model.language_model."


def _pretrain_start(preset: str, sources: dict[str, str]) -> StageStart:
    """The dense model pretrain starts from: tiny = random init; the paper's = CLIP + LLM weights."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    if preset in TINY_PRESETS:
        config = build_config(preset, moe=False, conversation_template="plain")
        return StageStart(config, CumoProcessor(build_tokenizer(), config), None)

    # As LLaVA's train.py: the towers' own configs come with their weights; the preset adds CuMo's fields.
    clip_dir = local_model_directory(sources.get("clip", CLIP_SOURCE))
    llm_dir = local_model_directory(sources.get("llm", LLM_SOURCES[preset]))
    vision_config = CLIPVisionConfig.from_pretrained(clip_dir)
    text_config = AutoConfig.from_pretrained(llm_dir)
    tokenizer = load_llm_tokenizer(llm_dir, text_config)
    config = build_config(
        preset, moe=False, conversation_template="plain", vision_config=vision_config, text_config=text_config
    )
    # Mistral's tokenizer has no image token: it gets one, and the embeddings a row for it.
    vocab = config.text_config.vocab_size = image_token_vocab(tokenizer, config)

    clip, llm = Checkpoint(clip_dir), Checkpoint(llm_dir)
    std = config.text_config.initializer_range

    def recipe(name: str, shape: torch.Size):
        if name.startswith(_VISION):
            # The Hub's CLIPModel files name the tower `vision_model.`; transformers 5 saves a CLIPVisionModel
            # without the prefix.
            key = "vision_model." + name.removeprefix(_VISION)
            return Read(clip, (key if key in clip else key.removeprefix("vision_model."),))
        if name.startswith(_CONNECTOR):  # learnt from scratch; as transformers' _init_weights of a Linear
            if name.endswith(".bias"):
                return Init(torch.nn.init.zeros_)
            return Init(lambda tensor: torch.nn.init.normal_(tensor, std=std))
        if name == _LLM + "embed_tokens.weight":
            return resize_rows(llm_tensor(llm, "model.", "embed_tokens.weight"), vocab)
        if name.startswith(_LLM):
            return llm_tensor(llm, "model.", name.removeprefix(_LLM))
        if name == "lm_head.weight":
            return resize_rows(Read(llm, ("lm_head.weight",)), vocab)
        raise CheckpointError(f"no base weights for {name}: add its source to stages._pretrain_start")

    return StageStart(config, CumoProcessor(tokenizer, config), recipe, (clip, llm), CLIP_UNUSED)


def local_model_directory(source: str) -> Path:
    """A Hub model id or a local directory -> a local directory holding its config, tokenizer and weights.

    The workflow downloads the base models first (`cumo download`, cumo/data/sources.yaml) and passes folders;
    a Hub id is fetched here, safetensors where the repo has them, else PyTorch .bin (CLIP's repo)."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    metadata = ["*.json", "tokenizer*", "*.model"]
    directory = Path(snapshot_download(source, allow_patterns=metadata + ["model*.safetensors"]))
    if not list(directory.glob("*.safetensors")):
        directory = Path(snapshot_download(source, allow_patterns=metadata + ["pytorch_model*.bin"]))
    return directory


def parameter_groups(model: torch.nn.Module, stage: StageConfig) -> list[dict]:
    """The trainable parameters as optimizer groups: the rest first, the vision tower's at its own lr if set.

    As LLaVA's `create_optimizer` (llava/train/llava_trainer.py) puts the connector at `mm_projector_lr`, and
    LLaVA-NeXT's puts the vision tower at `mm_vision_tower_lr`. The first group is the one logged as `lr`.
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if stage.vision_learning_rate is None:
        return [{"params": [p for _, p in trainable]}]
    is_vision = [name.startswith(PARTS["vision"]) for name, _ in trainable]
    rest = [p for (_, p), vision in zip(trainable, is_vision, strict=True) if not vision]
    vision = [p for (_, p), vision in zip(trainable, is_vision, strict=True) if vision]
    return [{"params": rest}] + ([{"params": vision, "lr": stage.vision_learning_rate}] if vision else [])


def freeze_untrained(model: torch.nn.Module, trainable: tuple[str, ...]) -> None:
    """requires_grad on the parameters of the `trainable` parts only; every parameter must belong to a part."""
    prefixes = tuple(prefix for part in trainable for prefix in PARTS[part])
    every_prefix = tuple(prefix for prefixes_ in PARTS.values() for prefix in prefixes_)
    for name, parameter in model.named_parameters():
        if not name.startswith(every_prefix):
            raise ValueError(f"parameter {name} belongs to none of the parts {PARTS}: add its prefix there")
        parameter.requires_grad_(name.startswith(prefixes))
