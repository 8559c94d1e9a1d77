"""The connector from CLIP features to the LLM: `mlp2x_gelu` and its MoE form `smoe_mlp`.

LLaVA-1.5's `mlp2x_gelu` is Linear(C_in, H), GELU, Linear(H, H); CuMo's input width C_in is CLIP's width
times the number of S^2 scales (2048), and its `MLPMoE` (multimodal_projector/builder.py) makes each
expert one such MLP with a top-k router over each image's tokens.
"""

from torch import nn

from cumo.model.configuration_cumo import CumoConfig
from cumo.model.moe import MLP, SparseMoeBlock


def build_projector(config: CumoConfig) -> nn.Module:
    """(B, N, C_in) -> (B, N, H): an `MLP`, or a `SparseMoeBlock` returning (features, MoeAux)."""
    in_features, hidden = config.mm_hidden_size, config.text_config.hidden_size
    if config.projector_type == "smoe_mlp":
        return SparseMoeBlock(
            in_features, hidden, hidden, config.num_experts, config.num_experts_per_tok, "gelu"
        )
    return MLP(in_features, hidden, hidden, "gelu")
