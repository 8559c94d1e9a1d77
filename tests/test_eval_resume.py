"""Resuming `cumo eval` (issue 17): the answers in a shard folder are resumed only when the same model, asked
the same way, made them (shards/made_by.json); another shard count's answers are moved, not made again; a
cut line is redone whatever it cuts; a repeated or foreign answer names the one command that fixes it."""

import json
import shutil
import socket
import subprocess

import pytest

from cumo.cli import main
from cumo.data.synthetic import build_tokenizer
from cumo.eval.evaluate import EvalConfig, made_by
from cumo.eval.generate import MADE_BY, read_predictions
from cumo.model.processing_cumo import CumoProcessor
from cumo.provenance import sha256_tree
from tests.factories import make_model, write_lock

QUESTIONS = 40  # GQA's in the synthetic world


def cumo_eval(model, eval_root, out, *extra, bench="gqa"):
    """`cumo eval` as a user runs it; (exit message or None, metrics.json or None)."""
    args = ["eval", bench, "--model", str(model), "--data-root", str(eval_root.parent), "--out", str(out)]
    args += ["--max-new-tokens", "4", "--batch-size", "20", *extra]
    try:
        main(args)
    except SystemExit as stop:
        return str(stop.code), None
    return None, json.loads((out / "metrics.json").read_text())


def predictions(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory):
    """Another tiny model (another seed): other weights, so other answers."""
    model = make_model("tiny", moe=True, seed=1)
    directory = tmp_path_factory.mktemp("models") / "other"
    model.save_pretrained(directory)
    CumoProcessor(build_tokenizer(), model.config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def answered(tiny_model_dir, eval_root, tmp_path_factory):
    """A GQA folder the tiny model answered (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("answered") / "gqa"
    message, metrics = cumo_eval(tiny_model_dir, eval_root, out)
    assert message is None and metrics["answers"]["resumed"] == 0
    return out


def copy_of(answered, tmp_path):
    out = tmp_path / "gqa"
    shutil.copytree(answered, out)
    return out


def test_answers_of_another_model_are_not_resumed(
    answered, tiny_model_dir, other_model_dir, eval_root, tmp_path
):
    """The issue's case: a folder answered by one model, evaluated again with another, scores the other's answers
    exactly as a fresh folder does, under the other's digest."""
    out = copy_of(answered, tmp_path)
    message, metrics = cumo_eval(other_model_dir, eval_root, out)
    assert message is None
    old, new = sha256_tree(tiny_model_dir), sha256_tree(other_model_dir)
    assert metrics["answers"]["started_over"] == {"model_digest": [old, new]}
    assert metrics["answers"]["resumed"] == 0 and metrics["model"]["digest"] == new
    _, fresh = cumo_eval(other_model_dir, eval_root, tmp_path / "fresh")
    assert predictions(out) == predictions(tmp_path / "fresh") != predictions(answered)
    assert metrics["headline"] == fresh["headline"]
    assert json.loads((out / "shards" / MADE_BY).read_text())["model_digest"] == new


@pytest.mark.parametrize(
    "change, field",
    [
        ({"dtype": "bfloat16"}, "dtype"),
        ({"max_new_tokens": 5}, "max_new_tokens"),
        ({"blank_images": True}, "blank_images"),
        ({"benchmark": "vqav2", "split": "val"}, "split"),
    ],
)
def test_every_setting_that_changes_the_answers_is_recorded(tiny_model_dir, eval_root, change, field):
    base = {"benchmark": "gqa", "model": str(tiny_model_dir), "data_root": str(eval_root.parent)}
    before = EvalConfig(**base, max_new_tokens=4)
    after = EvalConfig(**(base | {"max_new_tokens": 4} | change))
    recorded = made_by(before, before.resolved(), "digest")
    changed = made_by(after, after.resolved(), "digest")
    assert {name for name in recorded if recorded[name] != changed[name]} >= {field}
    assert set(recorded) == {
        "benchmark",
        "split",
        "model_digest",
        "dtype",
        "max_new_tokens",
        "blank_images",
        "template",
        "prompt_format",
    }


@pytest.mark.parametrize(
    "field, value",
    [
        ("model_digest", "0" * 64),
        ("dtype", "bfloat16"),
        ("split", "testdev_all"),
        ("max_new_tokens", 128),
        ("blank_images", True),
        ("template", "plain"),
        ("prompt_format", 0),
    ],
)
def test_answers_made_otherwise_are_made_again(answered, tiny_model_dir, eval_root, tmp_path, field, value):
    """Any field of made_by.json that differs starts the folder over: no answer made otherwise is scored."""
    out = copy_of(answered, tmp_path)
    record = out / "shards" / MADE_BY
    made = json.loads(record.read_text())
    recorded = made[field]
    record.write_text(json.dumps(made | {field: value}))
    shard = out / "shards" / "0-of-1.jsonl"
    shard.write_text(shard.read_text().replace('"text": "', '"text": "STALE '))  # marks every old answer
    message, metrics = cumo_eval(tiny_model_dir, eval_root, out)
    assert message is None
    assert metrics["answers"]["started_over"] == {field: [value, recorded]}
    assert metrics["answers"]["resumed"] == 0
    assert "STALE" not in shard.read_text()
    assert predictions(out) == predictions(answered)
    assert json.loads(record.read_text()) == made


def test_the_same_settings_resume_everything(answered, tiny_model_dir, eval_root, tmp_path):
    out = copy_of(answered, tmp_path)
    shard = out / "shards" / "0-of-1.jsonl"
    before = shard.read_bytes()
    message, metrics = cumo_eval(
        tiny_model_dir, eval_root, out, "--batch-size", "7"
    )  # batch size is not in it
    assert (
        message is None
        and metrics["answers"]["resumed"] == QUESTIONS
        and metrics["answers"]["started_over"] == {}
    )
    assert shard.read_bytes() == before


def test_a_shard_process_refuses_answers_made_otherwise(answered, other_model_dir, eval_root, tmp_path):
    """A shard process must not delete what its siblings wrote: it refuses, naming the folder to delete."""
    out = copy_of(answered, tmp_path)
    message, _ = cumo_eval(other_model_dir, eval_root, out, "--shards", "1", "--shard", "0")
    assert message.startswith("cumo eval: the answers in ") and "made otherwise (model_digest" in message
    assert f"`rm -r {out / 'shards'}`" in message and "\n" not in message
    assert len(read_predictions(out / "shards" / "0-of-1.jsonl")[0]) == QUESTIONS  # untouched


def test_answers_without_a_record_are_refused(answered, tiny_model_dir, eval_root, tmp_path):
    out = copy_of(answered, tmp_path)
    (out / "shards" / MADE_BY).unlink()  # as an older cumo left them
    message, metrics = cumo_eval(tiny_model_dir, eval_root, out)
    assert metrics is None and not (out / "metrics.json").exists()
    assert "have no made_by.json" in message and f"`rm -r {out / 'shards'}`" in message


def test_a_metrics_file_of_an_earlier_run_does_not_outlive_a_failed_one(
    answered, tiny_model_dir, eval_root, tmp_path
):
    out = copy_of(answered, tmp_path)
    (out / "shards" / MADE_BY).unlink()
    assert (out / "metrics.json").is_file()
    message, _ = cumo_eval(tiny_model_dir, eval_root, out)
    assert message is not None and not (out / "metrics.json").exists()


def test_another_shard_count_moves_the_answers(answered, tiny_model_dir, eval_root, tmp_path):
    """Three shards after one: the 40 answers are moved into the three files, none made again."""
    out = copy_of(answered, tmp_path)
    message, metrics = cumo_eval(tiny_model_dir, eval_root, out, "--shards", "3")
    assert message is None
    assert metrics["answers"] == {
        "started_over": {},
        "moved_answers": QUESTIONS,
        "from_files": ["0-of-1.jsonl"],
        "resumed": QUESTIONS,
    }
    assert sorted(path.name for path in (out / "shards").glob("*.jsonl")) == [
        "0-of-3.jsonl",
        "1-of-3.jsonl",
        "2-of-3.jsonl",
    ]
    assert [len(read_predictions(out / "shards" / f"{i}-of-3.jsonl")[0]) for i in range(3)] == [14, 13, 13]
    assert predictions(out) == predictions(answered)


def test_a_line_cut_inside_a_character_is_made_again(answered, tiny_model_dir, eval_root, tmp_path):
    """MMBench-CN's answers are Chinese: a kill can cut a line inside a character's UTF-8 bytes."""
    out = copy_of(answered, tmp_path)
    shard = out / "shards" / "0-of-1.jsonl"
    lines = shard.read_bytes().splitlines(keepends=True)
    last = json.loads(lines[-1]) | {"text": "答案"}
    cut = json.dumps(last, ensure_ascii=False).encode()
    cut = cut[: cut.index("答".encode()) + 1]  # one byte of the three of 答
    shard.write_bytes(b"".join(lines[:-1]) + cut)
    with pytest.raises(UnicodeDecodeError):
        cut.decode("utf-8")
    assert read_predictions(shard) == ([json.loads(line) for line in lines[:-1]], 1)
    message, metrics = cumo_eval(tiny_model_dir, eval_root, out)
    assert message is None and metrics["answers"]["resumed"] == QUESTIONS - 1
    assert shard.read_bytes() == b"".join(lines)  # the cut answer made again, as it was


@pytest.mark.parametrize("fault", ["repeated", "foreign"])
def test_a_repeated_or_foreign_answer_names_the_command_that_fixes_it(
    answered, tiny_model_dir, eval_root, tmp_path, fault
):
    out = copy_of(answered, tmp_path)
    shard = out / "shards" / "0-of-1.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    extra = (
        lines[3]
        if fault == "repeated"
        else json.dumps(json.loads(lines[3]) | {"question_id": "elsewhere"}) + "\n"
    )
    shard.write_text("".join(lines) + extra)
    message, _ = cumo_eval(tiny_model_dir, eval_root, out)
    assert message.count("\n") == 0 and f"`rm {shard}`" in message
    assert ("answered more than once" if fault == "repeated" else "not in the benchmark") in message
    shard.unlink()  # the command it names
    message, metrics = cumo_eval(tiny_model_dir, eval_root, out)
    assert message is None and metrics["answers"]["resumed"] == 0
    assert predictions(out) == predictions(answered)


def test_debug_shows_the_traceback(answered, tiny_model_dir, eval_root, tmp_path, monkeypatch):
    out = copy_of(answered, tmp_path)
    (out / "shards" / MADE_BY).unlink()
    args = [
        "eval",
        "gqa",
        "--model",
        str(tiny_model_dir),
        "--data-root",
        str(eval_root.parent),
        "--out",
        str(out),
    ]
    with pytest.raises(ValueError, match="have no made_by.json"):
        main(["--debug", *args])
    monkeypatch.setenv("CUMO_DEBUG", "1")
    with pytest.raises(ValueError, match="have no made_by.json"):
        main(args)


@pytest.mark.parametrize("lock", ["writer.lock", "shards/0-of-1.jsonl.lock"], ids=["evaluation", "shard"])
def test_a_second_writer_stops_and_the_lock_of_a_gone_one_is_taken_over(
    answered, tiny_model_dir, eval_root, tmp_path, lock
):
    """Issue 18: two jobs evaluating into one folder (a rerun's, and one left running by a lost Snakemake) would
    append to the same shard. The second stops naming the first; once that one is gone, its lock is taken
    over and its answers resumed. An evaluation's lock is taken before anything in the folder is touched."""
    out = copy_of(answered, tmp_path)
    running = subprocess.Popen(["sleep", "300"])
    try:
        write_lock(out / lock, running.pid)
        message, _ = cumo_eval(tiny_model_dir, eval_root, out)
    finally:
        running.kill()
        running.wait()
    assert message.startswith("cumo eval: the answers")
    assert f"are being written by process {running.pid} on {socket.gethostname()}" in message
    assert (out / "metrics.json").is_file() == (lock == "writer.lock")

    message, metrics = cumo_eval(tiny_model_dir, eval_root, out)
    assert message is None and metrics["answers"]["resumed"] == QUESTIONS
    assert not (out / lock).exists()
