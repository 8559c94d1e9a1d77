"""Generation for evaluation: batched equals batch size 1, shards cover every question once, a restart
redoes only what is missing, the merge names what is wrong, the template is the model's own."""

import copy
import json

import pytest
import torch

from cumo.eval.benchmark import IncompletePredictions, Question
from cumo.eval.generate import (
    answer_batch,
    blank_like,
    generate_shard,
    load_model,
    merge,
    prompt_of,
    read_predictions,
    shard_questions,
)
from cumo.model.processing_cumo import CLIP_STD


@pytest.fixture(scope="module")
def questions(eval_root):
    """GQA's questions (LLaVA's question file) with two text-only ones mixed in."""
    folder = eval_root / "gqa"
    rows = [
        json.loads(line) for line in (folder / "llava_gqa_testdev_balanced.jsonl").read_text().splitlines()
    ]
    asked = [
        Question(row["question_id"], row["text"], folder / "data" / "images" / row["image"], {"n": i})
        for i, row in enumerate(rows[:10])
    ]
    return (
        asked[:3]
        + [Question("text-1", "What is a square?", None)]
        + asked[3:]
        + [Question(7, "Say yes.", None)]
    )


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(tiny_model_dir)


def run(loaded, questions, path, batch_size=1, **kwargs):
    model, processor = loaded
    return generate_shard(
        model, processor, questions, path, model_id="tiny", max_new_tokens=6, batch_size=batch_size, **kwargs
    )


def test_prompt_is_the_models_template_with_the_image_first(questions):
    prompt = prompt_of(questions[0], "mistral_instruct_system")
    assert prompt.startswith("<s>[INST] <<SYS>>\n") and prompt.endswith(" [/INST]")
    assert "<</SYS>>\n\n<image>\n" + questions[0].text in prompt
    assert "<image>" not in prompt_of(questions[3], "mistral_instruct_system")


def test_batched_answers_equal_batch_size_one(loaded, questions):
    model, processor = loaded
    one_by_one = [answer_batch(model, processor, [q], max_new_tokens=6)[0] for q in questions]
    batched = answer_batch(model, processor, questions, max_new_tokens=6)
    assert batched == one_by_one
    assert len(set(one_by_one)) > 1  # a random model still answers differently for different questions


def test_the_image_token_is_never_generated(loaded, questions):
    """CuMo's vocabulary has no image token; ours is suppressed, so a head that prefers it above all (a released
    checkpoint's image row is the mean row) answers as if it were not there."""
    model, processor = loaded
    preferring = copy.deepcopy(model)
    head = preferring.lm_head
    preferring.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    preferring.lm_head.weight.data.copy_(head.weight.data)
    preferring.lm_head.bias.data.zero_()
    preferring.lm_head.bias.data[model.config.image_token_id] = 1e4
    answers = answer_batch(model, processor, questions, max_new_tokens=6)
    assert answer_batch(preferring, processor, questions, max_new_tokens=6) == answers
    assert any(answers)


def test_blank_images_change_the_answers_and_are_the_mean_colour(loaded, questions):
    model, processor = loaded
    image = questions[0].load_image()
    blank = blank_like(image)
    assert blank.size == image.size and len(blank.getcolors()) == 1
    pixels = processor.preprocess_images([blank])
    # The mean colour, in 8-bit levels as LLaVA's padding colour is, normalises to zero within one level.
    assert pixels.abs().max() < 1 / 255 / min(CLIP_STD)
    with_images = answer_batch(model, processor, questions[:3], max_new_tokens=6)
    blanked = answer_batch(model, processor, questions[:3], max_new_tokens=6, blank_images=True)
    assert with_images != blanked


def test_shards_cover_every_question_once_and_merge_in_question_order(loaded, questions, tmp_path):
    whole = tmp_path / "whole.jsonl"
    run(loaded, questions, whole, batch_size=4)
    paths = [tmp_path / f"{i}-of-3.jsonl" for i in range(3)]
    for i, path in enumerate(paths):
        run(loaded, shard_questions(questions, i, 3), path, batch_size=2)
    merged = merge(paths, questions)
    assert [p["question_id"] for p in merged] == [q.question_id for q in questions]
    assert merged == read_predictions(whole)[0]
    assert merged[0]["metadata"] == {"n": 0} and merged[0]["prompt"] == questions[0].text
    assert {p["model_id"] for p in merged} == {"tiny"}


def test_a_restart_answers_only_what_is_missing(loaded, questions, tmp_path):
    whole = tmp_path / "whole.jsonl"
    run(loaded, questions, whole)
    lines = whole.read_text().splitlines(keepends=True)
    interrupted = tmp_path / "interrupted.jsonl"
    interrupted.write_text("".join(lines[:5]) + lines[5][:17])  # killed while writing the sixth answer
    counts = run(loaded, questions, interrupted)
    assert counts == {"questions": len(questions), "resumed": 5, "cut_off_lines": 1}
    assert interrupted.read_text() == whole.read_text()
    assert run(loaded, questions, interrupted)["resumed"] == len(questions)  # nothing left to do


def test_merge_names_missing_repeated_and_unknown_answers(loaded, questions, tmp_path):
    path = tmp_path / "0-of-1.jsonl"
    run(loaded, questions[:-2], path)
    with pytest.raises(IncompletePredictions, match=r'2 question\(s\) unanswered: "text-1"|unanswered'):
        merge([path], questions[:3] + questions[4:])
    with pytest.raises(IncompletePredictions, match=r"unanswered: .*7"):
        merge([path], questions)
    twice = tmp_path / "twice.jsonl"
    twice.write_text(path.read_text() + path.read_text().splitlines(keepends=True)[0])
    with pytest.raises(IncompletePredictions, match="answered more than once"):
        merge([twice], questions[:-2])
    with pytest.raises(IncompletePredictions, match="not in the benchmark"):
        merge([path], questions[:2])


def test_another_template_than_the_models_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="trained with the 'mistral_instruct_system' template"):
        load_model(tiny_model_dir, template="plain")
    model, _ = load_model(tiny_model_dir, template="mistral_instruct_system")
    assert model.dtype == torch.float32


def test_the_saved_tokenizer_asks_as_evaluation_does(loaded, questions):
    """A model directory's tokenizer carries the model's template as its chat template (processor.save_pretrained)."""
    model, processor = loaded
    for question in (questions[0], questions[3]):
        content = ("<image>\n" if question.image is not None else "") + question.text
        messages = [{"role": "user", "content": content}]
        prompt = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert prompt == prompt_of(question, model.config.conversation_template)
