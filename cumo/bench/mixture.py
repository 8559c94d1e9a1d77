"""`python -m cumo.bench mixture`: build a synthetic sft mixture of CuMo's size to Arrow, then read it."""

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cumo.bench.timing import machine

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
