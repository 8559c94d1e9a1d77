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
- A reply is usable, or the call failed: a body that is not a chat completion (not JSON, cut, no choices), a
  null or empty content, or a `finish_reason` other than "stop" (a content filter; "length" is usable only
  where the benchmark's `parse` reads the cut reply) is a failed call (issue 17).
- Every usable reply, and only those, is cached on disk, one JSON file per call, named by the sha256 of the
  JSON of (model, messages, temperature, max_tokens, run). `run` is the index of an independent judging pass:
  the paper averages 3 runs, and at temperature 0 three runs are three calls only because their keys differ.
  The server's address is not part of the key: a cache directory belongs to one judge. A second scoring of
  the same predictions costs nothing, and a run stopped halfway goes on where it stopped. A cache entry that
  is not usable (written by an older cumo) is refused, naming the file to delete.
- Rate limits, 5xx answers, lost connections, time-outs (`timeout_s`) and unusable replies are retried
  `attempts` times in all, after the server's `Retry-After` when it gives one, else with exponential back-off
  (`backoff_s`, 2x, 4x, ...; the openai client's own retries are off, so every try is counted here); a call
  that still fails raises `JudgeError` naming the question, the run, the judge and its server. No score is
  ever made up for a failed call. The defaults notice a dead judge in about 4 minutes (4 tries of 60 s).
- Whatever the server says is scrubbed of the key's value and of any `Bearer ...` before it is raised or
  logged: a server may echo the request's headers in an error body.
- `give_ups(what)`: the counter in which a benchmark counts the questions its own rules give up on (MM-Vet's
  five unreadable grades, LLaVA-Bench's review without scores, MathVista's extraction that is no answer);
  past `max_gave_up_share` of them the benchmark is not scored (cumo.data.skips).
- `usage()`: calls made, cache hits, retries, tokens and the estimated cost in USD from per-1K-token prices
  (`PRICES_PER_1K`, or `prices_per_1k` for any other model; unknown prices give a cost of None).
"""

import email.utils
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
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
from openai.types.chat import ChatCompletion

from cumo.data.skips import SkipCounter

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
# The defaults of the judge settings (config `judge:`, `cumo eval --judge-*`). A grade is 3 tokens and a
# LLaVA-Bench review a few hundred: GPT-4 writes them well within a minute. 4 tries of 60 s with 2 + 4 + 8 s
# between them give up on a judge that never answers after about 4 minutes.
TIMEOUT_S = 60.0
ATTEMPTS = 4
BACKOFF_S = 2.0
MAX_GAVE_UP_SHARE = 0.05  # questions the benchmark's own rules may give up on before it is not scored
MAX_RETRY_AFTER_S = 600.0  # a longer Retry-After is waited this long (the try after it may fail again)
NO_KEY = "no-key"  # what the openai client sends to a server that takes none (it refuses an empty key)
BEARER = re.compile(r"Bearer\s+\S+", re.IGNORECASE)


class JudgeError(RuntimeError):
    """A judge call that could not be made, or a cache entry that cannot be used; the benchmark is not scored."""


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
        attempts: int = ATTEMPTS,
        backoff_s: float = BACKOFF_S,
        timeout_s: float = TIMEOUT_S,
        max_gave_up_share: float = MAX_GAVE_UP_SHARE,
    ):
        if runs < 1 or attempts < 1:
            raise ValueError(f"runs and attempts must be at least 1, got runs={runs}, attempts={attempts}")
        if backoff_s < 0 or timeout_s <= 0 or not 0 <= max_gave_up_share <= 1:
            raise ValueError(
                f"the judge needs backoff_s >= 0, timeout_s > 0 and 0 <= max_gave_up_share <= 1; got "
                f"backoff_s={backoff_s}, timeout_s={timeout_s}, max_gave_up_share={max_gave_up_share}"
            )
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
        self.timeout_s = timeout_s
        self.max_gave_up_share = max_gave_up_share
        self._secrets = [key] if api_key_env else []  # scrubbed from whatever the server says
        self._client = OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout_s)
        self._counts = {
            "calls": 0,
            "cached": 0,
            "retries": 0,
            "unusable_replies": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }

    def __repr__(self) -> str:
        return (
            f"Judge(model={self.model!r}, base_url={self.base_url!r}, runs={self.runs}, "
            f"cache_dir={str(self.cache_dir)!r}, api_key_env={self.api_key_env!r})"
        )

    @property
    def server(self) -> str:
        return self.base_url or "OpenAI's API"

    def complete(
        self,
        messages: list[dict],
        *,
        temperature: float,
        max_tokens: int,
        run: int,
        what: str,
        parse: Callable[[str], object] | None = None,
    ) -> str:
        """The judge's reply to `messages` (from the cache when this exact call was made before).

        `what` names the benchmark, question and run, for errors and logs ("mmvet v1_12, run 2"). `parse` is
        the benchmark's reader of a reply (None where it reads nothing): a reply cut at `max_tokens` is usable
        only when it reads one."""
        key = cache_key(self.model, messages, temperature, max_tokens, run)
        path = self.cache_dir / key[:2] / f"{key}.json"
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                reply, finish_reason = record["reply"], record.get("finish_reason", "stop")
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
                raise JudgeError(
                    f"{path}: unreadable judge cache entry ({type(error).__name__}); delete it, `rm {path}`, to "
                    "ask the judge again"
                ) from None
            problem = unusable(reply, finish_reason, parse)
            if problem is not None:
                raise JudgeError(
                    f"{what}: the judge cache entry {path} holds {problem}, written by an older cumo that cached "
                    f"unusable replies; delete it, `rm {path}`, to ask the judge again"
                )
            self._counts["cached"] += 1
            return reply
        response, reply, finish_reason = self._create(messages, temperature, max_tokens, what, parse)
        for secret in self._secrets:  # a server that echoes the key in a reply does not get it onto the disk
            reply = reply.replace(secret, "[key]")
        record = {
            "model": self.model,
            "response_model": getattr(response, "model", None),
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "run": run,
            "reply": reply,
            "finish_reason": finish_reason,
            "usage": _tokens(response),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        partial.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        partial.replace(path)  # whole or absent: a killed run never leaves half an entry
        return reply

    def _create(self, messages: list[dict], temperature: float, max_tokens: int, what: str, parse):
        """(response, reply, finish_reason) of the first usable reply in `attempts` tries, or JudgeError."""
        for attempt in range(1, self.attempts + 1):
            wait = None  # the server's Retry-After, in seconds
            try:
                response = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens
                )
            except TRANSIENT as error:
                failure = self._describe(error)
                wait = retry_after(error)
            except (AuthenticationError, PermissionDeniedError) as error:
                # The body of a 401 can quote part of the key: say what to fix, not what the server said.
                raise JudgeError(
                    f"{what}: {self.server} refused the key in ${self.api_key_env} (HTTP {error.status_code}): "
                    "check that it is valid for this server and model"
                ) from None
            except APIStatusError as error:
                raise JudgeError(
                    f"{what}: the judge {self.model} at {self.server} answered HTTP {error.status_code} "
                    f"({self._scrub(error.message)}); check "
                    "the model name and the server (not retried: the same request would get the same answer)"
                ) from None
            except (ValueError, TypeError) as error:  # a body that is not JSON, or not a chat completion's
                failure = (
                    f"a reply that is not a chat completion ({type(error).__name__}: {self._scrub(error)})"
                )
            else:
                self._count_tokens(response)
                reply, finish_reason, failure = _read(response, parse)
                if failure is None:
                    self._counts["calls"] += 1
                    return response, reply, finish_reason
                self._counts["unusable_replies"] += 1
            if attempt == self.attempts:
                raise JudgeError(
                    f"{what}: the judge {self.model} at {self.server} failed {self.attempts} times, last with "
                    f"{failure}; nothing was scored. Replies already received are cached in {self.cache_dir}: "
                    "run again to go on from there (judge settings: --judge-attempts, --judge-timeout, "
                    "--judge-backoff)"
                ) from None
            delay = min(wait, MAX_RETRY_AFTER_S) if wait is not None else self.backoff_s * 2 ** (attempt - 1)
            logger.warning(
                "%s: judge %s: %s; try %d of %d in %.1f s%s",
                what,
                self.model,
                failure,
                attempt + 1,
                self.attempts,
                delay,
                " (the server's Retry-After)" if wait is not None else "",
            )
            self._counts["retries"] += 1
            time.sleep(delay)
        raise AssertionError("unreachable: the last try returns or raises")

    def _count_tokens(self, response) -> None:
        for name, count in _tokens(response).items():
            self._counts[name] += count

    def _scrub(self, text) -> str:
        """`text` (what a server said) on one line, without the key or any bearer token, at most 300 characters."""
        text = " ".join(str(text).split())
        for secret in self._secrets:
            text = text.replace(secret, "[key]")
        text = BEARER.sub("Bearer [redacted]", text)
        return text if len(text) <= 300 else text[:300] + "..."

    def _describe(self, error: Exception) -> str:
        status = getattr(error, "status_code", None)
        said = getattr(error, "message", None) or str(error)
        return type(error).__name__ + (f" (HTTP {status})" if status else "") + f": {self._scrub(said)}"

    def give_ups(self, what: str) -> SkipCounter:
        """A counter of the questions `what` (a benchmark) gives up on by its own rules, failing past
        `max_gave_up_share` of them with the fix: a judge that answers, then a cleared cache."""
        return SkipCounter(
            f"{what}: judge {self.model}",
            max_share=self.max_gave_up_share,
            keep=5,
            fix=(
                f"The judge's replies are cached in {self.cache_dir}: to ask again (another judge, or this one "
                f"once it answers), delete it, `rm -r {self.cache_dir}`; or allow more with --judge-max-gave-up "
                "(config judge.max_gave_up_share)."
            ),
        )

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


def _read(response, parse) -> tuple[object, object, str | None]:
    """(content, finish_reason, why it is unusable or None) of a chat completion's first choice."""
    if not isinstance(response, ChatCompletion):  # the client hands back the text of a body that is not JSON
        return None, None, f"a reply that is not a chat completion ({type(response).__name__})"
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        return None, None, f"a reply with no choices ({choices!r:.40})"
    message = getattr(choices[0], "message", None)
    content, finish_reason = getattr(message, "content", None), getattr(choices[0], "finish_reason", None)
    return content, finish_reason, unusable(content, finish_reason, parse)


def unusable(reply, finish_reason, parse: Callable[[str], object] | None = None) -> str | None:
    """Why a reply cannot be used (a failed call), or None when it can."""
    if not isinstance(reply, str):
        return (
            "a reply without content" if reply is None else f"a reply whose content is {type(reply).__name__}"
        )
    if not reply.strip():
        return "an empty reply"
    if finish_reason == "stop":
        return None
    if finish_reason == "length" and parse is not None and parse(reply) is not None:
        return None
    if finish_reason == "length":
        return "a reply cut at max_tokens that reads as no answer (finish_reason 'length')"
    return f"a reply that ended with finish_reason {finish_reason!r}, not 'stop'"


def retry_after(error: Exception) -> float | None:
    """The wait the server asks for (Retry-After-Ms, Retry-After in seconds or as a date), in seconds."""
    headers = getattr(getattr(error, "response", None), "headers", None)
    if headers is None:
        return None
    for header, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            return max(0.0, float(headers.get(header)) / divisor)
        except (TypeError, ValueError):
            pass
    date = email.utils.parsedate_tz(headers.get("retry-after") or "")
    return max(0.0, email.utils.mktime_tz(date) - time.time()) if date else None


def _tokens(response) -> dict[str, int]:
    usage = getattr(response, "usage", None)
    return {
        "prompt_tokens": getattr(usage, "prompt_tokens", None) or 0,
        "completion_tokens": getattr(usage, "completion_tokens", None) or 0,
    }
