"""`cumo eval` of the judged benchmarks against hostile OpenAI-compatible servers on 127.0.0.1 (issue 17): every
way a judge can fail ends in one line naming the benchmark, question, run, judge and server, with no
metrics.json and nothing unusable in the cache; what the benchmarks' own rules give up on is counted and fails
past its share; Retry-After is honoured; the key is written nowhere."""

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter

import pytest

from cumo.cli import main
from cumo.eval.benchmarks.mmvet import ASK_FOR_DIGIT
from cumo.eval.judge import ATTEMPTS, BACKOFF_S, TIMEOUT_S, cache_key
from tests.openai_server import OpenAIServer, Raw, completion
from tests.servers import local_only

KEY = "sk-test-0123456789abcdef-secret"
JUDGES = {"mmvet": "gpt-4-0613", "llava_wild": "gpt-4-0613", "mathvista": "gpt-3.5-turbo"}


@pytest.fixture(autouse=True)
def key(monkeypatch):
    local_only(monkeypatch)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture(scope="module")
def answered(tiny_model_dir, eval_root, tmp_path_factory):
    """bench -> a folder of the tiny model's answers (its shards only: no judge asked yet)."""
    folders = {}
    for bench in JUDGES:
        out = tmp_path_factory.mktemp("answered") / bench
        main(eval_args(tiny_model_dir, eval_root, out, bench, "--shards", "1", "--shard", "0"))
        folders[bench] = out
    return folders


def eval_args(model, eval_root, out, bench, *extra):
    args = ["eval", bench, "--model", str(model), "--data-root", str(eval_root.parent), "--out", str(out)]
    return args + ["--max-new-tokens", "4", "--batch-size", "21", *extra]


def judged(answered, tiny_model_dir, eval_root, tmp_path, bench, server, *extra):
    """`cumo eval BENCH` judged at `server`, in a copy of the answered folder: (one-line message or None, out)."""
    out = tmp_path / bench
    if not out.exists():
        shutil.copytree(answered[bench], out)
    judge = ["--judge-model", JUDGES[bench], "--judge-base-url", server.base_url, "--judge-attempts", "2"]
    try:
        main(eval_args(tiny_model_dir, eval_root, out, bench, *judge, "--judge-backoff", "0.01", *extra))
    except SystemExit as stop:
        message = str(stop.code)
        assert message.startswith("cumo eval: ") and "\n" not in message, message
        return message, out
    return None, out


def cached(out) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((out / "judge_cache").rglob("*.json"))]


def failed_cleanly(message, out, bench, server, failure):
    """The run's one line names the question, the judge and its server and the last failure; nothing scored,
    nothing cached."""
    assert message is not None
    first = {"mmvet": "mmvet v1_0, run 0, try 1", "llava_wild": "llava_wild question 0, run 0"}.get(bench)
    assert first is None or f": {first}: " in message, message
    assert f"the judge {JUDGES[bench]} at {server.base_url} failed 2 times, last with {failure}" in message
    assert "nothing was scored" in message
    assert not (out / "metrics.json").exists() and cached(out) == []


BROKEN = {
    "HTTP 500": (
        Raw(500, {"error": {"message": "overloaded", "type": "server_error"}}),
        "InternalServerError",
    ),
    "cut JSON": (
        Raw(200, b'{"id": "c", "object": "chat.completion", "choices": [{"ind'),
        "a reply that is not",
    ),
    "not a completion": (Raw(200, {"foo": 1}), "a reply with no choices"),
    "no choices": (
        Raw(200, {"id": "c", "model": "m", "object": "chat.completion", "choices": []}),
        "a reply with no choices",
    ),
    "null content": (completion(None), "a reply without content"),
    "empty content": (completion("  "), "an empty reply"),
    "content filter": (
        completion("0.5", "content_filter"),
        "a reply that ended with finish_reason 'content_filter'",
    ),
    "cut without a grade": (completion("Sure, the", "length"), "a reply cut at max_tokens"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_an_unusable_reply_is_a_failed_call_retried_then_one_line(
    answered, tiny_model_dir, eval_root, tmp_path, case
):
    response, failure = BROKEN[case]
    with OpenAIServer(script=lambda number, body, headers: response) as server:
        message, out = judged(answered, tiny_model_dir, eval_root, tmp_path, "mmvet", server)
    failed_cleanly(message, out, "mmvet", server, failure)
    assert len(server.bodies) == 2  # both tries of the first call, then the run stopped

    # The same folder with a healthy judge: nothing was cached, so everything is asked and scored.
    with OpenAIServer(lambda messages: "1.0") as healthy:
        message, out = judged(answered, tiny_model_dir, eval_root, tmp_path, "mmvet", healthy)
    assert message is None and len(healthy.bodies) > 0
    assert json.loads((out / "metrics.json").read_text())["headline"]["value"] == 100.0
    assert {entry["reply"] for entry in cached(out)} == {"1.0"}


@pytest.mark.parametrize("bench", ["mathvista", "llava_wild"])
def test_a_null_content_fails_every_judged_benchmark(answered, tiny_model_dir, eval_root, tmp_path, bench):
    """MathVista scored 0.0 with every extraction empty, before: a null content was the reply ""."""
    with OpenAIServer(script=lambda number, body, headers: completion(None)) as server:
        message, out = judged(answered, tiny_model_dir, eval_root, tmp_path, bench, server)
    failed_cleanly(message, out, bench, server, "a reply without content")


def test_a_judge_that_never_answers_is_noticed_after_its_time_out(
    answered, tiny_model_dir, eval_root, tmp_path
):
    # The defaults give up on a dead judge within 5 minutes (4 x 60 s + 2 + 4 + 8 s), not 13.5 as before.
    assert ATTEMPTS * TIMEOUT_S + sum(BACKOFF_S * 2**i for i in range(ATTEMPTS - 1)) < 5 * 60
    with OpenAIServer(script=lambda number, body, headers: Raw(hang=True)) as server:
        started = time.monotonic()
        message, out = judged(
            answered, tiny_model_dir, eval_root, tmp_path, "mmvet", server, "--judge-timeout", "0.5"
        )
        waited = time.monotonic() - started
    failed_cleanly(message, out, "mmvet", server, "APITimeoutError")
    assert len(server.bodies) == 2 and waited < 30


def test_retry_after_is_honoured(answered, tiny_model_dir, eval_root, tmp_path):
    asked = []

    def rate_limited(number, body, headers):
        asked.append(time.monotonic())
        if number == 1:
            return Raw(429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "2"})
        return None

    with OpenAIServer(lambda messages: "1.0", script=rate_limited) as server:
        message, out = judged(answered, tiny_model_dir, eval_root, tmp_path, "mmvet", server)
    assert message is None
    assert asked[1] - asked[0] >= 2.0  # the server's 2 s, not the back-off's 0.01 s
    usage = json.loads((out / "metrics.json").read_text())["judge"]["usage"]
    assert usage["retries"] == 1


def test_a_grader_that_never_grades_fails_mmvet_with_the_counts(
    answered, tiny_model_dir, eval_root, tmp_path
):
    """MM-Vet's own rule stays (five unreadable replies score 0.0), but all of them giving up is no score."""
    with OpenAIServer(lambda messages: "I cannot grade this") as server:
        message, out = judged(answered, tiny_model_dir, eval_root, tmp_path, "mmvet", server)
    assert "mmvet: judge gpt-4-0613: skipped 40 of 40 (no score in 5 replies" in message
    assert "more than the allowed 5.00%" in message and f"`rm -r {out / 'judge_cache'}`" in message
    assert not (out / "metrics.json").exists()
    # Each refusal is a reply the grader made (and was billed for): cached, not asked again on a rerun.
    entries = cached(out)
    assert len(entries) == len(server.bodies) and {entry["reply"] for entry in entries} == {
        "I cannot grade this"
    }

    # The fix the message names: the cache deleted, a judge that grades scores the benchmark.
    shutil.rmtree(out / "judge_cache")
    with OpenAIServer(lambda messages: "0.5") as healthy:
        message, out = judged(answered, tiny_model_dir, eval_root, tmp_path, "mmvet", healthy)
    metrics = json.loads((out / "metrics.json").read_text())
    assert message is None and metrics["headline"]["value"] == 50.0
    assert metrics["metrics"]["judge_gave_up"]["skipped"] == 0


def test_give_ups_under_the_share_are_counted_in_the_metrics(answered, tiny_model_dir, eval_root, tmp_path):
    """One question of 40 never graded (2.5%, under the default 5%): scored 0.0 as upstream, and counted."""
    annotations = json.loads((eval_root / "mm-vet" / "mm-vet" / "mm-vet.json").read_text())
    asked = Counter(entry["question"] for entry in annotations.values())
    hard = next(question for question, count in asked.items() if count == 1)

    def grader(messages):
        row = messages[0]["content"].removesuffix(ASK_FOR_DIGIT).split("\n")[-1]
        return "Sure!" if row.startswith(hard + " | ") else "1.0"

    with OpenAIServer(grader) as server:
        message, out = judged(answered, tiny_model_dir, eval_root, tmp_path, "mmvet", server)
    assert message is None, message
    metrics = json.loads((out / "metrics.json").read_text())
    gave_up = metrics["metrics"]["judge_gave_up"]
    assert (gave_up["seen"], gave_up["skipped"]) == (40, 1)
    assert gave_up["by_reason"] == {"no score in 5 replies (scored 0.0, as upstream)": 1}
    assert metrics["headline"]["value"] == 97.5


def test_a_refusing_extractor_is_no_extraction_not_the_nearest_choice(
    answered, tiny_model_dir, eval_root, tmp_path
):
    """MathVista scored 25.0 on "I cannot grade this" before: the refusal went to nearest-choice matching."""
    with OpenAIServer(lambda messages: "I cannot grade this") as server:
        message, out = judged(answered, tiny_model_dir, eval_root, tmp_path, "mathvista", server)
        assert "mathvista: judge gpt-3.5-turbo: skipped" in message and "(no extraction:" in message
        assert not (out / "metrics.json").exists()
        message, out = judged(
            answered, tiny_model_dir, eval_root, tmp_path, "mathvista", server, "--judge-max-gave-up", "1"
        )
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    by = metrics["extracted_by"]
    assert (
        message is None
        and by["judge"] == 0
        and by["no extraction"] == metrics["judge_gave_up"]["skipped"] > 0
    )
    # only what the rules read can be right: no refusal scores
    assert metrics["correct"] <= by["rule"]


def test_an_unusable_cache_entry_of_an_older_cumo_is_refused_with_the_file(
    answered, tiny_model_dir, eval_root, tmp_path
):
    """An older cumo cached a null content as the reply "": that entry is refused, naming the file to delete."""
    with OpenAIServer(lambda messages: "1.0") as server:
        message, out = judged(answered, tiny_model_dir, eval_root, tmp_path, "mmvet", server)
        assert message is None
        first = cached(out)[0]
        key = cache_key(
            first["model"], first["messages"], first["temperature"], first["max_tokens"], first["run"]
        )
        path = out / "judge_cache" / key[:2] / f"{key}.json"
        old = {name: value for name, value in first.items() if name != "finish_reason"} | {"reply": ""}
        path.write_text(json.dumps(old))
        asked = len(server.bodies)
        message, out = judged(answered, tiny_model_dir, eval_root, tmp_path, "mmvet", server)
        assert f"`rm {path}`" in message and "holds an empty reply" in message
        assert not (out / "metrics.json").exists() and len(server.bodies) == asked
        path.unlink()
        message, out = judged(answered, tiny_model_dir, eval_root, tmp_path, "mmvet", server)
    assert message is None and len(server.bodies) == asked + 1  # only that call asked again


def test_a_judge_url_that_is_no_url_is_refused_before_anything_runs(
    answered, tiny_model_dir, eval_root, tmp_path
):
    out = tmp_path / "mmvet"
    args = eval_args(tiny_model_dir, eval_root, out, "mmvet", "--judge-model", "gpt-4-0613")
    with pytest.raises(SystemExit) as stop:
        main([*args, "--judge-base-url", "htp//localhost:8000"])
    assert "judge base URL 'htp//localhost:8000' is not an http(s) URL" in str(stop.value.code)
    assert not out.exists()


ECHO_STATUSES = (400, 403, 404, 422, 500)


@pytest.mark.parametrize("status", ECHO_STATUSES)
def test_the_key_reaches_no_output_and_no_file(answered, tiny_model_dir, eval_root, tmp_path, status):
    """A server that echoes the Authorization header in its error body: the key is on no line the run prints (its
    log, as the workflow's evaluate rule writes it) and in no file it writes, with --debug too."""

    def echo(number, body, headers):
        sent = {name.lower(): value for name, value in headers.items()}["authorization"]
        return Raw(
            status, {"error": {"message": f"bad request; you sent Authorization: {sent}", "type": "x"}}
        )

    out = tmp_path / "mmvet"
    shutil.copytree(answered["mmvet"], out)
    with OpenAIServer(script=echo) as server:
        for debug in ([], ["--debug"]):
            log = tmp_path / f"eval{'-debug' if debug else ''}.log"
            command = [sys.executable, "-m", "cumo", *debug]
            command += eval_args(tiny_model_dir, eval_root, out, "mmvet", "--judge-model", "gpt-4-0613")
            command += [
                "--judge-base-url",
                server.base_url,
                "--judge-attempts",
                "2",
                "--judge-backoff",
                "0.01",
            ]
            with open(log, "w") as output:
                run = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=dict(os.environ))
            assert run.returncode != 0
    assert server.bodies and all(f"Bearer {KEY}" in str(headers) for _, _, headers in server.requests)
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(written) > 3
    assert [path for path in written if KEY.encode() in path.read_bytes()] == []
    text = (tmp_path / "eval.log").read_text()
    last = text.strip().splitlines()[-1]
    assert last.startswith("cumo eval: mmvet v1_0, run 0, try 1: ")
    if status == 403:
        assert "refused the key in $OPENAI_API_KEY (HTTP 403)" in last
    else:
        assert "Bearer [redacted]" in last


def test_reviews_without_scores_fail_llava_wild_with_the_counts(
    answered, tiny_model_dir, eval_root, tmp_path
):
    with OpenAIServer(lambda messages: "I cannot grade this") as server:
        message, out = judged(answered, tiny_model_dir, eval_root, tmp_path, "llava_wild", server)
    assert "llava_wild: judge gpt-4-0613: skipped 42 of 42 (review without a line of two scores" in message
    assert not (out / "metrics.json").exists() and len(cached(out)) == len(server.bodies) == 42
