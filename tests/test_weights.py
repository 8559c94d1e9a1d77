"""Weights to and from disk a tensor at a time (cumo/model/weights.py), against transformers' own loading
and saving as the oracle: what `from_pretrained` reads, `load_weights` reads too, and what `save_sharded`
writes, `from_pretrained` and the released-layout converter read back."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from cumo.data.synthetic import build_tokenizer
from cumo.model.configuration_cumo import CumoConfig
from cumo.model.convert import convert_directory
from cumo.model.modeling_cumo import CumoForConditionalGeneration
from cumo.model.presets import build_config
from cumo.model.processing_cumo import CumoProcessor
from cumo.model.upcycle import upcycle, upcycle_directory
from cumo.model.weights import (
    SAFETENSORS_INDEX,
    Checkpoint,
    CheckpointError,
    Partitioning,
    build_empty,
    load_weights,
    save_sharded,
    saved_model,
)
from tests.factories import make_batch, make_model


def assert_same_tensors(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def test_a_checkpoint_reads_each_tensor_as_safetensors_does(tmp_path):
    tensors = {
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "f32": torch.randn(7),
        "f16": torch.randn(2, 2, 2).half(),
        "i64": torch.arange(6).view(2, 3),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    checkpoint = Checkpoint(tmp_path)
    assert checkpoint.keys() == tensors.keys()
    read = {key: checkpoint.read(key) for key in tensors}
    assert_same_tensors(load_file(tmp_path / "model.safetensors"), read)
    assert all(read[key].dtype == tensors[key].dtype for key in tensors)
    assert checkpoint.unread() == []


def test_a_missing_tensor_and_a_cut_file_are_named(tmp_path):
    save_file({"a": torch.randn(1000)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"has no tensor 'b'"):
        Checkpoint(tmp_path).read("b")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="cut short.*download it again"):
        Checkpoint(tmp_path).read("a")
    with pytest.raises(CheckpointError, match="not a saved model directory"):
        Checkpoint(tmp_path / "nothing-here")


@pytest.mark.parametrize("preset", ["tiny", "tiny-mixtral"])
def test_load_weights_reads_what_from_pretrained_reads(tmp_path, preset):
    """Mixtral's experts as transformers saves them (per expert, the Hub's layout) are fused on the way in."""
    model = make_model(preset, moe=False)
    model.save_pretrained(tmp_path)  # transformers' own writer: the oracle's files
    expected = CumoForConditionalGeneration.from_pretrained(tmp_path).state_dict()
    config = CumoConfig.from_pretrained(tmp_path)
    empty = build_empty(config, torch.float32)
    checkpoint = Checkpoint(tmp_path)
    load_weights(empty, saved_model(checkpoint))
    assert_same_tensors(expected, empty.state_dict())
    assert checkpoint.unread() == []


@pytest.mark.parametrize("preset", ["tiny", "tiny-mixtral"])
def test_sharded_export_reads_back_through_from_pretrained_and_the_converter(tmp_path, preset):
    model = make_model(preset, moe=True)
    expected = model.state_dict()
    size = sum(t.numel() * t.element_size() for t in expected.values())
    files = save_sharded(model, tmp_path / "out", max_shard_bytes=size // 5)
    model.config.save_pretrained(tmp_path / "out")

    index = json.loads((tmp_path / "out" / SAFETENSORS_INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert files == sorted([*shards, SAFETENSORS_INDEX]) and len(shards) >= 5
    assert index["weight_map"].keys() == expected.keys()
    assert index["metadata"]["total_size"] == size
    # No shard above the limit unless one tensor alone is.
    largest = max(t.numel() * t.element_size() for t in expected.values())
    for shard in shards:
        assert (tmp_path / "out" / shard).stat().st_size <= max(size // 5, largest) + 10_000

    loaded, info = CumoForConditionalGeneration.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values()), info
    assert_same_tensors(expected, loaded.state_dict())

    # -> the released layout -> ours again (the tokenizer travels with it).
    CumoProcessor(build_tokenizer(), model.config).save_pretrained(tmp_path / "out")
    convert_directory(tmp_path / "out", tmp_path / "released", "to-released")
    convert_directory(tmp_path / "released", tmp_path / "back", "from-released")
    assert_same_tensors(
        expected, CumoForConditionalGeneration.from_pretrained(tmp_path / "back").state_dict()
    )


def test_one_shard_is_one_file_without_an_index(tmp_path):
    model = make_model("tiny", moe=False)
    assert save_sharded(model, tmp_path) == ["model.safetensors"]
    assert not (tmp_path / SAFETENSORS_INDEX).exists()
    assert_same_tensors(model.state_dict(), load_file(tmp_path / "model.safetensors"))


def test_a_checkpoint_of_another_architecture_is_refused_naming_the_tensor(tmp_path):
    make_model("tiny", moe=False).save_pretrained(tmp_path)
    wider = build_config("tiny", moe=False)
    wider.text_config.intermediate_size *= 2
    with pytest.raises(
        CheckpointError, match=r"mlp\.gate_proj\.weight.*shape.*not of this model's architecture"
    ):
        load_weights(build_empty(wider, torch.float32), saved_model(Checkpoint(tmp_path)))


def test_a_random_start_draws_what_the_model_class_draws():
    """The tiny presets' pretrain starts from a seeded random init: built through `build_empty` it must be the
    same init as `CumoForConditionalGeneration(config)` (the demo's table depends on it)."""
    config = build_config("tiny", moe=False)
    torch.manual_seed(0)
    expected = CumoForConditionalGeneration(config).state_dict()
    torch.manual_seed(0)
    assert_same_tensors(expected, build_empty(config, torch.float32, initialise=True).state_dict())


@pytest.mark.parametrize("preset", ["tiny", "tiny-mixtral"])
def test_upcycling_a_directory_streams_the_same_model_as_upcycling_in_memory(tmp_path, preset):
    dense = make_model(preset, moe=False)
    dense.save_pretrained(tmp_path / "dense")
    CumoProcessor(build_tokenizer(), dense.config).save_pretrained(tmp_path / "dense")
    torch.manual_seed(1)
    expected = upcycle(dense)  # its routers are the only fresh draws
    torch.manual_seed(1)
    upcycle_directory(tmp_path / "dense", tmp_path / "moe", max_shard_bytes=200_000)
    moe = CumoForConditionalGeneration.from_pretrained(tmp_path / "moe").eval()
    assert_same_tensors(expected.state_dict(), moe.state_dict())
    batch = make_batch(dense.config)
    with torch.no_grad():
        torch.testing.assert_close(moe(**batch).logits, dense(**batch).logits, atol=1e-5, rtol=1e-5)


def test_every_rank_reads_its_whole_model_unless_the_parameters_are_partitioned(tmp_path):
    """Under ZeRO-2 every rank holds whole parameters and fills them itself; rank 0 only writes files."""
    model = make_model("tiny", moe=False)
    model.save_pretrained(tmp_path)
    second_rank = Partitioning(writer=False)
    empty = build_empty(model.config, torch.float32, second_rank)
    load_weights(empty, saved_model(Checkpoint(tmp_path)), second_rank)
    assert_same_tensors(model.state_dict(), empty.state_dict())
    assert save_sharded(empty, tmp_path / "not-written", partitioning=second_rank) == []
    assert not (tmp_path / "not-written").exists()


def test_the_routers_are_the_only_draws_of_upcycling():
    """After the seed, co-upcycling draws the routers in module order and nothing else (building the empty
    model must not draw, e.g. CLIP's class embedding): the tiny run's sft starts from the same routers as
    before the streamed set-up, and its table is unchanged."""
    dense = make_model("tiny", moe=False)
    torch.manual_seed(0)
    moe = upcycle(dense)
    after = torch.rand(1)
    routers = [name for name in moe.state_dict() if name.endswith("router.weight")]
    assert len(routers) == moe.config.vision_config.num_hidden_layers + 1
    torch.manual_seed(0)
    std = moe.config.text_config.initializer_range
    for name in routers:
        expected = torch.empty_like(moe.state_dict()[name]).normal_(std=std)
        assert torch.equal(moe.state_dict()[name], expected), name
    assert torch.equal(torch.rand(1), after)
