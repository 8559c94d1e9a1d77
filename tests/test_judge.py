"""The judge through the real openai client over HTTP to a local OpenAI-compatible server."""

import json
import logging
from pathlib import Path

import pytest

from cumo.eval.judge import PRICES_PER_1K, Judge, JudgeError
from tests.openai_server import OpenAIServer, words
from tests.servers import local_only

KEY = "sk-test-0123456789abcdef-secret"
MESSAGES = [
    {"role": "system", "content": "You grade answers."},
    {"role": "user", "content": "Is red a colour? Answer yes or no."},
]


@pytest.fixture(autouse=True)
def key(monkeypatch):
    local_only(monkeypatch)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def judge_at(server, tmp_path, **kwargs) -> Judge:
    return Judge(
        model="gpt-4-0613", cache_dir=tmp_path / "cache", base_url=server.base_url, backoff_s=0.001, **kwargs
    )


def ask(judge, run=0, temperature=0.0, messages=MESSAGES):
    return judge.complete(messages, temperature=temperature, max_tokens=8, run=run, what="mmvet v1_7, run 0")


def test_a_second_identical_call_is_served_from_the_cache(tmp_path):
    with OpenAIServer(lambda messages: "yes") as server:
        judge = judge_at(server, tmp_path)
        assert ask(judge) == "yes"
        assert ask(judge) == "yes"
        assert len(server.bodies) == 1
        # a new judge on the same cache asks nothing either: the cache is on disk
        assert ask(judge_at(server, tmp_path)) == "yes"
        assert len(server.bodies) == 1
        assert judge.usage()["calls"] == 1 and judge.usage()["cached"] == 1


def test_runs_temperatures_and_prompts_are_separate_calls(tmp_path):
    with OpenAIServer(lambda messages: "yes") as server:
        judge = judge_at(server, tmp_path)
        ask(judge, run=0)
        ask(judge, run=1)
        ask(judge, run=2)
        ask(judge, run=0, temperature=0.5)
        ask(judge, messages=[{"role": "user", "content": "Something else?"}])
        assert len(server.bodies) == 5
        assert {body["temperature"] for body in server.bodies} == {0.0, 0.5}
        assert all(body["model"] == "gpt-4-0613" and body["max_tokens"] == 8 for body in server.bodies)


def test_transient_errors_are_retried_until_an_answer(tmp_path, caplog):
    with OpenAIServer(lambda messages: "0.5", fail=[429, 500, 503]) as server:
        judge = judge_at(server, tmp_path, attempts=4)
        with caplog.at_level(logging.WARNING, logger="cumo.eval.judge"):
            assert ask(judge) == "0.5"
        assert len(server.bodies) == 4
        assert judge.usage()["retries"] == 3 and judge.usage()["calls"] == 1
        assert "RateLimitError (HTTP 429)" in caplog.text and "InternalServerError (HTTP 503)" in caplog.text


def test_a_call_that_keeps_failing_raises_naming_the_question_and_caches_nothing(tmp_path):
    with OpenAIServer(lambda messages: "1.0", fail=[500] * 3) as server:
        judge = judge_at(server, tmp_path, attempts=3)
        with pytest.raises(
            JudgeError, match=r"mmvet v1_7, run 0: .* failed 3 times, last with InternalServerError"
        ):
            ask(judge)
        assert len(server.bodies) == 3
        assert not list((tmp_path / "cache").rglob("*.json"))
        assert judge.usage()["calls"] == 0


def test_a_server_that_is_gone_is_a_connection_error(tmp_path):
    with OpenAIServer(lambda messages: "yes") as server:
        judge = judge_at(server, tmp_path, attempts=2)
    with pytest.raises(JudgeError, match="failed 2 times, last with APIConnectionError"):
        ask(judge)


def test_a_client_error_is_not_retried(tmp_path):
    with OpenAIServer(lambda messages: "yes", fail=[404]) as server:
        judge = judge_at(server, tmp_path)
        with pytest.raises(JudgeError, match="answered HTTP 404"):
            ask(judge)
        assert len(server.bodies) == 1


def test_the_key_is_sent_and_written_nowhere(tmp_path, caplog):
    with OpenAIServer(lambda messages: "yes", fail=[429]) as server:
        judge = judge_at(server, tmp_path)
        with caplog.at_level(logging.DEBUG):
            ask(judge)
        headers = {name.lower(): value for name, value in server.requests[-1][2].items()}
        assert headers["authorization"] == f"Bearer {KEY}"
    texts = [repr(judge), json.dumps(judge.usage()), caplog.text]
    texts += [path.read_text() for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    assert len(texts) == 4  # one cache entry
    assert not [text for text in texts if KEY in text]


def test_a_refused_key_says_what_to_fix_without_quoting_the_server(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    with OpenAIServer(lambda messages: "yes", fail=[401]) as server:
        judge = judge_at(server, tmp_path, api_key_env="JUDGE_KEY")
        with pytest.raises(JudgeError, match=r"refused the key in \$JUDGE_KEY \(HTTP 401\)") as raised:
            ask(judge)
    assert "scripted" not in str(raised.value)


def test_a_missing_key_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(JudgeError, match=r"\$OPENAI_API_KEY, which is not set"):
        Judge(model="gpt-4-0613", cache_dir=tmp_path)


def test_usage_counts_the_servers_tokens_and_prices_them(tmp_path):
    reply = "0.7 because the colour matches"
    with OpenAIServer(lambda messages: reply) as server:
        judge = judge_at(server, tmp_path)
        ask(judge, run=0)
        ask(judge, run=1)
        ask(judge, run=1)  # cached: no tokens spent
    prompt_tokens = 2 * sum(words(message["content"]) for message in MESSAGES)  # 2 * (3 + 8)
    completion_tokens = 2 * words(reply)
    assert (prompt_tokens, completion_tokens) == (22, 10)
    usage = judge.usage()
    assert usage["prompt_tokens"] == 22 and usage["completion_tokens"] == 10
    assert usage["calls"] == 2 and usage["cached"] == 1 and usage["retries"] == 0
    assert PRICES_PER_1K["gpt-4-0613"] == (0.03, 0.06)  # $30 / $60 per 1M tokens
    assert usage["cost_usd"] == pytest.approx((22 * 0.03 + 10 * 0.06) / 1000)


def test_a_model_without_a_price_has_an_unknown_cost_unless_given_one(tmp_path):
    with OpenAIServer(lambda messages: "one two") as server:
        local = Judge(model="local-judge", cache_dir=tmp_path / "a", base_url=server.base_url)
        priced = Judge(
            model="local-judge", cache_dir=tmp_path / "b", base_url=server.base_url, prices_per_1k=(1.0, 2.0)
        )
        for judge in (local, priced):
            ask(judge)
    assert local.usage()["cost_usd"] is None
    assert priced.usage()["cost_usd"] == pytest.approx((11 * 1.0 + 2 * 2.0) / 1000)


def test_a_reply_cut_at_max_tokens_is_usable_only_where_the_benchmark_reads_it(tmp_path):
    from cumo.eval.benchmarks.mmvet import parse_grade
    from tests.openai_server import completion

    with OpenAIServer(script=lambda number, body, headers: completion("0.5 because", "length")) as server:
        judge = judge_at(server, tmp_path, attempts=2)
        assert (
            judge.complete(MESSAGES, temperature=0, max_tokens=3, run=0, what="q", parse=parse_grade)
            == "0.5 because"
        )
        with pytest.raises(JudgeError, match="a reply cut at max_tokens that reads as no answer"):
            ask(judge, run=1)  # no reader: a cut reply is not known to hold an answer
    assert [
        entry["finish_reason"]
        for entry in map(json.loads, map(Path.read_text, (tmp_path / "cache").rglob("*.json")))
    ] == ["length"]


def test_a_reply_that_echoes_the_key_is_cached_without_it(tmp_path):
    with OpenAIServer(lambda messages: f"0.5 (you sent {KEY})") as server:
        judge = judge_at(server, tmp_path)
        assert ask(judge) == "0.5 (you sent [key])"
    assert not [
        path for path in (tmp_path / "cache").rglob("*") if path.is_file() and KEY in path.read_text()
    ]
