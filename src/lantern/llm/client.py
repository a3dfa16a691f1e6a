"""Talking to OpenAI-compatible chat-completions endpoints: limits, retries, replicas, cost.

One code path serves OpenAI, vLLM, llama.cpp, Ollama and hosted providers: the official ``openai``
SDK (``AsyncOpenAI``) with its own retries switched off (``max_retries=0``), because the retry
policy is part of what a run reports and what the tests check:

- transient failures — 429, 5xx, timeouts, dropped connections — are retried up to
  ``max_retries`` times with exponential backoff and full jitter, waiting exactly what a
  ``Retry-After`` header asks for when there is one (capped at ``MAX_RETRY_AFTER`` seconds);
- other 4xx are not retried: 401/403 raise :class:`LLMAuthError` (every later request would fail
  the same way, so the stage stops), the rest raise :class:`RequestFailed` for that field only;
- at most ``concurrency`` requests are in flight; requests/minute and tokens/minute are token
  buckets holding one second's worth, so the rate is smooth rather than bursty;
- several base URLs are replicas of one model: each attempt goes to the replica with the fewest
  requests in flight (round-robin among ties), and a retry prefers another replica;
- a :class:`Budget` is charged before every attempt with an upper estimate of its cost and
  settled with the real usage after, so ``max_cost`` is never crossed by requests in flight.

The API key is handed to the SDK and kept nowhere else: no attribute, message or statistic of
this module holds it.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai
from openai.types.chat import ChatCompletion

from lantern.errors import LanternError

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 300.0
CHARS_PER_TOKEN = 3.0  # below the ~4 of English BPE text, so prompt estimates err high


class RequestFailed(Exception):
    """A request that could not be answered: ``reason`` is a short category (``http_400``, ``timeout``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class LLMAuthError(ValueError):
    """The endpoint refused the credentials (401/403): no request of this run can succeed."""


class BudgetExhausted(Exception):
    """Sending the next request could cross ``max_cost``; nothing was sent."""


@dataclass(frozen=True)
class Price:
    """US dollars per one million prompt and completion tokens."""

    prompt: float
    completion: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1e6


def price_for(model: str, prices: dict[str, Price | Sequence[float]]) -> Price:
    """The price of ``model`` from a table (``{name: Price or [prompt, completion]}``); free if absent."""
    entry = prices.get(model)
    if entry is None:
        return Price(0.0, 0.0)
    if isinstance(entry, Price):
        return entry
    prompt, completion = entry
    return Price(float(prompt), float(completion))


def estimate_tokens(text: str) -> int:
    """A token count for ``text`` without a tokenizer, erring high (chars / 3)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_prompt_tokens(messages: list[dict]) -> int:
    """An upper-leaning token count for ``messages``: their text, plus 4 per message for the chat
    template's markers."""
    text = "".join(str(m.get("content", "")) + str(m.get("role", "")) for m in messages)
    return estimate_tokens(text) + 4 * len(messages)


class Budget:
    """Spending against an optional limit; estimates are reserved before sending, then settled."""

    def __init__(self, max_cost: float | None) -> None:
        self.max_cost = max_cost
        self.spent = 0.0
        self.reserved = 0.0

    def reserve(self, estimate: float) -> None:
        if self.max_cost is not None and self.spent + self.reserved + estimate > self.max_cost:
            raise BudgetExhausted(
                f"the next request (up to ${estimate:.4f}) would exceed max_cost ${self.max_cost:.4f} "
                f"(spent ${self.spent:.4f})"
            )
        self.reserved += estimate

    def settle(self, estimate: float, actual: float) -> None:
        self.reserved -= estimate
        self.spent += actual


class _TokenBucket:
    """``rate`` units per minute; holds at most one second's worth; a large request may run into debt."""

    def __init__(self, rate_per_minute: float) -> None:
        self.rate = rate_per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, amount: float) -> None:
        async with self._lock:
            need = min(amount, self.capacity)
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
                self.updated = now
                if self.level >= need:
                    self.level -= amount
                    return
                await asyncio.sleep((need - self.level) / self.rate)


@dataclass
class Completion:
    """One answered request: the message text, its usage (0 when the server reports none), the
    model name the server reported answering with, and the per-token log-probabilities when they
    were asked for (OpenAI's ``choices[0].logprobs.content`` as plain dicts)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    replica: int
    served_model: str | None = None
    logprobs: list[dict] | None = None


@dataclass
class ClientStats:
    """Counters a run reports: every HTTP attempt, every retry, the tokens and dollars spent."""

    requests_sent: int = 0
    retries: int = 0
    max_in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    per_replica: list[int] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)


def public_url(url: str) -> str:
    """A base URL with any user:password part removed, fit for logs and stats."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


class LLMClient:
    """Chat completions spread over replicas with the retry and rate policy of the module docstring.

    Use as ``async with LLMClient(...) as client: await client.complete(messages, params)``;
    ``params`` are the sampling parameters sent verbatim (``temperature``, ``max_tokens``,
    ``response_format``, ...), the same dict that keys the cache.
    """

    def __init__(
        self,
        base_urls: Sequence[str],
        model: str,
        api_key: str,
        *,
        concurrency: int = 4,
        rpm: float | None = None,
        tpm: float | None = None,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        price: Price | None = None,
        budget: Budget | None = None,
        seed: int = 0,
    ) -> None:
        if not base_urls:
            raise LanternError("at least one base URL is needed")
        if concurrency < 1:
            raise LanternError(f"concurrency must be >= 1, got {concurrency}")
        self.model = model
        self.base_urls = [public_url(u) for u in base_urls]
        self._replicas = [
            openai.AsyncOpenAI(base_url=u, api_key=api_key, timeout=timeout, max_retries=0) for u in base_urls
        ]
        self._in_flight = [0] * len(base_urls)
        self._turn = 0
        self._slots = asyncio.Semaphore(concurrency)
        self._rpm = _TokenBucket(rpm) if rpm else None
        self._tpm = _TokenBucket(tpm) if tpm else None
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.price = price or Price(0.0, 0.0)
        self.budget = budget or Budget(None)
        self._random = random.Random(seed)
        self.stats = ClientStats(per_replica=[0] * len(base_urls))

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for replica in self._replicas:
            await replica.close()

    def _pick(self, avoid: int | None) -> int:
        order = [(self._turn + j) % len(self._replicas) for j in range(len(self._replicas))]
        if avoid is not None and len(order) > 1:
            order.remove(avoid)
        best = min(order, key=lambda i: self._in_flight[i])
        self._turn = (best + 1) % len(self._replicas)
        return best

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        return self._random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2**attempt))

    async def complete(self, messages: list[dict], params: dict[str, Any]) -> Completion:
        """Send one chat request, retrying transient failures; raises RequestFailed, LLMAuthError,
        BudgetExhausted."""
        prompt_estimate = estimate_prompt_tokens(messages)
        token_estimate = prompt_estimate + int(params.get("max_tokens") or 0)
        cost_estimate = self.price.cost(prompt_estimate, int(params.get("max_tokens") or 0))
        avoid: int | None = None
        for attempt in range(self.max_retries + 1):
            async with self._slots:
                # Reserve only once a slot is held, so queued requests do not hold budget.
                self.budget.reserve(cost_estimate)
                completion: Completion | None = None
                try:
                    if self._rpm is not None:
                        await self._rpm.take(1)
                    if self._tpm is not None:
                        await self._tpm.take(token_estimate)
                    replica = self._pick(avoid)
                    completion, failure, retry_after = await self._attempt(replica, messages, params)
                finally:
                    actual = 0.0
                    if completion is not None:
                        actual = self.price.cost(completion.prompt_tokens, completion.completion_tokens)
                    self.budget.settle(cost_estimate, actual)
                    self.stats.cost_usd += actual
            if completion is not None:
                return completion
            assert failure is not None
            if attempt == self.max_retries:
                raise failure
            delay = self._backoff(attempt, retry_after)
            self.stats.retries += 1
            log.info("retrying after %s in %.2fs (attempt %d)", failure.reason, delay, attempt + 1)
            avoid = replica
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _attempt(
        self, replica: int, messages: list[dict], params: dict[str, Any]
    ) -> tuple[Completion | None, RequestFailed | None, float | None]:
        """One HTTP attempt: (completion, None, None) or (None, retryable failure, Retry-After)."""
        self._in_flight[replica] += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, sum(self._in_flight))
        self.stats.requests_sent += 1
        self.stats.per_replica[replica] += 1
        try:
            # The SDK's documented custom-request call: the body goes out as built, skipping the
            # per-request type transform of chat.completions.create (milliseconds of CPU each).
            response = await self._replicas[replica].post(
                "/chat/completions",
                cast_to=ChatCompletion,
                body={"model": self.model, "messages": messages, **params},
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            self.stats.errors[f"http_{exc.status_code}"] += 1
            raise LLMAuthError(
                f"{self.base_urls[replica]} refused the credentials (HTTP {exc.status_code}); "
                "check the API key environment variable"
            ) from None
        except openai.APIStatusError as exc:
            reason = f"http_{exc.status_code}"
            self.stats.errors[reason] += 1
            if exc.status_code == 429 or exc.status_code >= 500:
                return None, RequestFailed(reason), _retry_after(exc.response.headers)
            raise RequestFailed(reason, _short(exc.message)) from None
        except openai.APITimeoutError:
            self.stats.errors["timeout"] += 1
            return None, RequestFailed("timeout"), None
        except openai.APIConnectionError:
            self.stats.errors["connection"] += 1
            return None, RequestFailed("connection"), None
        except openai.APIResponseValidationError:
            self.stats.errors["bad_response"] += 1
            return None, RequestFailed("bad_response"), None
        finally:
            self._in_flight[replica] -= 1
        usage = response.usage
        prompt_tokens = int(usage.prompt_tokens or 0) if usage else 0
        completion_tokens = int(usage.completion_tokens or 0) if usage else 0
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        text = response.choices[0].message.content if response.choices else None
        served = getattr(response, "model", None)
        logprobs = _token_logprobs(response)
        completion = Completion(text or "", prompt_tokens, completion_tokens, replica, served, logprobs)
        return completion, None, None


def _token_logprobs(response: ChatCompletion) -> list[dict] | None:
    """The first choice's per-token log-probabilities as plain dicts, or None when absent."""
    choice = response.choices[0] if response.choices else None
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    return [
        item.model_dump(exclude={"bytes": True, "top_logprobs": {"__all__": {"bytes"}}})
        if hasattr(item, "model_dump")
        else dict(item)
        for item in content
    ]


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (delta-seconds or an HTTP date), if any."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
