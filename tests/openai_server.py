"""An OpenAI-compatible chat server on 127.0.0.1 for the judge tests, in a thread on an ephemeral port.

`POST /v1/chat/completions` answers what `reply(messages)` returns, in the response schema the openai client
parses (`choices[0].message.content`, `model`, `usage`); see openai-python's `types/chat/chat_completion.py`.
Tokens are counted as whitespace-separated words (prompt: every message's content; completion: the reply),
so a test can compute the usage it expects. `fail` lists HTTP statuses (429, 500, ...) answered, in order,
to the first requests; every request's JSON body and headers are recorded, failed ones included.
"""

import json
from collections.abc import Callable

from tests.servers import _Handler, _Server


def words(text: str) -> int:
    return len(text.split())


class _ChatHandler(_Handler):
    # Headers and body go out in two writes; without TCP_NODELAY the second waits for the client's delayed
    # ACK (40 ms a request on Linux).
    disable_nagle_algorithm = True

    def do_POST(self):
        self._record()
        server = self.server.owner
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.bodies.append(body)
        if self.path != "/v1/chat/completions":
            return self._json(404, {"error": {"message": f"no route for {self.path}", "type": "not_found"}})
        if server.fail:
            status = server.fail.pop(0)
            return self._json(status, {"error": {"message": f"scripted {status}", "type": "server_error"}})
        content = server.reply(body["messages"])
        prompt_tokens = sum(words(message["content"]) for message in body["messages"])
        completion_tokens = words(content)
        self._json(
            200,
            {
                "id": f"chatcmpl-{len(server.bodies)}",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )

    def _json(self, status: int, data: dict):
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


class OpenAIServer(_Server):
    """`reply(messages) -> str` gives each completion; `fail`: statuses answered to the first requests."""

    def __init__(self, reply: Callable[[list[dict]], str], fail=()):
        super().__init__(_ChatHandler)
        self.reply = reply
        self.fail = list(fail)
        self.bodies: list[dict] = []  # every request's JSON body, in order

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def user_messages(self) -> list[str]:
        """The last user message of every request, in order."""
        return [[m for m in body["messages"] if m["role"] == "user"][-1]["content"] for body in self.bodies]
