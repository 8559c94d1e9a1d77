"""`cumo demo`: the longest real path there is, on the tiny preset, in seconds on a CPU.

Writes the shapes world (three corpora, their tokenizer, the 13 benchmarks' files), validates its sft
corpus into the memory-mapped mixture training reads, builds the tiny dense CuMo, co-upcycles it into the
MoE model and checks the invariant (same logits), answers the first sft questions about their images with
both models (batched, greedy) and saves the MoE model with its processor. The model is untrained, so its
answers are noise: this shows the pipes, not the learning (that is the training stages' job).
"""

import json
from pathlib import Path

import torch
from PIL import Image

from cumo.data.conversation import render, turns_from_llava
from cumo.data.mixture import build_mixture
from cumo.data.mixture_store import open_mixture
from cumo.data.synthetic import build_tokenizer, write_world
from cumo.data.synthetic_benchmarks import write_benchmarks
from cumo.model.modeling_cumo import CumoForConditionalGeneration
from cumo.model.presets import build_config
from cumo.model.processing_cumo import CumoProcessor
from cumo.model.upcycle import upcycle


def run_demo(out: str | Path, seed: int = 0, questions: int = 2, max_new_tokens: int = 8) -> dict:
    """World, mixture, build, upcycle, check, answer, save; returns (and writes to `out`/demo.json) what it did."""
    out = Path(out)
    data_root = out / "data"
    world = write_world(data_root, seed=seed)
    benchmarks = write_benchmarks(data_root, seed=seed)
    stats = build_mixture([world["sft"]], out / "sft.arrow", out / "sft.stats.json", data_root)
    mixture = open_mixture(out / "sft.arrow")

    torch.manual_seed(seed)
    config = build_config("tiny", moe=False)
    dense = CumoForConditionalGeneration(config).eval()
    processor = CumoProcessor(build_tokenizer(), config)
    moe = upcycle(dense).eval()

    entries = [entry for entry in mixture.select(range(20)) if entry["image"]][:questions]
    asked = [turns_from_llava(entry["conversations"])[0][0] for entry in entries]
    prompts = [render(config.conversation_template, [(question, None)], has_image=True) for question in asked]
    images = [Image.open(data_root / entry["image"]) for entry in entries]
    batch = processor(prompts, images)
    with torch.no_grad():
        dense_logits = dense(**batch).logits
        moe_logits = moe(**batch).logits
        answers = {}
        for name, model in (("dense", dense), ("moe", moe)):
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            answers[name] = processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    report = {
        "preset": "tiny",
        "world": {stage: str(path) for stage, path in world.items()},
        "benchmarks": sorted(benchmarks),
        "sft_mixture": stats["summary"],
        "parameters": {
            "dense": sum(p.numel() for p in dense.parameters()),
            "moe": sum(p.numel() for p in moe.parameters()),
        },
        "upcycle_max_abs_logit_diff": (dense_logits - moe_logits).abs().max().item(),
        "questions": asked,
        "expected": [turns_from_llava(entry["conversations"])[0][1] for entry in entries],
        "answers": answers,
    }
    moe.save_pretrained(out / "model")
    processor.save_pretrained(out / "model")
    (out / "demo.json").write_text(json.dumps(report, indent=2))
    return report
