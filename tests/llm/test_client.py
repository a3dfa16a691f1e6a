"""The LLM client against real server processes on loopback (lantern.testing.server)."""

from __future__ import annotations

import asyncio
import time

import pytest

from lantern.labels import IEMOCAP4
from lantern.llm.client import (
    Budget,
    BudgetExhausted,
    LLMAuthError,
    LLMClient,
    Price,
    RequestFailed,
    _retry_after,
    estimate_prompt_tokens,
    public_url,
)
from lantern.llm.prompt import FieldUtterance, build_messages
from lantern.testing.server import inject_faults, reset_server, running_test_server, server_stats

PARAMS = {"temperature": 0, "max_tokens": 64}


def window_messages(dialogue: str = "d1", n: int = 2) -> list[dict]:
    utterances = [
        FieldUtterance(
            index=i, id=f"{dialogue}_{i}", speaker="A", text=f"line {i}", probs=[0.4, 0.3, 0.2, 0.1]
        )
        for i in range(n)
    ]
    return build_messages(dialogue, 0, n, utterances, IEMOCAP4)


@pytest.fixture(scope="module")
def server():
    with running_test_server() as url:
        yield url


@pytest.fixture(scope="module")
def slow_server():
    with running_test_server(latency=0.25) as url:
        yield url


@pytest.fixture
def fresh(server):
    reset_server(server)
    return server


def chats(url: str) -> int:
    return server_stats(url)["chat_completions"]


async def _complete(url: str, n: int = 1, **options) -> tuple[list, LLMClient]:
    options = {"timeout": 5.0, "max_retries": 3, "backoff_base": 0.05, **options}
    async with LLMClient([url + "/v1"], "m", "sk-test", **options) as client:
        results = await asyncio.gather(
            *(client.complete(window_messages(f"d{i}"), PARAMS) for i in range(n)), return_exceptions=True
        )
    return results, client


def complete(url: str, n: int = 1, **options) -> tuple[list, LLMClient]:
    return asyncio.run(_complete(url, n, **options))


def test_a_plain_request_returns_text_and_usage(fresh):
    (result,), client = complete(fresh)
    assert result.text.startswith("{") and result.prompt_tokens > 0 and result.completion_tokens > 0
    assert client.stats.requests_sent == 1 and client.stats.retries == 0
    assert client.stats.prompt_tokens == result.prompt_tokens


def test_429_is_retried_after_the_retry_after_delay(fresh):
    inject_faults(fresh, [{"kind": "429", "retry_after": 1}])
    started = time.monotonic()
    (result,), client = complete(fresh, backoff_base=0.0)
    elapsed = time.monotonic() - started
    assert not isinstance(result, Exception)
    assert elapsed >= 1.0, "Retry-After: 1 was not honoured"
    assert client.stats.retries == 1 and client.stats.errors["http_429"] == 1
    assert chats(fresh) == 2


@pytest.mark.parametrize("fault", ["500", "drop"])
def test_server_errors_and_dropped_connections_are_retried(fresh, fault):
    inject_faults(fresh, [{"kind": fault, "count": 2}])
    (result,), client = complete(fresh)
    assert not isinstance(result, Exception)
    assert client.stats.retries == 2
    assert chats(fresh) == 3


def test_a_request_that_times_out_is_retried(fresh):
    inject_faults(fresh, [{"kind": "timeout", "seconds": 3}])
    started = time.monotonic()
    (result,), client = complete(fresh, timeout=0.5)
    assert not isinstance(result, Exception)
    assert time.monotonic() - started < 3.0
    assert client.stats.errors["timeout"] == 1 and client.stats.retries == 1


def test_retries_are_bounded(fresh):
    inject_faults(fresh, [{"kind": "500", "count": 10}])
    (result,), client = complete(fresh, max_retries=2)
    assert isinstance(result, RequestFailed) and result.reason == "http_500"
    assert client.stats.requests_sent == 3 and chats(fresh) == 3
    reset_server(fresh)


def test_other_4xx_are_not_retried(fresh):
    async def bad_request():
        async with LLMClient([fresh + "/v1"], "m", "k", max_retries=3) as client:
            with pytest.raises(RequestFailed) as info:
                # The test server answers 400 to a chat request that is not a Lantern prompt.
                await client.complete([{"role": "user", "content": "hello"}], PARAMS)
        return info.value, client

    failure, client = asyncio.run(bad_request())
    assert failure.reason == "http_400"
    assert client.stats.retries == 0 and chats(fresh) == 1


def test_a_refused_key_stops_without_retrying_and_without_quoting_the_key():
    with running_test_server(api_key="the-right-key") as url:
        with pytest.raises(LLMAuthError) as info:
            complete_raising(url, api_key="sk-wrong-DISTINCTIVE-9f3a")
        assert "401" in str(info.value) and "DISTINCTIVE" not in str(info.value)
        assert chats(url) == 1
        (ok,), _ = asyncio.run(_complete_with_key(url, "the-right-key"))
        assert not isinstance(ok, Exception)


def complete_raising(url: str, api_key: str) -> None:
    async def go():
        async with LLMClient([url + "/v1"], "m", api_key, max_retries=3) as client:
            await client.complete(window_messages(), PARAMS)

    asyncio.run(go())


async def _complete_with_key(url: str, key: str):
    async with LLMClient([url + "/v1"], "m", key) as client:
        return await asyncio.gather(client.complete(window_messages(), PARAMS)), client


def test_requests_spread_over_replicas():
    with running_test_server(latency=0.05) as a, running_test_server(latency=0.05) as b:

        async def go():
            async with LLMClient([a + "/v1", b + "/v1"], "m", "k", concurrency=4) as client:
                await asyncio.gather(*(client.complete(window_messages(f"d{i}"), PARAMS) for i in range(20)))
            return client

        client = asyncio.run(go())
        on_a, on_b = chats(a), chats(b)
    assert on_a + on_b == 20
    assert on_a >= 6 and on_b >= 6, (on_a, on_b)
    assert client.stats.per_replica == [on_a, on_b]


def test_a_retry_goes_to_another_replica():
    with running_test_server() as a, running_test_server() as b:
        inject_faults(a, ["500"])
        inject_faults(b, ["500"])
        (result,), client = complete_two(a, b)
        assert not isinstance(result, Exception)
        # First attempt on one replica (500), retry on the other (500), third back on the first.
        assert sorted(client.stats.per_replica) == [1, 2]
        assert sorted([chats(a), chats(b)]) == [1, 2]


def complete_two(a: str, b: str):
    async def go():
        async with LLMClient([a + "/v1", b + "/v1"], "m", "k", backoff_base=0.01) as client:
            return await asyncio.gather(client.complete(window_messages(), PARAMS)), client

    return asyncio.run(go())


def test_concurrency_limit_is_respected(slow_server):
    reset_server(slow_server)
    started = time.monotonic()
    results, client = complete(slow_server, n=9, concurrency=3)
    elapsed = time.monotonic() - started
    assert all(not isinstance(r, Exception) for r in results)
    assert client.stats.max_in_flight == 3
    # Nine requests of 0.25 s, three at a time, need at least three rounds.
    assert elapsed >= 3 * 0.25


def test_requests_per_minute_limit(fresh):
    # 1200/min = 20/s with a bucket of one second's worth: 40 requests take at least ~1 s.
    started = time.monotonic()
    results, _ = complete(fresh, n=40, concurrency=8, rpm=1200)
    elapsed = time.monotonic() - started
    assert all(not isinstance(r, Exception) for r in results)
    assert elapsed >= 0.95


def test_tokens_per_minute_limit(fresh):
    per_request = estimate_prompt_tokens(window_messages()) + PARAMS["max_tokens"]
    tpm = per_request * 5 * 60  # five requests per second
    started = time.monotonic()
    results, _ = complete(fresh, n=15, concurrency=8, tpm=tpm)
    assert all(not isinstance(r, Exception) for r in results)
    assert time.monotonic() - started >= 1.8


def test_budget_stops_before_sending(fresh):
    price = Price(prompt=1000.0, completion=1000.0)  # $ per 1M tokens: a request costs about $0.3
    estimate = price.cost(estimate_prompt_tokens(window_messages()), PARAMS["max_tokens"])
    budget = Budget(max_cost=2.5 * estimate)
    results, client = complete(fresh, n=5, concurrency=1, price=price, budget=budget)
    sent = [r for r in results if not isinstance(r, Exception)]
    stopped = [r for r in results if isinstance(r, BudgetExhausted)]
    assert len(sent) >= 2 and len(stopped) >= 1 and len(sent) + len(stopped) == 5
    assert chats(fresh) == len(sent), "a request was sent although the budget stopped it"
    assert 0 < budget.spent <= budget.max_cost and client.stats.cost_usd == pytest.approx(budget.spent)
    # It stopped only because the next request's worst case would have crossed the limit.
    assert budget.spent + estimate > budget.max_cost


def test_retry_after_header_forms():
    assert _retry_after({"retry-after": "2"}) == 2.0
    assert _retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert _retry_after({}) is None
    assert _retry_after({"retry-after": "soon"}) is None
    in_three = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3))
    assert 1.0 <= _retry_after({"retry-after": in_three}) <= 3.5


def test_public_url_drops_credentials():
    assert public_url("https://user:secret@example.com:8443/v1") == "https://example.com:8443/v1"
