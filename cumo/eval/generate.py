"""Greedy answers to a benchmark's questions: batched, left-padded, sharded, appended as they come, resumable.

The prompt is the model's own chat template (`config.conversation_template`, the one it was trained with:
`cumo.data.conversation`), the image placeholder in front of the question as LLaVA's `model_vqa_loader.py`
puts it; decoding is greedy (`do_sample=False`, LLaVA-1.5's `--temperature 0`). A batch is left-padded and
each row stops at its own end-of-sequence token; in fp32 a batch gives exactly the answers of batch size 1
(tests/test_eval_generate.py), so batching is only a speed setting. The paper's configs keep batch size 1.

Shards: shard i of n takes questions i, i+n, i+2n, ... in file order, so any shard count covers every
question once and a rerun with the same count redoes nothing. Each shard appends one line per answer to its
own file and flushes after every batch; a restart reads what is there and skips it. A file is read line by
line in bytes: a line that is not whole (cut by a kill, even inside a multi-byte character) is counted and
its question redone. `merge` then checks that every question was answered exactly once
(`pair_with_questions`, the check every benchmark's scorer makes too).

The shard folder records what made its answers (`MADE_BY`: the model's digest, dtype, split, answer length,
blank images, template and prompt format), because resuming skips every question already answered there:
answers of another model, or asked another way, would otherwise be scored under this run's name (issue 17).
`prepare_shards` (the run, which owns every shard) starts the folder over when the record differs and moves
the answers of another shard count into this count's files; `check_made_by` (each shard process) refuses a
folder made otherwise, naming the files to delete.
"""

import hashlib
import json
import logging
import re
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
    # CuMo's vocabulary has no image token (its images are spliced in at id -200), so it never generates one;
    # ours is a vocabulary entry whose head row was never a target (a released checkpoint's starts as the
    # mean row, convert.py): suppressed, the answers are over CuMo's vocabulary.
    generated_BT = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        suppress_tokens=[model.config.image_token_id],
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
    """The whole lines of a predictions file, and how many lines were not whole.

    Read in bytes, line by line: a line is whole when it ends in a newline and holds a JSON object with a
    `question_id`. A kill mid-write can cut a line anywhere, inside a multi-byte character too (MMBench-CN's
    answers), so nothing is decoded before it is known to be a whole line."""
    if not path.exists():
        return [], 0
    predictions, broken = [], 0
    with open(path, "rb") as file:
        for line in file:
            try:
                record = json.loads(line.decode("utf-8")) if line.endswith(b"\n") else None
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if isinstance(record, dict) and "question_id" in record:
                predictions.append(record)
            else:
                broken += 1
    return predictions, broken


def write_predictions(path: Path, predictions: list[dict]) -> None:
    """`predictions` as a predictions file, whole or not at all (written aside, then renamed)."""
    partial = path.with_name(path.name + ".part")
    partial.write_text(
        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions), encoding="utf-8"
    )
    partial.replace(path)


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
        write_predictions(path, done)
    answered = {question_key(p["question_id"]) for p in done}
    todo = [q for q in questions if question_key(q.question_id) not in answered]
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "a", encoding="utf-8") as file,
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
    """All shards' predictions in question order; every question answered exactly once, or an error naming them
    and the shard files to delete (their questions are then answered anew)."""
    by_file = {path: read_predictions(path)[0] for path in shard_paths}
    wanted = {question_key(question.question_id) for question in questions}
    holders: dict[str, list[Path]] = {}
    for path, predictions in by_file.items():
        for prediction in predictions:
            holders.setdefault(question_key(prediction["question_id"]), []).append(path)
    at_fault = sorted(
        {path for key, paths in holders.items() if len(paths) > 1 or key not in wanted for path in paths}
    )
    fix = (
        f"Delete the shard file(s) that hold them, `rm {' '.join(map(str, at_fault))}`, and run the same "
        "command again: it answers their questions anew."
        if at_fault
        else "Run the same command again: it answers only what is missing."
    )
    return pair_with_questions(
        [prediction for predictions in by_file.values() for prediction in predictions],
        questions,
        source=f"predictions in {', '.join(map(str, shard_paths))}",
        fix=fix,
    )


# -- The shard folder ---------------------------------------------------------------------------------------

MADE_BY = "made_by.json"
# Bump when `prompt_of` or `answer_batch` changes what is asked or how an answer is cut: answers made the old
# way are then not resumed.
PROMPT_FORMAT = 1
SHARD_FILE = re.compile(r"(\d+)-of-(\d+)\.jsonl")


def shard_path(folder: Path, shard: int, shards: int) -> Path:
    return Path(folder) / f"{shard}-of-{shards}.jsonl"


def shard_files(folder: Path) -> dict[Path, tuple[int, int]]:
    """The shard files in `folder`, each with its (shard, shards)."""
    found = {}
    for path in sorted(Path(folder).glob("*-of-*.jsonl")):
        match = SHARD_FILE.fullmatch(path.name)
        if match:
            found[path] = (int(match[1]), int(match[2]))
    return found


def _made_by_differences(folder: Path, made_by: dict) -> dict[str, tuple] | None:
    """{field: (recorded, now)} where the folder's record differs from `made_by`; None when it has none."""
    record = Path(folder) / MADE_BY
    if not record.is_file():
        return None
    try:
        recorded = json.loads(record.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        recorded = {}
    return {
        name: (recorded.get(name), value) for name, value in made_by.items() if recorded.get(name) != value
    }


def _describe_differences(differences: dict[str, tuple]) -> str:
    return ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in differences.items())


def check_made_by(folder: Path, made_by: dict) -> None:
    """Refuse a shard folder whose answers were made otherwise than `made_by` says (a shard process, which
    must not delete its siblings' files); record `made_by` in a folder that has no answers yet."""
    folder = Path(folder)
    differences = _made_by_differences(folder, made_by)
    files = list(shard_files(folder))
    if differences is None and not files:
        folder.mkdir(parents=True, exist_ok=True)
        _write_made_by(folder, made_by)
        return
    if differences is None or differences:
        what = (
            f"were made otherwise ({_describe_differences(differences)})"
            if differences
            else f"have no {MADE_BY} saying what made them (an older cumo)"
        )
        raise ValueError(
            f"the answers in {folder} {what}; they are not resumed. Run without --shard (the run starts the "
            f"folder over), or delete them: `rm -r {folder}`"
        )


def prepare_shards(folder: Path, made_by: dict, questions: list[Question], shards: int) -> dict:
    """Make `folder` hold only answers that `made_by` made, in the files of `shards` shards.

    Answers made otherwise are deleted, with a warning saying what changed (they belong to another model or
    another way of asking; resuming them would score them under this run's name). A folder of answers with no
    record (an older cumo) is refused, naming it: whether they are this model's is unknown. Answers in the
    files of another shard count are moved into this count's files, so none is made twice. Returns what was
    done: {"started_over": {field: [recorded, now]}, "moved_answers": n, "from_files": [names]}."""
    folder = Path(folder)
    differences = _made_by_differences(folder, made_by)
    files = shard_files(folder)
    done = {"started_over": {}, "moved_answers": 0, "from_files": []}
    if differences is None and files:
        raise ValueError(
            f"the answers in {folder} have no {MADE_BY} saying which model and settings made them (an older "
            f"cumo); they are not resumed blindly. Delete them, `rm -r {folder}`, and run again"
        )
    if differences:
        logger.warning(
            "%s: answers made otherwise (%s); deleting %d shard file(s) and answering every question anew",
            folder,
            _describe_differences(differences),
            len(files),
        )
        for path in files:
            path.unlink()
        done["started_over"] = {name: list(pair) for name, pair in differences.items()}
        files = {}
    folder.mkdir(parents=True, exist_ok=True)
    others = [path for path, (_, count) in files.items() if count != shards]
    if others:
        done["moved_answers"] = _move_answers(folder, others, questions, shards)
        done["from_files"] = [path.name for path in others]
    _write_made_by(folder, made_by)
    return done


def _move_answers(folder: Path, others: list[Path], questions: list[Question], shards: int) -> int:
    """Move the answers in `others` (another shard count's files) into the files of `shards` shards, each to
    the shard its question belongs to (`shard_questions`); the old files are deleted once the new are whole.
    An answer to a question not in the benchmark stops it, naming the file."""
    index = {question_key(question.question_id): i for i, question in enumerate(questions)}
    moved = [[] for _ in range(shards)]
    for path in others:
        for prediction in read_predictions(path)[0]:
            key = question_key(prediction["question_id"])
            if key not in index:
                raise ValueError(
                    f"{path}: an answer to question {key}, which is not in the benchmark; these answers are for "
                    f"other questions. Delete the file, `rm {path}`, and run again"
                )
            moved[index[key] % shards].append(prediction)
    count = 0
    for shard, predictions in enumerate(moved):
        path = shard_path(folder, shard, shards)
        kept = read_predictions(path)[0]
        have = {question_key(p["question_id"]) for p in kept}
        new = []
        for prediction in predictions:
            key = question_key(prediction["question_id"])
            if key not in have:  # the same answer in two old files is moved once
                have.add(key)
                new.append(prediction)
        if new:
            write_predictions(path, kept + new)
            count += len(new)
    for path in others:
        path.unlink()
    logger.warning(
        "%s: %d answer(s) of %s moved into the files of %d shard(s)",
        folder,
        count,
        ", ".join(path.name for path in others),
        shards,
    )
    return count


def _write_made_by(folder: Path, made_by: dict) -> None:
    partial = folder / (MADE_BY + ".part")
    partial.write_text(json.dumps(made_by, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    partial.replace(folder / MADE_BY)
