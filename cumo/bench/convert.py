"""`python -m cumo.bench convert`: peak host memory of `cumo convert from-released` on a released checkpoint of
CuMo-7B's size, against the bound "its largest shard + 2 GB" (issue 15).

A released-layout checkpoint with the real shapes of shi-labs/CuMo-mistral-7b (the cumo-mistral-7b preset
after sft: CLIP ViT-L/14-336 with top-2-of-4 MoE MLPs, the MoE connector, Mistral-7B-Instruct-v0.2; 8.25 B
parameters) is written with random bf16 weights in shards of 5 GB, as transformers' `save_pretrained` shards
by default (CuMo's training saves through it, transformers 4.37.2), next to a tokenizer of Mistral's 32,000
tokens without the image token. The conversion then runs in a fresh interpreter through the command line
(`cumo.cli.main`), which records its resident set after the imports and its peak (Linux `VmHWM`, reset after
the imports by writing 5 to /proc/self/clear_refs). The checkpoint and the conversion's output are about 16.5
GB each, under --work; the benchmark checks the free disk first and removes both at the end.

--quick: the same with every width and the vocabulary divided by 4 (the layers and the heads' width as they
are), so that every matrix is 16 times smaller, and the shards as much: the bound scales with it (largest shard
+ 2 GB / 16), measured over the resident set after the imports, which do not scale. (At / 64 the conversion's
fixed cost, some 40 MB of Python objects and lazily imported modules, passed the 31 MB margin.)
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cumo.bench.timing import machine

SHARD_BYTES = 5 * 10**9  # transformers' save_pretrained default max_shard_size, "5GB"
MARGIN_BYTES = 2 * 10**9  # issue 15: at most the largest shard + 2 GB
QUICK_DIVISOR = 4  # --quick: widths and vocabulary / 4, so every matrix / 16

# The conversion in a fresh interpreter, as the workflow's convert_released job runs it; prints its figures as
# one JSON line. The baseline is taken after the imports: what the conversion itself holds is over it.
CONVERT_PROCESS = """
import json, sys, time
from pathlib import Path
import cumo.model.convert
from cumo.cli import main
def status(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024
baseline = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
start = time.perf_counter()
main(["convert", "from-released", sys.argv[1], sys.argv[2], "--max-shard-size", sys.argv[3]])
print(json.dumps({"seconds": time.perf_counter() - start, "baseline_bytes": baseline, "peak_bytes": status("VmHWM")}))
"""


def released_config(quick: bool):
    """CuMo-Mistral-7B as released (sft's MoE model, Mistral's vocabulary without the image token), or the
    same divided for --quick."""
    from transformers import CLIPVisionConfig, MistralConfig

    from cumo.model.presets import CLIP_VIT_L_14_336, MISTRAL_7B_INSTRUCT_V02, build_config

    vision, text = dict(CLIP_VIT_L_14_336), dict(MISTRAL_7B_INSTRUCT_V02)
    if quick:
        for dims in (vision, text):
            for key in ("hidden_size", "intermediate_size", "num_attention_heads", "projection_dim"):
                if key in dims:
                    dims[key] //= QUICK_DIVISOR
        text["num_key_value_heads"] //= QUICK_DIVISOR
        text["vocab_size"] //= QUICK_DIVISOR
    return build_config(
        "cumo-mistral-7b",
        moe=True,
        vision_config=CLIPVisionConfig(**vision),
        text_config=MistralConfig(**text),
        dtype=torch.bfloat16,
    )


def word_tokenizer(vocab_size: int):
    """A tokenizer of `vocab_size` words and no image token, as Mistral's is to a released checkpoint."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", "<s>", "</s>", "<pad>"]
    words = {token: i for i, token in enumerate(special + [f"w{i}" for i in range(len(special), vocab_size)])}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="<unk>")),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def write_random_released(model, directory: Path, max_shard_bytes: int) -> list[int]:
    """A released-layout checkpoint of `model` (on the meta device) with random weights, written a tensor at
    a time, and a tokenizer of its vocabulary without the image token; the sizes of its shards."""
    from cumo.model.convert import write_released
    from cumo.model.weights import Init

    torch.manual_seed(0)
    write_released(model, lambda name, shape: Init(torch.nn.init.uniform_), directory, max_shard_bytes)
    word_tokenizer(model.config.text_config.vocab_size).save_pretrained(directory)
    return sorted(path.stat().st_size for path in directory.glob("*.safetensors"))


def bench_convert(quick: bool = False, work: Path | None = None) -> dict:
    """Write a released-layout checkpoint of CuMo-Mistral-7B's shapes (random bf16 weights, 5 GB shards) and
    convert it with `cumo convert from-released` in a fresh process: its peak resident memory against its
    largest shard + 2 GB (--quick: every matrix / 16, the bound too). Needs twice the checkpoint's size of free
    disk under `work` (default $TMPDIR): about 33 GB, 2.1 GB with --quick."""
    from cumo.model.weights import build_meta

    model = build_meta(released_config(quick), torch.bfloat16)
    scale = 1 / QUICK_DIVISOR**2 if quick else 1
    parameters = sum(tensor.numel() for tensor in model.state_dict().values())
    checkpoint_bytes = 2 * parameters  # bf16
    parent = Path(work or tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    if free < 2.1 * checkpoint_bytes:
        raise ValueError(
            f"{parent} has {free / 1e9:.1f} GB free; the checkpoint and its conversion need "
            f"{2.1 * checkpoint_bytes / 1e9:.1f} GB: free some, or give --work a folder on a larger disk"
        )
    with tempfile.TemporaryDirectory(prefix="cumo-bench-convert-", dir=parent) as folder:
        released, ours = Path(folder) / "released", Path(folder) / "ours"
        start = time.perf_counter()
        shard_bytes = round(SHARD_BYTES * scale)
        shards = write_random_released(model, released, shard_bytes)
        write_seconds = time.perf_counter() - start
        done = subprocess.run(
            [sys.executable, "-c", CONVERT_PROCESS, str(released), str(ours), str(shard_bytes)],
            capture_output=True,
            text=True,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
        if done.returncode:
            raise RuntimeError(f"the conversion failed:\n{done.stderr[-3000:]}")
        conversion = json.loads(done.stdout.splitlines()[-1])
        written = sorted(path.stat().st_size for path in ours.glob("*.safetensors"))
    largest = max(shards + written)
    return {
        "benchmark": "convert",
        "quick": quick,
        "machine": machine(torch.device("cpu")) | {"cpus": len(os.sched_getaffinity(0))},
        "parameters": parameters,
        "released_shards_bytes": shards,
        "converted_shards_bytes": written,
        "write_seconds": round(write_seconds, 1),
        "convert_seconds": round(conversion["seconds"], 1),
        "baseline_bytes": conversion["baseline_bytes"],
        "peak_bytes": conversion["peak_bytes"],
        "bound_over_baseline_bytes": round(largest + MARGIN_BYTES * scale),
    }


def print_convert(figures: dict) -> None:
    host = figures["machine"]
    gb = lambda n: f"{n / 1e9:.2f} GB"  # noqa: E731
    over = figures["peak_bytes"] - figures["baseline_bytes"]
    largest = max(figures["released_shards_bytes"] + figures["converted_shards_bytes"])
    print(f"{host['device']}, {host['cpus']} CPUs, torch {host['torch']}")
    print(
        f"CuMo-Mistral-7B{f' / {QUICK_DIVISOR**2} (--quick)' if figures['quick'] else ''}: {figures['parameters'] / 1e9:.3f} B "
        f"parameters; released shards {', '.join(map(gb, figures['released_shards_bytes']))} (written in "
        f"{figures['write_seconds']:.0f} s); converted {', '.join(map(gb, figures['converted_shards_bytes']))} "
        f"in {figures['convert_seconds']:.0f} s"
    )
    print(
        f"conversion peak RSS {gb(figures['peak_bytes'])}: {gb(figures['baseline_bytes'])} after the imports + "
        f"{gb(over)}; largest shard {gb(largest)}"
    )
    bound = figures["bound_over_baseline_bytes"]
    print(
        f"over the imports <= largest shard + {f'2 GB / {QUICK_DIVISOR**2}' if figures['quick'] else '2 GB'} ({gb(bound)}): "
        f"{'met' if over <= bound else 'missed'}"
    )
    if not figures["quick"]:
        whole = largest + MARGIN_BYTES
        print(
            f"whole process <= largest shard + 2 GB ({gb(whole)}): {'met' if figures['peak_bytes'] <= whole else 'missed'}"
        )


def convert(args) -> dict:
    figures = bench_convert(args.quick, args.work)
    print_convert(figures)
    return figures
