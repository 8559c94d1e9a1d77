# Config validation, the target lists and the input functions: everything the rules compute about paths
# (snakemake-workflows/rna-seq-star-deseq2 keeps the same split). Rules only wire what is named here.
import fnmatch
import os
import posixpath
import re
import shlex
from urllib.parse import urlsplit
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError

from cumo.data.download import SOURCES as SOURCES_FILE
from cumo.eval.benchmarks import NAMES, get
from cumo.model.presets import PRESETS
from cumo.plan import Cluster, PlanError, PlanRefused, check_config, slurm_mem_mb
from cumo.report.tables import PAPER_RESULTS
from cumo.train.stages import (
    CLIP_SOURCE,
    LLM_SOURCES,
    PARTS,
    PREVIOUS,
    SCHEDULERS,
    STAGES,
    ZERO_CONFIGS,
)

# The benchmarks a judge model scores, with the paper's judge (cumo/eval/benchmarks/<name>.py judge_model): a
# config judge without `model` uses these. Without a judge in the config they are not targets, and the table
# leaves them empty.
PAPER_JUDGES = {name: get(name).judge_model for name in NAMES if get(name).judged}
JUDGED = tuple(PAPER_JUDGES)

# The schema leaves the names the package defines to the package, each listed once there: its $defs get them
# here. snakemake.utils.validate reads a schema only from a file, so the filled one is checked as it checks
# one (Draft 2020-12, the first error found), with its message.
SCHEMA = yaml.safe_load(
    Path(workflow.source_path("../schemas/config.schema.yaml")).read_text()
)
for name, allowed in {
    "benchmark": NAMES,
    "judged": JUDGED,
    "preset": PRESETS,
    "stage": STAGES,
    "part": PARTS,
    "zero": ZERO_CONFIGS,
    "scheduler": SCHEDULERS,
}.items():
    SCHEMA["$defs"][name]["enum"] = list(allowed)
SCHEMA["$defs"]["every_stage"]["required"] = list(STAGES)
try:
    jsonschema.Draft202012Validator(SCHEMA).validate(config)
except jsonschema.ValidationError as error:
    raise WorkflowError("Error validating config file.", error) from None

# The memory plan of every training and evaluation job on the config's cluster (cumo/plan.py, `cumo plan`),
# before anything is submitted: a job that cannot fit stops the run here, a dry run too, naming the job and
# the config change that makes it fit. The Slurm requests below come from the same numbers.
try:
    PLAN = {
        (job.rule, job.wildcards["model"], job.wildcards.get("stage")): job
        for job in check_config(config)
    }
except (PlanError, PlanRefused) as error:
    raise WorkflowError(f"the memory plan refuses the config:\n{error}") from None
CLUSTER = Cluster.from_config(config.get("cluster"))

RUN = f"results/{config['run']}"
DATA = config["data_root"]
# The sources `cumo download` knows (package data, cumo/data/sources.yaml): a source's marker path and what it
# requires. Their lock (cumo/data/sources.lock.yaml, the pins each download job checks or learns) is no output:
# every job writes it (they merge their entries under a file lock), and Snakemake would delete it before each
# one. No input either: renewing a pin re-downloads nothing done.
SOURCES = yaml.safe_load(SOURCES_FILE.read_text())

MODELS = list(config["models"])
TRAINED = [
    name
    for name, model in config["models"].items()
    if "preset" in model and "released" not in model
]
# Another model of the config evaluated with blank images: the difference is what the images are worth.
BLANKED = {
    name: model["blank_images_of"]
    for name, model in config["models"].items()
    if "blank_images_of" in model
}
BENCHMARKS = [
    name for name in config["benchmarks"] if config["judge"] or name not in JUDGED
]
UNJUDGED = [name for name in config["benchmarks"] if name not in BENCHMARKS]

METRICS = [
    f"{RUN}/eval/{model}/{bench}/metrics.json"
    for model, entry in config["models"].items()
    for bench in BENCHMARKS
    if bench in entry.get("benchmarks", BENCHMARKS)
]
TABLES = expand(f"{RUN}/tables/main.{{ext}}", ext=("csv", "md", "tex"))
PLOTS = expand(f"{RUN}/plots/benchmarks.{{ext}}", ext=("png", "pdf")) + expand(
    f"{RUN}/plots/{{kind}}_{{model}}.{{ext}}",
    kind=("loss", "aux", "expert_load"),
    model=TRAINED,
    ext=("png", "pdf"),
)


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    stage="|".join(STAGES),
    bench="|".join(config["benchmarks"]),
    source="[a-z0-9_]+",


def source_marker(name):
    """`cumo download`'s completion marker of a source: <data_root>/<folder>/.<name>.done."""
    if name not in SOURCES:
        raise ValueError(
            f"source {name!r} (config) is not declared in cumo/data/sources.yaml; declared: {', '.join(SOURCES)}"
        )
    return f"{DATA}/{SOURCES[name]['folder']}/.{name}.done"


def required_markers(wildcards):
    """A download waits for the sources it requires, so each source is fetched by its own job."""
    return [
        source_marker(name) for name in SOURCES[wildcards.source].get("requires", [])
    ]


def declared_files(name):
    """fnmatch patterns, relative to the data root, of the files source `name` declares in cumo/data/sources.yaml:
    its Hub files (allow patterns), web and manual files, extracted folders, and its conversions, which are
    named after it (data/jsons/sources/<name>*.json; tests/test_workflow.py checks the modules keep to it).
    """
    source = SOURCES[name]
    folder = source["folder"]
    paths = [
        f"{folder}/{repo.get('into', '.')}/{pattern}"
        for repo in source.get("hub", [])
        for pattern in repo["allow"]
    ]
    paths += [
        f"{folder}/{item.get('file') or posixpath.basename(urlsplit(item['url']).path)}"
        for item in source.get("web", [])
    ]
    paths += [f"{folder}/{item['file']}" for item in source.get("manual", [])]
    paths += [
        f"{folder}/{path}"
        for step in source.get("extract", [])
        for path in step.get("expect", [])
    ]
    return [posixpath.normpath(path) for path in paths] + [
        f"jsons/sources/{name}*.json"
    ]


def check_mixture_jsons():
    """Each mixture JSON of a run on downloaded data is a file its sources declare: a misspelt path stops the
    run here, before any download, not when its mixture job runs (issue 17)."""
    for stage, mixture in config.get("mixtures", {}).items():
        needed, todo = set(), list(mixture["sources"])
        while todo:
            name = todo.pop()
            source_marker(name)  # an undeclared source stops here, naming it
            if name not in needed:
                needed.add(name)
                todo += SOURCES[name].get("requires", [])
        patterns = [
            pattern for name in sorted(needed) for pattern in declared_files(name)
        ]
        for path in mixture["jsons"]:
            if not any(
                fnmatch.fnmatch(posixpath.normpath(path), pattern)
                for pattern in patterns
            ):
                raise ValueError(
                    f"config mixtures.{stage}.jsons: {path!r} is no file that its sources "
                    f"({', '.join(mixture['sources'])}) declare in cumo/data/sources.yaml, which are: "
                    f"{', '.join(patterns)}. Fix the path, or add the source that makes it"
                )


if not config["synthetic"]:
    check_mixture_jsons()


def synthetic_flags(wildcards):
    world = config["synthetic"]
    sizes = ",".join(
        f"{stage}={count}" for stage, count in world.get("sizes", {}).items()
    )
    return f"--seed {world['seed']} --per-benchmark {world['per_benchmark']}" + (
        f" --sizes {sizes}" if sizes else ""
    )


def mixture_inputs(wildcards):
    """The stage's mixture JSONs when the shapes world writes them; otherwise the markers of their sources."""
    mixture = config["mixtures"][wildcards.stage]
    if config["synthetic"]:
        return [f"{DATA}/{path}" for path in mixture["jsons"]]
    return [source_marker(name) for name in mixture["sources"]]


def mixture_jsons(wildcards):
    return [f"{DATA}/{path}" for path in config["mixtures"][wildcards.stage]["jsons"]]


def image_folder_flag(wildcards):
    folder = config["mixtures"][wildcards.stage]["image_folder"]
    return f"--image-folder {shlex.quote(folder)}" if folder else ""


def model_preset(wildcards):
    return config["models"][wildcards.model]["preset"]


def previous_model(wildcards):
    """pft starts from pretrain's export, sft from pft's (co-upcycled); pretrain from the preset."""
    previous = PREVIOUS.get(wildcards.stage)
    return [f"{RUN}/models/{wildcards.model}/{previous}"] if previous else []


def previous_flag(wildcards, input):
    return f"--previous {input.previous}" if input.previous else ""


def hub_source(repo):
    """The declared source that fetches the Hub repo `repo` and nothing else."""
    names = [
        name
        for name, source in SOURCES.items()
        if [hub["repo"] for hub in source.get("hub", [])] == [repo]
    ]
    if len(names) != 1:
        raise WorkflowError(
            f"cumo/data/sources.yaml should declare one source of the Hub repo {repo} alone, not {names}: "
            "the paper presets' pretrain starts from it (cumo/train/stages.py CLIP_SOURCE, LLM_SOURCES)"
        )
    return names[0]


# The base weights a paper preset's pretrain starts from (cumo/train/stages.py CLIP_SOURCE, LLM_SOURCES), as
# the sources that fetch them: the download rule fetches them on the submitting host, so training jobs need no
# network.
BASE_MODELS = {
    preset: {"clip": hub_source(CLIP_SOURCE), "llm": hub_source(repo)}
    for preset, repo in LLM_SOURCES.items()
}


def base_models(wildcards):
    """{part: source} pretrain of this model starts from; {} for the tiny presets and the later stages."""
    if wildcards.stage != "pretrain":
        return {}
    return BASE_MODELS.get(model_preset(wildcards), {})


def base_model_markers(wildcards):
    return [source_marker(name) for name in base_models(wildcards).values()]


def base_model_flags(wildcards):
    return " ".join(
        f"--{part} {DATA}/{SOURCES[name]['folder']}"
        for part, name in base_models(wildcards).items()
    )


def loader_workers(wildcards):
    return config["train"]["loader_workers"]


def checkpoints_dir(wildcards):
    # Outside the stage's declared output, which Snakemake deletes before the job runs: a resubmitted job
    # resumes from here. Per run, so another run of the same model name never resumes this one's state.
    return f"checkpoints/{config['run']}/{wildcards.model}/{wildcards.stage}"


def train_nodes(wildcards):
    return config["train"]["nodes"][wildcards.stage]


def launch_flags(wildcards):
    """`cumo launch`: torchrun with one rank per GPU on one node, or one srun task per GPU across nodes."""
    train = config["train"]
    return (
        f"--nodes {train_nodes(wildcards)} --cpus-per-task {train['cpus_per_process']}"
        f" --processes {train['processes_per_node']}"
        f" --device {train['device']}"
    )


# Slurm resources of a training job (snakemake-executor-plugin-slurm 2.8). Across nodes the job is an `mpi`
# job: the job step runs `cumo launch` as it is, and its srun starts tasks_per_node ranks per node. On one
# node the step wraps the command in `srun -n1` and torchrun starts the ranks, with all the node's CPUs.
def train_threads(wildcards):
    """The cores of one node (all its ranks): what a local run sets aside for a training job."""
    return config["train"]["processes_per_node"] * config["train"]["cpus_per_process"]


def train_tasks_per_node(wildcards):
    return config["train"]["processes_per_node"] if train_nodes(wildcards) > 1 else None


def train_cpus_per_task(wildcards):
    if train_nodes(wildcards) > 1:
        return config["train"]["cpus_per_process"]
    return train_threads(wildcards)


def train_mpi(wildcards):
    return "srun" if train_nodes(wildcards) > 1 else None


def train_gres(wildcards):
    train = config["train"]
    return f"gpu:{train['processes_per_node']}" if train["device"] == "cuda" else None


def recipe_flags(wildcards):
    """`cumo train --set FIELD=VALUE` for each field of `train.recipe.<stage>` (cumo.train.stages.parse_overrides
    reads them back)."""
    overrides = (config["train"].get("recipe") or {}).get(wildcards.stage) or {}

    def text(value):
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, list):
            return ",".join(value)
        return "none" if value is None else str(value)

    return " ".join(
        f"--set {shlex.quote(f'{field}={text(value)}')}"
        for field, value in overrides.items()
    )


def train_mem_mb(wildcards, attempt):
    return slurm_mem_mb(
        PLAN[("train", wildcards.model, wildcards.stage)], attempt, CLUSTER
    )


def eval_plan(wildcards):
    """None for a released checkpoint not yet on disk (planned once its config.json is there)."""
    return PLAN.get(("evaluate", wildcards.model, None))


def eval_mem_mb(wildcards, attempt):
    return slurm_mem_mb(eval_plan(wildcards), attempt, CLUSTER)


def gpus_per_shard(wildcards):
    """`cumo eval --gpus-per-shard`: the config's, else the fewest GPUs the plan fits the model on (1 on CPU,
    where it means nothing)."""
    evaluation, plan = config["eval"], eval_plan(wildcards)
    if evaluation["device"] != "cuda":
        return 1
    return evaluation.get("gpus_per_shard") or (plan.gpus_per_rank if plan else 1)


def eval_gres(wildcards):
    """Shards x GPUs per shard: `cumo eval` runs shard i on GPUs i*K ... i*K+K-1."""
    evaluation = config["eval"]
    if evaluation["device"] != "cuda":
        return None
    return f"gpu:{evaluation['shards'] * gpus_per_shard(wildcards)}"


def metrics_of(bench):
    """Every model's metrics.json for one benchmark (the per-benchmark convenience rules)."""
    return [path for path in METRICS if Path(path).parent.name == bench]


def evaluated_model(wildcards):
    """A model trained here is evaluated after sft; a released checkpoint after its conversion."""
    model = BLANKED.get(wildcards.model, wildcards.model)
    stage = "sft" if model in TRAINED else "released"
    return f"{RUN}/models/{model}/{stage}"


def eval_flags(wildcards):
    """Blank images for a `blank_images_of` model; a split other than the paper's where the config says."""
    split = config["eval"].get("splits", {}).get(wildcards.bench)
    return ("--blank-images " if wildcards.model in BLANKED else "") + (
        f"--split {shlex.quote(split)}" if split else ""
    )


def eval_data(wildcards):
    """The benchmark's files: the shapes world's, or those of its `eval_<bench>` source."""
    return (
        f"{DATA}/eval"
        if config["synthetic"]
        else source_marker(f"eval_{wildcards.bench}")
    )


# Judge settings of the config -> `cumo eval` flags; unset ones keep cumo.eval.judge's defaults.
JUDGE_SETTINGS = {
    "timeout_s": "--judge-timeout",
    "attempts": "--judge-attempts",
    "backoff_s": "--judge-backoff",
    "max_gave_up_share": "--judge-max-gave-up",
}


def judge_flags(wildcards):
    """`cumo eval`'s judge: the rule judge it serves itself, or the benchmark's model (`models`, else `model`,
    else the paper's) at `base_url`; its settings where the config gives them."""
    judge = config["judge"]
    if wildcards.bench not in JUDGED or judge is None:
        return ""  # a judged benchmark asked for without a judge: `cumo eval` says what to give
    runs = f"--judge-runs {judge['runs']}" + "".join(
        f" {flag} {judge[key]}" for key, flag in JUDGE_SETTINGS.items() if key in judge
    )
    if judge.get("serve"):
        return f"--judge-serve {judge['serve']} {runs}"
    model = (
        judge.get("models", {}).get(wildcards.bench)
        or judge.get("model")
        or PAPER_JUDGES[wildcards.bench]
    )
    flags = f"--judge-model {shlex.quote(model)} {runs}"
    return flags + (
        f" --judge-base-url {shlex.quote(judge['base_url'])}"
        if judge.get("base_url")
        else ""
    )


def output_dir(wildcards, output):
    """The folder of a step's first output: `cumo eval` and `cumo report` take a folder, not files."""
    return os.path.dirname(output[0])


# Folders a step reads or writes beyond its declared files are derived from those files, not written out:
# `snakemake --lint` flags a hard-coded prefix of a job's paths, which would not follow them where a storage
# plugin maps the paths elsewhere.
def marker_data_root(wildcards, output):
    """The data root of a download, whose marker is <data_root>/<folder>/.<source>.done (folders nest)."""
    return str(Path(output[0]).parents[len(Path(wildcards.folder).parts)])


def run_folder(name):
    """A param: the run's folder `name` (eval, models), beside the folder of the step's first output
    (<run>/tables/main.csv, <run>/plots/benchmarks.png)."""

    def folder(wildcards, output):
        return os.path.join(os.path.dirname(os.path.dirname(output[0])), name)

    return folder


# Released checkpoints: a source of cumo/data/sources.yaml (downloaded by the download rule into its folder) or a
# local directory. A source needs its preset: the memory plan of its evaluation is made before the download.
MODEL_SOURCES = [
    name
    for name, source in SOURCES.items()
    if any(repo.get("repo_type") == "model" for repo in source.get("hub", []))
]


def check_released():
    for name, model in config["models"].items():
        released = model.get("released")
        if released in SOURCES:
            if "preset" not in model:
                raise ValueError(
                    f"config models.{name}: released names the source {released!r}, fetched by the run: give "
                    f"its architecture too (preset: cumo-mistral-7b or cumo-mixtral-8x7b), from which its "
                    "evaluation is planned before the download and which the conversion checks"
                )
        elif (
            released
            and re.fullmatch("[a-z0-9_]+", released)
            and not Path(released).exists()
        ):
            raise ValueError(
                f"config models.{name}.released: {released!r} is neither a source of cumo/data/sources.yaml (its model "
                f"repos: {', '.join(MODEL_SOURCES)}) nor a directory here; a directory is written ./{released}"
            )


check_released()


def released_checkpoint(wildcards):
    """The released checkpoint's directory: a source's folder, or the local directory the config names."""
    released = config["models"][wildcards.model]["released"]
    return f"{DATA}/{SOURCES[released]['folder']}" if released in SOURCES else released


def released_input(wildcards):
    """What the conversion waits for: a source's download marker, or the local directory itself."""
    released = config["models"][wildcards.model]["released"]
    return source_marker(released) if released in SOURCES else released


def released_preset_flag(wildcards):
    preset = config["models"][wildcards.model].get("preset")
    return f"--preset {preset}" if preset else ""


onstart:
    if UNJUDGED:
        logger.warning(
            f"no judge in the config: {', '.join(UNJUDGED)} left out of the targets "
            f"({len(UNJUDGED)} of {len(config['benchmarks'])} benchmarks; their table cells stay empty)"
        )
