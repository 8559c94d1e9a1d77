"""The judge tests' OpenAI-compatible server: the package's `JudgeServer` (cumo/eval/judge_server.py), plus what
only tests need: a well-behaved server by default, and any hostile one a test scripts.

- `fail` lists HTTP statuses (429, 500, ...) answered, in order, to the first requests.
- `script(number, body, headers)` may answer request `number` (1-based) itself with a `Raw` response: any
  status, headers and body bytes (a cut JSON, `{"foo": 1}`, a null content), or no answer at all (`hang`,
  until the server stops). None lets the server answer as it would.
- Every request (method, path, headers) and its JSON body are recorded, failed ones included. Tokens are
  whitespace words (`words`), so a test can compute the usage it expects.
"""

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from cumo.eval.judge_server import _ChatHandler, error, words

__all__ = ["OpenAIServer", "Raw", "completion", "words"]


@dataclass
class Raw:
    """One HTTP response written as it is; `hang`: none at all, the connection held until the server stops."""

    status: int = 200
    body: bytes | dict = b""
    headers: dict = field(default_factory=dict)
    hang: bool = False

    def bytes(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


def completion(content, finish_reason="stop", model="gpt-4-0613") -> Raw:
    """A 200 chat completion with this content (None: JSON null) and finish reason."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": finish_reason,
    }
    usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
    body = {"id": "c", "object": "chat.completion", "created": 0, "model": model, "choices": [choice]}
    return Raw(200, body | {"usage": usage})


class _ScriptedHandler(_ChatHandler):
    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = self.server.owner.answer(self.path, dict(self.headers), raw)
        if answer.hang:
            self.server.owner.stopping.wait(120)
            self.close_connection = True
            return
        body = answer.bytes()
        self.send_response(answer.status)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **answer.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class OpenAIServer:
    """`reply(messages) -> str` gives each completion; `fail`: statuses answered to the first requests; `script`:
    see the module's docstring."""

    def __init__(
        self,
        reply: Callable[[list[dict]], str] = lambda messages: "yes",
        fail=(),
        script: Callable[[int, dict, dict], Raw | None] | None = None,
    ):
        from cumo.eval.judge_server import JudgeServer

        self._server = JudgeServer(reply)
        self._server.answer = self.answer
        self._server.stopping = self.stopping = threading.Event()
        self._server._httpd.RequestHandlerClass = _ScriptedHandler
        self.fail = list(fail)
        self.script = script
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers) of every request
        self.bodies: list[dict] = []  # every request's JSON body, in order
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return self._server.base_url

    def __enter__(self):
        self._server.__enter__()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self._server.__exit__(*exc)

    def answer(self, path: str, headers: dict, raw: bytes) -> Raw:
        with self._lock:
            self.requests.append(("POST", path, headers))
            self.bodies.append(json.loads(raw))
            number, body = len(self.bodies), self.bodies[-1]
            failed = self.fail.pop(0) if self.fail else None
        if failed is not None:
            return Raw(*error(failed, f"scripted {failed}", "server_error"))
        if self.script is not None and (scripted := self.script(number, body, headers)) is not None:
            return scripted
        return Raw(*self._server.respond(path, headers, raw))

    def user_messages(self) -> list[str]:
        """The last user message of every request, in order."""
        return [[m for m in body["messages"] if m["role"] == "user"][-1]["content"] for body in self.bodies]
