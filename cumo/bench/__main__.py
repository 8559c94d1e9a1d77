"""The command line of `python -m cumo.bench`: one subcommand per benchmark module, its --help from the
benchmark function's docstring."""

import argparse
import json
import sys
from pathlib import Path

import cumo.bench
from cumo.bench.convert import bench_convert, convert
from cumo.bench.generate import bench_generate, generate
from cumo.bench.memory import bench_memory, memory
from cumo.bench.mixture import bench_mixture, mixture
from cumo.bench.moe import bench_moe, moe
from cumo.bench.timing import DTYPES
from cumo.bench.train_step import bench_train_step, train_step


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cumo.bench",
        description=cumo.bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    sub.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    sub.add_argument("--device", choices=["cpu", "cuda"], default="cpu")

    sub = add(
        "memory", memory, bench_memory, "peak host memory per rank and phase of each stage vs the memory plan"
    )
    sub.add_argument(
        "--quick",
        action="store_true",
        help="two Mistral-like sizes and a Mixtral-like one on 1 and 2 ranks (else both at both sizes on 1, 2, 4)",
    )

    sub = add(
        "convert",
        convert,
        bench_convert,
        "cumo convert from-released at CuMo-7B's size: peak RSS vs one shard",
    )
    sub.add_argument("--quick", action="store_true", help="every matrix / 16 (2.1 GB of disk), the bound too")
    sub.add_argument(
        "--work", type=Path, help="where the checkpoints go (default $TMPDIR; 33 GB at full size)"
    )
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
