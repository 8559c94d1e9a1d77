"""The S^2 CLIP tower against two oracles: transformers' CLIPVisionModel (features of hidden state -2, CLS
dropped) and CuMo's flow, which runs each scale through CLIP on its own and means aux losses per call."""

import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel

from cumo.model.vision import merge_chessboard, split_chessboard

from .factories import make_model


def test_chessboard_split_order_and_merge_inverse():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float64).view(2, 1, 6, 6)
    crops = split_chessboard(images, 3)
    assert crops.shape == (18, 1, 2, 2)
    # crop (i, j) of image b is batch entry (i*3 + j)*2 + b
    assert torch.equal(crops[(1 * 3 + 2) * 2 + 1], images[1, :, 2:4, 4:6])
    assert torch.equal(merge_chessboard(crops, 3), images)


def test_dense_tower_matches_transformers_clip_penultimate_patch_features():
    model = make_model("tiny", moe=False, dtype=torch.float64, scales=[1])
    tower = model.model.vision_tower
    clip = CLIPVisionModel(model.config.vision_config).to(torch.float64).eval()
    missing, unexpected = clip.load_state_dict(tower.vision_model.state_dict(), strict=False)
    assert set(missing) == {"post_layernorm.weight", "post_layernorm.bias"} and not unexpected
    pixel_values = torch.randn(3, 3, 42, 42, dtype=torch.float64)
    ours, aux = tower(pixel_values)
    reference = clip(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
    assert aux is None
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)


def cumo_s2_reference(tower, pixel_values):
    """CuMo's clip_encoder.py: scale by scale through CLIP, aux = mean over scales of the per-call layer means."""
    features, balances, router_zs = [], [], []
    size = pixel_values.shape[-1]
    for scale in tower.scales:
        x = pixel_values
        if scale > 1:
            x = split_chessboard(F.interpolate(pixel_values, size=size * scale, mode="bicubic"), scale)
        out, auxes = tower.vision_model(x, tower.feature_layer)
        out = out[:, 1:]
        if scale > 1:
            grid = int(out.shape[1] ** 0.5)
            out = merge_chessboard(out.transpose(1, 2).unflatten(2, (grid, grid)), scale)
            out = F.interpolate(out, size=grid, mode="area").flatten(2).transpose(1, 2)
        features.append(out)
        balances.append(torch.stack([aux.balance_R.mean() for aux in auxes]).mean())
        router_zs.append(torch.stack([aux.router_z_R.mean() for aux in auxes]).mean())
    return torch.cat(features, dim=-1), torch.stack(balances).mean(), torch.stack(router_zs).mean()


def test_moe_s2_tower_matches_cumo_scale_by_scale():
    model = make_model("tiny", moe=True, dtype=torch.float64, scales=[1, 2, 3])
    tower = model.model.vision_tower
    pixel_values = torch.randn(2, 3, 42, 42, dtype=torch.float64)
    features, aux = tower(pixel_values)
    ref_features, ref_balance, ref_z = cumo_s2_reference(tower, pixel_values)
    assert features.shape == (2, 9, 32 * 3)
    torch.testing.assert_close(features, ref_features, rtol=0, atol=1e-12)
    torch.testing.assert_close(aux.balance, ref_balance, rtol=0, atol=1e-12)
    torch.testing.assert_close(aux.router_z, ref_z, rtol=0, atol=1e-12)
    # every layer routes every token of every row (2 images + 2*4 + 2*9 crops) to top_k experts
    rows = 2 * (1 + 4 + 9)
    assert aux.tokens_per_expert_LE.shape == (2, 4)
    assert aux.tokens_per_expert_LE.sum(dim=1).tolist() == [rows * (9 + 1) * 2] * 2  # patches and CLS
