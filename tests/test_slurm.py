"""Real Slurm (tests/slurm_cluster.py): jobs run, and snakemake's slurm executor resubmits a failed job as a
new Slurm job with the next attempt's resources when, and only when, retries come from the command line
(issue 6: a rule's own `retries:` directive re-runs the job inside the same allocation)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cumo.writer_lock import _slurm_job_active
from tests.slurm_cluster import slurm_cluster  # noqa: F401 (the session fixture)
from tests.test_slurm_profile import installed as installed_profile
from tests.test_slurm_profile import make_slurm_profile, user_env
from tests.tiny_dag import (  # noqa: F401 (started: a fixture)
    LOCAL_TINY,
    SMALL_WORLD,
    resumed_pretrain,
    snakemake,
    started,
    tiny_repository,
    wait_for_pretrain_steps,
    wait_until,
)

REPOSITORY = Path(__file__).resolve().parents[1]

# A job that fails on its first attempt and succeeds on its second, recording per attempt the Slurm job it
# runs in and the resources Snakemake computed for that attempt.
SNAKEFILE = """
rule all:
    input: "flaky.txt"

rule flaky:
    output: "flaky.txt"
{retries}    resources:
        runtime=lambda wildcards, attempt: 10 * attempt,
        mem_mb=lambda wildcards, attempt: 100 * attempt,
    shell:
        "echo $SLURM_JOB_ID {{resources.mem_mb}} {{resources.runtime}} >> attempts.txt; "
        "if [ ! -e failed_once ]; then touch failed_once; exit 1; fi; echo ok > {{output}}"
"""
PROFILE = """executor: slurm
jobs: 1
latency-wait: 5
slurm-status-command: squeue
slurm-init-seconds-before-status-checks: 1
slurm-no-account: true
"""


def test_sbatch_and_srun(slurm_cluster, tmp_path):  # noqa: F811
    assert slurm_cluster.run("srun", "--ntasks=1", "hostname").strip() == slurm_cluster.node
    out = tmp_path / "job.out"
    job_id = slurm_cluster.run(
        "sbatch", "--parsable", f"--output={out}", "--wrap", "echo $SLURM_JOB_ID"
    ).strip()
    assert slurm_cluster.wait(job_id) == "COMPLETED"
    assert out.read_text().strip() == job_id
    failing = slurm_cluster.run(
        "sbatch", "--parsable", f"--output={tmp_path / 'fail.out'}", "--wrap", "exit 3"
    )
    assert slurm_cluster.wait(failing.strip()) == "FAILED"
    assert "ExitCode=3:0" in slurm_cluster.run("scontrol", "show", "job", failing.strip())


# A job that writes into a folder for `seconds` under the folder's lock (cumo/writer_lock.py).
WRITER = """import sys, time
from cumo.writer_lock import WriterLock
with WriterLock(sys.argv[1], "the checkpoints in " + sys.argv[1]):
    time.sleep(float(sys.argv[2]))
"""


def test_the_same_job_submitted_twice_at_once_writes_once(slurm_cluster, tmp_path, monkeypatch):  # noqa: F811
    """Issue 18: the job a lost Snakemake left running and its rerun's copy, at once on the cluster: one
    writes, the other stops naming the first (its Slurm job and how to end it). Across nodes, where a pid says
    nothing, whether a holder is gone is squeue's answer: running, finished, or forgotten (past MinJobAge)."""
    (tmp_path / "writer.py").write_text(WRITER)
    lock = tmp_path / "checkpoints" / "writer.lock"
    submit = ["sbatch", "--parsable", "--mem=200", "--cpus-per-task=1", f"--chdir={tmp_path}"]
    command = f"exec {sys.executable} writer.py {lock} 5"
    jobs = [slurm_cluster.run(*submit, f"--output=job-{i}.log", "--wrap", command).strip() for i in (0, 1)]
    states = {job: slurm_cluster.wait(job) for job in jobs}
    assert sorted(states.values()) == ["COMPLETED", "FAILED"], states
    (writer,) = [job for job, state in states.items() if state == "COMPLETED"]
    (second,) = [job for job, state in states.items() if state == "FAILED"]
    log = (tmp_path / f"job-{jobs.index(second)}.log").read_text()
    assert f"are being written by Slurm job {writer}, process" in log and f"`scancel {writer}`" in log, log
    assert not lock.exists()

    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    assert _slurm_job_active(writer) is False  # COMPLETED
    assert _slurm_job_active("987654") is False  # unknown to slurmctld: "Invalid job id specified"
    running = slurm_cluster.run(*submit, "--output=/dev/null", "--wrap", "sleep 60").strip()
    try:
        assert _slurm_job_active(running) is True  # pending or running
    finally:
        slurm_cluster.run("scancel", running)


def start_flaky(cluster, directory: Path, rule_retries: bool, cli_retries: bool) -> subprocess.Popen:
    """Start snakemake on the flaky workflow in `directory`, through a profile for this cluster."""
    (directory / "profile").mkdir(parents=True)
    (directory / "Snakefile").write_text(SNAKEFILE.format(retries="    retries: 1\n" if rule_retries else ""))
    (directory / "profile" / "config.yaml").write_text(PROFILE + ("retries: 1\n" if cli_retries else ""))
    return snakemake(directory, cluster.env, "--profile", "profile")


def finish_flaky(cluster, directory: Path, process: subprocess.Popen) -> tuple[list[tuple], list[int]]:
    """Wait for the run; (Slurm job, mem_mb, runtime) per attempt, and the Slurm jobs snakemake submitted."""
    log, _ = process.communicate(timeout=240)
    assert process.returncode == 0, f"{log}\n{cluster.logs()}"
    attempts = [tuple(int(field) for field in line.split()) for line in (directory / "attempts.txt").open()]
    return attempts, [int(job) for job in re.findall(r"submitted with SLURM jobid (\d+)", log)]


def job_limits(cluster, job_id: int) -> tuple[str, str, str]:
    """(state, time limit, memory) of a job as Slurm holds it."""
    line = cluster.run("squeue", "-h", "-t", "all", f"--jobs={job_id}", "--format=%T %l %m")
    return tuple(line.split())


@pytest.mark.slow
def test_cli_retries_resubmit_rule_retries_do_not(slurm_cluster, tmp_path):  # noqa: F811
    """The profile's `retries` (the command-line option) resubmit a failed job as a new Slurm job with the
    next attempt's resources; a rule's own `retries:` directive makes the job step retry itself inside the
    first attempt's allocation, whatever attempt 2 asks for. Hence the cluster profile sets the option.
    The two runs go side by side (one CPU each) to halve the wait on the executor's status checks."""
    cli, rule = tmp_path / "cli", tmp_path / "rule"
    cli_run = start_flaky(slurm_cluster, cli, rule_retries=False, cli_retries=True)
    rule_run = start_flaky(slurm_cluster, rule, rule_retries=True, cli_retries=False)

    attempts, submitted = finish_flaky(slurm_cluster, cli, cli_run)
    (first, *_), (second, *_) = attempts
    assert attempts == [(first, 100, 10), (second, 200, 20)]
    assert submitted == [first, second] and second != first  # a new Slurm job ...
    assert job_limits(slurm_cluster, first) == ("FAILED", "10:00", "100M")
    assert job_limits(slurm_cluster, second) == (
        "COMPLETED",
        "20:00",
        "200M",
    )  # ... with attempt 2's resources

    attempts, submitted = finish_flaky(slurm_cluster, rule, rule_run)
    (job, *_), _ = attempts
    assert attempts == [(job, 100, 10), (job, 200, 20)] and submitted == [job]  # one Slurm job for both
    assert job_limits(slurm_cluster, job) == ("COMPLETED", "10:00", "100M")  # attempt 1's limits throughout


# profiles/slurm's settings this one-node cluster cannot use, overridden on the command line as a user would.
ON_THIS_CLUSTER = [
    *("--configfile", "config/tiny.yaml"),  # the tiny run, not the paper's
    # No conda (no network in the tests): the rules run in this venv. No rule names an env module, so env
    # modules deploy nothing; the option takes no "none".
    *("--software-deployment-method", "env-modules"),
    *("--jobs", "4", "--latency-wait", "5", "--slurm-init-seconds-before-status-checks", "1"),
    "--slurm-no-account",
    # No accounting on this cluster, hence no sacct: states from squeue (profiles/slurm says so).
    *("--slurm-status-command", "squeue"),
]


def scale_to_the_node(repository: Path) -> None:
    """The workflow profile's memory and CPUs scaled to the node (the paper's 400 GB training and 32-core
    evaluation jobs would never be scheduled); its runtimes, their growth with the attempt and the training
    jobs' --signal kept."""
    workflow_profile = repository / "profiles" / "default" / "config.yaml"
    resources = yaml.safe_load(workflow_profile.read_text())
    for rule in resources["set-resources"].values():
        rule["mem_mb"] = "2000 * attempt"
        if "cpus_per_task" in rule:
            rule["cpus_per_task"] = 1
    workflow_profile.write_text(yaml.safe_dump(resources))


def running_jobs(cluster, rule: str) -> list[int]:
    lines = cluster.run("squeue", "--noheader", "--states=RUNNING", "--format=%i %k").splitlines()
    return [int(line.split()[0]) for line in lines if f"rule_{rule}" in line]


def submissions(log: str, rule: str) -> list[int]:
    """The Slurm jobs snakemake submitted for `rule`, in order (the executor logs each job's log file, which
    lies under .snakemake/slurm_logs/rule_<rule>/)."""
    return [int(job) for job in re.findall(rf"submitted with SLURM jobid (\d+) \(log: \S*/rule_{rule}/", log)]


@pytest.mark.slow
def test_tiny_dag_through_slurm_survives_failures_and_equals_a_local_run(slurm_cluster, tmp_path, started):  # noqa: F811
    """The whole tiny DAG through `snakemake --profile slurm`, the profile `make slurm-profile` installed in
    the user's home, next to a clean local run of the same config (issue 6), whose `snakemake --report` holds
    the table and the plots with their captions.

    Two failures on the way: the pretrain job gets SIGTERM mid-stage (as Slurm sends it before a time limit,
    --signal=TERM@300), saves and exits; an evaluation job is killed outright as it starts (a lost node).
    Each is submitted again as a new Slurm job; pretrain resumes from its saved step instead of step 0. The
    final tables are those of the local run, and running the same command again does nothing."""
    local = tiny_repository(tmp_path / "local")
    local_run = snakemake(local, dict(os.environ), *LOCAL_TINY)
    started.append(local_run)
    cluster = tiny_repository(tmp_path / "slurm")
    scale_to_the_node(cluster)
    home = tmp_path / "home"
    installed = make_slurm_profile(home)
    assert installed.returncode == 0, installed.stderr
    assert yaml.safe_load(installed_profile(home).read_text())["retries"] >= 1
    user = user_env(slurm_cluster.env, home)
    run = snakemake(cluster, user, "--profile", "slurm", *ON_THIS_CLUSTER)
    started.append(run)

    wait_for_pretrain_steps(cluster, run)
    (pretrain,) = running_jobs(slurm_cluster, "train")
    slurm_cluster.run(
        "scancel", "--signal=TERM", str(pretrain)
    )  # to the job's steps, as --signal=TERM@300 does

    (evaluation, *_) = wait_until(
        "a running evaluation", lambda: running_jobs(slurm_cluster, "evaluate"), run
    )
    slurm_cluster.run("scancel", "--signal=KILL", "--full", str(evaluation))

    log, _ = run.communicate(timeout=1200)
    assert run.returncode == 0, f"{log}\n{slurm_cluster.logs()}"
    train_jobs, eval_jobs = submissions(log, "train"), submissions(log, "evaluate")
    assert train_jobs[0] == pretrain and len(train_jobs) == 4, log  # pretrain twice, then pft and sft
    # squeue forgets a job MinJobAge (300 s) after it ends, long before this run does: states from the log.
    failed = dict(re.findall(r"SLURM-job '(\d+)' failed, SLURM status is: '(\w+)'", log))
    assert set(failed) == {str(pretrain), str(evaluation)} and failed[str(pretrain)] == "FAILED", failed
    assert failed[str(evaluation)] in ("FAILED", "CANCELLED"), failed  # killed: by signal, or cancelled
    evaluated = [path for path in (cluster / "results" / "tiny" / "eval").glob("*/*/metrics.json")]
    assert len(eval_jobs) == len(evaluated) + 1, log  # every evaluation once, the killed one twice

    saved, total = resumed_pretrain(cluster)
    # The second job's progress bar starts at the saved step (tqdm initial=step), not at 0.
    train_log = (cluster / "results" / "tiny" / "logs" / "train" / "tiny" / "pretrain.log").read_text()
    assert re.search(rf"pretrain:\s+\d+%\|[^|]*\|\s*(\d+)/{total}", train_log).group(1) == str(saved)

    local_log, _ = local_run.communicate(timeout=1200)
    assert local_run.returncode == 0, local_log
    corpora = cluster / "results" / "tiny" / "world" / "jsons"
    assert {
        stage: len(json.loads((corpora / f"synthetic_{stage}.json").read_text()))
        for stage in SMALL_WORLD["sizes"]
    } == SMALL_WORLD["sizes"]
    for table in ("main.csv", "main.md", "main.tex"):
        reproduced = (cluster / "results" / "tiny" / "tables" / table).read_text()
        assert reproduced == (local / "results" / "tiny" / "tables" / table).read_text(), table
    for metrics in evaluated:
        mine = json.loads(metrics.read_text())
        theirs = json.loads((local / metrics.relative_to(cluster)).read_text())
        assert (mine["headline"], mine["metrics"], mine["n"]) == (
            theirs["headline"],
            theirs["metrics"],
            theirs["n"],
        )

    again = snakemake(cluster, user, "--profile", "slurm", *ON_THIS_CLUSTER, "--dry-run")
    again_log, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "Nothing to be done" in again_log, again_log

    # The HTML report of the finished run: the table and every plot, each with its caption.
    report = snakemake(local, dict(os.environ), *LOCAL_TINY, "--report", "report.html")
    report_log, _ = report.communicate(timeout=120)
    assert report.returncode == 0, report_log
    html = (local / "report.html").read_text()
    for name in ("main.csv", "benchmarks.png", "loss_tiny.png", "aux_tiny.png", "expert_load_tiny.png"):
        assert name in html, name
    for caption in ("tables", "benchmarks", "loss", "aux", "expert_load"):
        first_words = " ".join(
            (REPOSITORY / "workflow" / "report" / f"{caption}.rst").read_text().split()[:6]
        )
        assert first_words in " ".join(html.split()), caption
