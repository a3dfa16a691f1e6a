"""Talking to OpenAI-compatible chat-completions endpoints: limits, retries, replicas, cost.

One code path serves OpenAI, vLLM, llama.cpp, Ollama and hosted providers: the official ``openai``
SDK (``AsyncOpenAI``) with its own retries switched off (``max_retries=0``), because the retry
policy is part of what a run reports and what the tests check:

- ``timeout`` is a total deadline per attempt — connecting, waiting and reading the whole body —
  not the longest silence between two bytes, so a server that drips its answer is cut off;
- transient failures — 429, 5xx, timeouts, dropped connections, and a 200 whose body cannot be
  believed (below) — are retried up to ``max_retries`` times with exponential backoff and full
  jitter, waiting what a ``Retry-After`` header asks for when there is one, but never longer than
  the timeout (nor ``MAX_RETRY_AFTER`` seconds): a field then ends within about
  ``(2 * max_retries + 1) * timeout`` whatever a server asks;
- other 4xx are not retried: 401/403 raise :class:`LLMAuthError` (every later request would fail
  the same way, so the stage stops), the rest raise :class:`RequestFailed` for that field only;
- at most ``concurrency`` requests are in flight; requests/minute and tokens/minute are token
  buckets holding one second's worth, so the rate is smooth rather than bursty;
- several base URLs are replicas of one model: each attempt goes to the replica with the fewest
  requests in flight (round-robin among ties), and a retry prefers another replica;
- a :class:`Budget` is charged before every attempt with an upper estimate of its cost and
  settled after, so ``max_cost`` is never crossed by requests in flight.

Before its first request (given ``check_model``) the client checks the endpoint once
(:meth:`LLMClient.check_endpoint`): a dead URL, refused credentials or a model the server does not
list is one clear error before anything is spent, while a run answered from the cache needs no
server at all.

Every 200 is untrusted: its raw body is read and checked here (:func:`read_reply`) rather than by
the SDK's models. A body that is not JSON, is empty or cut short, or has no ``choices[0].message``
is a ``bad_response``; a ``usage`` that is not an object of whole token counts between 0 and
``MAX_USAGE_TOKENS`` (a string, ``1e400``, a negative or fractional count) is a ``bad_usage``. Both
are counted failures of that attempt only, retried like a 5xx, and charged their upper cost
estimate (the server may well have billed it). A usage the server leaves out is estimated from the
text (:func:`estimate_tokens`), charged, and counted in ``ClientStats.tokens_estimated``, so
``max_cost`` holds with or without usage and spend never decreases.

The API key is handed to the SDK and to the :class:`~lantern.llm.redact.Redactor` that scrubs it
(and the base URLs' credentials) from error bodies a server echoes back; no attribute, message or
statistic of this module holds it otherwise.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import openai

from lantern.errors import LanternError
from lantern.llm.formats import readable_tokens
from lantern.llm.prices import FREE, Price
from lantern.llm.redact import Redactor, public_url, url_secrets

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 300.0
MAX_USAGE_TOKENS = 10_000_000  # beyond any context window: a larger count is a lie, not a bill
CHARS_PER_TOKEN = 3.0  # below the ~4 of English BPE text, so prompt estimates err high
CHECK_TIMEOUT = 30.0  # seconds GET /models may take: it lists names, it does not generate


class RequestFailed(Exception):
    """A request that could not be answered: ``reason`` is a short category (``http_400``, ``timeout``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class LLMAuthError(ValueError):
    """The endpoint refused the credentials (401/403): no request of this run can succeed."""


class EndpointUnusable(LanternError):
    """The endpoint failed its check before anything was sent (unreachable, credentials refused, or
    the model not served): a user error, and nothing of the run needs keeping."""


class BudgetExhausted(Exception):
    """Sending the next request could cross ``max_cost``; nothing was sent."""


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
    """One answered request: the message text, its usage (estimated from the text when the server
    reports none: ``usage_estimated``), the model name the server reported answering with, and the
    per-token log-probabilities when they were asked for (OpenAI's ``choices[0].logprobs.content``)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    replica: int
    served_model: str | None = None
    usage_estimated: bool = False
    logprobs: list[dict] | None = None


@dataclass(frozen=True)
class Reply:
    """What Lantern uses of a chat-completion body, checked: the text, the reported token counts
    (None where the server gave none), the model name and the per-token log-probabilities (None when
    absent or malformed: the answer format decides what that means)."""

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str | None
    logprobs: list[dict] | None = None


@dataclass
class _Outcome:
    """One attempt: a completion, or a failure (with the Retry-After it asked for); ``answered``
    marks a 200 that was refused, which is paid for all the same."""

    completion: Completion | None = None
    failure: RequestFailed | None = None
    retry_after: float | None = None
    answered: bool = False


@dataclass
class ClientStats:
    """Counters a run reports: every HTTP attempt, every retry, the tokens and dollars spent;
    ``tokens_estimated`` counts the answers whose tokens were estimated rather than reported."""

    requests_sent: int = 0
    retries: int = 0
    max_in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_estimated: int = 0
    cost_usd: float = 0.0
    per_replica: list[int] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)


def read_reply(body: bytes) -> Reply:
    """The checked parts of a chat-completion body; RequestFailed ``bad_response`` or ``bad_usage``
    for anything that cannot be believed (the message says what, never quoting the body)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        what = "empty" if not body.strip() else f"not JSON ({type(exc).__name__})"
        raise RequestFailed("bad_response", f"the body is {what}") from None
    if not isinstance(data, dict):
        raise RequestFailed("bad_response", "the body is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise RequestFailed("bad_response", "no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise RequestFailed("bad_response", "choices[0] has no message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise RequestFailed("bad_response", "the message content is not text")
    usage = data.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise RequestFailed("bad_usage", f"usage is a {type(usage).__name__}, not an object")
    usage = usage or {}
    model = data.get("model")
    return Reply(
        text=content or "",
        prompt_tokens=_token_count(usage, "prompt_tokens"),
        completion_tokens=_token_count(usage, "completion_tokens"),
        model=model if isinstance(model, str) else None,
        logprobs=_token_logprobs(choices[0]),
    )


def _token_logprobs(choice: dict) -> list[dict] | None:
    """``choice.logprobs.content`` when every entry is an object with a text ``token`` (which places
    the labels in the answer); None when absent or malformed. The alternatives (``top_logprobs``) are
    checked where a reader uses them — at a label's first token, a few of the answer's tokens —
    rather than copied here for every token: a server's lists are most of a response's bytes."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    return content if readable_tokens(content) else None


def _token_count(usage: dict, name: str) -> int | None:
    value = usage.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_USAGE_TOKENS
        or value != int(value)
    ):
        raise RequestFailed("bad_usage", f"usage.{name} is not a token count in 0..{MAX_USAGE_TOKENS}")
    return int(value)


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
        check_model: bool | None = None,
    ) -> None:
        if not base_urls:
            raise LanternError("at least one base URL is needed")
        if concurrency < 1:
            raise LanternError(f"concurrency must be >= 1, got {concurrency}")
        if not timeout > 0 or max_retries < 0 or any(r is not None and not r > 0 for r in (rpm, tpm)):
            raise LanternError(
                f"timeout, rpm and tpm must be > 0 and max_retries >= 0 "
                f"(got timeout={timeout}, rpm={rpm}, tpm={tpm}, max_retries={max_retries})"
            )
        self.model = model
        self.timeout = timeout
        self.base_urls = [public_url(u) for u in base_urls]
        self._redact = Redactor([api_key, *(s for u in base_urls for s in url_secrets(u))])
        self._replicas = [
            openai.AsyncOpenAI(base_url=u, api_key=api_key, timeout=timeout, max_retries=0) for u in base_urls
        ]
        self._in_flight = [0] * len(base_urls)
        self._turn = 0
        self._slots = asyncio.Semaphore(concurrency)
        self._rpm = _TokenBucket(rpm) if rpm is not None else None
        self._tpm = _TokenBucket(tpm) if tpm is not None else None
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.price = price or FREE
        self.budget = budget or Budget(None)
        self._random = random.Random(seed)
        self.stats = ClientStats(per_replica=[0] * len(base_urls))
        # The endpoint check before the first request (None: none); answers from a cache need none.
        self._check_model = check_model
        self._checked = check_model is None
        self._check_lock = asyncio.Lock()

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for replica in self._replicas:
            await replica.close()

    async def ensure_checked(self) -> None:
        """Check the endpoint once (:meth:`check_endpoint`), if this client checks it at all; the
        first requests wait for that one check."""
        if not self._checked:
            async with self._check_lock:
                if not self._checked:
                    await self.check_endpoint(check_model=bool(self._check_model))
                    self._checked = True

    async def check_endpoint(self, *, check_model: bool) -> None:
        """Before anything is spent: every replica answers ``GET /models`` (through the SDK) and,
        when ``check_model`` (the server kind's list names every model it serves), lists the model.

        An :class:`EndpointUnusable` naming the URL and the model when a replica cannot be reached, times out,
        or refuses the credentials, or when its list lacks the model. A server that does not
        implement the list (any other HTTP error, or a body that is not a model list) is used as
        it is, since the list is optional: sending a probe there would be a paid request that
        answers nothing, and the stage stops after a run of failed requests anyway
        (:data:`lantern.llm.stage.ABORT_AFTER_FAILURES`).
        """
        for url, replica in zip(self.base_urls, self._replicas, strict=True):
            what = f"{url} (model {self.model})"
            try:
                async with asyncio.timeout(min(self.timeout, CHECK_TIMEOUT)):
                    page = await replica.models.list()
                served = [m.id for m in page.data]
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise EndpointUnusable(
                    f"{what} refused the credentials (HTTP {exc.status_code}); check the API key "
                    "environment variable (--api-key-env)"
                ) from None
            except (TimeoutError, openai.APITimeoutError):
                raise EndpointUnusable(
                    f"{what} did not answer GET /models within {min(self.timeout, CHECK_TIMEOUT):g}s; "
                    "is the server up and the URL right?"
                ) from None
            except openai.APIConnectionError as exc:
                cause = self._redact(_short(_root_cause(exc)))
                raise EndpointUnusable(
                    f"cannot reach {what}: {cause}; is the server up and the URL right?"
                ) from None
            except (openai.APIError, AttributeError, TypeError) as exc:
                log.info("%s: no usable model list (%s); going on unchecked", url, type(exc).__name__)
                continue
            if check_model and not _serves(served, self.model):
                shown = ", ".join(served[:8]) + (f" and {len(served) - 8} more" if len(served) > 8 else "")
                raise EndpointUnusable(
                    f"{url} does not serve model {self.model!r} (it lists: {shown or 'none'}); check "
                    "--llm-model, or give --server-kind other if this server answers names it does not list"
                )

    def _pick(self, avoid: int | None) -> int:
        order = [(self._turn + j) % len(self._replicas) for j in range(len(self._replicas))]
        if avoid is not None and len(order) > 1:
            order.remove(avoid)
        best = min(order, key=lambda i: self._in_flight[i])
        self._turn = (best + 1) % len(self._replicas)
        return best

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """The wait before retry ``attempt + 1``: what Retry-After asks, up to the timeout (so a
        server cannot park a field for longer than a request may take), else jittered backoff."""
        if retry_after is not None:
            return min(retry_after, self.timeout, MAX_RETRY_AFTER)
        return self._random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2**attempt))

    async def complete(self, messages: list[dict], params: dict[str, Any]) -> Completion:
        """Send one chat request, retrying transient failures; raises RequestFailed, LLMAuthError,
        BudgetExhausted, and before the first request LanternError when the endpoint fails its
        check (``check_model`` given: :meth:`check_endpoint`)."""
        await self.ensure_checked()
        prompt_estimate = estimate_prompt_tokens(messages)
        max_tokens = int(params.get("max_tokens") or 0)
        # Serialised once for every attempt: the SDK sends bytes as they are (no per-attempt copy).
        payload = json.dumps({"model": self.model, "messages": messages, **params}).encode("utf-8")
        cost_estimate = self.price.cost(prompt_estimate, max_tokens)
        avoid: int | None = None
        for attempt in range(self.max_retries + 1):
            async with self._slots:
                # Reserve only once a slot is held, so queued requests do not hold budget.
                self.budget.reserve(cost_estimate)
                outcome: _Outcome | None = None
                try:
                    if self._rpm is not None:
                        await self._rpm.take(1)
                    if self._tpm is not None:
                        await self._tpm.take(prompt_estimate + max_tokens)
                    replica = self._pick(avoid)
                    outcome = await self._attempt(replica, payload, prompt_estimate)
                finally:
                    actual = self._charge(outcome, prompt_estimate, max_tokens)
                    self.budget.settle(cost_estimate, actual)
                    self.stats.cost_usd += actual
            assert outcome is not None  # _attempt returns one or raises
            if outcome.completion is not None:
                return outcome.completion
            failure = outcome.failure
            assert failure is not None
            if attempt == self.max_retries:
                raise failure
            delay = self._backoff(attempt, outcome.retry_after)
            self.stats.retries += 1
            log.info("retrying after %s in %.2fs (attempt %d)", failure.reason, delay, attempt + 1)
            avoid = replica
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _charge(self, outcome: _Outcome | None, prompt_estimate: int, max_tokens: int) -> float:
        """The dollars an attempt cost: its usage when answered, its upper estimate when a 200 was
        refused (tokens counted as estimated), nothing when no answer came."""
        if outcome is None:
            return 0.0
        if outcome.completion is not None:
            return self.price.cost(outcome.completion.prompt_tokens, outcome.completion.completion_tokens)
        if outcome.answered:
            self._count_tokens(prompt_estimate, max_tokens, estimated=True)
            return self.price.cost(prompt_estimate, max_tokens)
        return 0.0

    def _count_tokens(self, prompt: int, completion: int, *, estimated: bool) -> None:
        self.stats.prompt_tokens += prompt
        self.stats.completion_tokens += completion
        self.stats.tokens_estimated += estimated

    async def _attempt(self, replica: int, payload: bytes, prompt_estimate: int) -> _Outcome:
        """One HTTP attempt, bounded by the total deadline: a completion or a retryable failure."""
        self._in_flight[replica] += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, sum(self._in_flight))
        self.stats.requests_sent += 1
        self.stats.per_replica[replica] += 1
        try:
            # The SDK's documented custom-request call: the body goes out as built, skipping the
            # per-request type transform of chat.completions.create (milliseconds of CPU each), and
            # comes back as raw bytes, checked here rather than trusted to the SDK's models.
            async with asyncio.timeout(self.timeout):
                body = await self._replicas[replica].post("/chat/completions", cast_to=bytes, content=payload)
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
                return _Outcome(failure=RequestFailed(reason), retry_after=_retry_after(exc.response.headers))
            raise RequestFailed(reason, self._redact(_short(exc.message))) from None
        except (TimeoutError, openai.APITimeoutError):
            self.stats.errors["timeout"] += 1
            return _Outcome(failure=RequestFailed("timeout"))
        except openai.APIConnectionError:
            self.stats.errors["connection"] += 1
            return _Outcome(failure=RequestFailed("connection"))
        finally:
            self._in_flight[replica] -= 1
        try:
            reply = read_reply(body)
        except RequestFailed as failure:
            self.stats.errors[failure.reason] += 1
            log.info("%s answered 200 but %s", self.base_urls[replica], failure)
            return _Outcome(failure=failure, answered=True)
        estimated = reply.prompt_tokens is None or reply.completion_tokens is None
        prompt_tokens = prompt_estimate if reply.prompt_tokens is None else reply.prompt_tokens
        completion_tokens = (
            estimate_tokens(reply.text) if reply.completion_tokens is None else reply.completion_tokens
        )
        self._count_tokens(prompt_tokens, completion_tokens, estimated=estimated)
        return _Outcome(
            completion=Completion(
                reply.text,
                prompt_tokens,
                completion_tokens,
                replica,
                reply.model,
                usage_estimated=estimated,
                logprobs=reply.logprobs,
            )
        )


def _root_cause(exc: BaseException) -> str:
    """What a connection failure comes down to (``connection refused``, ``Name or service not
    known``), from the innermost exception the HTTP stack chained."""
    inner = exc
    while (inner.__cause__ or inner.__context__) is not None:
        inner = inner.__cause__ or inner.__context__  # type: ignore[assignment]
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    return (inner.strerror if isinstance(inner, OSError) else None) or str(inner) or type(inner).__name__


def _serves(served: list[str], model: str) -> bool:
    """Whether a model list names ``model``: as written, as Ollama's ``model:latest``, or under
    Gemini's ``models/`` prefix."""
    names = {name.removeprefix("models/") for name in served}
    return model in names or f"{model}:latest" in names


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
