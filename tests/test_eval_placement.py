"""A model too large for one GPU is evaluated over several: the placement of its layers and which GPUs each
shard gets. (Running the placed model needs GPUs: the device check does that; here the map is computed on
the meta device for GPUs of a given size, as transformers' `device_map="auto"` would.)"""

import pytest
import torch

from cumo.eval.evaluate import EvalConfig, shard_gpus
from cumo.eval.generate import device_map
from cumo.model.modeling_cumo import CumoForConditionalGeneration


def test_the_layers_are_spread_over_the_shards_gpus_whole_and_in_order(tiny_model_dir):
    model = CumoForConditionalGeneration.from_pretrained(tiny_model_dir)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    placement = device_map(tiny_model_dir, torch.float32, 2, gpu_bytes=[size, size])
    assert set(placement.values()) == {0, 1}
    # Whole modules only: no name below a CLIP or decoder layer (the model's _no_split_modules).
    assert not any(".layers." in name and name.count(".") > 4 for name in placement)
    # In the order the forward runs, so activations move from GPU 0 to GPU 1 once.
    devices = [placement[name] for name in placement]
    assert devices == sorted(devices)
    assert placement["model.vision_tower"] == 0 and placement["lm_head"] == 1


def test_a_model_that_does_not_fit_the_shards_gpus_says_to_give_more(tiny_model_dir):
    with pytest.raises(ValueError, match="more GPUs"):
        device_map(tiny_model_dir, torch.float32, 2, gpu_bytes=[100_000, 100_000])


@pytest.mark.parametrize(
    "shard, per_shard, visible, expected",
    [
        (0, 1, None, "0"),
        (3, 1, None, "3"),
        (1, 2, None, "2,3"),
        (1, 2, "4,5,6,7", "6,7"),
        (0, 4, "1,3,5,7", "1,3,5,7"),
    ],
)
def test_each_shard_gets_its_own_gpus_of_the_visible_ones(shard, per_shard, visible, expected):
    assert shard_gpus(shard, per_shard, visible) == expected


def test_too_few_visible_gpus_for_the_shards_are_named():
    with pytest.raises(ValueError, match="shards x gpus_per_shard"):
        shard_gpus(1, 2, "0,1,2")


def test_more_than_one_gpu_per_shard_needs_cuda(tiny_model_dir):
    with pytest.raises(ValueError, match="only with device cuda"):
        EvalConfig("gqa", str(tiny_model_dir), "data", gpus_per_shard=2)
