"""Real Slurm (tests/slurm_cluster.py): jobs run, and snakemake's slurm executor resubmits a failed job as a
new Slurm job with the next attempt's resources when, and only when, retries come from the command line
(issue 6: a rule's own `retries:` directive re-runs the job inside the same allocation)."""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.slurm_cluster import slurm_cluster  # noqa: F401 (the session fixture)

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


def start_flaky(cluster, directory: Path, rule_retries: bool, cli_retries: bool) -> subprocess.Popen:
    """Start snakemake on the flaky workflow in `directory`, through a profile for this cluster."""
    (directory / "profile").mkdir(parents=True)
    (directory / "Snakefile").write_text(SNAKEFILE.format(retries="    retries: 1\n" if rule_retries else ""))
    (directory / "profile" / "config.yaml").write_text(PROFILE + ("retries: 1\n" if cli_retries else ""))
    bin_dir = str(Path(sys.executable).parent)  # the jobs run `python -m snakemake`: this venv's
    return subprocess.Popen(
        [f"{bin_dir}/snakemake", "--profile", "profile"],
        cwd=directory,
        env={**cluster.env, "PATH": bin_dir + ":" + cluster.env["PATH"]},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


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


def slurm_profile(repository: Path) -> Path:
    """profiles/slurm for this one-node cluster: the same retries and rerun settings, without conda
    (no network in the tests: the rules run in this venv) and with short waits; the workflow profile's
    memory scaled to the node (the paper's 400 GB training jobs would never be scheduled), its runtimes,
    their growth with the attempt and the training jobs' --signal kept."""
    profile = yaml.safe_load((repository / "profiles" / "slurm" / "config.yaml").read_text())
    for key in ("software-deployment-method", "configfile", "replace-workflow-config"):
        profile.pop(key)  # the tiny run is the embedded default
    profile |= {
        "jobs": 1,
        "latency-wait": 5,
        "slurm-init-seconds-before-status-checks": 1,
        "slurm-no-account": True,
    }
    path = repository / "profiles" / "slurm-test" / "config.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(profile))
    workflow_profile = repository / "profiles" / "default" / "config.yaml"
    resources = yaml.safe_load(workflow_profile.read_text())
    for rule in resources["set-resources"].values():
        rule["mem_mb"] = "2000 * attempt"
    workflow_profile.write_text(yaml.safe_dump(resources))
    return path.parent


@pytest.mark.slow
def test_training_killed_mid_stage_resumes_in_a_new_job(slurm_cluster, tmp_path):  # noqa: F811
    """The tiny DAG up to pretrain through profiles/slurm: the training job gets SIGTERM mid-stage (as Slurm
    sends it before a time limit, --signal=TERM@300), saves and fails; Snakemake submits it again as a new
    Slurm job, which resumes from the saved step instead of step 0."""
    repository = tmp_path / "repo"
    for folder in ("workflow", "config", "profiles", "envs"):
        shutil.copytree(REPOSITORY / folder, repository / folder)
    profile = slurm_profile(repository)
    assert yaml.safe_load((profile / "config.yaml").read_text())["retries"] >= 1

    bin_dir, target = str(Path(sys.executable).parent), "results/tiny/models/tiny/pretrain"
    run = subprocess.Popen(
        # No accounting on this cluster, hence no sacct: states from squeue (profiles/slurm says so).
        [f"{bin_dir}/snakemake", "--profile", str(profile), "--slurm-status-command", "squeue", target],
        cwd=repository,
        env={**slurm_cluster.env, "PATH": bin_dir + ":" + slurm_cluster.env["PATH"]},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    steps_log = repository / "checkpoints" / "tiny" / "tiny" / "pretrain" / "metrics.jsonl"
    deadline = time.monotonic() + 400
    while not (steps_log.is_file() and len(steps_log.read_text().splitlines()) >= 10):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0]
        time.sleep(0.2)
    jobs = slurm_cluster.run("squeue", "--noheader", "--states=RUNNING", "--format=%i %k").splitlines()
    (first,) = [int(line.split()[0]) for line in jobs if "rule_train" in line]
    slurm_cluster.run("scancel", "--signal=TERM", str(first))  # to the job's steps, as --signal=TERM@300 does

    log, _ = run.communicate(timeout=600)
    assert run.returncode == 0, f"{log}\n{slurm_cluster.logs()}"
    submitted = re.findall(r"rule train:.*?submitted with SLURM jobid (\d+)", log, re.DOTALL)
    assert [int(job) for job in submitted][:1] == [first] and len(submitted) == 2, log
    assert slurm_cluster.wait(first) == "FAILED" and slurm_cluster.wait(submitted[1]) == "COMPLETED"

    total = json.loads((repository / target / "finished.json").read_text())["steps"]  # the tiny recipe's
    saved = sorted(int(path.name.split("-")[1]) for path in steps_log.parent.glob("checkpoint-*"))
    assert len(saved) == 2 and 10 <= saved[0] < saved[1] == total, saved  # the SIGTERM save, then the end
    # The second job's progress bar starts at the saved step (tqdm initial=step), not at 0.
    train_log = (repository / "results" / "tiny" / "logs" / "train" / "tiny" / "pretrain.log").read_text()
    assert re.search(rf"pretrain:\s+\d+%\|[^|]*\|\s*(\d+)/{total}", train_log).group(1) == str(saved[0])
    steps = [json.loads(line)["step"] for line in steps_log.read_text().splitlines()]
    assert steps == list(range(1, total + 1))  # each step logged once
