"""Mistral-7B's real tokenizer through every save and load of a run, against CuMo's own preprocessing.

The tokenizer: Mistral-7B's SentencePiece model, out of PyPI's mistral-common wheel (`make test` runs
tests/mistral/fetch.py), beside tests/mistral/tokenizer_config.json, which holds the fields of
mistralai/Mistral-7B-Instruct-v0.2's tokenizer_config.json on the Hub (`legacy: true` among them; written
from its Hub page, without its chat template). It is loaded as the paper presets load it (a local copy of the
Hub repo as the LLM of pretrain, `stages._pretrain_start`), then saved and loaded again as a run does: the
pretrain export, pft's and sft's start and exports, the evaluation's `load_model`, and `cumo convert` to the
released layout and back.

The oracle is CuMo's code re-implemented from its published source (SHI-Labs/CuMo: cumo/mm_utils.py
`tokenizer_image_token`, cumo/train/train.py `preprocess_multimodal`, `preprocess_plain`,
`preprocess_llama_2`, cumo/conversation.py `SeparatorStyle.LLAMA_2`) over the slow tokenizer CuMo trains
with: transformers 4.37's LlamaTokenizer, `use_fast=False`, `legacy=True` (SentencePiece run on each piece of
text between special tokens, its dummy prefix "▁" in front of each).

Named differences, asserted as such:
- CuMo's double start token: its LLAMA_2 prompt begins with the text "<s>" and the tokenizer adds a BOS in
  front, so CuMo trains and evaluates on [1, 1, ...]; ours has one (cumo/data/README.md).
- CuMo's "tokenization mismatch" samples: a message holding "</s>" or "[/INST]" splits CuMo's rounds where
  the conversation has none, its label count misses, and CuMo sets every label to -100 ("WARNING:
  tokenization mismatch ... (ignored)"): the sample trains nothing. Ours counts it as a skipped sample,
  "tokenization mismatch", and trains nothing on it either.
- The image: CuMo splices it in at the id -200; ours expands it to `num_image_tokens` tokens of an added
  `<image>` token. Compared as one -200 per run of image tokens.
"""

import hashlib
import random
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from cumo.bench.memory import write_towers
from cumo.data.conversation import IGNORE_INDEX
from cumo.data.dataset import SkipSample, SupervisedDataset
from cumo.data.synthetic_benchmarks import write_benchmarks
from cumo.eval.benchmarks import NAMES, get
from cumo.eval.generate import load_model, prompt_of
from cumo.model.convert import convert_directory
from cumo.model.presets import TINY_TEXT, TINY_VISION
from cumo.model.processing_cumo import CumoProcessor, save_tokenizer
from cumo.model.weights import WHOLE
from cumo.train.checkpoint import mark_finished
from cumo.train.stages import build_model, stage_config, stage_start
from cumo.train.trainer import _export

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_MODEL = REPO / ".venv" / "fixtures" / "mistral-tokenizer.model.v1"
SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"
PRESET = "cumo-mistral-7b"
IMAGE_TOKEN_INDEX = -200  # CuMo's cumo/constants.py
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


# ------------------------------------------------------------------------------------------ CuMo's side
class SlowLegacyTokenizer:
    """transformers 4.37's LlamaTokenizer(legacy=True) as CuMo calls it: `tokenizer(text).input_ids`.

    PreTrainedTokenizer.tokenize splits the text at the special tokens' text (Mistral's added tokens strip no
    space: lstrip and rstrip are false), and LlamaTokenizer._tokenize runs SentencePiece on each other piece
    on its own (legacy), which puts its dummy prefix "▁" in front of each; `add_bos_token` puts <s> first."""

    SPECIAL = {"<unk>": 0, "<s>": 1, "</s>": 2}
    bos_token_id = 1

    def __init__(self, model_file: Path):
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))

    def __call__(self, text: str) -> list[int]:
        ids = [self.bos_token_id]
        for piece in re.split("(<unk>|<s>|</s>)", text):
            if piece in self.SPECIAL:
                ids.append(self.SPECIAL[piece])
            elif piece:
                ids.extend(self.sp.encode(piece))
        return ids


def tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """cumo/mm_utils.py, as published."""
    prompt_chunks = [tokenizer(chunk) for chunk in prompt.split("<image>")]

    def insert_separator(X, sep):
        return [ele for sublist in zip(X, [sep] * len(X), strict=True) for ele in sublist][:-1]

    input_ids = []
    offset = 0
    if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])
    for x in insert_separator(prompt_chunks, [IMAGE_TOKEN_INDEX] * (offset + 1)):
        input_ids.extend(x[offset:])
    return input_ids


def preprocess_multimodal(conversations: list[dict]) -> list[dict]:
    """cumo/train/train.py: the placeholder moved in front of its message (mm_use_im_start_end False)."""
    out = []
    for sentence in conversations:
        value = sentence["value"]
        if "<image>" in value:
            value = ("<image>\n" + value.replace("<image>", "").strip()).strip()
        out.append({"from": sentence["from"], "value": value})
    return out


def llama_2_prompt(messages: list[str | None]) -> str:
    """cumo/conversation.py `get_prompt` for SeparatorStyle.LLAMA_2 with conv_mistral_instruct_system
    (sep "", sep2 "</s>"); `messages` alternate user, assistant (None: the generation prompt)."""
    ret = ""
    for i, message in enumerate(messages):
        if message:
            if i == 0:
                message = f"<<SYS>>\n{SYSTEM}\n<</SYS>>\n\n" + message
            if i % 2 == 0:
                message = f"[INST] {message} [/INST]"
                ret += "<s>" + message if i == 0 else message
            else:
                ret += " " + message + " " + "</s>"
    return ret


def preprocess_llama_2(conversations: list[dict], tokenizer, has_image: bool) -> tuple[list[int], list[int]]:
    """cumo/train/train.py, for one sample (no padding, no truncation)."""
    conversation = llama_2_prompt([sentence["value"] for sentence in conversations])
    input_ids = tokenizer_image_token(conversation, tokenizer) if has_image else tokenizer(conversation)
    target = list(input_ids)
    sep = "[/INST] "
    total_len = len(target)  # the pad (<unk>) never occurs in these texts
    rounds = conversation.split("</s>")
    cur_len = 1
    target[:cur_len] = [IGNORE_INDEX] * cur_len
    for rou in rounds:
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        if has_image:
            round_len = len(tokenizer_image_token(rou, tokenizer))
            instruction_len = len(tokenizer_image_token(parts[0], tokenizer)) - 2
        else:
            round_len = len(tokenizer(rou))
            instruction_len = len(tokenizer(parts[0])) - 2
        end = min(cur_len + instruction_len, len(target))
        target[cur_len:end] = [IGNORE_INDEX] * max(0, end - cur_len)
        cur_len += round_len
    target[cur_len:] = [IGNORE_INDEX] * max(0, len(target) - cur_len)
    if cur_len != total_len:  # "WARNING: tokenization mismatch ... (ignored)"
        target = [IGNORE_INDEX] * len(target)
    return input_ids, target


def preprocess_plain(conversations: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """cumo/train/train.py: the image, the caption, the plain template's separator "\\n"."""
    prompt = "<image>" + conversations[1]["value"] + "\n"
    input_ids = tokenizer_image_token(prompt, tokenizer)
    masked = len(tokenizer_image_token("<image>", tokenizer))
    return input_ids, [IGNORE_INDEX] * masked + input_ids[masked:]


def cumo_sample(entry: dict, tokenizer, template: str) -> tuple[list[int], list[int]]:
    has_image = entry.get("image") is not None
    conversations = preprocess_multimodal(entry["conversations"]) if has_image else entry["conversations"]
    if template == "plain":
        return preprocess_plain(conversations, tokenizer)
    return preprocess_llama_2(conversations, tokenizer, has_image)


# ------------------------------------------------------------------------------------------ the conversations
WORDS = [
    "cat",
    "Paris",
    "the red square",
    "3.14",
    "1,000",
    "2024",
    "naïve café",
    "東京",
    "Ελληνικά",
    "🙂",
    "x²",
]
QUESTIONS = [
    "What is in the image?",
    "How many objects are there?\nAnswer the question using a single word or phrase.",
    "Describe the scene in detail.",
    "What does the sign say? Reference OCR token: {w}",
    "Is there a {w} in the image? Please answer yes or no.",
    "Question: Which option is right?\nOptions: (A) {w} (B) dog\nAnswer with the option's letter from the given choices directly.",
    'Translate "{w}" into French.',
    "写一首关于{w}的诗。",
    "  leading and trailing spaces  ",
    "Explain this code:\n```python\ndef f(x):\n    return x ** 2\n```",
]
ANSWERS = [
    "{w}",
    "Yes",
    "B",
    "The image shows {w} on a table.\n\n1. First\n2. Second",
    "```python\nfor i in range(3):\n\tprint(i)\n```",
    "3",
    "It costs $1,000.50 (about €930).",
    "\nA leading newline.",
    "Ends with a space ",
    "«{w}» — 東京 🙂",
    "-1.5e-3",
    "'quoted' and \"double\"",
]
MISMATCH = ["Stop here </s> and go on.", "A [/INST] inside.", "[INST] Not a real turn [/INST] really."]


def conversations(seed: int = 0, count: int = 240) -> list[dict]:
    """Entries shaped like CuMo's mixtures (LLaVA-665K, ShareGPT4V, ALLaVA, LIMA): single and multi-turn,
    text-only, the placeholder before or after the question, unicode, code, numbers, and CuMo's mismatches."""
    rng = random.Random(seed)
    entries = []
    for i in range(count):

        def fill(text):
            return text.format(w=rng.choice(WORDS))

        has_image = i % 3 != 0
        turns = []
        for t in range(rng.choice([1, 1, 2, 3, 4])):
            question, answer = fill(rng.choice(QUESTIONS)), fill(rng.choice(ANSWERS))
            if i % 17 == 5:
                answer = rng.choice(MISMATCH)
            if i % 19 == 7:
                question = rng.choice(MISMATCH)
            if t == 0 and has_image:
                question = f"{question}\n<image>" if i % 2 else f"<image>\n{question}"
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        entry = {"id": f"c{i}", "conversations": turns}
        if has_image:
            entry["image"] = "image.png"
        entries.append(entry)
    return entries


def captions(seed: int = 1, count: int = 60) -> list[dict]:
    """LLaVA-558K-shaped pretrain entries: an image and its caption."""
    rng = random.Random(seed)
    return [
        {
            "id": f"p{i}",
            "image": "image.png",
            "conversations": [
                {
                    "from": "human",
                    "value": rng.choice(["<image>\nDescribe the image.", "Render a caption.\n<image>"]),
                },
                {"from": "gpt", "value": rng.choice(ANSWERS).format(w=rng.choice(WORDS)).strip() or "a cat"},
            ],
        }
        for i in range(count)
    ]


# ------------------------------------------------------------------------------------------ our side
def collapsed(ids: list[int], image_token_id: int) -> list[int]:
    """Each run of image tokens as CuMo's one -200."""
    out = []
    for token in ids:
        if token == image_token_id:
            if out and out[-1] == IMAGE_TOKEN_INDEX:
                continue
            token = IMAGE_TOKEN_INDEX
        out.append(token)
    return out


def collapsed_labels(ids: list[int], labels: list[int], image_token_id: int) -> list[int]:
    keep = [
        i for i, token in enumerate(ids) if token != image_token_id or i == 0 or ids[i - 1] != image_token_id
    ]
    return [labels[i] for i in keep]


def ours(dataset: SupervisedDataset, entry: dict) -> tuple[list[int], list[int]] | str:
    """Our sample's (input_ids, labels) with images collapsed, or the reason it is skipped."""
    try:
        sample = dataset._sample(entry)
    except SkipSample as skip:
        return skip.reason
    token = dataset.processor.tokenizer.convert_tokens_to_ids(dataset.processor.image_token)
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    return collapsed(ids, token), collapsed_labels(ids, labels, token)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def mistral_files(tmp_path_factory) -> Path:
    """A Hub-like folder of Mistral's tokenizer files (tokenizer.model and tokenizer_config.json)."""
    if not TOKENIZER_MODEL.is_file():
        pytest.fail(
            f"{TOKENIZER_MODEL} is missing: `make test` fetches it (python tests/mistral/fetch.py {TOKENIZER_MODEL})"
        )
    data = TOKENIZER_MODEL.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256, f"{TOKENIZER_MODEL}: not Mistral-7B's tokenizer.model"
    folder = tmp_path_factory.mktemp("mistral-tokenizer")
    (folder / "tokenizer.model").write_bytes(data)
    shutil.copy(REPO / "tests" / "mistral" / "tokenizer_config.json", folder)
    return folder


@pytest.fixture(scope="module")
def slow(mistral_files) -> SlowLegacyTokenizer:
    return SlowLegacyTokenizer(mistral_files / "tokenizer.model")


def _export_stage(start, stage, out: Path) -> Path:
    """What training ends with (trainer._export, mark_finished), on the stage's untrained start."""
    _export(build_model(start, stage), start.processor, out, WHOLE, 10**9)
    mark_finished(out, {"stage": stage.name})
    return out


@pytest.fixture(scope="module")
def processors(tmp_path_factory, mistral_files) -> dict[str, CumoProcessor]:
    """The processor at each load of a run with Mistral's tokenizer, tiny towers around it."""
    root = tmp_path_factory.mktemp("run")
    dims = (
        TINY_VISION,
        {key: TINY_TEXT[key] for key in ("hidden_size", "intermediate_size", "num_hidden_layers")},
    )
    clip, llm = write_towers(root, "mistral", "tiny", dims, tokenizer_files=mistral_files)
    found = {}
    stage = stage_config("pretrain", PRESET)
    start = stage_start(stage, None, PRESET, {"clip": str(clip), "llm": str(llm)})
    found["pretrain"] = start.processor
    previous = _export_stage(start, stage, root / "pretrain")
    for name in ("pft", "sft"):
        stage = stage_config(name, PRESET)
        start = stage_start(stage, previous, PRESET)
        found[name] = start.processor
        previous = _export_stage(start, stage, root / name)
    found["evaluation"] = load_model(previous)[1]
    convert_directory(previous, root / "released", "to-released")
    convert_directory(root / "released", root / "converted", "from-released")
    found["converted"] = load_model(root / "converted")[1]
    found["released"] = root / "released"
    found["directories"] = {"sft": previous, "converted": root / "converted"}
    # A checkpoint as CuMo released it: its tokenizer is Mistral's files as the slow tokenizer saved them, its
    # config a `llava_mistral` one that transformers does not know, so AutoTokenizer reads tokenizer_config.json.
    shipped = root / "shipped"
    shutil.copytree(root / "released", shipped, ignore=shutil.ignore_patterns("tokenizer*", "chat_template*"))
    shutil.copytree(mistral_files, shipped, dirs_exist_ok=True)
    convert_directory(shipped, root / "shipped-converted", "from-released")
    found["released checkpoint"] = load_model(root / "shipped-converted")[1]
    return found


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    Image.new("RGB", (48, 32), (200, 30, 30)).save(root / "image.png")
    return root


# ------------------------------------------------------------------------------------------ tests
def test_the_fixture_is_mistral_7b_s_tokenizer(mistral_files, slow):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(mistral_files)
    assert len(tokenizer) == 32000 and tokenizer.legacy
    assert tokenizer("Hello world").input_ids == [1, 22557, 1526] == slow("Hello world")


LOADS = ["pft", "sft", "evaluation", "converted", "released checkpoint"]


@pytest.mark.parametrize("load", ["pretrain", *LOADS])
def test_every_load_reads_text_as_cumo_s_slow_legacy_tokenizer(processors, slow, load):
    """The break issue 15 found: a reload after transformers 5's save lost `legacy` and "[INST]" its "▁"."""
    tokenizer = processors[load].tokenizer
    for text in ["<s>[INST] Hi [/INST] Yes </s>[INST] And? [/INST]", "<s>" + "\nx", "a </s>[INST] b"]:
        assert tokenizer(text, add_special_tokens=False).input_ids == slow(text)[1:], (load, text)


@pytest.mark.parametrize("load", LOADS)
def test_training_samples_are_cumo_s_preprocess_llama_2(processors, slow, image_root, load):
    processor = processors[load]
    assert processor.template == "mistral_instruct_system"
    dataset = SupervisedDataset([], processor, processor.template, image_root, max_length=4096)
    entries = conversations()
    compared = mismatches = 0
    for entry in entries:
        cumo_ids, cumo_labels = cumo_sample(entry, slow, processor.template)
        got = ours(dataset, entry)
        if all(label == IGNORE_INDEX for label in cumo_labels):
            # CuMo's "tokenization mismatch ... (ignored)": a message holding "</s>" or "[/INST]".
            assert got == "tokenization mismatch", (entry["id"], got)
            mismatches += 1
            continue
        assert got != "tokenization mismatch", f"{entry['id']}: skipped, but CuMo trains on it"
        ids, labels = got
        # CuMo's double start token: "<s>" in its prompt text after the tokenizer's own BOS.
        assert cumo_ids[:2] == [1, 1] and cumo_labels[:2] == [IGNORE_INDEX, IGNORE_INDEX]
        assert ids == cumo_ids[1:], entry["id"]
        assert labels == cumo_labels[1:], entry["id"]
        compared += 1
    assert compared >= 200 and mismatches >= 10, (compared, mismatches)


def test_pretrain_samples_are_cumo_s_preprocess_plain(processors, slow, image_root):
    processor = processors["pretrain"]
    assert processor.template == "plain"
    dataset = SupervisedDataset([], processor, "plain", image_root, max_length=4096)
    for entry in captions():
        cumo_ids, cumo_labels = cumo_sample(entry, slow, "plain")
        ids, labels = ours(dataset, entry)
        assert (ids, labels) == (cumo_ids, cumo_labels), entry["id"]


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("benchmarks")
    write_benchmarks(root, per_benchmark=8)
    return root / "eval"


@pytest.mark.parametrize("load", ["evaluation", "converted", "released checkpoint"])
@pytest.mark.parametrize("name", NAMES)
def test_evaluation_prompts_are_cumo_s(processors, slow, eval_root, load, name):
    """model_vqa*.py: DEFAULT_IMAGE_TOKEN + "\\n" + the question, the user's message of a conversation whose
    assistant message is None, `tokenizer_image_token` of its prompt."""
    processor = processors[load]
    benchmark = get(name)
    questions = benchmark.questions(eval_root / benchmark.folder)
    assert questions
    token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    for question in questions:
        ours_ids = processor(
            [prompt_of(question, processor.template)], [Image.new("RGB", (8, 8))] if question.image else None
        )
        qs = "<image>\n" + question.text if question.image is not None else question.text
        cumo_ids = tokenizer_image_token(llama_2_prompt([qs, None]), slow)
        assert cumo_ids[:2] == [1, 1]  # the double start token
        assert collapsed(ours_ids["input_ids"][0].tolist(), token) == cumo_ids[1:], (
            name,
            question.question_id,
        )


def test_the_released_layout_keeps_mistral_s_32000_tokens(processors, slow):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    released = processors["released"]
    tokenizer = AutoTokenizer.from_pretrained(released)
    assert len(tokenizer) == 32000 and "<image>" not in tokenizer.get_vocab()
    text = "<s>[INST] <image>\nx  y [/INST] z </s>[INST] w [/INST]"
    assert tokenizer(text, add_special_tokens=False).input_ids == slow(text)[1:]
    rows = {}
    for file in released.glob("*.safetensors"):
        with safe_open(file, "pt") as weights:
            for key in ("model.embed_tokens.weight", "lm_head.weight"):
                if key in weights.keys():
                    rows[key] = weights.get_slice(key).get_shape()[0]
    assert rows == {"model.embed_tokens.weight": 32000, "lm_head.weight": 32000}


def test_the_way_back_from_the_released_layout_gives_the_image_token_the_mean_row(processors):
    """sft export -> released (32,000 rows) -> ours again: every tensor as it was but the image token's rows,
    which start again as the mean row (`weights.resize_rows`); the released config has no image token id."""
    import json

    import torch
    from safetensors.torch import load_file

    def tensors(directory):
        return {
            key: value
            for file in sorted(directory.glob("*.safetensors"))
            for key, value in load_file(file).items()
        }

    released_config = json.loads((processors["released"] / "config.json").read_text())
    assert released_config["vocab_size"] == 32000 and "image_token_id" not in released_config
    before, after = (tensors(processors["directories"][name]) for name in ("sft", "converted"))
    assert before.keys() == after.keys()
    vocabulary = ("model.language_model.embed_tokens.weight", "lm_head.weight")
    for key in before.keys() - set(vocabulary):
        assert torch.equal(before[key], after[key]), key
    for key in vocabulary:
        assert before[key].shape[0] == after[key].shape[0] == 32001, key
        assert torch.equal(before[key][:32000], after[key][:32000]), key
        assert torch.equal(after[key][32000], before[key][:32000].float().mean(0).to(before[key].dtype)), key


def test_a_save_keeps_the_legacy_flag_of_the_class_mistral_s_config_names(mistral_files, slow, tmp_path):
    """transformers 5 reads `legacy: true` but does not write it back: a LlamaTokenizer saved and loaded again
    switched to Metaspace(prepend_scheme="first") and "[INST]" after "</s>" lost its "▁" (issue 15)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        mistral_files
    )  # no config.json: the class tokenizer_config names
    assert type(tokenizer).__name__ == "LlamaTokenizer" and tokenizer.legacy
    for round_trip in range(2):
        save_tokenizer(tokenizer, tmp_path / str(round_trip))
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / str(round_trip))
        text = "<s>[INST] a [/INST] b </s>[INST] c [/INST]"
        assert tokenizer(text, add_special_tokens=False).input_ids == slow(text)[1:], round_trip
