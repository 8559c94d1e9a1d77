"""Global batch -> micro batch x accumulation over the allocated devices (cumo/train/batching.py)."""

import pytest

from cumo.train.batching import BatchError, plan_batch

# CuMo's recipes (DESIGN.md s. 4): (global batch, micro batch); on 8 GPUs the accumulation must be the
# one hard-coded in scripts/cumo/*/*.sh.
PRETRAIN, PFT, SFT, MIXTRAL_SFT = (256, 32), (64, 4), (64, 4), (32, 2)


@pytest.mark.parametrize(
    "recipe, world_size, accumulation",
    [
        (PRETRAIN, 8, 1),
        (PFT, 8, 2),
        (SFT, 8, 2),
        (MIXTRAL_SFT, 8, 2),
        (PFT, 16, 1),
        (SFT, 16, 1),
        (MIXTRAL_SFT, 16, 1),
        (PRETRAIN, 4, 2),
        (PFT, 4, 4),
        (MIXTRAL_SFT, 4, 4),
        (PRETRAIN, 2, 4),
        (SFT, 2, 8),
        (MIXTRAL_SFT, 2, 8),
        (PRETRAIN, 1, 8),
    ],
)
def test_accumulation_keeps_the_global_batch(recipe, world_size, accumulation):
    global_batch, micro_batch = recipe
    plan = plan_batch(global_batch, micro_batch, world_size)
    assert plan.accumulation == accumulation
    assert plan.micro_batch * plan.world_size * plan.accumulation == global_batch


def test_pretrain_on_16_gpus_names_the_micro_batches_that_fit():
    # 32 x 16 = 512 samples per step is more than the 256 of the recipe.
    with pytest.raises(BatchError) as error:
        plan_batch(256, 32, 16)
    message = str(error.value)
    assert "global batch 256" in message and "32 x 16" in message
    assert "micro batch to one of [1, 2, 4, 8, 16]" in message
    assert "device count in [1, 2, 4, 8]" in message


def test_a_device_count_that_divides_nothing_names_the_counts_that_would():
    with pytest.raises(BatchError) as error:
        plan_batch(64, 4, 3)
    message = str(error.value)
    assert "device count in [1, 2, 4, 8, 16]" in message
    assert "no micro batch splits 64 over 3 device(s)" in message


@pytest.mark.parametrize("bad", [0, -4, 2.0, True, "4"])
def test_non_positive_or_non_integer_numbers_are_refused(bad):
    with pytest.raises(BatchError, match="positive integer"):
        plan_batch(64, bad, 8)
