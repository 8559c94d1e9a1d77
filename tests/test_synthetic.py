"""The shapes world: deterministic corpora in the LLaVA schema, answers true to the image and balanced, and
a tokenizer trained on the corpus.

Oracles: the scene each entry was drawn from (every answer is recomputed from it here, independently of the
generator's code), the pixels of the written PNG (each thing's colour at its cell centre), and a re-training
of the tokenizer on the JSON files as written.
"""

import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

import pytest
from PIL import Image
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

from cumo.data.conversation import IMAGE_PLACEHOLDER, render
from cumo.data.synthetic import (
    CHOICE_PROMPT,
    COLORS,
    DEFAULT_SIZES,
    IMAGE_TOKEN_ID,
    NUMBER_WORDS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    SHORT_ANSWER_PROMPT,
    SIGN_WORDS,
    SPECIAL_TOKENS,
    STAGE_TEMPLATES,
    TINY_VOCAB_SIZE,
    build_tokenizer,
    corpus_text,
    generate_corpus,
    train_tokenizer,
    write_world,
)
from cumo.model.presets import build_config

SIZES = {"pretrain": 60, "pft": 30, "sft": 120}
IMAGE_SIZE = 56


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, write_world(root, seed=7, sizes=SIZES, image_size=IMAGE_SIZE)


def load(paths, stage):
    return json.loads(paths[stage].read_text())


def turns_of(entry):
    messages = [turn["value"] for turn in entry["conversations"]]
    return list(zip(messages[::2], messages[1::2], strict=True))


# --- determinism -------------------------------------------------------------------------------------------


def tree_bytes(root):
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


def test_same_seed_writes_the_same_bytes_and_another_seed_does_not(tmp_path):
    sizes = {"pretrain": 8, "pft": 4, "sft": 12}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        write_world(tmp_path / name, seed=seed, sizes=sizes)
    first, again, other = (tree_bytes(tmp_path / name) for name in "abc")
    assert first == again
    images = [name for name in first if name.endswith(".png")]
    assert len(images) == 8 + 4 + sum(sample.scene is not None for sample in generate_corpus("sft", 12, 1))
    assert first["jsons/synthetic_sft.json"] != other["jsons/synthetic_sft.json"]
    assert any(first[name] != other[name] for name in images)


def test_another_process_draws_the_same_entries_and_trains_the_same_tokenizer():
    """Nothing may hang on per-process state (Python's salted hash(), Rust's hash-map seeds)."""
    script = (
        "import json; from cumo.data.synthetic import build_tokenizer, generate_corpus; "
        "print(json.dumps([s.entry for s in generate_corpus('sft', 20, 4)])); "
        "print(build_tokenizer().backend_tokenizer.to_str())"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"PYTHONHASHSEED": "random"},
    )
    entries, tokenizer = result.stdout.splitlines()
    assert json.loads(entries) == [s.entry for s in generate_corpus("sft", 20, 4)]
    assert tokenizer == build_tokenizer().backend_tokenizer.to_str()


def test_an_entry_does_not_depend_on_the_corpus_size():
    for stage in SIZES:
        assert generate_corpus(stage, 10, seed=3) == generate_corpus(stage, 25, seed=3)[:10]


# --- schema -------------------------------------------------------------------------------------------------


def test_every_entry_has_the_llava_schema_and_its_image(world):
    root, paths = world
    assert {stage: paths[stage].relative_to(root).as_posix() for stage in SIZES} == {
        stage: f"jsons/synthetic_{stage}.json" for stage in SIZES
    }
    ids = []
    for stage, size in SIZES.items():
        entries = load(paths, stage)
        assert len(entries) == size
        for entry in entries:
            ids.append(entry["id"])
            conversations = entry["conversations"]
            assert set(entry) == {"id", "conversations"} | ({"image"} if "image" in entry else set())
            assert len(conversations) >= 2
            assert [turn["from"] for turn in conversations] == ["human", "gpt"] * (len(conversations) // 2)
            assert all(isinstance(turn["value"], str) and turn["value"].strip() for turn in conversations)
            placeholders = [turn["value"].count(IMAGE_PLACEHOLDER) for turn in conversations]
            if "image" in entry:
                assert placeholders == [1] + [0] * (len(conversations) - 1), entry["id"]
                assert entry["image"] == f"synthetic/images/{stage}/{entry['id']}.png"
                with Image.open(root / entry["image"]) as image:
                    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))
            else:
                assert stage == "sft" and sum(placeholders) == 0, entry["id"]
            # the stage's template accepts it (one placeholder, first question, only with an image)
            render(STAGE_TEMPLATES[stage], turns_of(entry), has_image="image" in entry)
    assert len(set(ids)) == len(ids)
    text_only = sum("image" not in entry for entry in load(paths, "sft"))
    assert 0 < text_only < SIZES["sft"] / 4


# --- answers true to the scene -------------------------------------------------------------------------------

PHRASE_TO_POSITION = {phrase: position for position, phrase in POSITION_PHRASES.items()}


def expected_answer(question, scene):
    """The short answer to `question` about `scene`, recomputed from the scene alone."""
    at = {thing.position: thing for thing in scene.things}
    if match := re.fullmatch(r"What color is the shape (.+)\?", question):
        return at[PHRASE_TO_POSITION[match[1]]].color
    if match := re.fullmatch(r"What shape is (.+)\?", question):
        return at[PHRASE_TO_POSITION[match[1]]].shape
    if match := re.fullmatch(r"Where is the (\w+) (\w+)\?", question):
        (position,) = [t.position for t in scene.things if (t.color, t.shape) == (match[1], match[2])]
        return position
    if question == "How many shapes are there in the image?":
        return NUMBER_WORDS[len(scene.things)]
    if question == "What is written in the image?":
        return scene.word
    if question == "Is there any text in the image?":
        return "yes" if scene.word else "no"
    if match := re.fullmatch(r"Is there an? (\w+) (\w+) in the image\?", question):
        return "yes" if (match[1], match[2]) in {(t.color, t.shape) for t in scene.things} else "no"
    raise AssertionError(f"a question the test does not know: {question!r}")


def short_answer(human, gpt):
    """(question, the short answer the gpt turn gives) for the short, multiple-choice and sentence forms."""
    lines = human.replace(f"{IMAGE_PLACEHOLDER}\n", "").split("\n")
    if lines[-1] == SHORT_ANSWER_PROMPT:
        return lines[0], gpt
    if lines[-1] == CHOICE_PROMPT:
        options = dict(line.split(". ", 1) for line in lines[1:-1])
        return lines[0], options[gpt]
    assert len(lines) == 1
    return lines[0], gpt


def test_answers_are_true_to_the_scene_in_every_form():
    forms = Counter()
    for sample in generate_corpus("sft", 400, seed=5):
        if sample.scene is None:
            continue
        for human, gpt in turns_of(sample.entry):
            question, answer = short_answer(human, gpt)
            expected = expected_answer(question, sample.scene)
            if "\n" in human.replace(f"{IMAGE_PLACEHOLDER}\n", ""):
                forms["short" if human.endswith(SHORT_ANSWER_PROMPT) else "choice"] += 1
                assert answer == expected, (sample.entry["id"], question, answer, expected)
            else:  # a sentence: it says the answer (a position as its phrase), and yes/no up front
                forms["sentence"] += 1
                words = {"yes": "Yes,", "no": "No,"}.get(expected) or POSITION_PHRASES.get(expected, expected)
                assert words in answer, (sample.entry["id"], question, answer)
    assert min(forms.values()) > 50, forms


def parse_things(text):
    """{(colour, shape, position)} named in a caption or a description."""
    pattern = rf"an? ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) ({'|'.join(POSITION_PHRASES.values())})"
    return {(color, shape, PHRASE_TO_POSITION[where]) for color, shape, where in re.findall(pattern, text)}


@pytest.mark.parametrize("stage", ["pretrain", "pft"])
def test_captions_and_descriptions_name_every_thing_and_the_word(stage):
    for sample in generate_corpus(stage, 200, seed=5):
        ((_, text),) = turns_of(sample.entry)
        scene = sample.scene
        assert parse_things(text) == {(t.color, t.shape, t.position) for t in scene.things}, text
        assert (scene.word is not None) == any(re.search(rf"\b{word}\b", text) for word in SIGN_WORDS)
        if scene.word:
            assert re.search(rf"\b{scene.word}\b", text)
        if stage == "pft":
            assert text.startswith(f"The image shows {NUMBER_WORDS[len(scene.things)]} shape")
            for shape, count in Counter(t.shape for t in scene.things).items():
                assert f"{NUMBER_WORDS[count]} {shape}" in text


def test_the_png_shows_the_scene(world):
    root, paths = world
    samples = {s.entry["id"]: s for s in generate_corpus("sft", SIZES["sft"], seed=7)}
    for entry in load(paths, "sft"):
        if "image" not in entry:
            continue
        with Image.open(root / entry["image"]) as image:
            for thing in samples[entry["id"]].scene.things:
                fx, fy = POSITIONS[thing.position]
                assert image.getpixel((int(fx * IMAGE_SIZE), int(fy * IMAGE_SIZE))) == COLORS[thing.color]


# --- balance: the question alone does not give the answer ------------------------------------------------------


def assert_uniform(counts, values):
    """Every value within 4 standard deviations of its expected count under a uniform draw."""
    assert set(counts) == set(values), counts
    n, p = counts.total(), 1 / len(values)
    assert all(abs(count - n * p) < 4 * (n * p * (1 - p)) ** 0.5 for count in counts.values()), counts


@pytest.fixture(scope="module")
def short_answers_by_question():
    answers = defaultdict(Counter)
    for sample in generate_corpus("sft", 12000, seed=11):
        if sample.scene is not None:
            for human, gpt in turns_of(sample.entry):
                if human.endswith((SHORT_ANSWER_PROMPT, CHOICE_PROMPT)):
                    answers[human.replace(f"{IMAGE_PLACEHOLDER}\n", "")][gpt] += 1
    return answers


def test_no_frequent_question_gives_away_its_answer(short_answers_by_question):
    """A model blind to the image can do no better than the most frequent answer to each question text."""
    frequent = {q: counts for q, counts in short_answers_by_question.items() if counts.total() >= 100}
    assert len(frequent) >= 30
    for question, counts in frequent.items():
        n, p = counts.total(), 1 / len(counts)
        assert len(counts) >= 2 and max(counts.values()) < n * p + 4 * (n * p * (1 - p)) ** 0.5, (
            question,
            counts,
        )


@pytest.mark.parametrize(
    "pattern, values",
    [
        (r"What color is", list(COLORS)),
        (r"What shape is", list(SHAPES)),
        (r"Where is", list(POSITIONS)),
        (r"How many shapes", ["one", "two", "three"]),
        (r"What is written", list(SIGN_WORDS)),
        (r"Is there", ["yes", "no"]),
    ],
)
def test_short_answers_of_each_kind_are_uniform(short_answers_by_question, pattern, values):
    totals = Counter()
    for question, counts in short_answers_by_question.items():
        if question.startswith(pattern) and question.endswith(SHORT_ANSWER_PROMPT):
            totals.update(counts)
    assert_uniform(totals, values)


def test_the_right_letter_is_uniform(short_answers_by_question):
    letters = Counter()
    for question, counts in short_answers_by_question.items():
        if question.endswith(CHOICE_PROMPT) and "\nD. " in question:
            letters.update(counts)
    assert_uniform(letters, "ABCD")


# --- tokenizer ----------------------------------------------------------------------------------------------


def rendered_conversations(corpora):
    for stage, entries in corpora.items():
        for entry in entries:
            yield render(STAGE_TEMPLATES[stage], turns_of(entry), has_image="image" in entry)


@pytest.fixture(scope="module")
def default_corpora():
    return {stage: [s.entry for s in generate_corpus(stage, size)] for stage, size in DEFAULT_SIZES.items()}


def test_special_tokens_have_fixed_ids_and_stay_whole():
    tokenizer = build_tokenizer()
    assert [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS] == list(
        range(len(SPECIAL_TOKENS))
    )
    assert IMAGE_TOKEN_ID == 4
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 3)
    # the processor expands the placeholder into back-to-back copies
    ids = tokenizer("<s>[INST]<image><image>\nred [/INST]", add_special_tokens=False)["input_ids"]
    assert ids[:4] == [1, 5, IMAGE_TOKEN_ID, IMAGE_TOKEN_ID] and ids[-1] == 6


def test_vocabulary_fits_the_tiny_preset():
    tokenizer = build_tokenizer()
    assert len(tokenizer) <= TINY_VOCAB_SIZE
    assert build_config("tiny").text_config.vocab_size == TINY_VOCAB_SIZE


def test_every_word_of_the_corpus_is_one_token_and_nothing_is_unknown(default_corpora):
    tokenizer = build_tokenizer()
    words = Counter()
    for text in corpus_text(default_corpora):
        words.update(
            word for word, _ in pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text)
        )
    split = [word for word in words if word not in tokenizer.get_vocab()]
    assert not split, f"words in pieces: {split}"
    batch = tokenizer(list(rendered_conversations(default_corpora)), add_special_tokens=False)["input_ids"]
    assert not any(tokenizer.unk_token_id in ids for ids in batch)


def test_decoding_gives_back_the_text():
    tokenizer = build_tokenizer()
    entries = [s.entry for s in generate_corpus("sft", 50, seed=2)]
    texts = [*rendered_conversations({"sft": entries}), "Unseen words, dígits 42 and\ttabs: still known!"]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
    ids = tokenizer(" red </s>", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == " red "


def test_training_is_deterministic_and_the_saved_tokenizer_is_trained_on_the_written_corpus(world):
    root, paths = world
    corpora = {stage: load(paths, stage) for stage in SIZES}
    trained = [train_tokenizer(corpus_text(corpora)).backend_tokenizer.to_str() for _ in range(2)]
    assert trained[0] == trained[1]
    saved = AutoTokenizer.from_pretrained(paths["tokenizer"])
    assert saved.backend_tokenizer.to_str() == trained[0]
    text = next(rendered_conversations({"sft": corpora["sft"]}))
    assert (
        saved(text, add_special_tokens=False)["input_ids"]
        == train_tokenizer(corpus_text(corpora))(text, add_special_tokens=False)["input_ids"]
    )
    assert saved.decode(saved(text, add_special_tokens=False)["input_ids"]) == text


def test_build_tokenizer_returns_independent_objects():
    first = build_tokenizer()
    first.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    assert "<extra>" not in build_tokenizer().get_vocab()
