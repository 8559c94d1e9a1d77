"""Model presets: the paper's two models and a debug-size `tiny`, written out as data with their sources.

`build_config(name, moe=...)`: `moe=False` is the dense model of pretrain and pft, `moe=True` the
co-upcycled sft model (CLIP MLPs and connector as top-2-of-4 MoE blocks, CuMo section 3.2).
"""

from transformers import CLIPVisionConfig, MistralConfig, MixtralConfig

from cumo.data.synthetic import IMAGE_TOKEN_ID, TINY_VOCAB_SIZE
from cumo.model.configuration_cumo import CumoConfig

# https://huggingface.co/openai/clip-vit-large-patch14-336/blob/main/config.json (vision_config)
CLIP_VIT_L_14_336 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
    initializer_range=0.02,
)

# https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.2/blob/main/config.json
MISTRAL_7B_INSTRUCT_V02 = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    hidden_act="silu",
    max_position_embeddings=32768,
    rms_norm_eps=1e-5,
    rope_theta=1e6,
    sliding_window=None,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)

# https://huggingface.co/mistralai/Mixtral-8x7B-Instruct-v0.1/blob/main/config.json
MIXTRAL_8X7B_INSTRUCT_V01 = dict(
    MISTRAL_7B_INSTRUCT_V02,
    num_local_experts=8,
    num_experts_per_tok=2,
    router_aux_loss_coef=0.02,
)

# Seconds on a CPU: 42 px images in 14 px patches (3 x 3 = 9 image tokens), 2 CLIP layers, a 4-layer LLM.
# The vocabulary is the synthetic shapes world's (cumo.data.synthetic), and its 3 x 3 grid of cells is the
# patch grid: each thing is one image token. Measured on held-out questions after the three stages
# (tests/test_grounding.py has the single-stage check): with 4 x 4 patches, each thing split over four of
# them, the model answered shape questions no better with the right image than with another one; with a
# 2-layer LLM it learned colours but not shapes in the stages' steps.
TINY_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=42,
    patch_size=14,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    initializer_range=0.02,
)
TINY_TEXT = dict(
    vocab_size=TINY_VOCAB_SIZE,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    hidden_act="silu",
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=1e4,
    sliding_window=None,
    tie_word_embeddings=False,
)


TINY_MIXTRAL_TEXT = dict(TINY_TEXT, num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.02)

PRESETS = {
    # name: (vision config, text config class, text config, image token id)
    "tiny": (TINY_VISION, MistralConfig, TINY_TEXT, IMAGE_TOKEN_ID),
    "tiny-mixtral": (TINY_VISION, MixtralConfig, TINY_MIXTRAL_TEXT, IMAGE_TOKEN_ID),
    # Mistral's tokenizer has no image token: it is added when the model meets its tokenizer
    # (processing_cumo.image_token_vocab), and the embeddings a row for it.
    "cumo-mistral-7b": (CLIP_VIT_L_14_336, MistralConfig, MISTRAL_7B_INSTRUCT_V02, None),
    "cumo-mixtral-8x7b": (CLIP_VIT_L_14_336, MixtralConfig, MIXTRAL_8X7B_INSTRUCT_V01, None),
}


def build_config(name: str, moe: bool = True, **overrides) -> CumoConfig:
    """The preset's CumoConfig; `moe` picks the co-upcycled (sft) or the dense (pretrain, pft) form."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    vision, text_class, text, image_token_id = PRESETS[name]
    fields = dict(
        vision_config=CLIPVisionConfig(**vision),
        text_config=text_class(**text),
        projector_type="smoe_mlp" if moe else "mlp2x_gelu",
        clip_moe=moe,
        image_token_id=image_token_id,
    )
    return CumoConfig(**{**fields, **overrides})
