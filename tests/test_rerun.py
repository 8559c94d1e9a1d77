"""After Snakemake itself died (issue 6): the same command again continues where it stopped. What was
finished is not made again, and the training stage it interrupted resumes from the checkpoint it saved."""

import json
import os
import re
import signal

import pytest

from tests.tiny_dag import (  # noqa: F401 (started: a fixture)
    LOCAL_TINY,
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
    command = (*LOCAL_TINY, TARGET)
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


EVALUATED = [
    f"results/tiny/eval/tiny/{bench}/metrics.json" for bench in ("gqa", "mmvet", "llava_wild", "mathvista")
]


@pytest.mark.slow
def test_a_retrained_model_is_evaluated_anew_not_with_its_predecessors_answers(tmp_path, started):  # noqa: F811
    """Issue 17 through the DAG: sft trained again (a new export, a new digest) makes Snakemake rerun `evaluate`,
    whose shard folders, kept out of its outputs so a retry resumes, hold the old model's answers: they are
    not resumed, the new model answers every question, and metrics.json names the new digest."""
    from cumo.provenance import sha256_tree

    repository = tiny_repository(tmp_path)
    sft = repository / "results" / "tiny" / "models" / "tiny" / "sft"
    run = snakemake(repository, dict(os.environ), *LOCAL_TINY, *EVALUATED)
    started.append(run)
    log, _ = run.communicate(timeout=1200)
    assert run.returncode == 0, log
    first = {path: json.loads((repository / path).read_text()) for path in EVALUATED}
    old = sha256_tree(sft)
    for metrics in first.values():
        assert metrics["model"]["digest"] == old and metrics["answers"]["resumed"] == 0

    again = snakemake(
        repository, dict(os.environ), *LOCAL_TINY, "--forcerun", str(sft.relative_to(repository)),
        *EVALUATED,
    )  # fmt: skip
    started.append(again)
    log, _ = again.communicate(timeout=1200)
    assert again.returncode == 0, log
    new = sha256_tree(sft)
    assert new != old  # a new export (finished.json says when it was made)
    for path in EVALUATED:
        metrics = json.loads((repository / path).read_text())
        assert metrics["model"]["digest"] == new, path
        assert metrics["answers"]["started_over"]["model_digest"] == [old, new], path
        assert metrics["answers"]["resumed"] == 0, path
        made_by = json.loads((repository / path).with_name("shards").joinpath("made_by.json").read_text())
        assert made_by["model_digest"] == new
