"""CumoConfig: one typed config for the whole model, checked when it is built, saved with every checkpoint.

A composite transformers config in the style of `LlavaConfig`: `vision_config` (CLIP vision) and
`text_config` (Mistral or Mixtral) plus CuMo's own fields. Field names and defaults follow CuMo's training
scripts (scripts/cumo/mistral_7b/sft_mistral_7b.sh): `--mm_projector_type smoe_mlp --clip_smoe True
--num_experts 4 --num_selected 2 (our num_experts_per_tok) --balance_loss_coef 0.1 --router_z_loss_coef 0.01 --scales 1,3
--mm_vision_select_layer -2 --image_aspect_ratio pad --version mistral_instruct_system`.
"""

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import (
    StrictDataclassError as ConfigError,  # what `@strict` raises, ValueError inside
)
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from cumo.data.conversation import TEMPLATES

PROJECTOR_TYPES = ("mlp2x_gelu", "smoe_mlp")
VISION_FEATURES = ("patch", "cls_patch")
IMAGE_ASPECT_RATIOS = ("pad", "square")


@strict
class CumoConfig(PreTrainedConfig):
    model_type = "cumo"
    sub_configs_defaults = {
        # Defaults: CLIP ViT-L/14-336 and Mistral-7B (see presets.py for the full, sourced configs).
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="mistral"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector_type: str = "mlp2x_gelu"  # `smoe_mlp`: the connector is a MoE (CuMo's mlp_smoe)
    clip_moe: bool = False  # every CLIP MLP is a MoE (CuMo's clip_smoe)
    num_experts: int = 4
    # CuMo's `num_selected`; named as Mixtral's field, since a config field `top_k` is read by generate() as
    # its sampling top-k.
    num_experts_per_tok: int = 2
    balance_loss_coef: float = 0.1
    router_z_loss_coef: float = 0.01
    scales: list[int] | None = None  # S^2 scales; None means CuMo's [1, 3]
    vision_feature_layer: int = -2  # hidden state index, as `mm_vision_select_layer`
    vision_feature_select: str = "patch"  # `patch` drops CLS, `cls_patch` keeps it
    image_aspect_ratio: str = "pad"  # `pad`: expand to a square with the processor's mean colour
    image_token: str = "<image>"
    image_token_id: int | None = None
    conversation_template: str = "mistral_instruct_system"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.scales is None:
            self.scales = [1, 3]
        super().__post_init__(**kwargs)

    # `@strict` runs every `validate_*` method when the config is built and when it is loaded.
    def validate_cumo(self):
        def fail(message):
            raise ValueError(f"CumoConfig: {message}")

        if self.projector_type not in PROJECTOR_TYPES:
            fail(f"projector_type={self.projector_type!r} is unknown; use one of {PROJECTOR_TYPES}")
        if self.vision_feature_select not in VISION_FEATURES:
            fail(f"vision_feature_select={self.vision_feature_select!r}; use one of {VISION_FEATURES}")
        if self.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            fail(f"image_aspect_ratio={self.image_aspect_ratio!r}; use one of {IMAGE_ASPECT_RATIOS}")
        if self.conversation_template not in TEMPLATES:
            fail(f"conversation_template={self.conversation_template!r}; use one of {sorted(TEMPLATES)}")
        if self.num_experts < 1 or not 1 <= self.num_experts_per_tok <= self.num_experts:
            fail(
                f"num_experts_per_tok={self.num_experts_per_tok} with num_experts={self.num_experts}: need "
                "1 <= num_experts_per_tok <= num_experts (CuMo routes each token to 2 of 4 experts)"
            )
        scales = self.scales
        if not scales or scales[0] != 1 or any(not isinstance(s, int) or s < 1 for s in scales):
            fail(
                f"scales={scales}: the first scale must be 1 and every scale a positive integer, e.g. [1, 3]"
            )
        if list(scales) != sorted(set(scales)):
            fail(f"scales={scales} must be strictly increasing, e.g. [1, 3]")
        if self.vision_feature_select == "cls_patch" and len(scales) > 1:
            fail(
                "vision_feature_select='cls_patch' cannot be merged across S^2 crops; use 'patch' or scales=[1]"
            )
        vision = self.vision_config
        if vision.image_size % vision.patch_size:
            fail(
                f"vision_config.image_size={vision.image_size} is not a multiple of patch_size="
                f"{vision.patch_size}: S^2 crops would not tile the patch grid"
            )
        num_layers = vision.num_hidden_layers
        if not -num_layers <= self.vision_feature_layer <= num_layers:
            fail(
                f"vision_feature_layer={self.vision_feature_layer} is outside the {num_layers + 1} hidden states"
            )
        vocab_size = self.text_config.vocab_size
        if self.image_token_id is not None and not 0 <= self.image_token_id < vocab_size:
            fail(
                f"image_token_id={self.image_token_id} is outside the text vocabulary of {vocab_size}: add "
                f"{self.image_token!r} to the tokenizer and resize the embeddings"
            )

    @property
    def mlp_moe(self) -> bool:
        """The connector is a MoE (CuMo's `mlp_smoe`); derived from `projector_type`."""
        return self.projector_type == "smoe_mlp"

    @property
    def num_image_tokens(self) -> int:
        """Tokens one image takes in the LLM: the patch grid (S^2 scales are concatenated on channels)."""
        grid = self.vision_config.image_size // self.vision_config.patch_size
        return grid * grid + (self.vision_feature_select == "cls_patch")

    @property
    def mm_hidden_size(self) -> int:
        """Connector input width: CLIP width times the number of scales."""
        return self.vision_config.hidden_size * len(self.scales)


__all__ = ["ConfigError", "CumoConfig"]
