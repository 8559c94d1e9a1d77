"""`cumo eval <bench>`: one benchmark on one model, from its question files to `metrics.json`.

    out/shards/<i>-of-<n>.jsonl   each shard's answers, appended as they come (resumable)
    out/shards/made_by.json       what made them (model digest, dtype, split, ...): other answers are not resumed
    out/predictions.jsonl         all answers in question order, once every question has exactly one
    out/metrics.json              the benchmark's numbers, with what made them (EvalConfig, model digest, commit)
    out/submission/...            the files an evaluation server scores (VQAv2, MMBench test), where it does

With `shards > 1` every shard runs as its own process (`cumo eval ... --shard i`), on GPU i when the device
is cuda, and this process merges and scores when they are all done; a shard that fails fails the run.

A judged benchmark's judge is a model behind an OpenAI-compatible server (`judge_model`, `judge_base_url`), or,
with `judge_serve="rules"`, the tiny preset's rule judge (cumo/eval/rule_judge.py), served on 127.0.0.1 by this
process for the run's length and asked over HTTP like any other; its numbers are not the paper's GPT judges'.
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cumo.eval.benchmark import Benchmark, question_key
from cumo.eval.benchmarks import NAMES, get
from cumo.eval.generate import (
    PROMPT_FORMAT,
    check_made_by,
    generate_shard,
    load_model,
    merge,
    prepare_shards,
    read_predictions,
    shard_path,
    shard_questions,
)
from cumo.eval.judge import ATTEMPTS, BACKOFF_S, MAX_GAVE_UP_SHARE, TIMEOUT_S
from cumo.model.configuration_cumo import CumoConfig
from cumo.provenance import git_commit, package_versions, sha256_tree
from cumo.writer_lock import WRITER_LOCK, WriterLock

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
JUDGE_SERVES = ("rules",)  # judges this process serves itself (`judge_serve`)


@dataclass(frozen=True)
class EvalConfig:
    """How one benchmark was evaluated; checked when built, saved in metrics.json."""

    benchmark: str
    model: str  # the model directory
    data_root: str
    split: str | None = None  # None: the paper's split; else one the benchmark also scores here (VQAv2: val)
    max_new_tokens: int | None = None  # None: the benchmark's (its official script's); a cap for quick looks
    batch_size: int = 1  # the paper's scripts answer one question at a time
    shards: int = 1
    gpus_per_shard: int = 1  # a model too large for one GPU is placed over this many (device cuda)
    device: str = "cpu"
    dtype: str = "float32"
    blank_images: bool = False  # every image replaced by a blank one: how much of the score the images give
    judge_model: str | None = None
    judge_base_url: str | None = None
    judge_runs: int = 1
    judge_serve: str | None = None  # "rules": the rule judge, served here (no judge_model / judge_base_url)
    judge_timeout_s: float = TIMEOUT_S  # one request's time-out
    judge_attempts: int = ATTEMPTS  # tries of one call (failed calls and unusable replies)
    judge_backoff_s: float = (
        BACKOFF_S  # the first wait between tries, doubled at each (or the server's Retry-After)
    )
    judge_max_gave_up_share: float = MAX_GAVE_UP_SHARE  # questions the benchmark's rules may give up on

    def __post_init__(self):
        if self.benchmark not in NAMES:
            raise ValueError(f"unknown benchmark {self.benchmark!r}; known: {', '.join(NAMES)}")
        get(self.benchmark).at_split(self.split)  # a split the benchmark does not have stops here
        if self.batch_size < 1 or self.shards < 1 or self.judge_runs < 1 or (self.max_new_tokens or 1) < 1:
            raise ValueError("batch_size, shards, judge_runs and max_new_tokens must be at least 1")
        if self.judge_attempts < 1 or self.judge_timeout_s <= 0 or self.judge_backoff_s < 0:
            raise ValueError(
                f"judge attempts must be at least 1, its time-out above 0 s and its back-off at least 0 s; got "
                f"{self.judge_attempts}, {self.judge_timeout_s}, {self.judge_backoff_s}"
            )
        if not 0 <= self.judge_max_gave_up_share <= 1:
            raise ValueError(
                f"judge_max_gave_up_share is a share of the questions, in [0, 1]; got {self.judge_max_gave_up_share}"
            )
        if self.judge_base_url is not None and not re.fullmatch(
            r"https?://[^\s/?#]+(/\S*)?", self.judge_base_url
        ):
            raise ValueError(
                f"judge base URL {self.judge_base_url!r} is not an http(s) URL; give the server's address up to "
                "/v1, e.g. http://localhost:8000/v1"
            )
        if self.judge_serve is not None and self.judge_serve not in JUDGE_SERVES:
            raise ValueError(
                f"judge_serve must be one of {', '.join(JUDGE_SERVES)}, got {self.judge_serve!r}"
            )
        if self.judge_serve and (self.judge_model or self.judge_base_url):
            raise ValueError(
                f"--judge-serve {self.judge_serve} is its own judge on its own server: give it without "
                "--judge-model and --judge-base-url (or drop it to use that model)"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if self.gpus_per_shard < 1 or (self.gpus_per_shard > 1 and self.device != "cuda"):
            raise ValueError(
                f"gpus_per_shard={self.gpus_per_shard}: at least 1, and more than 1 only with device cuda"
            )
        if not (Path(self.model) / "config.json").is_file():
            raise FileNotFoundError(
                f"{self.model} is not a model directory (no config.json): give the output of a training stage, "
                "or a released checkpoint converted with `cumo convert`"
            )

    @property
    def prompt_variant(self) -> str:
        return "llava-1.5" + ("+blank-images" if self.blank_images else "")

    def resolved(self) -> Benchmark:
        return get(self.benchmark).at_split(self.split)


def folder_of(benchmark: Benchmark, data_root: str | Path) -> Path:
    folder = Path(data_root) / "eval" / benchmark.folder
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{benchmark.title}'s files are not under {folder}: fetch them with `cumo download eval_{benchmark.name} "
            f"--data-root {data_root}` (or, for the tiny world, `cumo synthetic --data-root {data_root}`)"
        )
    return folder


def made_by(config: EvalConfig, benchmark: Benchmark, model_digest: str) -> dict:
    """What makes a shard folder's answers (cumo.eval.generate.MADE_BY): answers made with any of it otherwise
    are another model's, or were asked another way. Batch size and shard count are not in it: in fp32 a batch
    answers as batch size 1 does (tests/test_eval_generate.py), and shards only split the questions."""
    return {
        "benchmark": benchmark.name,
        "split": benchmark.split,
        "model_digest": model_digest,
        "dtype": config.dtype,
        "max_new_tokens": config.max_new_tokens or benchmark.max_new_tokens,
        "blank_images": config.blank_images,
        "template": CumoConfig.from_pretrained(config.model).conversation_template,
        "prompt_format": PROMPT_FORMAT,
    }


def run_shard(config: EvalConfig, out: Path, shard: int, model_digest: str | None = None) -> dict:
    """Answer shard `shard` of `config.shards` into out/shards/ (in this process); a shard folder whose answers
    were made otherwise is refused. `model_digest`: the model's `sha256_tree`, when the caller has it."""
    benchmark = config.resolved()
    questions = shard_questions(
        benchmark.questions(folder_of(benchmark, config.data_root)), shard, config.shards
    )
    digest = model_digest or sha256_tree(Path(config.model))
    check_made_by(out / "shards", made_by(config, benchmark, digest))
    model, processor = load_model(
        config.model, config.device, DTYPES[config.dtype], gpus=config.gpus_per_shard
    )
    path = shard_path(out / "shards", shard, config.shards)
    # One process appends to a shard file at a time: a shard process left running by a killed run (or a
    # shard started by hand) would interleave its lines with this one's (issue 18).
    with WriterLock(f"{path}.lock", f"the answers in {path}"):
        return generate_shard(
            model,
            processor,
            questions,
            path,
            model_id=Path(config.model).name,
            max_new_tokens=config.max_new_tokens or benchmark.max_new_tokens,
            batch_size=config.batch_size,
            blank_images=config.blank_images,
            description=f"{benchmark.name} shard {shard + 1}/{config.shards}",
        )


def _shard_command(config: EvalConfig, out: Path, shard: int, model_digest: str) -> list[str]:
    command = [sys.executable, "-m", "cumo", "eval", config.benchmark, "--model", config.model]
    command += ["--model-digest", model_digest]
    command += ["--data-root", config.data_root, "--out", str(out), "--batch-size", str(config.batch_size)]
    command += ["--shards", str(config.shards), "--shard", str(shard), "--device", config.device]
    command += ["--gpus-per-shard", str(config.gpus_per_shard)]
    command += ["--dtype", config.dtype] + (["--blank-images"] if config.blank_images else [])
    command += ["--split", config.split] if config.split else []
    command += ["--max-new-tokens", str(config.max_new_tokens)] if config.max_new_tokens else []
    return command


def shard_gpus(shard: int, per_shard: int, visible: str | None) -> str:
    """CUDA_VISIBLE_DEVICES of shard `shard`: GPUs shard*per_shard ... of the ones this process sees (Slurm's
    list in `visible`, which may name GPUs other than 0..n-1; all GPUs when unset)."""
    gpus = visible.split(",") if visible else [str(i) for i in range((shard + 1) * per_shard)]
    mine = gpus[shard * per_shard : (shard + 1) * per_shard]
    if len(mine) < per_shard:
        raise ValueError(
            f"shard {shard} needs GPUs {shard * per_shard}..{(shard + 1) * per_shard - 1} of CUDA_VISIBLE_DEVICES="
            f"{visible}: ask for shards x gpus_per_shard GPUs"
        )
    return ",".join(mine)


class ShardFailed(RuntimeError):
    """A shard process of `cumo eval --shards N` failed; its own error is in the output above."""


def _run_shards(config: EvalConfig, out: Path, model_digest: str) -> None:
    processes = []
    for shard in range(config.shards):
        env = dict(os.environ)
        if config.device == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = shard_gpus(
                shard, config.gpus_per_shard, os.environ.get("CUDA_VISIBLE_DEVICES")
            )
        processes.append(subprocess.Popen(_shard_command(config, out, shard, model_digest), env=env))
    failed = [shard for shard, process in enumerate(processes) if process.wait() != 0]
    if failed:
        raise ShardFailed(
            f"shard(s) {failed} of {config.benchmark} failed (their output is above); rerun the same command: "
            "answers already written are kept"
        )


def _judge(config: EvalConfig, benchmark: Benchmark, out: Path, stack: contextlib.ExitStack):
    """The benchmark's Judge; a server this process runs for it stops when `stack` closes."""
    from cumo.eval.judge import Judge

    settings = {
        "cache_dir": out / "judge_cache",
        "runs": config.judge_runs,
        "timeout_s": config.judge_timeout_s,
        "attempts": config.judge_attempts,
        "backoff_s": config.judge_backoff_s,
        "max_gave_up_share": config.judge_max_gave_up_share,
    }
    if config.judge_serve == "rules":
        from cumo.eval import rule_judge
        from cumo.eval.judge_server import JudgeServer

        server = stack.enter_context(JudgeServer(rule_judge.reply))
        return Judge(
            model=rule_judge.MODEL,
            base_url=server.base_url,
            prices_per_1k=rule_judge.PRICES_PER_1K,
            api_key_env=None,
            **settings,
        )
    if config.judge_model is None:
        raise ValueError(
            f"{benchmark.title} is scored by a judge model: give --judge-model (the paper's: "
            f"{benchmark.judge_model}) and, for a server other than OpenAI's, --judge-base-url; the key is read "
            "from OPENAI_API_KEY (or --judge-serve rules: the tiny preset's rule judge, offline)"
        )
    return Judge(model=config.judge_model, base_url=config.judge_base_url, **settings)


def evaluate(config: EvalConfig, out: str | Path) -> dict:
    """Generate (sharded), merge, score and write metrics.json; returns what it wrote."""
    out = Path(out)
    # One evaluation job writes `out` at a time (issue 18: after a lost Snakemake, the rerun's job and the one
    # still running both wrote the same shard), from before it deletes anything there.
    with (
        WriterLock(out / WRITER_LOCK, f"the answers and metrics in {out}"),
        contextlib.ExitStack() as stack,  # a judge server of this run stops with it
    ):
        return _evaluate(config, out, stack)


def _evaluate(config: EvalConfig, out: Path, stack: contextlib.ExitStack) -> dict:
    benchmark = config.resolved()
    folder = folder_of(benchmark, config.data_root)
    questions = benchmark.questions(folder)
    keys = [question_key(q.question_id) for q in questions]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{benchmark.name}: question ids repeat in {folder}; each question needs its own id")
    judge = _judge(config, benchmark, out, stack) if benchmark.judged else None
    # A metrics.json of an earlier run is not this run's result: it goes now, and comes back only if this run
    # scores (a run that fails leaves none).
    (out / "metrics.json").unlink(missing_ok=True)

    started = time.monotonic()
    digest = sha256_tree(Path(config.model))
    answers = prepare_shards(out / "shards", made_by(config, benchmark, digest), questions, config.shards)
    answers["resumed"] = sum(
        len(read_predictions(shard_path(out / "shards", i, config.shards))[0]) for i in range(config.shards)
    )
    if config.shards == 1:
        run_shard(config, out, 0, digest)
    else:
        _run_shards(config, out, digest)
    shards = [shard_path(out / "shards", i, config.shards) for i in range(config.shards)]
    predictions = merge(shards, questions)
    (out / "predictions.jsonl").write_text(
        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
    )
    result = benchmark.score(folder, predictions, judge=judge)
    submission = benchmark.submission(folder, predictions, out / "submission") if benchmark.submission else []

    metrics = {
        "benchmark": benchmark.name,
        "title": benchmark.title,
        "split": benchmark.split,
        "headline": {
            "metric": benchmark.headline_metric,
            "value": None if math.isnan(result.headline) else result.headline,
        },
        "metrics": result.metrics,
        "n": result.n,
        "prompt_variant": config.prompt_variant,
        "judge": None
        if judge is None
        else {"model": judge.model, "runs": judge.runs, "usage": judge.usage()},
        "model": {"path": config.model, "digest": digest},
        "submission": [str(path) for path in submission],
        "answers": answers,  # how many were resumed, moved from another shard count, started over (and why)
        "config": dataclasses.asdict(config),
        "wall_time_s": time.monotonic() - started,
        "git_commit": git_commit(),
        "packages": package_versions(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return metrics
