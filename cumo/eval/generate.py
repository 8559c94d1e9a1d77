"""Greedy answers to a benchmark's questions: batched, left-padded, sharded, appended as they come, resumable.

The prompt is the model's own chat template (`config.conversation_template`, the one it was trained with:
`cumo.data.conversation`), the image placeholder in front of the question as LLaVA's `model_vqa_loader.py`
puts it; decoding is greedy (`do_sample=False`, LLaVA-1.5's `--temperature 0`). A batch is left-padded and
each row stops at its own end-of-sequence token; in fp32 a batch gives exactly the answers of batch size 1
(tests/test_eval_generate.py), so batching is only a speed setting. The paper's configs keep batch size 1.

Shards: shard i of n takes questions i, i+n, i+2n, ... in file order, so any shard count covers every
question once and a rerun with the same count redoes nothing. Each shard appends one line per answer to its
own file and flushes after every batch; a restart reads what is there and skips it (a last line cut off by
a kill is counted and redone). `merge` then checks that every question was answered exactly once
(`pair_with_questions`, the check every benchmark's scorer makes too).
"""

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from cumo.data.conversation import IMAGE_PLACEHOLDER, TEMPLATES, render
from cumo.eval.benchmark import Question, pair_with_questions, question_key
from cumo.model.configuration_cumo import CumoConfig
from cumo.model.modeling_cumo import CumoForConditionalGeneration
from cumo.model.processing_cumo import CLIP_MEAN, CumoProcessor

logger = logging.getLogger(__name__)


def load_model(
    model_dir: str | Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    template: str | None = None,
    gpus: int = 1,
) -> tuple[CumoForConditionalGeneration, CumoProcessor]:
    """The model and its processor from a model directory (ours, or a released one after `cumo convert`).

    `gpus` > 1 (device cuda): the model is placed over the first `gpus` visible GPUs, whole decoder and CLIP
    layers on each (`device_map`, as CuMo's evaluation loads a model too large for one GPU), for a model that
    does not fit one (`cumo plan` says how many it needs)."""
    # On GPUs the weights go to their device shard by shard as they are read: no copy of the whole model in
    # host memory (94 GB for Mixtral-8x7B in bf16, per evaluation shard).
    placement = device_map(model_dir, dtype, gpus) if gpus > 1 else {"": 0} if device == "cuda" else None
    model = CumoForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, device_map=placement).eval()
    trained_with = model.config.conversation_template
    if template is not None and template != trained_with:
        raise ValueError(
            f"{model_dir} was trained with the {trained_with!r} template; evaluating it with {template!r} would "
            f"ask in a format it never saw. Leave the template out (it is read from the model's config)."
        )
    return model, CumoProcessor.from_pretrained(model_dir, model.config)


def device_map(
    model_dir: str | Path, dtype: torch.dtype, gpus: int, gpu_bytes: list[int] | None = None
) -> dict[str, int]:
    """Module name -> GPU index: the model's layers in order over `gpus` GPUs, balanced, no layer split
    (transformers' `infer_auto_device_map` over `get_balanced_memory`, what `device_map="auto"` does, on the
    model built on the meta device). `gpu_bytes`: each GPU's memory (default: what CUDA reports)."""
    from transformers.integrations.accelerate import get_balanced_memory, infer_auto_device_map

    if gpu_bytes is None:
        if torch.cuda.device_count() < gpus:
            raise ValueError(
                f"{gpus} GPUs per evaluation shard asked, {torch.cuda.device_count()} visible: give the shard "
                "its GPUs (the workflow's gres is shards x gpus_per_shard) or lower --gpus-per-shard"
            )
        gpu_bytes = [torch.cuda.get_device_properties(i).total_memory for i in range(gpus)]
    config = CumoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = CumoForConditionalGeneration._from_config(config, dtype=dtype)
    max_memory = dict(enumerate(gpu_bytes))
    no_split = model._no_split_modules
    balanced = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split)
    placement = infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split)
    if not set(placement.values()) <= set(range(gpus)):
        raise ValueError(
            f"{model_dir} does not fit {gpus} GPU(s) of {min(gpu_bytes) / 2**30:.0f} GiB in {dtype} (placement "
            f"{sorted(set(placement.values()), key=str)}): give each evaluation shard more GPUs (--gpus-per-shard)"
        )
    return placement


def prompt_of(question: Question, template: str) -> str:
    """The question as the model's template asks it, the image placeholder first when there is an image."""
    text = IMAGE_PLACEHOLDER + "\n" + question.text if question.image is not None else question.text
    return render(template, [(text, None)], has_image=question.image is not None)


def blank_like(image: Image.Image) -> Image.Image:
    """An image of the processor's mean colour (zero after normalisation): the model sees that no picture is there."""
    return Image.new("RGB", image.size, tuple(int(255 * m) for m in CLIP_MEAN))


@torch.no_grad()
def answer_batch(
    model: CumoForConditionalGeneration,
    processor: CumoProcessor,
    questions: list[Question],
    max_new_tokens: int,
    blank_images: bool = False,
) -> list[str]:
    """Greedy answers to `questions`, as one left-padded batch."""
    template = model.config.conversation_template
    prompts = [prompt_of(question, template) for question in questions]
    images = [image for image in (question.load_image() for question in questions) if image is not None]
    if blank_images:
        images = [blank_like(image) for image in images]
    batch = processor(prompts, images or None).to(model.device)
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    tokenizer = processor.tokenizer
    generated_BT = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    new_tokens_BN = generated_BT[:, batch["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(new_tokens_BN, skip_special_tokens=True)
    # The plain template ends an answer with "\n", not with a token of its own (conversation.TEMPLATES).
    end = TEMPLATES[template].eos
    return [text.split(end)[0].strip() if not end.startswith("<") else text.strip() for text in texts]


def shard_questions(questions: list[Question], shard: int, shards: int) -> list[Question]:
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in 0..{shards - 1} for {shards} shards, got {shard}")
    return questions[shard::shards]


def read_predictions(path: Path) -> tuple[list[dict], int]:
    """The complete lines of a predictions file, and how many lines were cut off (by a kill mid-write)."""
    if not path.exists():
        return [], 0
    predictions, broken = [], 0
    for line in path.read_text().splitlines():
        try:
            predictions.append(json.loads(line))
        except json.JSONDecodeError:
            broken += 1
    return predictions, broken


def answer_id(model_id: str, question_id, text: str) -> str:
    """A stable id where LLaVA draws a random shortuuid, so reruns write identical files."""
    return hashlib.sha256(f"{model_id}\0{question_key(question_id)}\0{text}".encode()).hexdigest()[:22]


def _batches(questions: list[Question], size: int) -> Iterator[list[Question]]:
    for start in range(0, len(questions), size):
        yield questions[start : start + size]


def generate_shard(
    model: CumoForConditionalGeneration,
    processor: CumoProcessor,
    questions: list[Question],
    path: Path,
    *,
    model_id: str,
    max_new_tokens: int,
    batch_size: int = 1,
    blank_images: bool = False,
    description: str = "generate",
) -> dict:
    """Answer the `questions` not yet in `path`, appending each batch's answers; returns counts."""
    done, broken = read_predictions(path)
    if broken:
        logger.warning(
            f"{path}: {broken} cut-off line(s) from an interrupted run; their questions are redone"
        )
        path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in done))
    answered = {question_key(p["question_id"]) for p in done}
    todo = [q for q in questions if question_key(q.question_id) not in answered]
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "a") as file,
        tqdm(total=len(questions), initial=len(questions) - len(todo), desc=description) as bar,
    ):
        for batch in _batches(todo, batch_size):
            texts = answer_batch(model, processor, batch, max_new_tokens, blank_images)
            for question, text in zip(batch, texts, strict=True):
                record = {
                    "question_id": question.question_id,
                    "prompt": question.text,
                    "text": text,
                    "answer_id": answer_id(model_id, question.question_id, text),
                    "model_id": model_id,
                    "metadata": question.metadata,
                }
                file.write(json.dumps(record, ensure_ascii=False) + "\n")
            file.flush()
            bar.update(len(batch))
    return {"questions": len(questions), "resumed": len(questions) - len(todo), "cut_off_lines": broken}


def merge(shard_paths: list[Path], questions: list[Question]) -> list[dict]:
    """All shards' predictions in question order; every question answered exactly once, or an error naming them."""
    return pair_with_questions(
        [prediction for path in shard_paths for prediction in read_predictions(path)[0]],
        questions,
        source=f"predictions in {', '.join(map(str, shard_paths))}",
        fix="Rerun the evaluation: it answers only what is missing (delete the shard files to start over).",
    )
