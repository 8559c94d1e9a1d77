"""The judge tests' OpenAI-compatible server: the package's `JudgeServer` (cumo/eval/judge_server.py), plus what
only tests need. `fail` lists HTTP statuses (429, 500, ...) answered, in order, to the first requests; every
request (method, path, headers) and its JSON body are recorded, failed ones included. Tokens are whitespace
words (`words`), so a test can compute the usage it expects.
"""

import json
from collections.abc import Callable

from cumo.eval.judge_server import JudgeServer, error, words

__all__ = ["OpenAIServer", "words"]


class OpenAIServer(JudgeServer):
    """`reply(messages) -> str` gives each completion; `fail`: statuses answered to the first requests."""

    def __init__(self, reply: Callable[[list[dict]], str], fail=()):
        super().__init__(reply)
        self.fail = list(fail)
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers) of every request
        self.bodies: list[dict] = []  # every request's JSON body, in order

    def respond(self, path: str, headers: dict, raw: bytes) -> tuple[int, dict]:
        self.requests.append(("POST", path, headers))
        self.bodies.append(json.loads(raw))
        if self.fail:
            status = self.fail.pop(0)
            return error(status, f"scripted {status}", "server_error")
        return super().respond(path, headers, raw)

    def user_messages(self) -> list[str]:
        """The last user message of every request, in order."""
        return [[m for m in body["messages"] if m["role"] == "user"][-1]["content"] for body in self.bodies]
