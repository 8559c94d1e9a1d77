"""The Snakemake workflow: lint, format, the DAGs of both configs, targets, schema errors, rule directives,
profiles, and that each rule's conda env holds every package its `cumo <step>` imports.

The DAGs are read from `snakemake --dry-run` (the job list it prints); what they should contain is derived
here from the config files and cumo/data/sources.yaml, not from the workflow's own functions.
"""

import argparse
import ast
import dataclasses
import importlib.metadata
import importlib.util
import inspect
import json
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cumo.cli import build_parser
from cumo.eval.benchmarks import NAMES
from cumo.model.convert import config_to_released
from cumo.model.presets import PRESETS, build_config
from cumo.train.stages import CLIP_SOURCE, LLM_SOURCES, ZERO_CONFIGS, StageConfig

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PAPER = ["--configfile", "config/config.yaml"]  # the default, named
TINY = ["--configfile", "config/tiny.yaml"]  # what `make demo` passes
RELEASED = ["--configfile", "config/released.yaml"]
RULE_FILES = sorted((ROOT / "workflow" / "rules").glob("*.smk"))
JUDGED = {"mmvet", "llava_wild", "mathvista"}
TRAINING_STAGES = ("pretrain", "pft", "sft")


def snakemake(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    """A run that neither waits for nor trips over a workflow running in this checkout (make demo)."""
    return subprocess.run(
        [
            SNAKEMAKE,
            "--snakefile",
            str(ROOT / "workflow" / "Snakefile"),
            "--nolock",
            "--rerun-incomplete",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


PLANNED: dict[tuple, subprocess.CompletedProcess] = {}


def planned(*args) -> subprocess.CompletedProcess:
    """`snakemake --dry-run --forceall --printshellcmds *args`: every job of the DAG, whatever outputs a run in
    this checkout left, with its shell command. Each dry run costs seconds (the memory plan imports torch):
    one per distinct command line and config contents, shared by the tests that read the same DAG."""
    flags = ("", *args)[: len(args)]  # what comes before each argument
    key = tuple(
        (ROOT / arg).read_text() if flag == "--configfile" else arg
        for flag, arg in zip(flags, args, strict=True)
    )
    if key not in PLANNED:
        PLANNED[key] = snakemake("--dry-run", "--forceall", "--printshellcmds", *args)
    return PLANNED[key]


def dry_run(*args) -> list[dict]:
    """The jobs `planned(*args)` lists: [{"rule", "output": [...], "wildcards": {...}, "resources": "...",
    "shell": "..."}]."""
    result = planned(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = []
    for line in result.stdout.splitlines():
        if match := re.fullmatch(r"(?:local)?rule (\S+):", line):
            jobs.append({"rule": match[1], "output": [], "wildcards": {}, "resources": "", "shell": ""})
        elif jobs and (match := re.fullmatch(r"    output: (.*)", line)):
            jobs[-1]["output"] = match[1].split(", ")
        elif jobs and (match := re.fullmatch(r"    wildcards: (.*)", line)):
            jobs[-1]["wildcards"] = dict(pair.split("=", 1) for pair in match[1].split(", "))
        elif jobs and (match := re.fullmatch(r"    resources: (.*)", line)):
            jobs[-1]["resources"] = match[1]
        elif jobs and (match := re.fullmatch(r"Shell command: (.*)", line)):
            jobs[-1]["shell"] = match[1]
    return jobs


def outputs(jobs, rule) -> set[str]:
    return {path for job in jobs if job["rule"] == rule for path in job["output"]}


def load(path) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def source_closure(names, sources) -> set[str]:
    """The sources `names` need, with everything they require (cumo/data/sources.yaml `requires`)."""
    needed, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += sources[name].get("requires", [])
    return needed


# -- lint and format -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("config", [[], TINY, RELEASED], ids=["default", "tiny", "released"])
def test_lint_reports_nothing(config):
    result = snakemake("--lint", *config)
    # Exit status 1 when anything is reported; the lints themselves go to stderr.
    assert result.returncode == 0 and "Congratulations" in result.stderr, result.stdout + result.stderr


def test_snakefmt_check():
    snakefmt = Path(sys.executable).parent / "snakefmt"
    result = subprocess.run([str(snakefmt), "--check", "workflow"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the DAGs --------------------------------------------------------------------------------------------


def test_paper_dag_builds_in_under_10_seconds():
    # CPU seconds of the whole dry run (start-up, parsing, the memory plan, DAG, printing): unlike wall time
    # they do not grow when other processes share the cores. The plan counts both paper models on the meta
    # device: importing torch and transformers' model code is about 3.5 s of it.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    jobs = dry_run(*PAPER)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert seconds < 10, f"snakemake --dry-run on config/config.yaml took {seconds:.1f} CPU s"
    assert {job["rule"] for job in jobs} >= {"download", "mixture", "train", "evaluate", "tables", "plots"}


def test_paper_targets_one_metrics_per_model_and_benchmark():
    config = load("config/config.yaml")
    jobs = dry_run(*PAPER)
    expected = {
        f"results/paper/eval/{model}/{bench}/metrics.json" for model in config["models"] for bench in NAMES
    }
    assert len(expected) == 2 * 13
    assert outputs(jobs, "evaluate") == expected
    assert outputs(jobs, "train") == {
        f"results/paper/models/{model}/{stage}" for model in config["models"] for stage in TRAINING_STAGES
    }
    # Every source of the three mixtures and of the 13 benchmarks, each downloaded by its own job.
    sources = load("cumo/data/sources.yaml")
    wanted = [name for mixture in config["mixtures"].values() for name in mixture["sources"]]
    wanted += [f"eval_{bench}" for bench in NAMES]
    wanted += ["clip_vit_large_patch14_336", "mistral_7b_instruct_v0_2", "mixtral_8x7b_instruct_v0_1"]
    assert {job["wildcards"]["source"] for job in jobs if job["rule"] == "download"} == source_closure(
        wanted, sources
    )


def test_tiny_targets_are_every_benchmark_the_judged_ones_by_the_served_rule_judge():
    config = load("config/tiny.yaml")
    assert config["synthetic"] and config["train"]["device"] == "cpu"
    assert config["judge"] == {
        "serve": "rules",
        "runs": 1,
        "max_gave_up_share": 1.0,
    }  # offline: no server, no key
    jobs = dry_run(*TINY)
    blanked = {f"results/tiny/eval/tiny-blank-images/{bench}/metrics.json" for bench in ("gqa", "pope")}
    assert outputs(jobs, "evaluate") == blanked | {
        f"results/tiny/eval/tiny/{bench}/metrics.json" for bench in NAMES
    }
    assert {job["rule"] for job in jobs} == {
        "synthetic", "mixture", "train", "evaluate", "tables", "plots", "all"
    }  # fmt: skip
    for bench in JUDGED:
        command = eval_command(f"results/tiny/eval/tiny/{bench}/metrics.json", *TINY)
        assert command.endswith(
            f"--judge-serve rules --judge-runs 1 --judge-max-gave-up 1.0 > results/tiny/logs/eval/tiny/{bench}.log 2>&1"
        )
    assert "--judge" not in eval_command("results/tiny/eval/tiny/gqa/metrics.json", *TINY)


def with_judge(tmp_path, judge) -> list[str]:
    """The tiny config with `judge` in place of its own, as --configfile arguments."""
    path = tmp_path / "tiny_judge.yaml"
    path.write_text(yaml.safe_dump(load("config/tiny.yaml") | {"judge": judge}))
    return ["--configfile", str(path)]


def test_without_a_judge_the_judged_benchmarks_are_left_out(tmp_path):
    jobs = dry_run(*with_judge(tmp_path, None))
    evaluated = {path for path in outputs(jobs, "evaluate") if "/eval/tiny/" in path}
    assert evaluated == {
        f"results/tiny/eval/tiny/{bench}/metrics.json" for bench in NAMES if bench not in JUDGED
    }


def test_each_judged_benchmark_gets_its_own_judge_model(tmp_path):
    # The paper's: GPT-4 0613 grades MM-Vet and reviews LLaVA-W over 3 runs, gpt-3.5-turbo reads MathVista.
    paper = {
        bench: eval_command(f"results/paper/eval/cumo-mistral-7b/{bench}/metrics.json", *PAPER)
        for bench in JUDGED
    }
    assert paper["mmvet"].endswith(
        "--judge-model gpt-4-0613 --judge-runs 3 > results/paper/logs/eval/cumo-mistral-7b/mmvet.log 2>&1"
    )
    assert "--judge-model gpt-4-0613 --judge-runs 3 >" in paper["llava_wild"]
    assert "--judge-model gpt-3.5-turbo --judge-runs 3 >" in paper["mathvista"]
    # `models` over `model` over the benchmark's paper judge; base_url goes to every one.
    url = "http://127.0.0.1:8000/v1"
    for judge, expected in [
        ({"runs": 1}, {"mmvet": "gpt-4-0613", "llava_wild": "gpt-4-0613", "mathvista": "gpt-3.5-turbo"}),
        (
            {"model": "m", "models": {"mathvista": "x"}, "runs": 1},
            {"mmvet": "m", "llava_wild": "m", "mathvista": "x"},
        ),
        (
            {"models": {"mmvet": "y"}, "base_url": url, "runs": 1},
            {"mmvet": "y", "llava_wild": "gpt-4-0613", "mathvista": "gpt-3.5-turbo"},
        ),
    ]:
        config = with_judge(tmp_path, judge)
        at = f" --judge-base-url {url}" if "base_url" in judge else ""
        for bench, model in expected.items():
            command = eval_command(f"results/tiny/eval/tiny/{bench}/metrics.json", *config)
            assert f" --judge-model {model} --judge-runs 1{at} >" in command
    # The judge's settings, where the config gives them (issue 17).
    settings = {"timeout_s": 30, "attempts": 3, "backoff_s": 1.5, "max_gave_up_share": 0.1}
    command = eval_command(
        "results/tiny/eval/tiny/mmvet/metrics.json", *with_judge(tmp_path, {"runs": 1} | settings)
    )
    assert (
        " --judge-model gpt-4-0613 --judge-runs 1 --judge-timeout 30 --judge-attempts 3 --judge-backoff 1.5"
        " --judge-max-gave-up 0.1 >" in command
    )


def evaluation(target: str, *config) -> dict:
    """The evaluate job of `config`'s whole DAG that writes `target`."""
    (job,) = [job for job in dry_run(*config) if job["rule"] == "evaluate" and target in job["output"]]
    return job


def eval_command(target: str, *config) -> str:
    command = evaluation(target, *config)["shell"]
    assert command.startswith("exec cumo eval"), command
    return command


def test_a_blank_images_model_is_its_model_evaluated_with_blank_images():
    job = evaluation("results/tiny/eval/tiny-blank-images/pope/metrics.json", *TINY)
    command = job["shell"]
    # The tiny run's CPU job asks for the tiny config's cores, not the paper's 32.
    assert re.search(r"\bcpus_per_task=2\b", job["resources"]), job["resources"]
    assert "--model results/tiny/models/tiny/sft " in command and "--blank-images" in command
    assert "--shards 1 --gpus-per-shard 1 --device cpu" in command  # on CPU a shard is one process
    command = eval_command("results/tiny/eval/tiny/vqav2/metrics.json", *TINY)
    assert "--split val" in command and "--blank-images" not in command


def test_one_benchmark_schedules_only_its_ancestors():
    target = "results/paper/eval/cumo-mistral-7b/textvqa/metrics.json"
    jobs = dry_run(target, *PAPER)  # a target before --configfile, which takes every file after it
    config, sources = load("config/config.yaml"), load("cumo/data/sources.yaml")
    wanted = [name for mixture in config["mixtures"].values() for name in mixture["sources"]]
    wanted += ["eval_textvqa", "clip_vit_large_patch14_336", "mistral_7b_instruct_v0_2"]  # not Mixtral's
    assert outputs(jobs, "evaluate") == {target}
    assert outputs(jobs, "train") == {
        f"results/paper/models/cumo-mistral-7b/{stage}" for stage in TRAINING_STAGES
    }
    assert outputs(jobs, "mixture") == {
        f"results/paper/data/{stage}.{kind}" for stage in TRAINING_STAGES for kind in ("arrow", "stats.json")
    }
    downloaded = {job["wildcards"]["source"] for job in jobs if job["rule"] == "download"}
    assert downloaded == source_closure(wanted, sources)
    assert {job["rule"] for job in jobs} == {"download", "mixture", "train", "evaluate"}


def with_config(tmp_path, path="config/config.yaml", **sections) -> list[str]:
    """`path`'s config with `sections` replaced, as --configfile arguments."""
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(load(path) | sections))
    return ["--configfile", str(changed)]


def test_a_paper_run_on_40_gb_gpus_stops_before_any_job_naming_the_job_and_what_to_change(tmp_path):
    cluster = {"gpus_per_node": 8, "gpu_memory_gb": 40, "host_memory_gb": 1000}
    result = snakemake("--dry-run", "--forceall", *with_config(tmp_path, cluster=cluster))
    message = result.stdout + result.stderr
    assert result.returncode != 0 and "rule " not in message and "Job stats" not in message, message
    assert "the memory plan refuses the config" in message
    assert "- train cumo-mixtral-8x7b pretrain: 49.9 GB per GPU > 40.0 GB" in message
    assert (
        "Change the config: train.recipe.pretrain.micro_batch_size: 8 (the same global batch 256, more "
        "accumulation)" in message
    )
    assert "- evaluate cumo-mixtral-8x7b: 12 GPUs on one node > the node's 8" in message
    assert "eval.shards: 2 (3 GPUs each on one node)" in message


def test_train_and_evaluate_ask_slurm_for_the_planned_memory_and_gpus():
    """mem_mb of every train and evaluate job is the plan's host memory per node (in MiB, Slurm's MB); an
    evaluation's GPUs are its shards x the GPUs the plan fits the model on; the recipe's overrides reach
    `cumo train --set`."""
    from cumo.plan import Cluster, plan_config, slurm_mem_mb

    config = load("config/config.yaml")
    plans = {
        (job.rule, job.wildcards["model"], job.wildcards.get("stage")): job for job in plan_config(config)
    }
    result = planned(*PAPER)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = re.findall(
        r"\nrule (train|evaluate):\n((?:    .*\n)+)(?:.*\n)*?Shell command: (.*)", result.stdout
    )
    assert len(jobs) == 2 * 3 + 2 * 13
    cluster = Cluster.from_config(config["cluster"])
    for rule, block, command in jobs:
        wildcards = dict(pair.split("=") for pair in re.search(r"wildcards: (.*)", block)[1].split(", "))
        resources = dict(pair.split("=", 1) for pair in re.search(r"resources: (.*)", block)[1].split(", "))
        plan = plans[(rule, wildcards["model"], wildcards.get("stage"))]
        assert int(resources["mem_mb"]) == slurm_mem_mb(plan, 1, cluster), (rule, wildcards)
        if rule == "evaluate":
            gpus = {"cumo-mistral-7b": 1, "cumo-mixtral-8x7b": 2}[wildcards["model"]]
            assert plan.gpus_per_rank == gpus and resources["gres"] == f"gpu:{4 * gpus}"
            assert resources["cpus_per_task"] == str(config["eval"]["cpus"]) == "32"
            assert f"--shards 4 --gpus-per-shard {gpus} " in command
        else:
            assert ("--set micro_batch_size=16 " in command) == (wildcards["stage"] == "pretrain"), command


def test_training_commands_follow_the_config():
    """sft spans two nodes as an mpi job (its srun starts the ranks); one-node stages run torchrun."""
    result = planned("results/paper/models/cumo-mixtral-8x7b/sft", *PAPER)
    text = result.stdout
    assert result.returncode == 0, text + result.stderr
    sft = re.search(r"wildcards: model=cumo-mixtral-8x7b, stage=sft\n    resources: (.*)", text)[1]
    assert "nodes=2" in sft and "tasks_per_node=8" in sft and "mpi=srun" in sft and "gres=gpu:8" in sft
    assert "slurm_extra=--signal=TERM@300" in sft
    pretrain = re.search(r"wildcards: model=cumo-mixtral-8x7b, stage=pretrain\n    resources: (.*)", text)[1]
    assert "nodes=1" in pretrain and "mpi" not in pretrain and "cpus_per_task=64" in pretrain
    assert (
        "exec cumo launch --nodes 2 --cpus-per-task 8 --processes 8 --device cuda -- train"
        " --stage sft --preset cumo-mixtral-8x7b" in text
    )
    assert (
        "--checkpoints checkpoints/paper/cumo-mixtral-8x7b/sft --previous results/paper/models/cumo-mixtral-8x7b/pft"
        in text
    )


@pytest.mark.parametrize("model", ["cumo-mistral-7b", "cumo-mixtral-8x7b"])
def test_paper_pretrain_starts_from_downloaded_base_models(model):
    """The training job reads CLIP and the LLM from the data tree, where the download rule (on the submitting
    host) put the Hub repos that cumo/train/stages.py names; pft and sft start from the stage before."""
    result = planned(f"results/paper/models/{model}/pft", *PAPER)
    assert result.returncode == 0, result.stdout + result.stderr
    sources = load("cumo/data/sources.yaml")
    (pretrain,) = re.findall(r"Shell command: exec cumo launch .* --stage pretrain .*", result.stdout)
    (pft,) = re.findall(r"Shell command: exec cumo launch .* --stage pft .*", result.stdout)
    parts = dict(re.findall(r"--(clip|llm) data/(\S+)", pretrain))
    assert set(parts) == {"clip", "llm"} and "--clip" not in pft and "--llm" not in pft
    repos = {}
    for part, folder in parts.items():
        (name,) = [name for name, source in sources.items() if source["folder"] == folder]
        (repo,) = sources[name]["hub"]
        repos[part] = repo["repo"]
        assert f"data/{folder}/.{name}.done" in result.stdout  # an input: downloaded before the job starts
        # Pinned by the lock kept with the declarations, which the job writes to on a first download.
        assert f"cumo download {name} --data-root data >" in result.stdout
    assert repos == {"clip": CLIP_SOURCE, "llm": LLM_SOURCES[model]}


RELEASED_REPOS = {
    "cumo-mistral-7b": "shi-labs/CuMo-mistral-7b",
    "cumo-mixtral-8x7b": "shi-labs/CuMo-mixtral-8x7b",
}


def shell_commands(*args) -> list[str]:
    return [job["shell"] for job in dry_run(*args) if job["shell"]]


def test_the_released_checkpoints_are_downloaded_converted_and_evaluated_on_every_benchmark():
    config, sources = load("config/released.yaml"), load("cumo/data/sources.yaml")
    jobs = dry_run(*RELEASED)
    assert {job["rule"] for job in jobs} == {
        "download",
        "convert_released",
        "evaluate",
        "tables",
        "plots",
        "all",
    }
    assert outputs(jobs, "evaluate") == {
        f"results/released/eval/{model}/{bench}/metrics.json" for model in RELEASED_REPOS for bench in NAMES
    }
    # Named as the paper's rows, so that the table puts the reported numbers next to them.
    assert (
        config["models"].keys()
        == RELEASED_REPOS.keys()
        == load("cumo/report/paper_results.yaml")["models"].keys()
    )
    wanted = [f"eval_{bench}" for bench in NAMES] + [entry["released"] for entry in config["models"].values()]
    assert {job["wildcards"]["source"] for job in jobs if job["rule"] == "download"} == source_closure(
        wanted, sources
    )
    commands = shell_commands(*RELEASED)
    for model, entry in config["models"].items():
        source = sources[entry["released"]]
        (repo,) = source["hub"]
        assert (repo["repo"], repo["repo_type"], entry["preset"]) == (RELEASED_REPOS[model], "model", model)
        assert set(repo["allow"]) == {
            "config.json", "model.safetensors.index.json", "model-*-of-*.safetensors", "tokenizer.model",
            "tokenizer_config.json", "special_tokens_map.json",
        }  # fmt: skip
        converted = f"results/released/models/{model}/released"
        assert (
            f"cumo convert from-released data/{source['folder']} {converted} --preset {model} > "
            f"results/released/logs/convert/{model}.log 2>&1"
        ) in commands
        # GPUs a shard from the memory plan of the preset, before anything is downloaded: 16.5 GB or 95 GB of bf16.
        gpus = {"cumo-mistral-7b": 1, "cumo-mixtral-8x7b": 2}[model]
        evaluations = [
            command for command in commands if command.startswith("exec cumo eval") and converted in command
        ]
        assert len(evaluations) == 13 and all(
            f"--shards 4 --gpus-per-shard {gpus} " in c for c in evaluations
        )


def test_the_slurm_profile_runs_the_released_config_when_named():
    jobs = dry_run("--profile", "profiles/slurm", "--software-deployment-method", "env-modules", *RELEASED)
    assert "train" not in {job["rule"] for job in jobs}
    assert {path.split("/")[3] for path in outputs(jobs, "evaluate")} == RELEASED_REPOS.keys()


def test_a_released_directory_is_converted_and_evaluated_planned_from_its_config(tmp_path):
    released = tmp_path / "CuMo-mistral-7b"
    released.mkdir()
    # Its config.json in the released layout (the plan reads it to place the evaluation).
    (released / "config.json").write_text(json.dumps(config_to_released(build_config("tiny-mixtral"))))
    config = load("config/config.yaml") | {
        "models": {"cumo-mistral-7b-released": {"released": str(released)}}
    }
    path = tmp_path / "released.yaml"
    path.write_text(yaml.safe_dump(config))
    target = "results/paper/eval/cumo-mistral-7b-released/gqa/metrics.json"
    args = (target, "--configfile", str(path))
    jobs = dry_run(*args)
    assert outputs(jobs, "convert_released") == {"results/paper/models/cumo-mistral-7b-released/released"}
    assert {job["rule"] for job in jobs} == {"convert_released", "download", "evaluate"}
    (convert,) = [command for command in shell_commands(*args) if command.startswith("cumo convert")]
    assert (
        convert.startswith(f"cumo convert from-released {released} results/paper/")
        and "--preset" not in convert
    )


@pytest.mark.parametrize(
    "entry, named",
    [
        (
            {"released": "cumo_mistral_7b"},
            "config models.m: released names the source 'cumo_mistral_7b', fetched by the run: give its "
            "architecture too (preset: cumo-mistral-7b or cumo-mixtral-8x7b)",
        ),
        (
            {"released": "cumo_mistral_7", "preset": "cumo-mistral-7b"},
            "config models.m.released: 'cumo_mistral_7' is neither a source of cumo/data/sources.yaml (its model "
            "repos: clip_vit_large_patch14_336, mistral_7b_instruct_v0_2, mixtral_8x7b_instruct_v0_1, "
            "cumo_mistral_7b, cumo_mixtral_8x7b) nor a directory here; a directory is written ./cumo_mistral_7",
        ),
    ],
)
def test_a_released_model_without_its_preset_or_source_stops_naming_the_fix(tmp_path, entry, named):
    result = snakemake("--dry-run", *with_config(tmp_path, "config/released.yaml", models={"m": entry}))
    assert result.returncode != 0 and named in result.stdout + result.stderr, result.stdout + result.stderr


# -- the schema ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, named",
    [
        (
            {"eval": {"device": "gpu", "dtype": "float32", "batch_size": 8, "shards": 1, "cpus": 2}},
            ["instance['eval']['device']", "'gpu' is not one of ['cuda', 'cpu']"],
        ),
        ({"benchmarks": ["textvqa", "vizwiz"]}, ["instance['benchmarks'][1]", "'vizwiz' is not one of"]),
        ({"modles": {"tiny": {"preset": "tiny"}}}, ["'modles' was unexpected"]),
        (
            {"models": {"tiny": {"preset": "tiny-llama"}}},
            ["instance['models']['tiny']['preset']", "'tiny-llama' is not one of ['tiny', 'tiny-mixtral'"],
        ),
        ({"judge": {"model": "m", "base_url": None}}, ["instance['judge']", "'runs' is a required property"]),
        (
            {"judge": {"serve": "rules", "runs": 1, "model": "m"}},
            ["instance['judge']['model']", "should not be valid"],
        ),
        (
            {"judge": {"serve": "gpt", "runs": 1}},
            ["instance['judge']['serve']", "'gpt' is not one of ['rules']"],
        ),
        (
            {"judge": {"models": {"gqa": "m"}, "runs": 1}},
            ["instance['judge']['models']", "'gqa' is not one of"],
        ),
        (  # issue 17: retried as a network blip before
            {"judge": {"base_url": "htp//localhost:8000", "runs": 1}},
            ["instance['judge']['base_url']", "'htp//localhost:8000' does not match"],
        ),
        (
            {"judge": {"serve": "rules", "runs": 1, "max_gave_up_share": 5}},
            ["instance['judge']['max_gave_up_share']", "5 is greater than the maximum of 1"],
        ),
        ({"train": {"device": "cpu"}}, ["instance['train']", "'processes_per_node' is a required property"]),
        (
            {
                "mixtures": {
                    stage: {"jsons": ["a.json"], "image_folder": "", "sources": []}
                    for stage in ("pretrain", "pft")
                }
            },
            ["instance['mixtures']", "'sft' is a required property"],
        ),
        (
            {"train": load("config/tiny.yaml")["train"] | {"recipe": {"sfft": {"epochs": 1}}}},
            ["instance['train']['recipe']", "'sfft' is not one of ['pretrain', 'pft', 'sft']"],
        ),
        (
            {"train": load("config/tiny.yaml")["train"] | {"recipe": {"sft": {"zero": "zero4"}}}},
            [
                "instance['train']['recipe']['sft']['zero']",
                "'zero4' is not one of ['zero2', 'zero3', 'zero3_offload']",
            ],
        ),
    ],
)
def test_a_bad_config_stops_naming_the_key_and_what_is_allowed(tmp_path, change, named):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(load("config/tiny.yaml") | change))
    result = snakemake("--dry-run", "--configfile", str(path))
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "Error validating config file" in message, message
    for words in named:
        assert words in message, message


def test_a_configfile_naming_its_run_replaces_the_default_one_without_overrides_its_keys(tmp_path):
    """The tiny config replaces the paper's, keeping none of its models, recipes or judges, with `--configfiles`
    alone: the arguments a job that Snakemake spawns on a cluster gets (never --replace-workflow-config, which
    used to be needed and left every Slurm job of another config merging it into the default)."""
    jobs = dry_run("--configfiles", "config/tiny.yaml")
    assert {job["output"][0].split("/")[1] for job in jobs if job["rule"] in ("train", "evaluate")} == {
        "tiny"
    }
    assert all("gpt-" not in job["shell"] for job in jobs)  # the tiny run's rule judge, not the paper's GPTs
    override = tmp_path / "cpus.yaml"
    override.write_text("eval:\n  cpus: 16\n")  # no `run`: merged into the paper's `eval`
    evaluations = [job for job in dry_run("--configfile", str(override)) if job["rule"] == "evaluate"]
    assert len(evaluations) == 2 * len(NAMES)
    assert all(job["output"][0].startswith("results/paper/") for job in evaluations)
    assert all(re.search(r"\bcpus_per_task=16\b", job["resources"]) for job in evaluations)
    assert all("--device cuda --dtype bfloat16" in job["shell"] for job in evaluations), evaluations[0]


def test_a_config_that_trains_needs_its_data_and_ranks(tmp_path):
    """config/released.yaml has neither mixtures nor train; a model trained here needs both."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({key: value for key, value in load("config/tiny.yaml").items() if key != "train"})
    )
    result = snakemake("--dry-run", "--configfile", str(path))
    message = result.stdout + result.stderr
    assert result.returncode != 0 and "'train' is a required property" in message, message


def test_a_mixture_json_no_source_declares_stops_the_dry_run_before_any_download(tmp_path):
    """A misspelt path passed the dry run and failed only when its mixture job ran, after the downloads."""
    config = load("config/config.yaml")
    config["mixtures"]["pft"]["jsons"] = ["jsons/cumo_pft_alava.json"]
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--dry-run", "--configfile", str(path))
    message = result.stdout + result.stderr
    assert result.returncode != 0 and "rule download" not in message
    assert "config mixtures.pft.jsons: 'jsons/cumo_pft_alava.json' is no file that its sources" in message
    assert "jsons/cumo_pft_allava.json" in message  # what they do declare


def test_conversions_are_named_after_their_source():
    """common.smk finds a mixture JSON among a source's conversions by that name (declared_files)."""
    for module in sorted((ROOT / "cumo" / "data" / "sources").glob("[a-z]*.py")):
        tree = ast.parse(module.read_text())
        converts = [
            node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "convert"
        ]
        if not converts:  # it only fetches (ocr_vqa's images)
            continue
        (convert,) = converts
        returned = [node.value for node in ast.walk(convert) if isinstance(node, ast.Return)]
        keys = [key.value for value in returned if isinstance(value, ast.Dict) for key in value.keys]
        assert keys and all(key.startswith(module.stem) for key in keys), (module.name, keys)


def test_the_schema_leaves_the_packages_names_to_the_package():
    """Benchmarks, presets, stages, ZeRO configs, parts and schedules are listed once, in cumo: common.smk fills
    the schema's $defs with them (the bad-config cases above show the lists in the errors). A list typed into
    the schema again would drift from the package's."""
    schema = (ROOT / "workflow/schemas/config.schema.yaml").read_text()
    for names in (NAMES, PRESETS, TRAINING_STAGES, ZERO_CONFIGS, ("vision", "connector", "llm"), ("cosine",)):
        for name in names:
            assert not re.search(rf"\benum: \[[^]]*\b{re.escape(name)}\b", schema), name
    recipe = load("workflow/schemas/config.schema.yaml")["$defs"]["recipe"]["properties"]
    assert set(recipe) == {field.name for field in dataclasses.fields(StageConfig)} - {"name"}
    for name in ("config/config.yaml", "config/tiny.yaml"):
        assert load(name)["benchmarks"] == list(NAMES), f"{name} lists the 13 benchmarks in Table 1's order"


# -- rules: directives and envs --------------------------------------------------------------------------


def rule_blocks() -> dict[str, str]:
    """Every named `rule NAME:` of the rule files, with its text (the loop-made target rules have no shell)."""
    blocks = {}
    for path in RULE_FILES:
        for match in re.finditer(r"^rule (\w+):\n((?:    .*\n|\n)*)", path.read_text(), re.M):
            blocks[match[1]] = match[2]
    return blocks


HEAVY = {"download", "synthetic", "mixture", "train", "convert_released", "evaluate"}


def test_every_rule_has_log_conda_and_heavy_ones_a_benchmark():
    blocks = rule_blocks()
    assert set(blocks) == HEAVY | {"tables", "plots"}
    for name, block in blocks.items():
        assert "\n    log:" in block, f"rule {name} has no log:"
        conda = re.search(r"\n    conda:\n        \"(.*)\"", block)
        assert conda and (ROOT / "workflow" / "rules" / conda[1]).resolve().is_file(), (
            f"rule {name}: conda env"
        )
        assert ("\n    benchmark:" in block) == (name in HEAVY), f"rule {name}: benchmark:"
        assert "retries:" not in block, (
            f"rule {name}: retries come from the profile (new Slurm job per attempt)"
        )


def step_function(step: str, kind: str | None):
    """The function `cumo <step> [kind]` runs, from the CLI's own parser."""
    parser = build_parser()
    (steps,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    sub = steps.choices[step]
    if kind is not None:
        (kinds,) = [action for action in sub._actions if isinstance(action, argparse._SubParsersAction)]
        sub = kinds.choices[kind]
    return sub.get_default("function")


def module_path(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:  # a name inside a module (`from cumo.x import function`)
        return None
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def optional_imports(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside `try: ... except ImportError:` (a feature used only where installed)."""
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(handler.type, ast.Name) and handler.type.id in ("ImportError", "ModuleNotFoundError")
            for handler in node.handlers
        ):
            optional |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return optional


def imported_names(tree: ast.AST, package: str) -> set[str]:
    """Modules named by the imports of `tree` (at any depth, lazy ones included, optional ones not), and
    every module of a package whose module names it builds (f"cumo.x.{name}", for importlib)."""
    names, optional = set(), optional_imports(tree)
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]).strip(".")
            names.add(base)
            if base.split(".")[0] == "cumo":  # `from cumo.x import module`; find_spec would import others
                names |= {f"{base}.{a.name}" for a in node.names if module_path(f"{base}.{a.name}")}
        elif isinstance(node, ast.JoinedStr) and isinstance(node.values[0], ast.Constant):
            # f"cumo.data.sources.{name}": a module name built to be imported (importlib.import_module)
            if re.fullmatch(r"cumo(\.\w+)+\.", str(node.values[0].value)):
                package_dir = module_path(node.values[0].value.rstrip(".")).parent
                names |= {f"{node.values[0].value}{path.stem}" for path in package_dir.glob("*.py")}
    return names


def third_party_imports(function) -> set[str]:
    """Top-level names of every non-cumo module reachable from `function`'s body through cumo's modules."""
    found, seen = set(), set()
    todo = [(ast.parse(inspect.getsource(function).strip()), "cumo")]
    todo.append((ast.parse(inspect.getsource(sys.modules["cumo.cli"].main)), "cumo"))
    while todo:
        tree, package = todo.pop()
        for name in imported_names(tree, package):
            if name.split(".")[0] != "cumo":
                found.add(name.split(".")[0])
                continue
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # a module imports its parent packages first
                module = ".".join(parts[:depth])
                path = module_path(module)
                if module in seen or path is None:
                    continue
                seen.add(module)
                todo.append(
                    (
                        ast.parse(path.read_text()),
                        module if path.name == "__init__.py" else module.rpartition(".")[0],
                    )
                )
    return {name for name in found if name not in sys.stdlib_module_names}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def with_dependencies(names: set[str]) -> set[str]:
    """`names` and everything they require (installed metadata, extras left out): what pip installs."""
    closed, todo = set(), list(names)
    while todo:
        name = normalise(todo.pop())
        if name in closed:
            continue
        closed.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [re.match(r"[A-Za-z0-9_.-]+", r)[0] for r in requires if "extra ==" not in r]
    return closed


def env_packages(env_file: Path) -> set[str]:
    """The packages an env file installs: pip pins, plus deepspeed where its post-deploy script builds it."""
    env = yaml.safe_load(env_file.read_text())
    pip = next(entry["pip"] for entry in env["dependencies"] if isinstance(entry, dict))
    names = {re.match(r"[A-Za-z0-9_.-]+", requirement)[0] for requirement in pip if requirement[0] != "-"}
    post_deploy = env_file.with_name(env_file.stem + ".post-deploy.sh")
    names |= set(re.findall(r"pip install --no-build-isolation (\w+)==", post_deploy.read_text()))
    return names


def rule_steps() -> list[tuple[str, str, str, str | None]]:
    """(rule, env file, step, kind) for every `cumo <step> [kind]` a rule's shell runs (launch's `-- train` too)."""
    found = []
    for name, block in rule_blocks().items():
        env = re.search(r"\n    conda:\n        \"(.*)\"", block)[1]
        shell = "".join(re.findall(r'"(.*)"', block.split("\n    shell:")[1]))
        for step, rest in re.findall(r"(?:cumo|--) (\w+)( \w+)?", shell):
            kind = rest.strip() if step == "report" else None
            found.append((name, env, step, kind))
    return found


@pytest.mark.parametrize("rule, env, step, kind", rule_steps())
def test_every_module_a_rule_imports_is_in_its_env(rule, env, step, kind):
    env_file = (ROOT / "workflow" / "rules" / env).resolve()
    imports = third_party_imports(step_function(step, kind))
    distributions = importlib.metadata.packages_distributions()
    needed = {normalise(dist) for name in imports for dist in distributions.get(name, [name])}
    missing = needed - with_dependencies(env_packages(env_file))
    assert not missing, f"rule {rule} (`cumo {step}`) imports {sorted(missing)}, not in {env_file.name}"


def test_env_files_are_pinned_and_install_cumo():
    for env_file in sorted((ROOT / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        pip = next(entry["pip"] for entry in env["dependencies"] if isinstance(entry, dict))
        packages = [requirement for requirement in pip if requirement[0] != "-"]  # not --extra-index-url
        assert all("==" in requirement for requirement in packages), f"{env_file.name}: unpinned {packages}"
        post_deploy = env_file.with_name(env_file.stem + ".post-deploy.sh").read_text()
        assert (
            "pip install --no-deps --no-build-isolation -e ." in post_deploy
            or "data.post-deploy.sh" in post_deploy
        )


# -- profiles --------------------------------------------------------------------------------------------


def test_default_profile_resources_name_real_rules_and_grow_with_attempt():
    resources = load("profiles/default/config.yaml")["set-resources"]
    assert set(resources) == set(rule_blocks()), "a misspelt rule name in set-resources is silently ignored"
    for rule, values in resources.items():
        # train's and evaluate's memory is the plan's (the rules' own mem_mb), which a profile value overrides
        assert ("mem_mb" in values) == (rule not in ("train", "evaluate")), rule
        for key in ("runtime", "mem_mb")[: 1 + (rule not in ("train", "evaluate"))]:
            first, second = (eval(str(values[key]), {"attempt": attempt}) for attempt in (1, 2))
            assert second > first, f"{rule}: {key} does not grow with the attempt"
    assert resources["train"]["slurm_extra"] == "'--signal=TERM@300'"


def test_slurm_profile_resubmits_and_runs_the_paper():
    profile = load("profiles/slurm/config.yaml")
    assert profile["executor"] == "slurm" and profile["retries"] >= 1 and profile["rerun-incomplete"]
    assert profile["software-deployment-method"] == "conda" and profile["slurm-status-command"] in (
        "sacct",
        "squeue",
    )
    assert "set-resources" not in profile, "profiles/default's set-resources would override it"
    assert "executor" not in load("profiles/local/config.yaml")
    # The profile as Snakemake reads it (with the plugin's options) plans the paper and nothing of the tiny
    # run; env modules instead of conda, which this machine lacks (a dry run builds no env either way).
    jobs = dry_run("--profile", "profiles/slurm", "--software-deployment-method", "env-modules")
    config = load("config/config.yaml")
    assert outputs(jobs, "evaluate") == {
        f"results/paper/eval/{model}/{bench}/metrics.json" for model in config["models"] for bench in NAMES
    }
