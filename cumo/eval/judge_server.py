"""An OpenAI-compatible chat server on this machine, in a thread: what a judge is asked over HTTP, answered by a
Python function.

`POST /v1/chat/completions` answers `reply(messages)` in the response schema the openai client parses
(`choices[0].message.content`, `model`, `usage`; openai-python `types/chat/chat_completion.py`). It serves the
tiny preset's rule judge to `cumo eval` for the length of one run (`cumo.eval.rule_judge`, `--judge-serve
rules`), the same judge to other tools (`cumo judge-server`), and any scripted reply to the tests, so every
judged benchmark goes through the real openai client and its HTTP either way.

- Bound to 127.0.0.1 on an ephemeral port unless told otherwise; nothing leaves the machine.
- A `reply` that raises ValueError (a prompt it cannot read) answers HTTP 400 with the message, which the judge
  client raises as an error naming the question; any other exception answers 500. No reply is made up.
- Tokens are counted as whitespace-separated words (prompt: every message's content; completion: the reply),
  in `usage` and in `counts`: a stand-in for a tokenizer, so the cost of a judged run can be checked by hand.
- TCP_NODELAY: headers and body go out in two writes, and without it the second waits for the client's
  delayed ACK (40 ms a request on Linux).
"""

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger(__name__)

ROUTE = "/v1/chat/completions"


def words(text: str) -> int:
    return len(text.split())


class _ChatHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # one line per judge call would drown the run's log
        logger.debug("%s %s", self.address_string(), format % args)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, data = self.server.owner.respond(self.path, dict(self.headers), raw)
        body = json.dumps(data, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def error(status: int, message: str, kind: str) -> tuple[int, dict]:
    """An error in OpenAI's schema ({"error": {"message", "type"}}), which the openai client reads."""
    return status, {"error": {"message": message, "type": kind}}


class LoopbackServer:
    """A `handler` class served on `host:port` (default 127.0.0.1, an ephemeral port) in a daemon thread while
    in `with` (or in this thread by `serve_forever`); handlers reach this object as `self.server.owner`. The
    tests' file and Hub servers are ones too (tests/servers.py)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1", port: int = 0):
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self.url = f"http://{host}:{self._httpd.server_port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (`cumo judge-server`)."""
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()


class JudgeServer(LoopbackServer):
    """`reply(messages) -> str` answers each chat completion; `with JudgeServer(reply) as server:` serves it
    at `server.base_url` (a thread) until the block ends."""

    def __init__(self, reply: Callable[[list[dict]], str], host: str = "127.0.0.1", port: int = 0):
        super().__init__(_ChatHandler, host, port)
        self.reply = reply
        self.counts = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._lock = threading.Lock()  # the server answers requests in parallel threads

    @property
    def base_url(self) -> str:
        """What the openai client (and `--judge-base-url`) takes: the URL up to /v1."""
        return self.url + "/v1"

    def respond(self, path: str, headers: dict, raw: bytes) -> tuple[int, dict]:
        """(HTTP status, JSON body) for one request; `headers` are for subclasses that look at them."""
        if path != ROUTE:
            return error(404, f"no route for {path}; this server answers POST {ROUTE}", "not_found")
        try:
            body = json.loads(raw)
            messages, model = body["messages"], body["model"]
            prompt_tokens = sum(words(message["content"]) for message in messages)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as failure:
            return error(400, f"not a chat completion request ({failure!r})", "invalid_request_error")
        try:
            content = self.reply(messages)
        except ValueError as failure:
            return error(400, str(failure), "invalid_request_error")
        except Exception as failure:  # a bug in `reply`: the client sees a 5xx, the log the traceback
            logger.exception("the judge's reply function failed")
            return error(500, f"{type(failure).__name__}: {failure}", "server_error")
        completion_tokens = words(content)
        with self._lock:
            self.counts["requests"] += 1
            self.counts["prompt_tokens"] += prompt_tokens
            self.counts["completion_tokens"] += completion_tokens
            number = self.counts["requests"]
        return 200, {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
