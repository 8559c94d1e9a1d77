"""After Snakemake itself died (issue 6): the same command again continues where it stopped. What was
finished is not made again, and the training stage it interrupted resumes from the checkpoint it saved."""

import json
import os
import re
import signal

import pytest

from tests.tiny_dag import snakemake, started, tiny_repository, wait_until  # noqa: F401 (started: a fixture)

TARGET = "results/tiny/models/tiny/pretrain"


@pytest.mark.slow
def test_the_same_command_after_snakemake_was_killed_continues_where_it_stopped(tmp_path, started):  # noqa: F811
    """The whole process group (snakemake, its jobs, the training ranks) gets SIGTERM mid-pretrain, as when the
    session that ran it ends; the ranks save and stop. The same command then redoes only pretrain, resuming."""
    repository = tiny_repository(tmp_path)
    command = ("--profile", "profiles/local", TARGET)
    run = snakemake(repository, dict(os.environ), *command, new_session=True)
    started.append(run)
    steps_log = repository / "checkpoints" / "tiny" / "tiny" / "pretrain" / "metrics.jsonl"
    wait_until(
        "10 pretrain steps",
        lambda: steps_log.is_file() and len(steps_log.read_text().splitlines()) >= 10,
        run,
    )
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
    total = json.loads((repository / TARGET / "finished.json").read_text())["steps"]
    saved = sorted(int(path.name.split("-")[1]) for path in steps_log.parent.glob("checkpoint-*"))
    assert len(saved) == 2 and 10 <= saved[0] < saved[1] == total, saved  # the SIGTERM save, then the end
    steps = [json.loads(line)["step"] for line in steps_log.read_text().splitlines()]
    assert steps == list(range(1, total + 1))  # resumed at the saved step: each step logged once
