"""The package's OpenAI-compatible server (cumo/eval/judge_server.py): what it answers to requests that are not
chat completions and to reply functions that fail, its token counts, and `cumo judge-server`."""

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from cumo.eval import rule_judge
from cumo.eval.benchmarks.mmvet import grading_prompt
from cumo.eval.judge import Judge, JudgeError
from cumo.eval.judge_server import JudgeServer
from tests.servers import local_only


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    local_only(monkeypatch)


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_completion_in_openais_schema_with_words_counted():
    with JudgeServer(lambda messages: "two words") as server:
        body = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}
        status, data = post(server.base_url + "/chat/completions", json.dumps(body).encode())
    assert status == 200
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "two words"}
    assert data["model"] == "m"
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert server.counts == {"requests": 1, "prompt_tokens": 3, "completion_tokens": 2}


def test_what_is_not_a_chat_completion_is_refused_in_openais_error_schema():
    with JudgeServer(lambda messages: "yes") as server:
        assert post(server.url + "/v1/completions", b"{}")[0] == 404
        status, data = post(server.base_url + "/chat/completions", b"{not json")
        assert status == 400 and data["error"]["type"] == "invalid_request_error"
        status, data = post(server.base_url + "/chat/completions", json.dumps({"model": "m"}).encode())
        assert status == 400 and "'messages'" in data["error"]["message"]
    assert server.counts["requests"] == 0


def test_a_reply_function_that_breaks_is_a_server_error_the_judge_retries(tmp_path):
    def broken(messages):
        raise KeyError("oops")

    with JudgeServer(broken) as server:
        judge = Judge("m", tmp_path, base_url=server.base_url, api_key_env=None, attempts=2, backoff_s=0.001)
        with pytest.raises(JudgeError, match="failed 2 times, last with InternalServerError"):
            judge.complete([{"role": "user", "content": "q"}], temperature=0, max_tokens=3, run=0, what="q1")


def test_cumo_judge_server_serves_the_rule_judge(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "cumo", "judge-server"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline()
        base_url = re.search(r"http://127\.0\.0\.1:\d+/v1", line)[0]
        judge = Judge(rule_judge.MODEL, tmp_path, base_url=base_url, api_key_env=None)
        prompt = grading_prompt("What color is it?", "red", "It is red.")
        reply = judge.complete(
            [{"role": "user", "content": prompt}], temperature=0, max_tokens=3, run=0, what="q"
        )
        assert reply == "1.0"
    finally:
        process.terminate()
        process.wait(timeout=10)
