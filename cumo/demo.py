"""`cumo demo`: the longest real path there is, on the tiny preset, in seconds on a CPU.

Builds the tiny dense CuMo (random weights, the shapes-world tokenizer), co-upcycles it into the MoE model
and checks the invariant (same logits), then answers a question about a generated image with both, batched
and greedy, and saves the MoE model with its processor. The model is untrained, so its answer is noise:
this shows the pipes, not the learning (that is the training stages' job).
"""

import json
from pathlib import Path

import torch

from cumo.data.conversation import render
from cumo.data.synthetic import build_tokenizer, render_shape
from cumo.model.modeling_cumo import CumoForConditionalGeneration
from cumo.model.presets import build_config
from cumo.model.processing_cumo import CumoProcessor
from cumo.model.upcycle import upcycle

QUESTIONS = [
    ("circle", "red", "What color is the shape?"),
    ("triangle", "blue", "What shape is in the image?"),
]


def run_demo(out: str | Path, seed: int = 0, max_new_tokens: int = 8) -> dict:
    """Build, upcycle, check, answer, save; returns (and writes to `out`/demo.json) what it did."""
    out = Path(out)
    torch.manual_seed(seed)
    config = build_config("tiny", moe=False)
    dense = CumoForConditionalGeneration(config).eval()
    processor = CumoProcessor(build_tokenizer(), config)
    moe = upcycle(dense).eval()

    prompts = [
        render(config.conversation_template, [(f"<image>\n{q}", None)], has_image=True) for *_, q in QUESTIONS
    ]
    images = [render_shape(shape, color, size=96, seed=i) for i, (shape, color, _) in enumerate(QUESTIONS)]
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
        "parameters": {
            "dense": sum(p.numel() for p in dense.parameters()),
            "moe": sum(p.numel() for p in moe.parameters()),
        },
        "upcycle_max_abs_logit_diff": (dense_logits - moe_logits).abs().max().item(),
        "questions": [q for *_, q in QUESTIONS],
        "answers": answers,
    }
    out.mkdir(parents=True, exist_ok=True)
    moe.save_pretrained(out / "model")
    processor.save_pretrained(out / "model")
    (out / "demo.json").write_text(json.dumps(report, indent=2))
    return report
