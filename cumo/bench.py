"""`python -m cumo.bench <name>`: timing benchmarks, one plain function each, printed as a small table.

moe: forward + backward of the sorted `SparseMoeBlock` against CuMo's per-image, per-expert loop and
against the ideal (one dense MLP over the k copies of every token).

mixture: build and validate a synthetic sft mixture of CuMo's size into its Arrow form, in a fresh process;
then open it and read random rows in another, as a training rank would.

train-step: one sft optimiser step (forward with the aux losses, backward, AdamW) of the tiny model and of a
mid-size one (a CLIP-L-sized MoE tower, a small LLM) at batch 1 and 4: samples/s, tokens/s, achieved TFLOP/s
(MFU on a GPU), next to the same step of the dense model.

generate: evaluation's greedy answers to GQA questions of the shapes world at batch size 1 and at larger
batches, the answers checked identical in the same run (a trained model with --model, else a random tiny one).
"""

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from cumo.model.moe import MLP, SparseMoeBlock, reference_forward

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# What the sorted block is for: well ahead of CuMo's loop, and close to the dense work it cannot avoid.
LOOP_SPEEDUP_TARGET = 2.0  # loop / sorted, at least
IDEAL_OVERHEAD_TARGET = 1.15  # sorted / ideal, at most


def machine(device: torch.device) -> dict:
    """What the figures were measured on."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.exists():
            for line in cpuinfo.read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    return {"device": name, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def time_interleaved(steps: dict, repeats: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Milliseconds of each step per repeat. The steps take turns within a repeat, so noise hits all alike,
    and the order rotates from one repeat to the next, so none always follows the same one."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    names = list(steps)
    times = {name: [] for name in names}
    for repeat in range(warmup + repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            steps[name]()
            sync()
            if repeat >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def bench_moe(
    images: int = 4,
    tokens: int = 577,
    dim: int = 1024,
    hidden: int = 4096,
    num_experts: int = 4,
    top_k: int = 2,
    repeats: int = 10,
    warmup: int = 2,
    dtype: str = "float32",
    device: str = "cpu",
) -> dict:
    """Forward + backward of a top-k MoE MLP at CLIP ViT-L's shape (4 images of 577 tokens, 1024 -> 4096 ->
    1024, top-2 of 4 experts): the sorted `SparseMoeBlock`, CuMo's loop (`reference_forward`) on the same
    block, and the ideal, one dense MLP over top_k times the tokens. Targets: loop/sorted >= 2,
    sorted/ideal <= 1.15."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: torch sees no CUDA device here; use --device cpu")
    torch.manual_seed(0)
    block = SparseMoeBlock(dim, hidden, dim, num_experts, top_k, "quick_gelu").to(device, DTYPES[dtype])
    dense = MLP(dim, hidden, dim, "quick_gelu").to(device, DTYPES[dtype])
    # Inputs need their gradient too: inside CLIP the block's input comes from the layer below.
    states_RND = torch.randn(images, tokens, dim, device=device, dtype=DTYPES[dtype], requires_grad=True)
    states_TD = torch.randn(
        images * tokens * top_k, dim, device=device, dtype=DTYPES[dtype], requires_grad=True
    )
    grad_RND = torch.randn_like(states_RND)

    def step(module, inputs, forward):
        def run():
            module.zero_grad(set_to_none=True)
            inputs.grad = None
            output = forward(inputs)
            output.backward(grad_RND.view(output.shape))

        return run

    steps = {
        "loop": step(block, states_RND, lambda x: reference_forward(block, x)),
        "sorted": step(block, states_RND, lambda x: block(x)[0]),
        "ideal": step(dense, states_TD, lambda x: dense(x).view(-1, top_k, dim).sum(dim=1)),
    }
    times = time_interleaved(steps, repeats, warmup, device)
    median_ms = {name: statistics.median(samples) for name, samples in times.items()}
    return {
        "benchmark": "moe",
        "shape": dict(
            images=images, tokens=tokens, dim=dim, hidden=hidden, num_experts=num_experts, top_k=top_k
        ),
        "dtype": dtype,
        "repeats": repeats,
        "machine": machine(device),
        "median_ms": median_ms,
        "times_ms": times,
        "loop/sorted": median_ms["loop"] / median_ms["sorted"],
        "sorted/ideal": median_ms["sorted"] / median_ms["ideal"],
    }


def print_moe(figures: dict) -> None:
    shape, host = figures["shape"], figures["machine"]
    print(
        f"moe forward+backward: {shape['images']} x {shape['tokens']} tokens, {shape['dim']} -> "
        f"{shape['hidden']} -> {shape['dim']}, top-{shape['top_k']} of {shape['num_experts']}, "
        f"{figures['dtype']}, median of {figures['repeats']}"
    )
    print(f"{host['device']}, {host['torch_threads']} torch threads, torch {host['torch']}")
    for name, ms in figures["median_ms"].items():
        print(f"  {name:<8}{ms:>10.1f} ms")
    for ratio, target, met in (
        ("loop/sorted", f">= {LOOP_SPEEDUP_TARGET}", figures["loop/sorted"] >= LOOP_SPEEDUP_TARGET),
        ("sorted/ideal", f"<= {IDEAL_OVERHEAD_TARGET}", figures["sorted/ideal"] <= IDEAL_OVERHEAD_TARGET),
    ):
        print(f"  {ratio:<13}{figures[ratio]:>6.2f}x  target {target}: {'met' if met else 'MISSED'}")


def moe(args) -> dict:
    figures = bench_moe(
        images=args.images, tokens=args.tokens, repeats=args.repeats, dtype=args.dtype, device=args.device
    )
    print_moe(figures)
    return figures


# The sft mixture CuMo published: 2.71 GB of JSON for its 1,649K entries
# (https://huggingface.co/datasets/shi-labs/CuMo_dataset/tree/main, cumo_vit_1649K.json).
CUMO_SFT_BYTES_PER_ENTRY = 2.71e9 / 1_649_000
# Conversation shapes: (question/answer pairs, characters per question, characters per answer), each drawn
# uniformly, sized so that the synthetic entries average about CUMO_SFT_BYTES_PER_ENTRY of JSON.
CONVERSATION_SHAPES = {
    "vqa": ((1, 10), (30, 90), (2, 24)),  # many short answers: GQA, OCR-VQA, VG, DocVQA, ChartQA, ...
    "chat": ((1, 4), (40, 160), (120, 620)),  # LLaVA-Instruct, ALLaVA-Instruct
    "caption": ((1, 1), (30, 90), (400, 1500)),  # ShareGPT4V, LAION-GPT4V, SynthDog
    "text": ((1, 3), (80, 800), (300, 2000)),  # text-only: ShareGPT, Evol-Instruct, LIMA
}
# Image folders of the data tree (DESIGN.md section 1), each with a share of the entries and a conversation
# shape; None is text-only. 80% of the entries have an image. The shares are illustrative: the paper's
# per-source table was not found.
MIXTURE_SOURCES = {
    "coco": (0.22, "chat"),
    "gqa": (0.045, "vqa"),
    "ocr_vqa": (0.05, "vqa"),
    "vg": (0.05, "vqa"),
    "textvqa": (0.015, "vqa"),
    "sam": (0.01, "caption"),
    "share_textvqa": (0.001, "caption"),
    "web-celebrity": (0.001, "caption"),
    "web-landmark": (0.001, "caption"),
    "wikiart": (0.001, "caption"),
    "gpt4v-dataset": (0.007, "caption"),
    "ALLaVA": (0.328, "chat"),
    "docvqa": (0.006, "vqa"),
    "chartqa": (0.011, "vqa"),
    "dvqa": (0.012, "vqa"),
    "ai2d": (0.006, "vqa"),
    "infovqa": (0.006, "vqa"),
    "syndog-en": (0.03, "caption"),
    None: (0.2, "text"),
}
# Entries share images: LLaVA-Instruct-150K has 157,712 entries over 81,479 images
# (https://huggingface.co/datasets/BAAI/DataOptim), about two entries an image.
ENTRIES_PER_IMAGE = 2
# LLaVA-665K's 355 OCR-VQA images that cannot be downloaded, of its 80,000 OCR-VQA entries: left out of the
# fake tree at that rate, so the build meets them as it meets the real ones.
MISSING_OCR_VQA_SHARE = 355 / 80_000
READER_ROWS = 10_000
BUILD_SECONDS_TARGET = 180
BUILD_RSS_TARGET_MB = 3000
READER_RSS_TARGET_MB = 300

# The build and the reader run in fresh interpreters that import only the mixture code, so their memory is
# theirs and not this benchmark's. Each prints its figures as one JSON line.
BUILD_PROCESS = """
import json, resource, sys, time
from pathlib import Path
from cumo.data.mixture import build_mixture
def peak_mb(who): return resource.getrusage(who).ru_maxrss * 1024 / 1e6  # ru_maxrss is in KiB
json_path, data_root, arrow, stats = map(Path, sys.argv[1:])
after_import_mb = peak_mb(resource.RUSAGE_SELF)
start = time.perf_counter()
figures = build_mixture([json_path], arrow, stats, data_root)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "after_import_mb": after_import_mb, "peak_mb": peak_mb(resource.RUSAGE_SELF),
                  "children_peak_mb": peak_mb(resource.RUSAGE_CHILDREN), "stats": figures}))
"""
READER_PROCESS = """
import json, random, sys
def memory_mb():  # resident memory: all of it, private (anonymous), and file pages mapped in (shared)
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {key: int(status[key].split()[0]) * 1024 / 1e6 for key in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}
from cumo.data.mixture_store import open_mixture
after_import = memory_mb()
dataset = open_mixture(sys.argv[1])
rows = random.Random(0).sample(range(len(dataset)), min(int(sys.argv[2]), len(dataset)))
for row in rows:
    dataset[row]
print(json.dumps({"rows": len(dataset), "read": len(rows), "after_import_mb": after_import,
                  "after_reads_mb": memory_mb()}))
"""


def synthesize_mixture(json_path: Path, data_root: Path, entries: int, seed: int = 0) -> dict:
    """Write a LLaVA-format mixture of `entries` entries shaped like CuMo's sft one, and a data tree of
    empty image files for it (some OCR-VQA images left out, like the real ones that cannot be downloaded)."""
    rng = random.Random(seed)
    vocabulary = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))) for _ in range(5000)
    ]
    corpus = " ".join(rng.choices(vocabulary, k=2_000_000))  # turns are slices of it: fast, and words split

    def text(shortest: int, longest: int) -> str:
        length = rng.randint(shortest, longest)
        start = rng.randrange(len(corpus) - length)
        return corpus[start : start + length]

    sources = list(MIXTURE_SOURCES)
    images = {
        source: max(1, round(entries * share / ENTRIES_PER_IMAGE))
        for source, (share, _) in MIXTURE_SOURCES.items()
        if source is not None
    }
    with open(json_path, "w", encoding="utf-8") as file:
        file.write("[\n")
        drawn = rng.choices(sources, [share for share, _ in MIXTURE_SOURCES.values()], k=entries)
        for index, source in enumerate(drawn):
            pairs, question, answer = CONVERSATION_SHAPES[MIXTURE_SOURCES[source][1]]
            turns = []
            for _ in range(rng.randint(*pairs)):
                turns += [
                    {"from": "human", "value": text(*question)},
                    {"from": "gpt", "value": text(*answer)},
                ]
            if source is None:
                entry = {"id": f"text-{index}", "conversations": turns}
            else:
                number = rng.randrange(images[source])  # the id is the image's, as in LLaVA's data
                turns[0]["value"] = "<image>\n" + turns[0]["value"]
                entry = {
                    "id": f"{number:012d}",
                    "image": f"{source}/images/{number:012d}.jpg",
                    "conversations": turns,
                }
            file.write((",\n" if index else "") + json.dumps(entry))
        file.write("\n]\n")
    written = 0
    for source, count in images.items():
        folder = data_root / source / "images"
        folder.mkdir(parents=True)
        for number in range(count):
            if source != "ocr_vqa" or rng.random() >= MISSING_OCR_VQA_SHARE:
                os.close(os.open(folder / f"{number:012d}.jpg", os.O_CREAT | os.O_WRONLY, 0o644))
                written += 1
    return {"json_bytes": json_path.stat().st_size, "image_files": written}


def run_process(code: str, *args) -> dict:
    """Run `code` in a fresh interpreter; the JSON it prints last."""
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"benchmark process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def bench_mixture(entries: int = 1_650_000, seed: int = 0) -> dict:
    """Build (check every entry, write Arrow, write stats) a synthetic mixture of `entries` entries shaped like
    CuMo's sft one in a fresh process: time and peak memory. Then open the Arrow form in another fresh
    process and read random rows: its memory. The images are empty files in a fake data tree: their existence
    is checked as for real data, their decoding (--verify-images) is not measured. Work files (about 5.3 GB
    at full size) go under $TMPDIR. Targets at 1.65M entries: build under 3 minutes and 3 GB, reader under
    300 MB."""
    with tempfile.TemporaryDirectory(prefix="cumo-bench-mixture-") as work:
        work = Path(work)
        json_path, data_root, arrow = work / "sft.json", work / "data", work / "sft.arrow"
        start = time.perf_counter()
        synthesized = synthesize_mixture(json_path, data_root, entries, seed)
        synthesis_seconds = time.perf_counter() - start
        build = run_process(BUILD_PROCESS, json_path, data_root, arrow, work / "sft.stats.json")
        reader = run_process(READER_PROCESS, arrow, READER_ROWS)
        arrow_bytes = arrow.stat().st_size
    stats = build.pop("stats")
    return {
        "benchmark": "mixture",
        "entries": entries,
        "machine": machine(torch.device("cpu")) | {"cpus": len(os.sched_getaffinity(0))},
        "synthesis": synthesized | {"seconds": synthesis_seconds},
        "arrow_bytes": arrow_bytes,
        "build": build | {"entries": stats["entries"], "skipped": stats["skipped"]["by_reason"]},
        "reader": reader,
    }


def print_mixture(figures: dict) -> None:
    synthesized, build, reader = figures["synthesis"], figures["build"], figures["reader"]
    gigabytes = synthesized["json_bytes"] / 1e9
    print(
        f"mixture: {figures['entries']:,} synthetic entries, {gigabytes:.2f} GB of JSON "
        f"({synthesized['json_bytes'] / figures['entries']:.0f} B/entry; CuMo's sft file: "
        f"{CUMO_SFT_BYTES_PER_ENTRY:.0f}), written in {synthesized['seconds']:.0f} s (not timed below)"
    )
    print(
        f"images: {synthesized['image_files']:,} empty files in a fake data tree; existence checked as for real "
        "data, decoding (--verify-images) not measured"
    )
    host = figures["machine"]
    print(f"{host['device']}, {host['cpus']} CPUs")
    entries, skipped = build["entries"], ", ".join(f"{r}: {n}" for r, n in build["skipped"].items()) or "none"
    print(
        f"  build    {build['seconds']:>7.1f} s  kept {entries['kept']:,} of {entries['seen']:,} (dropped: "
        f"{skipped}), {entries['shared_ids']:,} shared ids, Arrow {figures['arrow_bytes'] / 1e9:.2f} GB"
    )
    print(
        f"  build    {build['peak_mb']:>7.0f} MB peak RSS ({build['after_import_mb']:.0f} MB of it imports), "
        f"children {build['children_peak_mb']:.0f} MB"
    )
    after_import, after = reader["after_import_mb"], reader["after_reads_mb"]
    print(
        f"  reader   {after['RssAnon']:>7.0f} MB private RSS after {reader['read']:,} random rows "
        f"({after_import['RssAnon']:.0f} MB of it imports); all RSS {after['VmRSS']:.0f} MB, of which "
        f"{after['RssFile']:.0f} MB file pages: the mapped Arrow file and libraries, page cache shared by every "
        "reader on the node"
    )
    for what, value, target, unit in (
        ("build time", build["seconds"], BUILD_SECONDS_TARGET, "s"),
        ("build peak RSS", build["peak_mb"], BUILD_RSS_TARGET_MB, "MB"),
        ("reader private RSS", after["RssAnon"], READER_RSS_TARGET_MB, "MB"),
        ("  over its imports", after["RssAnon"] - after_import["RssAnon"], READER_RSS_TARGET_MB, "MB"),
    ):
        print(
            f"  {what:<19}{value:>7.0f} {unit:<3} target < {target} {unit}: {'met' if value < target else 'MISSED'}"
        )


def mixture(args) -> dict:
    figures = bench_mixture(entries=args.entries, seed=args.seed)
    print_mixture(figures)
    return figures


# The mid-size model: CuMo's CLIP-L tower with its MoE MLPs (presets.CLIP_VIT_L_14_336) in front of a small
# LLM, so the vision side costs what it costs in the paper. On a CPU the image is smaller (--image-size).
MID_TEXT = dict(
    vocab_size=32000,
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=4096,
    sliding_window=None,
)
# Dense bf16 peak of the GPUs the paper's runs use, for MFU (NVIDIA's data sheets; H200 = H100 SXM compute).
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def train_step_config(model: str, moe: bool, image_size: int | None):
    from transformers import CLIPVisionConfig, MistralConfig

    from cumo.model.configuration_cumo import CumoConfig
    from cumo.model.presets import CLIP_VIT_L_14_336, TINY_TEXT, TINY_VISION, build_config

    if model == "tiny":
        vision = dict(TINY_VISION)
        text = dict(TINY_TEXT)
    elif model == "mid":
        vision = dict(CLIP_VIT_L_14_336)
        text = dict(TINY_TEXT, **MID_TEXT)
    else:
        raise ValueError(f"train-step models are tiny and mid, got {model!r}")
    if image_size:
        vision["image_size"] = image_size
    config = build_config("tiny", moe=moe)  # the tiny preset's image token and template
    return CumoConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=MistralConfig(**text),
        projector_type=config.projector_type,
        clip_moe=moe,
        image_token_id=config.image_token_id,
    )


def activated_parameters(model) -> tuple[int, int]:
    """(vision, LLM + connector) parameters one token goes through: a top-k-of-E expert block counts k/E."""
    from cumo.model.moe import SparseMoeBlock

    expert_share = {}
    for module in model.modules():
        if isinstance(module, SparseMoeBlock):
            for parameter in module.experts.parameters():
                expert_share[id(parameter)] = module.top_k / module.num_experts
    vision = text = 0
    for name, parameter in model.named_parameters():
        count = parameter.numel() * expert_share.get(id(parameter), 1.0)
        if ".vision_tower." in f".{name}":
            vision += count
        else:
            text += count
    return int(vision), int(text)


def time_train_steps(config, batch_sizes, text_tokens, repeats, dtype, device) -> tuple[dict, dict]:
    """Per batch size: milliseconds of one optimiser step, and the step's FLOPs (6 per activated parameter
    and token, forward + backward: Kaplan et al. 2020, section 2.1)."""
    from cumo.model.modeling_cumo import IGNORE_INDEX, CumoForConditionalGeneration

    torch.manual_seed(0)
    model = CumoForConditionalGeneration(config).to(device, DTYPES[dtype]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    vision_params, text_params = activated_parameters(model)
    grid = config.vision_config.image_size // config.vision_config.patch_size
    vision_tokens = sum(s * s for s in config.scales) * (grid * grid + 1)  # S²: scale x scale crops each
    length = config.num_image_tokens + text_tokens
    side = config.vision_config.image_size

    def step(batch):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    steps, flops = {}, {}
    for batch_size in batch_sizes:
        generator = torch.Generator().manual_seed(batch_size)
        input_ids_BT = torch.randint(
            10, config.text_config.vocab_size, (batch_size, length), generator=generator
        )
        input_ids_BT[:, 1 : 1 + config.num_image_tokens] = config.image_token_id
        batch = {
            "input_ids": input_ids_BT.to(device),
            "attention_mask": torch.ones_like(input_ids_BT).to(device),
            "labels": input_ids_BT.masked_fill(input_ids_BT == config.image_token_id, IGNORE_INDEX).to(
                device
            ),
            "pixel_values": torch.randn(batch_size, 3, side, side, generator=generator).to(
                device, DTYPES[dtype]
            ),
        }
        steps[batch_size] = partial(step, batch)
        flops[batch_size] = 6 * batch_size * (vision_params * vision_tokens + text_params * length)
    times = time_interleaved(steps, repeats=repeats, warmup=1, device=device)
    shape = {
        "image_size": side,
        "llm_tokens_per_sample": length,
        "vision_tokens_per_sample": vision_tokens,
        "activated_parameters": {"vision": vision_params, "llm_and_connector": text_params},
    }
    return {b: statistics.median(ms) for b, ms in times.items()}, flops, shape


def bench_train_step(
    models: tuple[str, ...] = ("tiny", "mid"),
    batch_sizes: tuple[int, ...] = (1, 4),
    text_tokens: int = 64,
    image_size: int | None = None,
    repeats: int = 2,
    dtype: str = "float32",
    device: str = "cpu",
) -> dict:
    """Samples/s and tokens/s of one sft step (MoE) and of the dense step, per model and batch size."""
    device = torch.device(device)
    host = machine(device)
    peak = next((flops for gpu, flops in PEAK_BF16_FLOPS.items() if gpu in host["device"]), None)
    figures = {"machine": host, "dtype": dtype, "text_tokens": text_tokens, "models": {}}
    for name in models:
        # One model at a time, not interleaved: the mid-size MoE and dense models with their AdamW states do
        # not fit together in a 24 GB machine (tried: killed for memory).
        for moe in (True, False):
            config = train_step_config(name, moe, image_size if name == "mid" else None)
            ms, flops, shape = time_train_steps(config, batch_sizes, text_tokens, repeats, dtype, device)
            rows = {}
            for batch_size in batch_sizes:
                seconds = ms[batch_size] / 1000
                rows[str(batch_size)] = {
                    "ms": ms[batch_size],
                    "samples_per_s": batch_size / seconds,
                    "tokens_per_s": batch_size * shape["llm_tokens_per_sample"] / seconds,
                    "tflops": flops[batch_size] / seconds / 1e12,
                }
                if device.type == "cuda" and peak and dtype == "bfloat16":
                    rows[str(batch_size)]["mfu"] = flops[batch_size] / seconds / peak
            figures["models"][name if moe else f"{name} dense"] = shape | {"batches": rows}
    return figures


def print_train_step(figures: dict) -> None:
    host = figures["machine"]
    print(
        f"sft step (forward with aux losses, backward, AdamW), {figures['dtype']}; {host['device']}, {host['torch_threads']} threads"
    )
    print(
        f"  {'model':<12}{'image':>6}{'batch':>6}{'ms':>10}{'samples/s':>11}{'tokens/s':>10}{'TFLOP/s':>9}{'MFU':>7}"
    )
    for name, model in figures["models"].items():
        for batch_size, row in model["batches"].items():
            mfu = f"{row['mfu']:.1%}" if "mfu" in row else "-"
            print(
                f"  {name:<12}{model['image_size']:>6}{batch_size:>6}{row['ms']:>10.0f}{row['samples_per_s']:>11.2f}"
                f"{row['tokens_per_s']:>10.0f}{row['tflops']:>9.3f}{mfu:>7}"
            )


def train_step(args) -> dict:
    figures = bench_train_step(
        tuple(args.models),
        tuple(args.batch_sizes),
        image_size=args.image_size or (336 if args.device == "cuda" else 112),
        repeats=args.repeats,
        dtype=args.dtype,
        device=args.device,
    )
    print_train_step(figures)
    return figures


GENERATE_SPEEDUP_TARGET = 3.0  # batch 8 over batch 1, samples/s, on this 2-core CPU (issue 5)


def bench_generate(
    model_dir: Path | None = None,
    questions: int = 48,
    batch_sizes: tuple[int, ...] = (1, 8),
    max_new_tokens: int = 16,
    repeats: int = 1,
) -> dict:
    """Samples/s of `cumo eval`'s generation at each batch size on the same questions; answers must agree."""
    from cumo.data.synthetic import build_tokenizer
    from cumo.data.synthetic_benchmarks import write_benchmarks
    from cumo.eval.benchmarks import get
    from cumo.eval.generate import answer_batch, load_model
    from cumo.model.modeling_cumo import CumoForConditionalGeneration
    from cumo.model.presets import build_config
    from cumo.model.processing_cumo import CumoProcessor

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
        model, processor = load_model(model_dir)
        answers = {}

        def answer_all(size):
            batches = [asked[i : i + size] for i in range(0, len(asked), size)]
            answers[size] = [a for b in batches for a in answer_batch(model, processor, b, max_new_tokens)]

        steps = {size: (lambda size=size: answer_all(size)) for size in batch_sizes}
        times = time_interleaved(steps, repeats=repeats, warmup=0, device=torch.device("cpu"))
    disagree = [size for size in batch_sizes if answers[size] != answers[batch_sizes[0]]]
    if disagree:
        raise ValueError(f"answers at batch size(s) {disagree} differ from batch size {batch_sizes[0]}'s")
    per_second = {size: len(asked) / (statistics.median(ms) / 1000) for size, ms in times.items()}
    return {
        "machine": machine(torch.device("cpu")),
        "model": model_name,
        "questions": len(asked),
        "max_new_tokens": max_new_tokens,
        "repeats": repeats,
        "samples_per_s": {str(size): value for size, value in per_second.items()},
        "speedup": per_second[batch_sizes[-1]] / per_second[batch_sizes[0]],
        "identical_answers": True,
    }


def print_generate(figures: dict) -> None:
    host = figures["machine"]
    print(
        f"generate: {figures['questions']} GQA questions of the shapes world, {figures['model']}, greedy, "
        f"at most {figures['max_new_tokens']} new tokens; {host['device']}, {host['torch_threads']} threads"
    )
    for size, value in figures["samples_per_s"].items():
        print(f"  batch {size:>3}: {value:8.2f} samples/s")
    sizes = list(figures["samples_per_s"])
    met = "met" if figures["speedup"] >= GENERATE_SPEEDUP_TARGET else "MISSED"
    print(
        f"  batch {sizes[-1]} / batch {sizes[0]}: {figures['speedup']:.2f}x  target >= {GENERATE_SPEEDUP_TARGET}: "
        f"{met}; answers identical at every batch size"
    )


def generate(args) -> dict:
    figures = bench_generate(
        args.model, questions=args.questions, batch_sizes=tuple(args.batch_sizes), repeats=args.repeats
    )
    print_generate(figures)
    return figures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cumo.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")

    def add(name, function, benchmark, summary):
        sub = benchmarks.add_parser(name, help=summary, description=benchmark.__doc__, parents=[common])
        sub.set_defaults(function=function)
        return sub

    sub = add("moe", moe, bench_moe, "MoE block: sorted vs CuMo's loop vs ideal, forward + backward")
    sub.add_argument("--repeats", type=int, default=10, help="timed repeats after 2 warm-up ones (median)")
    sub.add_argument("--images", type=int, default=4, help="rows of the input (CLIP images)")
    sub.add_argument("--tokens", type=int, default=577, help="tokens per image (577: 24 x 24 patches + CLS)")
    sub.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    sub.add_argument("--device", choices=["cpu", "cuda"], default="cpu")

    sub = add(
        "mixture", mixture, bench_mixture, "mixture build + validation to Arrow: time, peak RSS, reader RSS"
    )
    sub.add_argument("--entries", type=int, default=1_650_000, help="entries of the synthetic mixture")
    sub.add_argument("--seed", type=int, default=0, help="seed of the synthetic mixture")
    sub = add(
        "train-step", train_step, bench_train_step, "one sft step (MoE and dense): samples/s, tokens/s, MFU"
    )
    sub.add_argument("--models", nargs="+", choices=["tiny", "mid"], default=["tiny", "mid"])
    sub.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    sub.add_argument(
        "--image-size", type=int, help="the mid model's image side (default 336 on cuda, 112 on cpu)"
    )
    sub.add_argument("--repeats", type=int, default=2, help="timed repeats after one warm-up (median)")
    sub.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    sub.add_argument("--device", choices=["cpu", "cuda"], default="cpu")

    sub = add(
        "generate", generate, bench_generate, "evaluation's generation: samples/s at batch 1 vs batch 8"
    )
    sub.add_argument("--model", type=Path, help="a model directory (default: a random tiny CuMo)")
    sub.add_argument("--questions", type=int, default=48, help="GQA questions of the shapes world")
    sub.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="first is the baseline")
    sub.add_argument("--repeats", type=int, default=1, help="timed repeats (median)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        figures = args.function(args)
    except ValueError as error:
        sys.exit(f"cumo.bench {args.benchmark}: {error}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
