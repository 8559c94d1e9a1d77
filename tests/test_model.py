"""CumoForConditionalGeneration: config checks, loss composition, save/load, upcycling, generation.

Oracles: the dense model for the upcycled one, batch-1 generation for batched generation, and a reload
for save_pretrained.
"""

import re

import pytest
import torch
from transformers import AutoModelForImageTextToText

from cumo.data.conversation import IGNORE_INDEX, render
from cumo.data.synthetic import build_tokenizer, render_shape
from cumo.model.configuration_cumo import ConfigError
from cumo.model.presets import build_config
from cumo.model.processing_cumo import CumoProcessor
from cumo.model.upcycle import upcycle

from .factories import make_batch, make_model


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_experts_per_tok=5), "num_experts_per_tok=5"),
        (dict(projector_type="mlp3x_relu"), "projector_type='mlp3x_relu'"),
        (dict(scales=[1, 2.5]), "Field 'scales' with value [1, 2.5]"),  # @strict's type check
        (dict(scales=[1, 0]), "positive integer"),
        (dict(scales=[2, 3]), "first scale must be 1"),
        (dict(scales=[1, 3, 3]), "strictly increasing"),
        (dict(vision_feature_select="cls_patch"), "cls_patch"),
        (dict(conversation_template="vicuna"), "conversation_template"),
        (dict(image_token_id=10**6), "image_token_id"),
    ],
)
def test_config_that_cannot_work_fails_at_construction_saying_what_to_change(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config("tiny", **overrides)


def test_vision_image_size_must_tile_into_patches():
    from transformers import CLIPVisionConfig

    config = build_config("tiny")
    with pytest.raises(ConfigError, match="not a multiple of patch_size"):
        type(config)(
            vision_config=CLIPVisionConfig(image_size=50, patch_size=14), text_config=config.text_config
        )


def test_image_tokens_must_match_images():
    model = make_model("tiny")
    batch = make_batch(model.config)
    with pytest.raises(ValueError, match="image tokens"):
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"][:1])
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=batch["input_ids"])


def test_prompt_with_an_image_needs_its_placeholder():
    with pytest.raises(ValueError, match="exactly one <image>"):
        render("mistral_instruct_system", [("What color is it?", None)], has_image=True)
    processor = CumoProcessor(build_tokenizer(), build_config("tiny"))
    with pytest.raises(ValueError, match="1 image"):
        processor(["no placeholder here"], [render_shape("circle", "red")])


def test_loss_is_lm_loss_plus_weighted_aux_terms(preset):
    model = make_model(preset).train()
    batch = make_batch(model.config)
    out = model(**batch, labels=batch["input_ids"])
    config = model.config
    expected = (
        out.lm_loss
        + config.balance_loss_coef * (out.clip_balance_loss + out.mlp_balance_loss)
        + config.router_z_loss_coef * (out.clip_router_z_loss + out.mlp_router_z_loss)
    )
    if preset == "tiny-mixtral":
        expected = expected + config.text_config.router_aux_loss_coef * out.llm_aux_loss
    else:
        assert out.llm_aux_loss is None
    torch.testing.assert_close(out.loss, expected)
    # Per-layer expert load: every token of every image row (2 images + 2*9 crops) goes to top_k experts.
    rows, tokens = 2 * (1 + 9), config.num_image_tokens + 1  # patches and CLS
    assert out.clip_tokens_per_expert.sum(dim=1).tolist() == [rows * tokens * 2] * 2
    assert out.mlp_tokens_per_expert.sum().item() == 2 * config.num_image_tokens * 2
    out.loss.backward()
    # Features come from hidden state -2, so the last CLIP layer's output is read by nothing; it still runs,
    # as in CuMo, because its router losses are part of CuMo's mean: its experts alone get no gradient.
    last = f"model.vision_tower.vision_model.encoder.layers.{config.vision_config.num_hidden_layers - 1}."
    for name, parameter in model.named_parameters():
        learns = not name.startswith(last + "mlp.experts.")
        assert (parameter.grad is not None) == learns, name


def test_labels_at_image_positions_are_ignored():
    model = make_model("tiny")
    batch = make_batch(model.config)
    image = batch["input_ids"] == model.config.image_token_id
    labels_masked = batch["input_ids"].masked_fill(image, IGNORE_INDEX)
    labels_noisy = batch["input_ids"].masked_fill(image, 7)
    loss_masked = model(**batch, labels=labels_masked).lm_loss
    loss_noisy = model(**batch, labels=labels_noisy).lm_loss
    torch.testing.assert_close(loss_masked, loss_noisy, rtol=0, atol=0)


def test_save_pretrained_round_trip_gives_the_same_logits(preset, tmp_path):
    model = make_model(preset)
    batch = make_batch(model.config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    for field in (
        "projector_type",
        "clip_moe",
        "num_experts",
        "num_experts_per_tok",
        "scales",
        "image_token_id",
    ):
        assert getattr(loaded.config, field) == getattr(model.config, field), field
    assert loaded.config.text_config.model_type == model.config.text_config.model_type
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_upcycled_model_computes_what_the_dense_model_computes(preset):
    dense = make_model(preset, moe=False, dtype=torch.float64)
    moe = upcycle(dense)
    assert moe.config.clip_moe and moe.config.mlp_moe and moe.dtype == torch.float64
    batch = make_batch(dense.config, dtype=torch.float64)
    pixel_values = batch["pixel_values"]
    with torch.no_grad():
        # CLIP alone
        dense_features, _ = dense.model.vision_tower(pixel_values)
        moe_features, aux = moe.model.vision_tower(pixel_values)
        torch.testing.assert_close(moe_features, dense_features, rtol=0, atol=1e-12)
        assert aux is not None
        # the connector alone
        projected, _ = moe.model.mm_projector(dense_features)
        torch.testing.assert_close(projected, dense.model.mm_projector(dense_features), rtol=0, atol=1e-12)
        # the whole model
        torch.testing.assert_close(moe(**batch).logits, dense(**batch).logits, rtol=0, atol=1e-10)
    # Experts are copies of the dense MLP; routers are fresh (random, not copies of anything).
    experts = moe.model.mm_projector.experts
    assert torch.equal(experts.fc1_weight[3], dense.model.mm_projector.fc1.weight)
    assert moe.model.mm_projector.router.weight.std() > 0


def test_upcycling_an_moe_model_is_refused():
    with pytest.raises(ValueError, match="already MoE"):
        upcycle(make_model("tiny", moe=True))


def generate(model, batch, tokens=6):
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=tokens, do_sample=False, min_new_tokens=tokens)
    return out[:, batch["input_ids"].shape[1] :]


def one(batch, row):
    """Row `row` of a left-padded batch, unpadded, with its own images."""
    keep = batch["attention_mask"][row].bool()
    single = {
        "input_ids": batch["input_ids"][row, keep][None],
        "attention_mask": batch["attention_mask"][row, keep][None],
    }
    if "pixel_values" in batch:
        image_rows = [r for r in range(len(batch["input_ids"])) if (batch["input_ids"][r] == 4).any()]
        if row in image_rows:
            single["pixel_values"] = batch["pixel_values"][image_rows.index(row)][None]
    return single


@pytest.mark.parametrize("images", [(True, True), (True, False), (False, False)])
def test_batched_generation_equals_batch_of_one(preset, images):
    model = make_model(preset)
    batch = make_batch(model.config, prompt_lengths=(24, 31), images=images)
    batched = generate(model, batch)
    for row in range(2):
        assert batched[row].tolist() == generate(model, one(batch, row))[0].tolist()


def test_generate_answers_a_question_about_a_generated_image():
    model = make_model("tiny")
    processor = CumoProcessor(build_tokenizer(), model.config)
    prompts = [
        render("mistral_instruct_system", [("<image>\nWhat color is the shape?", None)], has_image=True),
        render("mistral_instruct_system", [("<image>\nWhat shape is it?", None)], has_image=True),
    ]
    batch = processor(
        prompts, [render_shape("circle", "red", size=80), render_shape("square", "blue", size=40)]
    )
    assert batch["pixel_values"].shape == (2, 3, 42, 42)
    assert (batch["input_ids"] == model.config.image_token_id).sum(dim=1).tolist() == [9, 9]
    new_tokens = generate(model, batch, tokens=5)
    assert new_tokens.shape == (2, 5)
    for row in range(2):
        assert new_tokens[row].tolist() == generate(model, one(batch, row), tokens=5)[0].tolist()


def test_activation_checkpointing_gives_the_same_loss_and_gradients(preset):
    """CuMo trains with gradient checkpointing; the MoE aux outputs must survive recomputation."""
    model = make_model(preset).train()
    batch = make_batch(model.config)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads()
    model.activation_checkpointing_enable()
    checkpointed_loss, checkpointed_grads = loss_and_grads()
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=0)
    assert checkpointed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=0, atol=1e-7, msg=name)
