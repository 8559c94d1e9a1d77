"""`cumo <step>`: one subcommand per workflow step, each a thin map onto a plain function.

Every step runs without Snakemake; the workflow's rules call these same commands.
"""

import argparse
import json
import sys
from pathlib import Path


def existing_directory(path: str) -> Path:
    if not Path(path).is_dir():
        raise argparse.ArgumentTypeError(
            f"{path} is not a directory (a model saved with save_pretrained is one)"
        )
    return Path(path)


def demo(args) -> None:
    """Build the tiny CuMo, co-upcycle it, check the invariant and answer questions about generated images."""
    from cumo.demo import run_demo

    report = run_demo(args.out, seed=args.seed)
    print(json.dumps(report, indent=2))
    print(f"model and processor saved under {args.out}/model")


def upcycle(args) -> None:
    """Co-upcycle a dense CuMo model directory (after pft) into the MoE model sft starts from."""
    from cumo.model.upcycle import upcycle_directory

    upcycle_directory(args.model, args.out)


def convert(args) -> None:
    """Convert between the released CuMo checkpoint layout and ours (transformers save_pretrained)."""
    from cumo.model.convert import convert_directory

    convert_directory(args.src, args.out, args.direction)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cumo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    def add(name, function, **kwargs):
        sub = steps.add_parser(name, help=function.__doc__, description=function.__doc__, **kwargs)
        sub.set_defaults(function=function)
        return sub

    sub = add("demo", demo)
    sub.add_argument("--out", default="results/demo", help="where the model, processor and demo.json go")
    sub.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")

    sub = add("upcycle", upcycle)
    sub.add_argument(
        "--model",
        required=True,
        type=existing_directory,
        help="dense model directory (save_pretrained layout)",
    )
    sub.add_argument("--out", required=True, help="directory for the upcycled MoE model")

    sub = add("convert", convert)
    sub.add_argument("direction", choices=["from-released", "to-released"], help="which way to convert")
    sub.add_argument("src", type=existing_directory, help="source model directory")
    sub.add_argument("out", help="destination directory")
    return parser


def main(argv: list[str] | None = None) -> None:
    from cumo.model.configuration_cumo import ConfigError

    args = build_parser().parse_args(argv)
    try:
        args.function(args)
    except (ValueError, FileNotFoundError, ConfigError) as error:
        sys.exit(f"cumo {args.step}: {error}")


if __name__ == "__main__":
    main()
