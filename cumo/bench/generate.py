"""`python -m cumo.bench generate`: evaluation's greedy generation at batch size 1 and larger, answers checked equal."""

import statistics
import tempfile
from pathlib import Path

import torch

from cumo.bench.timing import DTYPES, machine, time_interleaved

GENERATE_SPEEDUP_TARGET = 3.0  # batch 8 over batch 1, samples/s, on this 2-core CPU (issue 5)


def bench_generate(
    model_dir: Path | None = None,
    questions: int = 48,
    batch_sizes: tuple[int, ...] = (1, 8),
    max_new_tokens: int = 16,
    repeats: int = 1,
    dtype: str = "float32",
    device: str = "cpu",
) -> dict:
    """Samples/s of `cumo eval`'s generation at each batch size on the same questions. In float32 the answers
    at every batch size must be identical (what tests/test_generate.py holds); in bfloat16 a padded batch
    rounds differently from batch 1, so the share of identical answers is reported instead."""
    from cumo.data.synthetic import build_tokenizer
    from cumo.data.synthetic_benchmarks import write_benchmarks
    from cumo.eval.benchmarks import get
    from cumo.eval.generate import answer_batch, load_model
    from cumo.model.modeling_cumo import CumoForConditionalGeneration
    from cumo.model.presets import build_config
    from cumo.model.processing_cumo import CumoProcessor

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: torch sees no CUDA device here; use --device cpu")
    with tempfile.TemporaryDirectory(prefix="cumo-bench-generate-") as work:
        work = Path(work)
        write_benchmarks(work, per_benchmark=questions)
        gqa = get("gqa")
        asked = gqa.questions(work / "eval" / gqa.folder)[:questions]
        model_name = "random tiny CuMo" if model_dir is None else str(model_dir)
        if model_dir is None:
            torch.manual_seed(0)
            config = build_config("tiny", moe=True)
            model_dir = work / "tiny"
            CumoForConditionalGeneration(config).save_pretrained(model_dir)
            CumoProcessor(build_tokenizer(), config).save_pretrained(model_dir)
        model, processor = load_model(model_dir, device=device, dtype=DTYPES[dtype])
        answers = {}

        def answer_all(size):
            batches = [asked[i : i + size] for i in range(0, len(asked), size)]
            answers[size] = [a for b in batches for a in answer_batch(model, processor, b, max_new_tokens)]

        steps = {size: (lambda size=size: answer_all(size)) for size in batch_sizes}
        times = time_interleaved(steps, repeats=repeats, warmup=0, device=device)
    baseline = answers[batch_sizes[0]]
    identical = {
        size: sum(a == b for a, b in zip(answers[size], baseline, strict=True)) / len(baseline)
        for size in batch_sizes
    }
    disagree = [size for size, share in identical.items() if share < 1]
    if disagree and dtype == "float32":
        raise ValueError(f"answers at batch size(s) {disagree} differ from batch size {batch_sizes[0]}'s")
    per_second = {size: len(asked) / (statistics.median(ms) / 1000) for size, ms in times.items()}
    return {
        "machine": machine(device),
        "model": model_name,
        "dtype": dtype,
        "questions": len(asked),
        "max_new_tokens": max_new_tokens,
        "repeats": repeats,
        "samples_per_s": {str(size): value for size, value in per_second.items()},
        "speedup": per_second[batch_sizes[-1]] / per_second[batch_sizes[0]],
        "identical_answers": {str(size): share for size, share in identical.items()},
    }


def print_generate(figures: dict) -> None:
    host = figures["machine"]
    print(
        f"generate: {figures['questions']} GQA questions of the shapes world, {figures['model']}, greedy, "
        f"at most {figures['max_new_tokens']} new tokens, {figures['dtype']}; {host['device']}, "
        f"{host['torch_threads']} threads"
    )
    for size, value in figures["samples_per_s"].items():
        same = figures["identical_answers"][size]
        print(
            f"  batch {size:>3}: {value:8.2f} samples/s, {same:.0%} of answers identical to the first batch size's"
        )
    sizes = list(figures["samples_per_s"])
    met = "met" if figures["speedup"] >= GENERATE_SPEEDUP_TARGET else "MISSED"
    print(
        f"  batch {sizes[-1]} / batch {sizes[0]}: {figures['speedup']:.2f}x  target >= {GENERATE_SPEEDUP_TARGET}: "
        f"{met}"
    )


def generate(args) -> dict:
    figures = bench_generate(
        args.model,
        questions=args.questions,
        batch_sizes=tuple(args.batch_sizes),
        repeats=args.repeats,
        dtype=args.dtype,
        device=args.device,
    )
    print_generate(figures)
    return figures
