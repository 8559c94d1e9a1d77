"""After Snakemake itself died (issue 6): the same command again continues where it stopped. What was
finished is not made again, and the training stage it interrupted resumes from the checkpoint it saved."""

import os
import re
import signal

import pytest

from tests.tiny_dag import (  # noqa: F401 (started: a fixture)
    PRETRAIN,
    resumed_pretrain,
    snakemake,
    started,
    tiny_repository,
    wait_for_pretrain_steps,
)

TARGET = PRETRAIN


@pytest.mark.slow
def test_the_same_command_after_snakemake_was_killed_continues_where_it_stopped(tmp_path, started):  # noqa: F811
    """The whole process group (snakemake, its jobs, the training ranks) gets SIGTERM mid-pretrain, as when the
    session that ran it ends; the ranks save and stop. The same command then redoes only pretrain, resuming."""
    repository = tiny_repository(tmp_path)
    command = ("--profile", "profiles/local", TARGET)
    run = snakemake(repository, dict(os.environ), *command, new_session=True)
    started.append(run)
    wait_for_pretrain_steps(repository, run)
    os.killpg(run.pid, signal.SIGTERM)
    log, _ = run.communicate(timeout=300)
    assert run.returncode != 0 and not (repository / TARGET).exists(), log
    finished = {
        path: path.stat().st_mtime_ns for path in (repository / "results" / "tiny" / "data").iterdir()
    }

    plan = snakemake(repository, dict(os.environ), *command, "--dry-run")
    plan_log, _ = plan.communicate(timeout=120)
    assert plan.returncode == 0, plan_log
    assert re.findall(r"^rule (\w+):", plan_log, re.MULTILINE) == ["train"], plan_log  # the mixtures are kept

    again = snakemake(repository, dict(os.environ), *command)
    started.append(again)
    again_log, _ = again.communicate(timeout=600)
    assert again.returncode == 0, again_log
    assert {path: path.stat().st_mtime_ns for path in finished} == finished
    resumed_pretrain(repository)
