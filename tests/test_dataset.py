"""Tokens and label masks, skips, the collator and the modality-length grouped sampler.

Label masks are checked against an oracle that counts tokens of prefixes (the tokens of the rendering up to
an answer's first and last character, LLaVA's counting done on prefixes), for the shapes world's tokenizer
and for three trained here: word-level, byte-level BPE (GPT-2 style) and metaspace BPE with the "▁"
prepended to the first word only, as Mistral's fast tokenizer does. With the last, tokenising segment by
segment gives other tokens than the whole string (`test_per_segment_tokens_differ_for_metaspace`), which is
what the alignment logic has to get right.
"""

from collections import Counter
from functools import partial

import datasets
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cumo.data.conversation import (
    IGNORE_INDEX,
    expand_image_placeholders,
    render,
    render_segments,
    turns_from_llava,
)
from cumo.data.dataset import (
    Collator,
    LabelsMisaligned,
    ModalityLengthGroupedSampler,
    SupervisedDataset,
    tokenise,
)
from cumo.data.skips import TooManySkipped
from cumo.data.synthetic import build_tokenizer, render_shape
from cumo.model.presets import build_config
from cumo.model.processing_cumo import CumoProcessor
from tests.factories import make_model

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]
CONVERSATIONS = {
    "single": [("<image>\nwhat color is the circle ?", "red")],
    "multi": [
        ("<image>\nwhat color is the circle ?", "the circle is red ."),
        ("how many shapes are there ?", "one"),
    ],
}


def make_entry(entry_id, turns, image="shape.png"):
    conversations = [
        {"from": role, "value": value}
        for question, answer in turns
        for role, value in (("human", question), ("gpt", answer))
    ]
    num_words = sum(len(message["value"].split()) for message in conversations)
    return {
        "id": entry_id,
        "image": image,
        "conversations": conversations,
        "num_words": num_words,
        "source": "test",
    }


CORPUS = [
    render("mistral_instruct_system", turns, has_image=True) for turns in CONVERSATIONS.values()
] * 10 + ["a red circle . the circle is red . is a square a shape ? yes describe"] * 10


def train_tokenizer(
    model, trainer, pre_tokenizer, decoder, special_tokens=SPECIAL_TOKENS
) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizer, decoder
    tokenizer.train_from_iterator(CORPUS, trainer(special_tokens=special_tokens, show_progress=False))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=[
            token for token in special_tokens if token not in ("<unk>", "<s>", "</s>", "<pad>")
        ],
    )


def train_bpe(pre_tokenizer, decoder, special_tokens=SPECIAL_TOKENS) -> PreTrainedTokenizerFast:
    alphabet = (
        pre_tokenizers.ByteLevel.alphabet() if isinstance(pre_tokenizer, pre_tokenizers.ByteLevel) else []
    )
    trainer = partial(trainers.BpeTrainer, vocab_size=400, initial_alphabet=alphabet)
    return train_tokenizer(models.BPE(unk_token="<unk>"), trainer, pre_tokenizer, decoder, special_tokens)


TOKENIZERS = {
    "shapes world": build_tokenizer,
    "word-level": lambda: train_tokenizer(
        models.WordLevel(unk_token="<unk>"), trainers.WordLevelTrainer, pre_tokenizers.Whitespace(), None
    ),
    "byte-level bpe": lambda: train_bpe(
        pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    ),
    "metaspace bpe": lambda: train_bpe(
        pre_tokenizers.Metaspace(prepend_scheme="first", split=True),
        decoders.Metaspace(prepend_scheme="first"),
    ),
}


@pytest.fixture(scope="module")
def config():
    return build_config("tiny", moe=False)  # 9 image tokens per 42 px image


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def processor(request, config):
    return CumoProcessor(TOKENIZERS[request.param](), config)


@pytest.fixture(scope="module")
def tiny_processor(config):
    return CumoProcessor(build_tokenizer(), config)


@pytest.fixture
def image_root(tmp_path):
    # Not square, so that it is padded to one.
    render_shape("circle", "red", size=64).crop((0, 0, 64, 40)).save(tmp_path / "shape.png")
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    return tmp_path


def prefix_oracle(segments, processor):
    """Labels from token counts of prefixes: the answer spans [a, b) own tokens len(tok(text[:a])) .. len(tok(text[:b]))."""
    tokenize = processor.tokenizer
    texts = [
        expand_image_placeholders(t, processor.image_token, processor.num_image_tokens) for t, _ in segments
    ]
    text = "".join(texts)
    input_ids = tokenize(text, add_special_tokens=False)["input_ids"]
    labels, position = [IGNORE_INDEX] * len(input_ids), 0
    for piece, (_, is_target) in zip(texts, segments, strict=True):
        first = len(tokenize(text[:position], add_special_tokens=False)["input_ids"])
        position += len(piece)
        last = len(tokenize(text[:position], add_special_tokens=False)["input_ids"])
        if is_target:
            labels[first:last] = input_ids[first:last]
    return input_ids, labels


@pytest.mark.parametrize(
    "template, turns",
    [("plain", "single"), ("mistral_instruct_system", "single"), ("mistral_instruct_system", "multi")],
)
@pytest.mark.parametrize("has_image", [True, False])
def test_labels_are_exactly_the_answer_tokens(processor, template, turns, has_image):
    turns = CONVERSATIONS[turns]
    if not has_image:
        turns = [(question.replace("<image>\n", ""), answer) for question, answer in turns]
    segments = render_segments(template, turns, has_image)
    input_ids_T, labels_T = tokenise(segments, processor)

    expected_ids, expected_labels = prefix_oracle(segments, processor)
    assert input_ids_T.tolist() == expected_ids
    assert labels_T.tolist() == expected_labels
    # The answers and nothing else: decoded targets hold every answer word, the image tokens are ignored.
    answers = processor.tokenizer.decode(input_ids_T[labels_T != IGNORE_INDEX])
    assert all(word in answers for _, answer in turns for word in answer.split())
    assert "[/INST]" not in answers and "what" not in answers
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert (input_ids_T == image_id).sum() == has_image * processor.num_image_tokens
    assert (labels_T[input_ids_T == image_id] == IGNORE_INDEX).all()


def test_training_tokens_start_with_the_evaluation_prompt_tokens(processor):
    """One source: CumoProcessor's tokens for the open prompt are the training sample's tokens up to the answer."""
    turns = CONVERSATIONS["multi"]
    input_ids_T, labels_T = tokenise(render_segments("mistral_instruct_system", turns, True), processor)
    prompt = render("mistral_instruct_system", [*turns[:-1], (turns[-1][0], None)], has_image=True)
    prompt_ids = processor([prompt], [render_shape("circle", "red")])["input_ids"][0]
    assert input_ids_T[: len(prompt_ids)].tolist() == prompt_ids.tolist()
    assert (labels_T[len(prompt_ids) :] != IGNORE_INDEX).any()
    full = processor([render("mistral_instruct_system", turns, True)], [render_shape("circle", "red")])
    assert full["input_ids"][0].tolist() == input_ids_T.tolist()


def test_per_segment_tokens_differ_for_metaspace(config):
    """Why tokenise() does not concatenate per-segment tokens: the "▁" the first word gets would be wrong."""
    processor = CumoProcessor(TOKENIZERS["metaspace bpe"](), config)
    segments = render_segments("plain", [("<image>\ndescribe", "a red circle .")], has_image=True)
    per_segment = [
        token
        for text, _ in segments
        for token in processor.tokenizer(
            expand_image_placeholders(text, "<image>", processor.num_image_tokens), add_special_tokens=False
        )["input_ids"]
    ]
    input_ids_T, labels_T = tokenise(segments, processor)
    assert per_segment != input_ids_T.tolist()
    assert processor.tokenizer.decode(input_ids_T[labels_T != IGNORE_INDEX]).strip() == "a red circle ."


def glued_processor(config) -> CumoProcessor:
    """Like Mistral-7B-Instruct-v0.2 ([INST] is plain text there), with merges across spaces: "? [/INST] r" is one token."""
    tokenizer = train_bpe(
        pre_tokenizers.Metaspace(prepend_scheme="first", split=False),
        decoders.Metaspace(),
        special_tokens=SPECIAL_TOKENS[:5],
    )
    return CumoProcessor(tokenizer, config)


def test_a_token_across_the_prompt_answer_boundary_is_an_error(config):
    segments = render_segments("mistral_instruct_system", CONVERSATIONS["single"], has_image=True)
    with pytest.raises(LabelsMisaligned, match="covers both prompt and answer"):
        tokenise(segments, glued_processor(config))


def test_misaligned_samples_are_counted_and_fatal_past_the_share(config, image_root):
    entries = [make_entry(i, CONVERSATIONS["single"]) for i in range(8)]
    dataset = SupervisedDataset(
        entries,
        glued_processor(config),
        "mistral_instruct_system",
        image_root,
        max_length=512,
        max_share=0.25,
    )
    with pytest.raises(TooManySkipped, match="labels misaligned: 4"):
        dataset[0]  # every entry is misaligned: judged, and fatal, once 4 have been seen
    assert dataset.skips.first[0]["reason"] == "labels misaligned"


def test_dataset_sample_has_tokens_labels_and_the_padded_image(tiny_processor, image_root):
    turns = CONVERSATIONS["multi"]
    dataset = SupervisedDataset(
        [make_entry("a", turns)], tiny_processor, "mistral_instruct_system", image_root, 512
    )
    sample = dataset[0]
    input_ids_T, labels_T = tokenise(render_segments("mistral_instruct_system", turns, True), tiny_processor)
    assert torch.equal(sample["input_ids"], input_ids_T) and torch.equal(sample["labels"], labels_T)
    with Image.open(image_root / "shape.png") as image:
        assert torch.equal(sample["pixel_values"], tiny_processor.preprocess_images([image]))
    assert sample["pixel_values"].shape == (1, 3, 42, 42)
    assert dataset.skips.seen == 1 and dataset.skips.skipped == 0


def test_truncation_is_counted_and_a_sample_without_target_left_is_skipped(tiny_processor, image_root):
    long, short = (
        make_entry("long", CONVERSATIONS["multi"]),
        make_entry("short", [("is a square a shape ?", "yes")], image=None),
    )
    segments = render_segments("mistral_instruct_system", turns_from_llava(long["conversations"]), True)
    input_ids_T, labels_T = tokenise(segments, tiny_processor)
    first_target = int((labels_T != IGNORE_INDEX).nonzero()[0])
    first_image = int((input_ids_T == tiny_processor.tokenizer.convert_tokens_to_ids("<image>")).nonzero()[0])

    def dataset(max_length):
        entries = [long, short]
        return SupervisedDataset(
            entries, tiny_processor, "mistral_instruct_system", image_root, max_length, max_share=1.0
        )

    cut = dataset(first_target + 1)
    sample = cut[0]
    assert len(sample["input_ids"]) == first_target + 1 and (sample["labels"] != IGNORE_INDEX).sum() == 1
    assert cut.skips.by_reason == Counter({"truncated": 1})
    assert cut.skips.first[0]["detail"] == f"{len(labels_T)} > {first_target + 1} tokens"

    nothing_left = dataset(first_target)
    assert (
        nothing_left[0]["labels"].tolist()
        == tokenise(
            render_segments("mistral_instruct_system", [("is a square a shape ?", "yes")], False),
            tiny_processor,
        )[1].tolist()
    )  # the next entry took its place
    assert nothing_left.skips.by_reason == Counter({"no target tokens": 1})

    # Through the image: its tokens would not match its features. The short entry does not fit either, so
    # no entry is left: an error, not an endless search.
    through_image = dataset(first_image + 1)
    with pytest.raises(TooManySkipped, match="no entry of the dataset can be used"):
        through_image[0]
    assert through_image.skips.by_reason == Counter({"image cut by truncation": 1, "no target tokens": 1})


def test_unreadable_images_are_counted_and_replaced_without_crashing(tiny_processor, image_root):
    entries = [
        make_entry("missing", CONVERSATIONS["single"], image="nowhere.png"),
        make_entry("corrupt", CONVERSATIONS["single"], image="corrupt.png"),
        make_entry("good", CONVERSATIONS["single"]),
    ] + [make_entry(f"more{i}", CONVERSATIONS["single"]) for i in range(7)]
    dataset = SupervisedDataset(
        entries, tiny_processor, "mistral_instruct_system", image_root, 512, max_share=0.2
    )
    samples = [dataset[i] for i in range(len(dataset))]
    assert all(sample["pixel_values"].shape == (1, 3, 42, 42) for sample in samples)
    # dataset[0] passes over both bad entries to "good"; dataset[1] over "corrupt" again, counted once (issue 17).
    assert dataset.skips.by_reason == Counter({"unreadable image": 2})
    assert dataset.skips.seen == len(entries) + 2  # every sample served, and each bad entry once
    assert [offender["id"] for offender in dataset.skips.first[:2]] == ["missing", "corrupt"]
    assert "nowhere.png" in dataset.skips.first[0]["detail"]


def test_invalid_conversations_are_counted(tiny_processor, image_root):
    bad = make_entry("bad", CONVERSATIONS["single"], image=None)  # an <image> placeholder but no image
    good = make_entry("good", CONVERSATIONS["single"])
    dataset = SupervisedDataset(
        [bad, good], tiny_processor, "mistral_instruct_system", image_root, 512, max_share=1.0
    )
    assert "pixel_values" in dataset[0]
    assert (
        dataset.skips.first[0]["id"] == "bad" and dataset.skips.first[0]["reason"] == "invalid conversation"
    )


def test_arrow_store_reads_like_a_list(tiny_processor, image_root):
    entries = [
        make_entry("a", CONVERSATIONS["multi"]),
        make_entry("b", [("is a square a shape ?", "yes")], image=None),
    ]
    store = datasets.Dataset.from_list(entries)
    from_list = SupervisedDataset(entries, tiny_processor, "mistral_instruct_system", image_root, 512)
    from_arrow = SupervisedDataset(store, tiny_processor, "mistral_instruct_system", image_root, 512)
    assert from_arrow.modality_lengths() == from_list.modality_lengths() == ([19, 7], [True, False])
    for index in range(2):
        assert all(torch.equal(from_arrow[index][k], from_list[index][k]) for k in from_list[index])


def test_collator_right_pads_and_stacks_images_in_placeholder_order(tiny_processor, image_root, config):
    entries = [
        make_entry("image1", CONVERSATIONS["single"]),
        make_entry("text", [("is a square a shape ?", "yes")], image=None),
        make_entry("image2", CONVERSATIONS["multi"]),
    ]
    dataset = SupervisedDataset(entries, tiny_processor, "mistral_instruct_system", image_root, 512)
    samples = [dataset[i] for i in range(3)]
    collate = Collator(tiny_processor.tokenizer.pad_token_id)
    batch = collate(samples)

    lengths = [len(sample["input_ids"]) for sample in samples]
    assert (
        batch["input_ids"].shape
        == batch["labels"].shape
        == batch["attention_mask"].shape
        == (3, max(lengths))
    )
    for row, (sample, length) in enumerate(zip(samples, lengths, strict=True)):
        assert torch.equal(batch["input_ids"][row, :length], sample["input_ids"])
        assert torch.equal(batch["labels"][row, :length], sample["labels"])
        assert (batch["input_ids"][row, length:] == tiny_processor.tokenizer.pad_token_id).all()
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (max(lengths) - length)
    assert torch.equal(
        batch["pixel_values"], torch.cat([samples[0]["pixel_values"], samples[2]["pixel_values"]])
    )
    assert "pixel_values" not in collate([samples[1]])

    # The model takes the batch as it is: image tokens match the images, the loss is over the answers.
    model = make_model(
        "tiny", moe=False, image_token_id=tiny_processor.tokenizer.convert_tokens_to_ids("<image>")
    )
    model.resize_token_embeddings(max(len(tiny_processor.tokenizer), config.text_config.vocab_size))
    output = model(**batch)
    assert torch.isfinite(output.loss) and output.loss > 0


def test_collator_needs_a_pad_token():
    with pytest.raises(ValueError, match="pad token"):
        Collator(None)


def rank_orders(sampler_args, world_size, epoch=0):
    orders = []
    for rank in range(world_size):
        sampler = ModalityLengthGroupedSampler(**sampler_args, world_size=world_size, rank=rank)
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
        assert len(orders[-1]) == len(sampler)
    return orders


@pytest.fixture
def sampler_args():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 500, (203,), generator=generator).tolist()
    has_image = (torch.rand(203, generator=generator) < 0.6).tolist()
    return dict(lengths=lengths, has_image=has_image, batch_size=4, accumulation_steps=2, seed=7)


def test_sampler_covers_every_index_once_and_keeps_modalities_apart(sampler_args):
    (order,) = rank_orders(sampler_args, world_size=1)
    assert sorted(order) == list(range(203))
    batches = [order[i : i + 4] for i in range(0, len(order), 4)]
    modalities = [{sampler_args["has_image"][i] for i in batch} for batch in batches]
    # Only the partial megabatches of the two modalities meet: one mixed batch at most.
    assert sum(len(m) > 1 for m in modalities) <= 1
    assert len(order) == len(ModalityLengthGroupedSampler(**sampler_args))


def test_sampler_splits_across_ranks_without_overlap_and_with_equal_steps(sampler_args):
    world_size, batch_size, accumulation = 3, 4, 2
    orders = rank_orders(sampler_args, world_size)
    assert len({len(order) for order in orders}) == 1  # same number of steps on every rank
    everything = [index for order in orders for index in order]
    assert set(everything) == set(range(203))
    # 203 = 8 steps of 3 ranks x 2 x 4 (192) + a tail of 11, padded to 12 with one repeat.
    assert len(everything) == 204 and Counter(Counter(everything).values()) == {1: 202, 2: 1}

    # One optimiser step: each rank's 2 micro-batches of 4. All ranks share one modality per step, except the
    # mixed megabatch in front and the tail.
    step = accumulation * batch_size
    has_image = sampler_args["has_image"]
    mixed_steps = sum(
        len({has_image[i] for order in orders for i in order[start : start + step]}) > 1
        for start in range(0, len(orders[0]), step)
    )
    assert mixed_steps <= 2

    # The micro-batches of one step are balanced in total length (LLaVA's split_to_even_chunks).
    lengths = sampler_args["lengths"]
    for start in range(step, 8 * step, step):  # the full, single-modality steps
        micro = [order[start + k : start + k + batch_size] for order in orders for k in (0, batch_size)]
        if len({has_image[i] for batch in micro for i in batch}) == 1:
            totals = [sum(lengths[i] for i in batch) for batch in micro]
            assert max(totals) - min(totals) <= max(lengths)


def test_sampler_is_seeded_and_changes_with_the_epoch(sampler_args):
    assert rank_orders(sampler_args, 2, epoch=0) == rank_orders(sampler_args, 2, epoch=0)
    assert rank_orders(sampler_args, 2, epoch=0) != rank_orders(sampler_args, 2, epoch=1)
    assert sorted(rank_orders(sampler_args, 1, epoch=1)[0]) == list(range(203))
    assert rank_orders(sampler_args, 1) != rank_orders(dict(sampler_args, seed=8), 1)


def test_sampler_with_a_single_modality(sampler_args):
    (order,) = rank_orders(dict(sampler_args, has_image=[True] * 203), world_size=1)
    assert sorted(order) == list(range(203))
