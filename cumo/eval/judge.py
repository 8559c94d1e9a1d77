"""The judge: a chat model behind an OpenAI-compatible API that grades (MM-Vet, LLaVA-Bench in-the-wild) or
reads (MathVista's answer extraction) the model's answers.

The paper's judges are OpenAI's: gpt-4-0613 grades MM-Vet (yuweihao/MM-Vet mm-vet_evaluator.py, its default
`--gpt_model`) and LLaVA-Bench (LLaVA llava/eval/eval_gpt_review_bench.py), gpt-3.5-turbo extracts
MathVista's answers (SHI-Labs/CuMo cumo/eval/extract_answer.py). Any server that speaks the same
`/v1/chat/completions` (vLLM, llama.cpp, a test server) can stand in: give `base_url`.

- The key is read from the environment (`OPENAI_API_KEY`, or the variable named by `api_key_env`) when the
  judge is built, handed to the openai client and kept nowhere else: not in `repr`, `usage()`, the cache or
  a log line. `api_key_env=None` is a server that takes no key (the in-process rule judge,
  cumo.eval.judge_server): the client sends a placeholder, as it must send something.
- Every reply is cached on disk, one JSON file per call, named by the sha256 of the JSON of
  (model, messages, temperature, max_tokens, run). `run` is the index of an independent judging pass: the
  paper averages 3 runs, and at temperature 0 three runs are three calls only because their keys differ.
  The server's address is not part of the key: a cache directory belongs to one judge. A second scoring of
  the same predictions costs nothing, and a run stopped halfway goes on where it stopped.
- Rate limits, 5xx answers, lost connections and time-outs are retried with exponential back-off
  (`backoff_s`, 2x, 4x, ...; the openai client's own retries are off, so every try is counted here); a call
  that still fails raises `JudgeError` naming the question. No score is ever made up for a failed call.
- `usage()`: calls made, cache hits, retries, tokens and the estimated cost in USD from per-1K-token prices
  (`PRICES_PER_1K`, or `prices_per_1k` for any other model; unknown prices give a cost of None).
"""

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from openai import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    InternalServerError,
    OpenAI,
    PermissionDeniedError,
    RateLimitError,
)

logger = logging.getLogger(__name__)

# USD per 1K tokens, (prompt, completion), from OpenAI's price list (https://openai.com/api/pricing, and
# https://platform.openai.com/docs/deprecations for the retired snapshots): gpt-4-0613/0314 $30/$60 per 1M,
# gpt-4-turbo $10/$30, gpt-3.5-turbo (-0125, what the alias serves) $0.50/$1.50.
PRICES_PER_1K = {
    "gpt-4-0613": (0.03, 0.06),
    "gpt-4-0314": (0.03, 0.06),
    "gpt-4-turbo": (0.01, 0.03),
    "gpt-3.5-turbo": (0.0005, 0.0015),
}
# APITimeoutError is an APIConnectionError; InternalServerError is any 5xx.
TRANSIENT = (RateLimitError, InternalServerError, APIConnectionError)
REQUEST_TIMEOUT_S = 120.0  # a grade is short; GPT-4 under load can still take a minute
NO_KEY = "no-key"  # what the openai client sends to a server that takes none (it refuses an empty key)


class JudgeError(RuntimeError):
    """A judge call that could not be made; the benchmark is not scored."""


def cache_key(model: str, messages: list[dict], temperature: float, max_tokens: int, run: int) -> str:
    request = {
        "model": model,
        "messages": messages,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "run": run,
    }
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class Judge:
    def __init__(
        self,
        model: str,
        cache_dir: str | Path,
        base_url: str | None = None,
        runs: int = 1,
        prices_per_1k: tuple[float, float] | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        attempts: int = 6,
        backoff_s: float = 2.0,
    ):
        if runs < 1 or attempts < 1:
            raise ValueError(f"runs and attempts must be at least 1, got runs={runs}, attempts={attempts}")
        key = os.environ.get(api_key_env) if api_key_env else NO_KEY
        if not key:
            raise JudgeError(
                f"the judge's API key is read from ${api_key_env}, which is not set: export it (a local "
                "server that ignores keys still needs a value, e.g. EMPTY)"
            )
        self.model = model
        self.base_url = base_url
        self.cache_dir = Path(cache_dir)
        self.runs = runs
        self.prices_per_1k = prices_per_1k or PRICES_PER_1K.get(model)
        self.api_key_env = api_key_env  # the variable's name, never its value
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._client = OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=REQUEST_TIMEOUT_S)
        self._counts = {"calls": 0, "cached": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def __repr__(self) -> str:
        return (
            f"Judge(model={self.model!r}, base_url={self.base_url!r}, runs={self.runs}, "
            f"cache_dir={str(self.cache_dir)!r}, api_key_env={self.api_key_env!r})"
        )

    @property
    def server(self) -> str:
        return self.base_url or "OpenAI's API"

    def complete(
        self, messages: list[dict], *, temperature: float, max_tokens: int, run: int, what: str
    ) -> str:
        """The judge's reply to `messages` (from the cache when this exact call was made before).

        `what` names the question being judged, for errors and logs ("mmvet v1_12, run 2")."""
        key = cache_key(self.model, messages, temperature, max_tokens, run)
        path = self.cache_dir / key[:2] / f"{key}.json"
        if path.is_file():
            try:
                reply = json.loads(path.read_text(encoding="utf-8"))["reply"]
            except (json.JSONDecodeError, KeyError) as error:
                raise JudgeError(
                    f"{path}: unreadable judge cache entry ({error}); delete it to ask again"
                ) from error
            self._counts["cached"] += 1
            return reply
        response = self._create(messages, temperature, max_tokens, what)
        reply = response.choices[0].message.content or ""
        usage = response.usage
        tokens = {
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": usage.completion_tokens if usage else 0,
        }
        self._counts["calls"] += 1
        for name, count in tokens.items():
            self._counts[name] += count
        record = {
            "model": self.model,
            "response_model": response.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "run": run,
            "reply": reply,
            "usage": tokens,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        partial.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        partial.replace(path)  # whole or absent: a killed run never leaves half an entry
        return reply

    def _create(self, messages: list[dict], temperature: float, max_tokens: int, what: str):
        for attempt in range(1, self.attempts + 1):
            try:
                return self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens
                )
            except TRANSIENT as error:
                failure = _describe(error)
                if attempt == self.attempts:
                    raise JudgeError(
                        f"{what}: the judge {self.model} at {self.server} failed {self.attempts} times, last with "
                        f"{failure}; nothing was scored. Replies already received are cached in {self.cache_dir}: "
                        "run again to go on from there."
                    ) from error
                delay = self.backoff_s * 2 ** (attempt - 1)
                logger.warning(
                    "%s: judge %s: %s; try %d of %d in %.1f s",
                    what,
                    self.model,
                    failure,
                    attempt + 1,
                    self.attempts,
                    delay,
                )
                self._counts["retries"] += 1
                time.sleep(delay)
            except (AuthenticationError, PermissionDeniedError) as error:
                # The body of a 401 can quote part of the key: say what to fix, not what the server said.
                raise JudgeError(
                    f"{what}: {self.server} refused the key in ${self.api_key_env} (HTTP {error.status_code}): "
                    "check that it is valid for this server and model"
                ) from None
            except APIStatusError as error:
                raise JudgeError(
                    f"{what}: the judge {self.model} at {self.server} answered HTTP {error.status_code} "
                    f"({error.message}); check the model name and the server"
                ) from error

    def usage(self) -> dict:
        """What this judge cost so far: calls made, cache hits, retries, tokens, estimated USD (None: unknown)."""
        cost = None
        if self.prices_per_1k is not None:
            prompt_price, completion_price = self.prices_per_1k
            cost = (
                self._counts["prompt_tokens"] * prompt_price
                + self._counts["completion_tokens"] * completion_price
            ) / 1000
        return {**self._counts, "cost_usd": cost, "prices_per_1k": self.prices_per_1k}


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    return type(error).__name__ + (f" (HTTP {status})" if status else "")
