"""`cumo <step>`: one subcommand per workflow step, each a thin map onto a plain function.

Every step runs without Snakemake; the workflow's rules call these same commands.
"""

import argparse
import json
import sys
from pathlib import Path

from cumo.eval.benchmarks import NAMES as BENCHMARK_NAMES


def existing_directory(path: str) -> Path:
    if not Path(path).is_dir():
        raise argparse.ArgumentTypeError(
            f"{path} is not a directory (a model saved with save_pretrained is one)"
        )
    return Path(path)


def byte_size(text: str) -> int:
    """'5GB' / '500MB' / '1048576' -> bytes (decimal units, as transformers' max_shard_size)."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
    upper = text.strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit) and upper[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(upper[: -len(unit)]) * factor)
    if upper.isdigit():
        return int(upper)
    raise argparse.ArgumentTypeError(f"{text!r} is not a size: give bytes, or a number with KB, MB, GB or TB")


def corpus_sizes(text: str) -> dict[str, int]:
    """'pretrain=400,pft=200,sft=600' -> {stage: samples}; every stage once, each at least 1 sample."""
    from cumo.train.stages import STAGES

    sizes = {}
    for item in text.split(","):
        stage, _, count = item.partition("=")
        if stage not in STAGES or stage in sizes or not count.isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(
                f"{item!r} in {text!r}: give each of {', '.join(STAGES)} once as STAGE=SAMPLES (SAMPLES >= 1)"
            )
        sizes[stage] = int(count)
    if set(sizes) != set(STAGES):
        raise argparse.ArgumentTypeError(
            f"{text!r} lacks {sorted(set(STAGES) - set(sizes))}: give every stage"
        )
    return sizes


def add_step(steps, name: str, function) -> argparse.ArgumentParser:
    """`cumo ... <name>`, which runs `function`; its help is the function's docstring."""
    sub = steps.add_parser(name, help=function.__doc__, description=function.__doc__)
    sub.set_defaults(function=function)
    return sub


def demo(args) -> None:
    """Build the tiny CuMo, co-upcycle it, check the invariant and answer questions about generated images."""
    from cumo.demo import run_demo

    report = run_demo(args.out, seed=args.seed)
    print(json.dumps(report, indent=2))
    print(f"model and processor saved under {args.out}/model")


def add_demo_arguments(steps) -> None:
    sub = add_step(steps, "demo", demo)
    sub.add_argument("--out", default="results/demo", help="where the model, processor and demo.json go")
    sub.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")


def download(args) -> None:
    """Download training sources and benchmarks (eval_<bench>), and what they require, into the data tree,
    verified, with .done markers; the pins each first download learns go to the lock file."""
    from cumo.data.download import SOURCES, default_data_root
    from cumo.data.download import download as download_sources

    data_root = Path(args.data_root) if args.data_root else default_data_root()
    records = download_sources(args.names, data_root, args.config or SOURCES, args.lock, args.update_lock)
    print(f"{len(records)} source(s) ready under {data_root}: {', '.join(r['source'] for r in records)}")


def add_download_arguments(steps) -> None:
    sub = add_step(steps, "download", download)
    sub.add_argument("names", nargs="+", metavar="SOURCE", help="source names declared in the sources config")
    sub.add_argument("--data-root", default=None, help="data tree root (default: $CuMo_DIR/data, else data)")
    sub.add_argument(
        "--config", type=Path, help="the sources declarations (default: cumo's own, cumo/data/sources.yaml)"
    )
    sub.add_argument(
        "--lock",
        type=Path,
        help="the pins learned on first download: Hub commits, every file's sha256 (default: kept with --config, "
        "cumo/data/sources.lock.yaml)",
    )
    sub.add_argument(
        "--update-lock",
        action="store_true",
        help="renew the named sources' pins on purpose, done or not: resolve their Hub revisions anew and record "
        "every file's sha256 again (files in place are kept where they pass the declared checks)",
    )


def synthetic(args) -> None:
    """Write the tiny shapes world: training corpora (pretrain, pft, sft), their tokenizer, 13 benchmarks."""
    from cumo.data.synthetic import write_world
    from cumo.data.synthetic_benchmarks import write_benchmarks

    world = write_world(args.data_root, seed=args.seed, sizes=args.sizes)
    benchmarks = write_benchmarks(args.data_root, seed=args.seed, per_benchmark=args.per_benchmark)
    print(json.dumps({"world": world, "benchmarks": sorted(benchmarks)}, indent=2, default=str))


def add_synthetic_arguments(steps) -> None:
    sub = add_step(steps, "synthetic", synthetic)
    sub.add_argument("--data-root", required=True, help="where the world's data tree is written")
    sub.add_argument("--seed", type=int, default=0, help="seed of everything generated")
    sub.add_argument("--per-benchmark", type=int, default=40, help="questions per benchmark")
    sub.add_argument(
        "--sizes",
        type=corpus_sizes,
        help="samples per training corpus, e.g. pretrain=400,pft=200,sft=600 (default: the tiny recipe's world)",
    )


def mixture(args) -> None:
    """Validate mixture JSON file(s) into the memory-mapped Arrow form training reads, with drop counts."""
    from cumo.data.mixture import build_mixture

    stats = build_mixture(
        args.inputs,
        args.out,
        args.stats,
        args.data_root,
        image_folder=args.image_folder,
        reference=args.reference,
        verify_images=args.verify_images,
        max_skipped_share=args.max_skipped_share,
    )
    print(stats["summary"])


def add_mixture_arguments(steps) -> None:
    sub = add_step(steps, "mixture", mixture)
    sub.add_argument("inputs", nargs="+", type=Path, metavar="JSON", help="mixture JSON file(s), in order")
    sub.add_argument("--data-root", required=True, type=Path, help="the data tree the image paths are under")
    sub.add_argument("--out", required=True, type=Path, help="the Arrow file to write")
    sub.add_argument("--stats", required=True, type=Path, help="the stats JSON to write (counts, drops)")
    sub.add_argument(
        "--image-folder",
        default="",
        help="images' folder under the data root (pretrain: llava/llava_pretrain/images)",
    )
    sub.add_argument(
        "--reference", type=Path, help="published mixture whose composition the stats compare to"
    )
    sub.add_argument("--verify-images", action="store_true", help="also decode every image (parallel)")
    sub.add_argument("--max-skipped-share", type=float, default=0.001, help="fail above this share of drops")


def train(args) -> None:
    """Train one stage (pretrain, pft, sft) in this process; run it under `cumo launch` (or torchrun, srun)."""
    from cumo.train.stages import parse_overrides, stage_config
    from cumo.train.trainer import exit_rank
    from cumo.train.trainer import train as train_stage

    try:
        train_stage(
            stage_config(args.stage, args.preset, **parse_overrides(args.set)),
            args.preset,
            args.data,
            args.out,
            args.checkpoints,
            data_root=args.data_root,
            previous_output_dir=args.previous,
            save_every=args.save_every,
            keep=args.keep,
            num_workers=args.workers,
            max_shard_bytes=args.max_shard_size,
            sources={part: str(path) for part, path in (("clip", args.clip), ("llm", args.llm)) if path},
        )
    except SystemExit as stop:  # a preemption, saved: checkpoint.EXIT_PREEMPTED
        exit_rank(stop.code if isinstance(stop.code, int) else 1)
    exit_rank(0)


def add_train_arguments(steps) -> None:
    sub = add_step(steps, "train", train)
    sub.add_argument("--stage", required=True, choices=["pretrain", "pft", "sft"], help="which stage")
    sub.add_argument(
        "--preset", required=True, help="model preset: tiny, tiny-mixtral, cumo-mistral-7b, cumo-mixtral-8x7b"
    )
    sub.add_argument(
        "--data", required=True, type=Path, help="the stage's mixture (Arrow from `cumo mixture`, or JSON)"
    )
    sub.add_argument("--data-root", required=True, type=Path, help="the data tree the image paths are under")
    sub.add_argument("--out", required=True, type=Path, help="where the finished stage's model is exported")
    sub.add_argument("--checkpoints", required=True, type=Path, help="resumable state (kept outside --out)")
    sub.add_argument("--previous", type=Path, help="the previous stage's --out (pft, sft)")
    sub.add_argument("--save-every", type=int, default=500, help="optimizer steps between checkpoints")
    sub.add_argument("--keep", type=int, default=2, help="complete checkpoints kept")
    sub.add_argument("--workers", type=int, default=4, help="data loader workers per rank")
    sub.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a field of the stage's recipe (cumo/train/stages.py StageConfig), e.g. --set "
        "micro_batch_size=2 --set zero=zero3_offload; repeatable. The plan (`cumo plan`) says what to change",
    )
    sub.add_argument(
        "--max-shard-size",
        type=byte_size,
        default="5GB",
        help="largest safetensors shard of the exported model (transformers' default: 5GB)",
    )
    sub.add_argument(
        "--clip",
        type=existing_directory,
        help="pretrain of a paper preset: the CLIP weights' folder (`cumo download clip_vit_large_patch14_336`)"
        "; default: the Hub's openai/clip-vit-large-patch14-336, fetched by the job itself",
    )
    sub.add_argument(
        "--llm",
        type=existing_directory,
        help="pretrain of a paper preset: the LLM weights' folder (`cumo download mistral_7b_instruct_v0_2`)"
        "; default: the preset's Hub repo, fetched by the job itself",
    )


def plan(args) -> None:
    """The memory every training and evaluation job of a workflow config needs on its `cluster:` (per GPU, per
    node, by term) with its verdict; exits 1 naming what to change when a job cannot fit."""
    import yaml

    from cumo.plan import Cluster, format_plan, plan_config

    config = yaml.safe_load(Path(args.config).read_text())
    jobs = plan_config(config)
    print(format_plan(jobs, Cluster.from_config(config.get("cluster"))))
    if not all(job.fits for job in jobs):
        sys.exit(1)


def add_plan_arguments(steps) -> None:
    sub = add_step(steps, "plan", plan)
    sub.add_argument(
        "config",
        nargs="?",
        default="config/config.yaml",
        help="a workflow config (default: config/config.yaml, the paper's and the workflow's default, read from "
        "the repository root; config/tiny.yaml: the tiny run's)",
    )


def launch(args) -> None:
    """Run `cumo train ...` distributed: ranks on this machine (torchrun), or one task per GPU on Slurm nodes
    (srun, inside the allocation). The batch plan and the DeepSpeed config are checked before anything starts."""
    import os

    from cumo.train.batching import plan_batch
    from cumo.train.deepspeed_config import load_deepspeed_config, upstream_config
    from cumo.train.launch import local_command, srun_command, supervise
    from cumo.train.stages import parse_overrides, stage_config

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    train_args = build_parser().parse_args(command)
    if train_args.step != "train":
        raise ValueError(f"cumo launch runs `cumo train ...`, got `cumo {' '.join(command)}`")
    stage = stage_config(train_args.stage, train_args.preset, **parse_overrides(train_args.set))
    world = args.nodes * args.processes
    print(plan_batch(stage.global_batch_size, stage.micro_batch_size, world))
    load_deepspeed_config(upstream_config(stage.zero))
    if args.nodes > 1:
        argv, env = srun_command(
            command,
            nodes=args.nodes,
            processes_per_node=args.processes,
            cpus_per_task=args.cpus_per_task,
            device=args.device,
        )
        # srun in this process's place: it exits with the highest of its tasks' exit codes, EXIT_PREEMPTED
        # after a save, and it must not get a SIGTERM from here, which it turns into a SIGKILL of every task
        # (Slurm's src/srun/srun_job.c, `_srun_signal_mgr`).
        os.execvpe(argv[0], argv, {**os.environ, **env})
    argv, env = local_command(command, num_processes=args.processes, device=args.device)
    sys.exit(supervise(argv, env))


def add_launch_arguments(steps) -> None:
    sub = add_step(steps, "launch", launch)
    sub.add_argument("--nodes", type=int, default=1, help="Slurm nodes (above 1: srun, a task per rank)")
    sub.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores per task (with --nodes > 1)")
    sub.add_argument("--processes", type=int, default=2, help="ranks on each node: one per GPU, or CPU ranks")
    sub.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="accelerator of the ranks")
    sub.add_argument(
        "command", nargs=argparse.REMAINDER, help="-- train --stage ... (the cumo train command)"
    )


def evaluate(args) -> None:
    """Evaluate a model on one benchmark: greedy answers (batched, sharded, resumable), the benchmark's own
    scoring, OUT/predictions.jsonl and OUT/metrics.json (+ OUT/submission/ where a server scores)."""
    from cumo.eval.evaluate import EvalConfig, evaluate, run_shard

    # The parser leaves the judge's settings None, not importing the judge for their defaults (its openai
    # client takes about a second to load, on every `cumo` command): those not given take EvalConfig's.
    judge_settings = {
        "judge_timeout_s": args.judge_timeout,
        "judge_attempts": args.judge_attempts,
        "judge_backoff_s": args.judge_backoff,
        "judge_max_gave_up_share": args.judge_max_gave_up,
    }
    config = EvalConfig(
        benchmark=args.benchmark,
        model=str(args.model),
        data_root=str(args.data_root),
        split=args.split,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        shards=args.shards,
        gpus_per_shard=args.gpus_per_shard,
        device=args.device,
        dtype=args.dtype or ("bfloat16" if args.device == "cuda" else "float32"),
        blank_images=args.blank_images,
        judge_model=args.judge_model,
        judge_base_url=args.judge_base_url,
        judge_runs=args.judge_runs,
        judge_serve=args.judge_serve,
        **{name: value for name, value in judge_settings.items() if value is not None},
    )
    if args.shard is not None:  # one shard's process, started by the run with --shards (or by hand)
        print(json.dumps(run_shard(config, args.out, args.shard, args.model_digest)))
        return
    metrics = evaluate(config, args.out)
    print(
        f"{metrics['title']} ({metrics['split']}): {metrics['headline']['metric']} = {metrics['headline']['value']}"
    )


def add_evaluate_arguments(steps) -> None:
    sub = add_step(steps, "eval", evaluate)
    sub.add_argument("benchmark", metavar="BENCH", help="one of: " + ", ".join(BENCHMARK_NAMES))
    sub.add_argument("--model", required=True, type=existing_directory, help="model directory to evaluate")
    sub.add_argument("--data-root", required=True, type=Path, help="data tree with eval/<benchmark folder>")
    sub.add_argument("--out", required=True, type=Path, help="results/<run>/eval/<model>/<bench>")
    sub.add_argument(
        "--split", help="another split the benchmark scores locally (VQAv2: val); default: the paper's"
    )
    sub.add_argument("--max-new-tokens", type=int, help="cap on answer length (default: the benchmark's own)")
    sub.add_argument("--batch-size", type=int, default=1, help="questions per generate call (paper: 1)")
    sub.add_argument("--shards", type=int, default=1, help="processes (GPUs) that share the questions")
    sub.add_argument("--shard", type=int, help="run only this shard (0-based) of --shards, then stop")
    sub.add_argument(
        "--gpus-per-shard",
        type=int,
        default=1,
        help="GPUs each shard's model is placed over (a model too large for one; `cumo plan` says how many)",
    )
    sub.add_argument(
        "--model-digest",
        help="with --shard: the model's digest, when known (the run passes it to its shards)",
    )
    sub.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs")
    sub.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="default: bf16 on cuda, fp32 on cpu"
    )
    sub.add_argument(
        "--blank-images",
        action="store_true",
        help="replace every image by a blank one (how much the images add)",
    )
    sub.add_argument("--judge-model", help="judge of MM-Vet, LLaVA-Wild, MathVista (paper: gpt-4-0613)")
    sub.add_argument("--judge-base-url", help="OpenAI-compatible server of the judge (default: OpenAI's)")
    sub.add_argument("--judge-runs", type=int, default=1, help="judge runs averaged (the paper: 3)")
    sub.add_argument("--judge-timeout", type=float, help="seconds one judge request may take")
    sub.add_argument("--judge-attempts", type=int, help="tries of a judge call before the run fails")
    sub.add_argument(
        "--judge-backoff",
        type=float,
        help="seconds before the second try, doubled at each (a server's Retry-After comes first)",
    )
    sub.add_argument(
        "--judge-max-gave-up",
        type=float,
        help="share of questions the benchmark's rules may give up on (no grade, no extraction) before it fails",
    )
    sub.add_argument(
        "--judge-serve",
        choices=["rules"],
        help="rules: judge with the tiny preset's rule judge, served in this process (offline; not the paper's)",
    )


def judge_server(args) -> None:
    """Serve the tiny preset's rule judge (MM-Vet, LLaVA-Bench, MathVista prompts; not GPT) as an
    OpenAI-compatible /v1/chat/completions on 127.0.0.1:PORT until interrupted."""
    from cumo.eval import rule_judge
    from cumo.eval.judge_server import JudgeServer

    server = JudgeServer(rule_judge.reply, port=args.port)
    print(
        f"{rule_judge.MODEL} at {server.base_url} (e.g. --judge-model {rule_judge.MODEL} --judge-base-url "
        f"{server.base_url}; any OPENAI_API_KEY)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def add_judge_server_arguments(steps) -> None:
    sub = add_step(steps, "judge-server", judge_server)
    sub.add_argument("--port", type=int, default=0, help="port (default 0: any free one, printed)")


def upcycle(args) -> None:
    """Co-upcycle a dense CuMo model directory (after pft) into the MoE model sft starts from."""
    from cumo.model.upcycle import upcycle_directory

    upcycle_directory(args.model, args.out)


def add_upcycle_arguments(steps) -> None:
    sub = add_step(steps, "upcycle", upcycle)
    sub.add_argument(
        "--model",
        required=True,
        type=existing_directory,
        help="dense model directory (save_pretrained layout)",
    )
    sub.add_argument("--out", required=True, help="directory for the upcycled MoE model")


def report_tables(args) -> None:
    """The main table (models x benchmarks in the paper's order; reproduced, reported, delta) as CSV, MD, LaTeX."""
    from cumo.report.tables import PAPER_RESULTS, write_tables

    written = write_tables(args.eval, args.paper or PAPER_RESULTS, args.models, args.benchmarks, args.out)
    print(json.dumps(written, indent=2))


def report_plots(args) -> None:
    """Benchmarks vs the paper, and per model its loss curves, sft aux losses and expert-load heat maps."""
    from cumo.report.plots import write_plots
    from cumo.report.tables import PAPER_RESULTS

    written = write_plots(
        args.eval, args.models_dir, args.paper or PAPER_RESULTS, args.model_names, args.benchmarks, args.out
    )
    print(json.dumps(written, indent=2))


def add_report_arguments(steps) -> None:
    about = "tables and plots of a run's results"
    kinds = steps.add_parser("report", help=about, description=about).add_subparsers(
        dest="kind", required=True, metavar="KIND"
    )
    tables, plots = add_step(kinds, "tables", report_tables), add_step(kinds, "plots", report_plots)
    for sub in (tables, plots):
        sub.add_argument(
            "--eval", required=True, type=Path, help="results/<run>/eval (<model>/<bench>/metrics.json)"
        )
        sub.add_argument(
            "--paper", type=Path, help="the paper's numbers (default: cumo's, cumo/report/paper_results.yaml)"
        )
        sub.add_argument(
            "--benchmarks", nargs="+", default=list(BENCHMARK_NAMES), help="columns (default: all 13)"
        )
        sub.add_argument("--out", required=True, type=Path, help="directory the files are written to")
    tables.add_argument("--models", nargs="+", required=True, help="rows, in order")
    plots.add_argument("--model-names", nargs="+", required=True, help="models, in order")
    plots.add_argument(
        "--models-dir", required=True, type=Path, help="results/<run>/models (<model>/<stage>/metrics.jsonl)"
    )


def convert(args) -> None:
    """Convert between the released CuMo checkpoint layout and ours, a tensor at a time: the process holds one
    shard it writes and the tensors it is making, never the model."""
    from cumo.model.convert import convert_directory

    if args.preset and args.direction != "from-released":
        raise ValueError("--preset checks a released checkpoint: it goes with from-released")
    convert_directory(args.src, args.out, args.direction, args.max_shard_size, args.preset)


def add_convert_arguments(steps) -> None:
    sub = add_step(steps, "convert", convert)
    sub.add_argument("direction", choices=["from-released", "to-released"], help="which way to convert")
    sub.add_argument("src", type=existing_directory, help="source model directory")
    sub.add_argument("out", help="destination directory")
    sub.add_argument(
        "--max-shard-size",
        type=byte_size,
        default="5GB",
        help="largest safetensors shard written, and so about the most the conversion holds (default: 5GB)",
    )
    sub.add_argument(
        "--preset",
        help="from-released: refuse a checkpoint whose architecture is not this preset's (cumo/model/presets.py)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cumo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (or set CUMO_DEBUG=1)"
    )
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for add_arguments in (
        add_demo_arguments,
        add_download_arguments,
        add_synthetic_arguments,
        add_mixture_arguments,
        add_train_arguments,
        add_plan_arguments,
        add_launch_arguments,
        add_evaluate_arguments,
        add_judge_server_arguments,
        add_upcycle_arguments,
        add_report_arguments,
        add_convert_arguments,
    ):
        add_arguments(steps)
    return parser


def own_errors() -> tuple[type[Exception], ...]:
    """The errors cumo raises for what a user can fix (bad input, a failed download, judge or shard, too much
    skipped, a second writer); imported when one is caught, so that a step does not load the modules of another."""
    from cumo.data.download import DownloadError
    from cumo.data.skips import TooManySkipped
    from cumo.eval.evaluate import ShardFailed
    from cumo.eval.judge import JudgeError
    from cumo.model.configuration_cumo import ConfigError
    from cumo.writer_lock import LockHeld

    # ValueError covers IncompletePredictions and SourceConfigError too.
    return (
        ValueError,
        FileNotFoundError,
        ConfigError,
        DownloadError,
        TooManySkipped,
        JudgeError,
        ShardFailed,
        LockHeld,
    )


def main(argv: list[str] | None = None) -> None:
    """Run one step. An error of cumo's own ends the run with one line, `cumo <step>: <what failed and how to
    fix it>`, and exit status 1; `--debug` (or CUMO_DEBUG=1) shows its traceback instead. Any other error is a
    bug: its traceback is shown."""
    import os

    args = build_parser().parse_args(argv)
    try:
        args.function(args)
    except Exception as error:
        debug = args.debug or os.environ.get("CUMO_DEBUG", "") not in ("", "0")
        if debug or not isinstance(error, own_errors()):
            raise
        sys.exit(f"cumo {args.step}: {error}")


if __name__ == "__main__":
    main()
