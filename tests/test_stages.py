"""Stages: CuMo's recipes, what each stage trains, upcycling at sft, loading the paper's pretrained towers."""

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, MistralConfig, MistralForCausalLM

from cumo.data.synthetic import build_tokenizer, render_shape
from cumo.model.moe import SparseMoeBlock
from cumo.model.presets import TINY_TEXT, TINY_VISION
from cumo.train.checkpoint import FINISHED, mark_finished
from cumo.train.stages import (
    PARTS,
    MissingPredecessor,
    StageConfig,
    build_model,
    freeze_untrained,
    parameter_groups,
    prepare_model,
    stage_config,
    stage_start,
)
from tests.factories import make_batch, make_model


def trainable_parts(model) -> set[str]:
    """The parts (keys of PARTS) with a trainable parameter; asserts a part is wholly trainable or frozen."""
    parts = set()
    for part, prefixes in PARTS.items():
        flags = {p.requires_grad for name, p in model.named_parameters() if name.startswith(prefixes)}
        assert len(flags) == 1, f"{part} is partly frozen"
        if flags == {True}:
            parts.add(part)
    return parts


def finish(model, processor, directory):
    """What the trainer leaves: a saved model with its processor, marked finished last."""
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    mark_finished(directory, {})
    return directory


def test_recipes_are_cumos_scripts():
    mistral = {stage: stage_config(stage, "cumo-mistral-7b") for stage in ("pretrain", "pft", "sft")}
    mixtral = {stage: stage_config(stage, "cumo-mixtral-8x7b") for stage in ("pretrain", "pft", "sft")}
    # (lr, global batch, per-device batch, max length, ZeRO, template) of each script on 8 GPUs.
    assert [
        (s.learning_rate, s.global_batch_size, s.micro_batch_size, s.max_length, s.zero, s.template)
        for s in mistral.values()
    ] == [
        (1e-3, 256, 32, 2048, "zero2", "plain"),
        (2e-6, 64, 4, 4096, "zero3", "mistral_instruct_system"),
        (4e-6, 64, 4, 4096, "zero3_offload", "mistral_instruct_system"),
    ]
    assert [(s.learning_rate, s.global_batch_size, s.micro_batch_size, s.zero) for s in mixtral.values()] == [
        (1e-3, 256, 32, "zero3"),
        (2e-6, 64, 4, "zero3_offload"),
        (2e-6, 32, 2, "zero3_offload"),
    ]
    for stage in (*mistral.values(), *mixtral.values()):
        assert stage.trainable == (
            ("connector",) if stage.name == "pretrain" else ("vision", "connector", "llm")
        )
        assert (stage.epochs, stage.warmup_ratio, stage.lr_scheduler, stage.weight_decay) == (
            1,
            0.03,
            "cosine",
            0,
        )
        assert stage.group_by_modality == (stage.name != "pretrain")
        assert stage.upcycle == (stage.name == "sft")
        assert stage.vision_learning_rate is None  # one lr for the whole model in CuMo's scripts


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(global_batch_size=30, micro_batch_size=4), "not a multiple"),
        (dict(zero="zero4"), "zero4"),
        (dict(template="vicuna"), "vicuna"),
        (dict(trainable=("eyes",)), "eyes"),
        (dict(warmup_ratio=1.5), "warmup_ratio"),
        (dict(vision_learning_rate=0.0), "vision_learning_rate"),
    ],
)
def test_bad_stage_fields_say_what_to_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        stage_config("pft", "tiny", **overrides)
    with pytest.raises(ValueError, match="unknown stage field"):
        stage_config("pft", "tiny", lr=1.0)
    assert isinstance(stage_config("pft", "tiny"), StageConfig)


def test_the_vision_tower_gets_its_own_learning_rate_only_where_a_stage_sets_one():
    model = make_model("tiny", moe=False)
    freeze_untrained(model, ("vision", "connector", "llm"))
    names = {id(p): name for name, p in model.named_parameters()}
    (every,) = parameter_groups(model, stage_config("pft", "tiny", vision_learning_rate=None))
    assert len(every["params"]) == len(names) and "lr" not in every
    rest, vision = parameter_groups(model, stage_config("pft", "tiny", vision_learning_rate=1e-4))
    assert vision["lr"] == 1e-4 and "lr" not in rest
    assert all(names[id(p)].startswith("model.vision_tower.") for p in vision["params"])
    assert not any(names[id(p)].startswith("model.vision_tower.") for p in rest["params"])
    assert len(rest["params"]) + len(vision["params"]) == len(names)
    # A frozen tower leaves no group behind (pretrain).
    freeze_untrained(model, ("connector", "llm"))
    (only,) = parameter_groups(model, stage_config("pretrain", "tiny", vision_learning_rate=1e-4))
    assert all(p.requires_grad for p in only["params"])


@pytest.mark.parametrize("preset", ["tiny", "tiny-mixtral"])
def test_stages_train_their_parts_and_sft_upcycles(tmp_path, preset):
    torch.manual_seed(0)
    pretrain = stage_config("pretrain", preset)
    model, processor = prepare_model(pretrain, None, preset)
    # The tiny LLM is random, not pretrained: its pretrain trains it too (stages.TINY_RECIPE).
    assert trainable_parts(model) == {"connector", "llm"}
    assert model.config.conversation_template == "plain" and not model.config.clip_moe

    pft = stage_config("pft", preset)
    model, processor = prepare_model(pft, finish(model, processor, tmp_path / "pretrain"), preset)
    assert trainable_parts(model) == {"vision", "connector", "llm"}
    assert model.config.conversation_template == "mistral_instruct_system"
    assert not any(isinstance(m, SparseMoeBlock) for m in model.modules())

    dense = model.eval()
    sft = stage_config("sft", preset)
    moe, processor = prepare_model(sft, finish(model, processor, tmp_path / "pft"), preset)
    assert trainable_parts(moe) == {"vision", "connector", "llm"}
    assert moe.config.clip_moe and moe.config.mlp_moe and moe.training
    blocks = [m for m in moe.modules() if isinstance(m, SparseMoeBlock)]
    assert len(blocks) == moe.config.vision_config.num_hidden_layers + 1
    # Co-upcycled from the pft weights: the same function as the dense model saved by pft.
    batch = processor(
        ["<s><image>\nWhat shape is it?"], [render_shape("circle", "red", size=TINY_VISION["image_size"])]
    )
    with torch.no_grad():
        torch.testing.assert_close(moe.eval()(**batch).logits, dense(**batch).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stage, previous", [("pft", "pretrain"), ("sft", "pft")])
def test_a_stage_without_its_predecessor_stops_and_names_it(tmp_path, stage, previous):
    unfinished = tmp_path / previous
    unfinished.mkdir()  # a directory with weights but no metadata is a stage that did not finish
    for directory in (None, unfinished):
        with pytest.raises(MissingPredecessor, match=rf"--stage {previous} .*") as error:
            prepare_model(stage_config(stage, "tiny"), directory, "tiny")
        if directory is not None:
            assert str(unfinished / FINISHED) in str(error.value)


def test_paper_preset_pretrain_loads_clip_and_the_llm(tmp_path):
    """The real loading path, on CLIP and Mistral fakes of the tiny sizes saved as the Hub would hold them."""
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION)).eval()
    llm = MistralForCausalLM(MistralConfig(**TINY_TEXT)).eval()
    clip.save_pretrained(tmp_path / "clip")
    llm.save_pretrained(tmp_path / "llm")
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(tmp_path / "llm")

    sources = {"clip": str(tmp_path / "clip"), "llm": str(tmp_path / "llm")}
    model, processor = prepare_model(
        stage_config("pretrain", "cumo-mistral-7b"), None, "cumo-mistral-7b", sources
    )
    model.eval()
    assert trainable_parts(model) == {"connector"}
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<image>")

    size = TINY_VISION["image_size"]
    pixels = torch.randn(1, 3, size, size)
    with torch.no_grad():
        # CLIP features at hidden state -2 without CLS, as transformers computes them from the same weights.
        expected = clip(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        features, _ = model.model.vision_tower(pixels)
        torch.testing.assert_close(features[..., : expected.shape[-1]], expected)
        text = torch.tensor([[1, 50, 60, 70]])
        torch.testing.assert_close(model(input_ids=text).logits, llm(input_ids=text).logits)


@pytest.mark.parametrize("stage, preset", [("pretrain", "tiny"), ("pft", "cumo-mistral-7b")])
def test_base_weights_are_refused_where_no_stage_starts_from_them(tmp_path, stage, preset):
    with pytest.raises(ValueError, match="drop --clip/--llm"):
        prepare_model(stage_config(stage, preset), tmp_path, preset, {"llm": str(tmp_path)})


def saved_bytes(model, batch) -> tuple[torch.Tensor, dict, int]:
    """Loss, gradients and the bytes of the tensors autograd kept for the backward (each storage once)."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    return loss, {name: p.grad for name, p in model.named_parameters()}, sum(storages.values())


def test_activation_checkpointing_recomputes_the_same_loss_and_gradients_from_less_kept():
    """Checkpointing changes what is kept for the backward, not the math: the loss and every gradient are
    equal to the bit, in CLIP's layers (MoE) and the LLM's alike, with far fewer bytes kept."""
    batch = make_batch(make_model("tiny", moe=True).config, prompt_lengths=(40, 40))
    runs = {}
    for on in (False, True):
        model = make_model("tiny", moe=True).train()
        if on:
            model.activation_checkpointing_enable()
            layers = [
                *model.model.vision_tower.vision_model.encoder.layers,
                *model.model.language_model.layers,
            ]
            assert all(layer.gradient_checkpointing for layer in layers)
        runs[on] = saved_bytes(model, batch)
    (loss, grads, kept), (loss_cp, grads_cp, kept_cp) = runs[False], runs[True]
    assert torch.equal(loss, loss_cp)
    assert grads.keys() == grads_cp.keys()
    for name, grad in grads.items():
        assert (grad is None and grads_cp[name] is None) or torch.equal(grad, grads_cp[name]), name
    assert kept_cp < 0.5 * kept, (kept_cp, kept)


def test_a_stage_checkpoints_activations_unless_its_config_says_not(tmp_path):
    for flag in (True, False):
        start = stage_start(stage_config("pretrain", "tiny"), None, "tiny")
        model = build_model(start, stage_config("pretrain", "tiny", gradient_checkpointing=flag))
        assert model.is_gradient_checkpointing == flag
