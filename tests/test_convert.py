"""The released CuMo checkpoint layout, both ways, on tiny models written in that layout.

The Mixtral expert mapping (w1/w3/w2 <-> gate_up_proj/down_proj) is checked against transformers' own
converter: a MixtralForCausalLM loaded from our released-layout LLM keys must compute our LLM's logits. The
streamed conversion (`cumo convert`, shard by shard) is checked against the whole state dict converted in
memory and against the model the released files were written from.
"""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import MixtralForCausalLM

from cumo.bench.convert import word_tokenizer
from cumo.cli import main
from cumo.data.synthetic import build_tokenizer
from cumo.model.convert import convert_directory, from_released, load_released, save_released, to_released
from cumo.model.modeling_cumo import CumoForConditionalGeneration
from cumo.model.processing_cumo import CumoProcessor
from cumo.model.weights import SAFETENSORS_INDEX, CheckpointError

from .factories import make_batch, make_model

# The released keys, as listed for shi-labs/CuMo-mistral-7b and shi-labs/CuMo-mixtral-8x7b.
RELEASED_KEY = re.compile(
    r"model\.vision_tower\.vision_model\.(embeddings\.\S+|pre_layrnorm\.(weight|bias)"
    r"|encoder\.layers\.\d+\.(self_attn\.\w+_proj|layer_norm[12])\.(weight|bias)"
    r"|encoder\.layers\.\d+\.gate\.weight|encoder\.layers\.\d+\.experts\.\d+\.fc[12]\.(weight|bias))"
    r"|model\.mm_projector\.(gate\.weight|experts\.\d+\.[02]\.(weight|bias))"
    r"|model\.(embed_tokens|norm)\.weight|model\.layers\.\d+\.(self_attn\.[qkvo]_proj|input_layernorm|post_attention_layernorm"
    r"|mlp\.(gate|up|down)_proj|block_sparse_moe\.gate|block_sparse_moe\.experts\.\d+\.w[123])\.weight"
    r"|lm_head\.weight"
)


def test_released_keys_have_the_published_layout(preset):
    released = to_released(make_model(preset).state_dict())
    assert all(RELEASED_KEY.fullmatch(key) for key in released), [
        k for k in released if not RELEASED_KEY.fullmatch(k)
    ]
    assert "model.vision_tower.vision_model.encoder.layers.1.experts.3.fc1.weight" in released
    assert "model.vision_tower.vision_model.encoder.layers.1.gate.weight" in released
    assert {"model.mm_projector.experts.0.0.weight", "model.mm_projector.experts.3.2.bias"} <= set(released)
    assert not any("post_layernorm" in key for key in released)
    if preset == "tiny-mixtral":
        assert "model.layers.0.block_sparse_moe.experts.3.w3.weight" in released


def test_conversion_round_trips_both_ways(preset):
    state = make_model(preset).state_dict()
    back = from_released(to_released(state))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[key], state[key]) for key in state)


def test_released_checkpoint_loads_with_no_missing_or_unexpected_key(preset, tmp_path):
    model = make_model(preset)
    batch = make_batch(model.config)
    save_released(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == ("llava_mixtral" if preset == "tiny-mixtral" else "llava_mistral")
    assert config["mm_projector_type"] == "smoe_mlp" and config["clip_smoe"] and config["num_selected"] == 2
    loaded = load_released(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_a_checkpoint_with_a_foreign_key_is_refused_by_name(tmp_path):
    save_released(make_model("tiny"), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.mm_projector.experts.0.4.weight"] = torch.zeros(2, 2)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"1 unexpected keys \['model\.mm_projector\.experts\.0\.4\.weight'\]"
    ):
        load_released(tmp_path)


def test_mixtral_experts_map_as_transformers_maps_them(tmp_path):
    model = make_model("tiny-mixtral")
    released = to_released(model.state_dict())
    llm = {
        key: value
        for key, value in released.items()
        if not key.startswith(("model.vision_tower", "model.mm_projector"))
    }
    save_file(llm, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model.config.text_config.save_pretrained(tmp_path)
    reference = MixtralForCausalLM.from_pretrained(tmp_path).eval()
    input_ids = torch.randint(10, model.config.text_config.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(
            reference(input_ids).logits, model(input_ids=input_ids).logits, rtol=0, atol=1e-6
        )


def test_cli_converts_a_released_checkpoint_and_back(tmp_path):
    model = make_model("tiny")
    tokenizer = build_tokenizer()
    save_released(model, tmp_path / "released")
    tokenizer.save_pretrained(tmp_path / "released")
    main(["convert", "from-released", str(tmp_path / "released"), str(tmp_path / "ours")])
    ours = CumoForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    processor = CumoProcessor.from_pretrained(tmp_path / "ours", ours.config)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == ours.config.image_token_id
    main(["convert", "to-released", str(tmp_path / "ours"), str(tmp_path / "again")])
    assert (
        load_file(tmp_path / "again" / "model.safetensors").keys()
        == load_file(tmp_path / "released" / "model.safetensors").keys()
    )
    batch = make_batch(model.config)
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def read_all(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a directory's shards, read whole by safetensors itself."""
    return {
        key: tensor for file in directory.glob("*.safetensors") for key, tensor in load_file(file).items()
    }


def shard_count(directory: Path) -> int:
    index = json.loads((directory / SAFETENSORS_INDEX).read_text())
    assert index["weight_map"].keys() == read_all(directory).keys()
    return len(set(index["weight_map"].values()))


def test_the_streamed_conversion_equals_the_whole_state_dict_converted_in_memory(preset, tmp_path):
    """As released (bf16, sharded with an index), converted into shards: the tensors of the whole-dict
    conversion and of the model the files were written from, in the checkpoint's dtype."""
    model = make_model(preset, dtype=torch.bfloat16)
    save_released(model, tmp_path / "released", max_shard_bytes=100_000)
    build_tokenizer().save_pretrained(tmp_path / "released")
    assert shard_count(tmp_path / "released") >= 4

    convert_directory(tmp_path / "released", tmp_path / "ours", "from-released", max_shard_bytes=100_000)
    converted = read_all(tmp_path / "ours")
    assert shard_count(tmp_path / "ours") >= 4
    whole = from_released(read_all(tmp_path / "released"))
    assert converted.keys() == whole.keys() == model.state_dict().keys()
    for key, tensor in model.state_dict().items():
        assert converted[key].dtype == torch.bfloat16, key
        assert torch.equal(converted[key], whole[key]) and torch.equal(converted[key], tensor), key
    loaded, info = CumoForConditionalGeneration.from_pretrained(
        tmp_path / "ours", dtype="auto", output_loading_info=True
    )
    assert loaded.dtype == torch.bfloat16 and not any(info.values()), info


def test_to_released_and_back_streamed_gives_the_same_tensors(preset, tmp_path):
    model = make_model(preset)
    model.save_pretrained(tmp_path / "ours")
    CumoProcessor(build_tokenizer(), model.config).save_pretrained(tmp_path / "ours")
    convert_directory(tmp_path / "ours", tmp_path / "released", "to-released", max_shard_bytes=100_000)
    assert shard_count(tmp_path / "released") >= 4
    assert to_released(model.state_dict()).keys() == read_all(tmp_path / "released").keys()
    convert_directory(tmp_path / "released", tmp_path / "back", "from-released", max_shard_bytes=100_000)
    back = read_all(tmp_path / "back")
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[key], tensor) for key, tensor in model.state_dict().items())


def test_a_tokenizer_without_the_image_token_gets_it_and_each_vocabulary_matrix_a_mean_row(tmp_path):
    """As Mistral's tokenizer in the released checkpoints: the token goes after the vocabulary, and the row
    starts where transformers' resize_token_embeddings starts it (the mean of the rows)."""
    model = make_model("tiny", dtype=torch.bfloat16, image_token_id=None)
    vocab = model.config.text_config.vocab_size
    save_released(model, tmp_path / "released", max_shard_bytes=100_000)
    word_tokenizer(vocab).save_pretrained(tmp_path / "released")
    main(["convert", "from-released", str(tmp_path / "released"), str(tmp_path / "ours")])
    converted = read_all(tmp_path / "ours")
    config = CumoForConditionalGeneration.config_class.from_pretrained(tmp_path / "ours")
    assert config.image_token_id == vocab and config.text_config.vocab_size == vocab + 1
    processor = CumoProcessor.from_pretrained(tmp_path / "ours", config)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == vocab
    state = model.state_dict()
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        assert converted[key].shape == (vocab + 1, state[key].shape[1])
        assert torch.equal(converted[key][:vocab], state[key])
        assert torch.equal(converted[key][vocab], state[key].float().mean(0).to(torch.bfloat16))


def test_a_foreign_key_stops_the_streamed_conversion_before_it_writes(tmp_path):
    save_released(make_model("tiny"), tmp_path / "released", max_shard_bytes=100_000)
    build_tokenizer().save_pretrained(tmp_path / "released")
    index = json.loads((tmp_path / "released" / SAFETENSORS_INDEX).read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    tensors = load_file(tmp_path / "released" / first) | {
        "model.mm_projector.experts.0.4.weight": torch.zeros(2)
    }
    save_file(tensors, tmp_path / "released" / first)
    index["weight_map"]["model.mm_projector.experts.0.4.weight"] = first
    (tmp_path / "released" / SAFETENSORS_INDEX).write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError,
        match=r"0 missing keys \[\] and 1 unexpected keys \['model\.mm_projector\.experts\.0\.4\.weight'\]",
    ):
        convert_directory(tmp_path / "released", tmp_path / "ours", "from-released")
    assert not (tmp_path / "ours").exists()


def test_a_checkpoint_of_another_architecture_than_its_preset_is_refused_naming_the_differences(tmp_path):
    """The workflow plans a released source's evaluation from its preset before the download; the conversion
    holds the checkpoint to it."""
    save_released(make_model("tiny-mixtral"), tmp_path / "released")
    build_tokenizer().save_pretrained(tmp_path / "released")
    with pytest.raises(SystemExit):
        main(
            [
                "convert",
                "from-released",
                str(tmp_path / "released"),
                str(tmp_path / "ours"),
                "--preset",
                "tiny",
            ]
        )
    with pytest.raises(
        ValueError, match=r"not the architecture of preset tiny: text_config.num_local_experts 4 "
    ):
        convert_directory(tmp_path / "released", tmp_path / "ours", "from-released", preset="tiny")
    assert not (tmp_path / "ours").exists()
    convert_directory(tmp_path / "released", tmp_path / "ours", "from-released", preset="tiny-mixtral")
