"""CLIP vision tower with MoE MLPs and S^2 multi-scale features, as CuMo's `CLIPVisionTower`.

CuMo (multimodal_encoder/clip_encoder.py and clip_smoe.py, https://github.com/SHI-Labs/CuMo), following
S^2 (Shi et al. 2024, https://github.com/bfshi/scaling_on_scales):

- scale 1 is the 336 image; scale s > 1 resizes it (bicubic) to 336*s and splits it into s x s crops
  of 336 ("chessboard"), which CLIP sees as separate images;
- features come from the penultimate layer (hidden state -2), CLS dropped; the crops' feature maps are
  merged back into one (24*s x 24*s) map and area-pooled to 24 x 24; the scales are concatenated on
  channels, giving (B, 576, 1024 * len(scales));
- with `clip_moe` every CLIP MLP is a top-k MoE block. Its aux losses are averaged over layers per scale,
  then over scales (CuMo runs the scales one after another and means the per-call means). Like CuMo, every
  layer runs, the last one included, although its output is not selected: its router losses are part of
  CuMo's mean. There is no post-layernorm (CuMo's released checkpoints have none).

Here all scales go through CLIP as one batch; aux losses are kept per row, so the per-scale means are
exact whatever the batching.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoderLayer, CLIPVisionEmbeddings

from cumo.model.configuration_cumo import CumoConfig
from cumo.model.moe import MoeAux, SparseMoeBlock


def split_chessboard(images_BCHW: torch.Tensor, num_split: int) -> torch.Tensor:
    """(B, C, H, W) -> (n*n*B, C, H/n, W/n); crop (i, j) of every image is block i*n+j of the batch (S^2)."""
    B, C, H, W = images_BCHW.shape
    h, w = H // num_split, W // num_split
    crops = [
        images_BCHW[:, :, i * h : (i + 1) * h, j * w : (j + 1) * w]
        for i in range(num_split)
        for j in range(num_split)
    ]
    return torch.cat(crops, dim=0)


def merge_chessboard(crops_BCHW: torch.Tensor, num_split: int) -> torch.Tensor:
    """Inverse of `split_chessboard`: (n*n*B, C, h, w) -> (B, C, n*h, n*w)."""
    b = crops_BCHW.shape[0] // (num_split * num_split)
    rows = [
        torch.cat(
            [crops_BCHW[(i * num_split + j) * b : (i * num_split + j + 1) * b] for j in range(num_split)],
            dim=-1,
        )
        for i in range(num_split)
    ]
    return torch.cat(rows, dim=-2)


class CumoVisionEncoderLayer(CLIPEncoderLayer):
    """CLIP encoder layer whose MLP is a `SparseMoeBlock` when `moe` (CuMo's `CLIPEncoderMoELayer`)."""

    def __init__(self, config: CLIPVisionConfig, moe: tuple[int, int] | None):
        super().__init__(config)
        if moe is not None:
            num_experts, top_k = moe
            self.mlp = SparseMoeBlock(
                config.hidden_size,
                config.intermediate_size,
                config.hidden_size,
                num_experts,
                top_k,
                config.hidden_act,
            )

    def forward(self, hidden_states_RND: torch.Tensor, attention_mask=None, **kwargs):
        residual = hidden_states_RND
        hidden_states, _ = self.self_attn(
            self.layer_norm1(hidden_states_RND), attention_mask=attention_mask, **kwargs
        )
        hidden_states = residual + hidden_states
        mlp_out = self.mlp(self.layer_norm2(hidden_states))
        mlp_out, aux = mlp_out if isinstance(self.mlp, SparseMoeBlock) else (mlp_out, None)
        return hidden_states + mlp_out, aux


class CumoVisionEncoder(nn.Module):
    def __init__(self, config: CLIPVisionConfig, moe: tuple[int, int] | None):
        super().__init__()
        self.layers = nn.ModuleList(
            [CumoVisionEncoderLayer(config, moe) for _ in range(config.num_hidden_layers)]
        )

    def forward(
        self, hidden_states_RND: torch.Tensor, feature_layer: int
    ) -> tuple[torch.Tensor, list[MoeAux]]:
        """Hidden state `feature_layer` (0 = embeddings, as transformers' `hidden_states`) and every layer's aux."""
        states = [hidden_states_RND]
        auxes = []
        for layer in self.layers:
            hidden_states_RND, aux = layer(hidden_states_RND)
            states.append(hidden_states_RND)
            if aux is not None:
                auxes.append(aux)
        return states[feature_layer], auxes


class CumoVisionTransformer(nn.Module):
    """CLIP's vision transformer without post-layernorm; parameter names match transformers' CLIP."""

    def __init__(self, config: CLIPVisionConfig, moe: tuple[int, int] | None):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CumoVisionEncoder(config, moe)

    def forward(self, pixel_values_R3HW: torch.Tensor, feature_layer: int):
        return self.encoder(self.pre_layrnorm(self.embeddings(pixel_values_R3HW)), feature_layer)


@dataclass
class VisionAux:
    """CLIP MoE aux losses aggregated as CuMo does, and the expert load of every layer."""

    balance: torch.Tensor  # scalar
    router_z: torch.Tensor  # scalar
    tokens_per_expert_LE: torch.Tensor  # (layers, E), summed over scales and images


def aggregate_scales(auxes: list[MoeAux], rows_per_scale: list[int]) -> VisionAux:
    """Mean over the rows of each scale, then over layers, then over scales (CuMo's clip_encoder.py)."""
    balance_LR = torch.stack([aux.balance_R for aux in auxes])
    router_z_LR = torch.stack([aux.router_z_R for aux in auxes])

    def per_scale_mean(loss_LR):
        return torch.stack([chunk.mean() for chunk in loss_LR.split(rows_per_scale, dim=1)]).mean()

    return VisionAux(
        balance=per_scale_mean(balance_LR),
        router_z=per_scale_mean(router_z_LR),
        tokens_per_expert_LE=torch.stack([aux.tokens_per_expert_E for aux in auxes]),
    )


class CumoVisionTower(nn.Module):
    """Images (B, 3, 336, 336) -> features (B, 576, 1024 * len(scales)) and, with `clip_moe`, `VisionAux`."""

    def __init__(self, config: CumoConfig):
        super().__init__()
        self.scales = list(config.scales)
        self.feature_layer = config.vision_feature_layer
        self.drop_cls = config.vision_feature_select == "patch"
        moe = (config.num_experts, config.num_experts_per_tok) if config.clip_moe else None
        self.vision_model = CumoVisionTransformer(config.vision_config, moe)

    def forward(self, pixel_values_B3HW: torch.Tensor) -> tuple[torch.Tensor, VisionAux | None]:
        size = pixel_values_B3HW.shape[-1]
        upcast = torch.promote_types(pixel_values_B3HW.dtype, torch.float32)
        pyramid = [pixel_values_B3HW]
        for scale in self.scales[1:]:
            # Bicubic in fp32 at least (S^2 upcasts half precision), then back to the tower's dtype.
            resized = F.interpolate(pixel_values_B3HW.to(upcast), size=size * scale, mode="bicubic")
            pyramid.append(split_chessboard(resized.to(pixel_values_B3HW.dtype), scale))
        rows_per_scale = [len(level) for level in pyramid]

        features_RNC, auxes = self.vision_model(torch.cat(pyramid), self.feature_layer)
        if self.drop_cls:
            features_RNC = features_RNC[:, 1:]

        per_scale = []
        for scale, features in zip(self.scales, features_RNC.split(rows_per_scale), strict=True):
            if scale > 1:
                grid = int(features.shape[1] ** 0.5)
                maps = features.transpose(1, 2).unflatten(2, (grid, grid))  # (s*s*B, C, g, g)
                merged = merge_chessboard(maps, scale)  # (B, C, s*g, s*g)
                pooled = F.interpolate(merged.to(upcast), size=grid, mode="area").to(features.dtype)
                features = pooled.flatten(2).transpose(1, 2)  # (B, g*g, C)
            per_scale.append(features)
        features_BNC = torch.cat(per_scale, dim=-1)
        return features_BNC, (aggregate_scales(auxes, rows_per_scale) if auxes else None)
