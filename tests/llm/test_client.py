"""The LLM client against real server processes on loopback (lantern.testing.server)."""

from __future__ import annotations

import asyncio
import time

import pytest

from lantern.errors import LanternError
from lantern.labels import IEMOCAP4
from lantern.llm.client import (
    MAX_RETRY_AFTER,
    Budget,
    BudgetExhausted,
    Completion,
    LLMAuthError,
    LLMClient,
    Price,
    RequestFailed,
    _retry_after,
    estimate_prompt_tokens,
    estimate_tokens,
    public_url,
)
from lantern.llm.config import Endpoint, LLMConfig
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


# ---------------------------------------------------------------------------------------------
# Untrusted responses (issue 11): every 200 is checked before it is believed.

USAGE_ABSURD = '{"prompt_tokens": 10, "completion_tokens": 99999999999}'
UNREADABLE_200 = {
    "html": ({"kind": "html"}, "bad_response"),
    "empty": ({"kind": "empty_body"}, "bad_response"),
    "truncated": ({"kind": "truncated_body"}, "bad_response"),
    "no choices": ({"kind": "no_choices"}, "bad_response"),
    "no message": ({"kind": "no_message"}, "bad_response"),
    "usage abc": ({"kind": "bad_usage"}, "bad_usage"),
    "usage 1e400": ({"kind": "bad_usage", "raw": "1e400"}, "bad_usage"),
    "usage NaN": (
        {"kind": "bad_usage", "raw": '{"prompt_tokens": NaN, "completion_tokens": 1}'},
        "bad_usage",
    ),
    "negative usage": (
        {"kind": "bad_usage", "raw": '{"prompt_tokens": -500, "completion_tokens": 3}'},
        "bad_usage",
    ),
    "absurd usage": ({"kind": "bad_usage", "raw": USAGE_ABSURD}, "bad_usage"),
    "fractional usage": (
        {"kind": "bad_usage", "raw": '{"prompt_tokens": 2.5, "completion_tokens": 3}'},
        "bad_usage",
    ),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE_200))
def test_an_unreadable_200_is_a_counted_retried_failure_of_that_request_only(fresh, case):
    fault, reason = UNREADABLE_200[case]
    inject_faults(fresh, [fault])
    results, client = complete(fresh, n=3, concurrency=3)
    assert all(isinstance(r, Completion) for r in results), results
    assert dict(client.stats.errors) == {reason: 1} and client.stats.retries == 1
    assert chats(fresh) == 4


def test_an_unreadable_200_without_retries_fails_that_request_with_its_reason(fresh):
    inject_faults(fresh, ["html"])
    results, _ = complete(fresh, n=3, concurrency=1, max_retries=0)
    failed = [r for r in results if isinstance(r, Exception)]
    assert len(failed) == 1 and isinstance(failed[0], RequestFailed) and failed[0].reason == "bad_response"
    assert sum(isinstance(r, Completion) for r in results) == 2


def test_missing_usage_is_estimated_from_the_text_and_flagged(fresh):
    inject_faults(fresh, ["no_usage"])
    (result,), client = complete(fresh)
    assert result.usage_estimated
    assert result.prompt_tokens == estimate_prompt_tokens(window_messages("d0"))
    assert result.completion_tokens == estimate_tokens(result.text) > 0
    assert client.stats.tokens_estimated == 1 and client.stats.prompt_tokens == result.prompt_tokens
    (reported,), client = complete(fresh)
    assert not reported.usage_estimated and client.stats.tokens_estimated == 0


def test_max_cost_holds_when_the_server_reports_no_usage(fresh):
    inject_faults(fresh, [{"kind": "no_usage", "count": 10}])
    price = Price(prompt=1000.0, completion=1000.0)
    estimate = price.cost(estimate_prompt_tokens(window_messages()), PARAMS["max_tokens"])
    budget = Budget(max_cost=2.5 * estimate)
    results, client = complete(fresh, n=5, concurrency=1, price=price, budget=budget)
    stopped = [r for r in results if isinstance(r, BudgetExhausted)]
    assert stopped and chats(fresh) == 5 - len(stopped) < 5
    assert 0 < budget.spent <= budget.max_cost and client.stats.tokens_estimated == chats(fresh)


def test_spend_never_goes_negative_and_a_rejected_200_is_charged_its_estimate(fresh):
    lie = '{"prompt_tokens": -100000000, "completion_tokens": 3}'
    inject_faults(fresh, [{"kind": "bad_usage", "raw": lie}])
    price = Price(prompt=1000.0, completion=1000.0)
    estimate = price.cost(estimate_prompt_tokens(window_messages("d0")), PARAMS["max_tokens"])
    budget = Budget(max_cost=None)
    (result,), client = complete(fresh, price=price, budget=budget)
    assert isinstance(result, Completion) and client.stats.errors == {"bad_usage": 1}
    # The lying answer is paid at its upper estimate (it may well have been billed), the retry at its usage.
    assert budget.spent == pytest.approx(
        estimate + price.cost(result.prompt_tokens, result.completion_tokens)
    )
    assert client.stats.cost_usd == pytest.approx(budget.spent) and budget.reserved == pytest.approx(0)


def test_negative_prices_are_refused():
    with pytest.raises(ValueError, match="price"):
        Price(prompt=-1.0, completion=1.0)
    with pytest.raises(LanternError, match=r"prices\['m'\]"):
        Endpoint(base_urls=["http://127.0.0.1:9/v1"], model="m", prices={"m": [1.0, -2.0]})


# ---------------------------------------------------------------------------------------------
# Deadlines (issue 11): the timeout bounds the whole request, and Retry-After waits are bounded by it.


def test_a_slow_drip_is_cut_at_the_total_deadline(fresh):
    inject_faults(fresh, [{"kind": "slow_drip", "interval": 0.05, "count": 2}])  # ~20 s each, no gap > 0.05 s
    started = time.monotonic()
    (result,), client = complete(fresh, timeout=1.0, max_retries=0)
    assert isinstance(result, RequestFailed) and result.reason == "timeout"
    assert time.monotonic() - started < 3.0
    assert client.stats.errors == {"timeout": 1}
    # With a retry: the attempt is cut off at the deadline, and the same client's next one is answered.
    (result,), client = complete(fresh, timeout=1.0, max_retries=1, backoff_base=0.0)
    assert isinstance(result, Completion) and client.stats.errors == {"timeout": 1}
    assert client.stats.retries == 1
    assert time.monotonic() - started < 6.0


def test_retry_after_is_honoured_only_up_to_the_timeout(fresh):
    inject_faults(fresh, [{"kind": "429", "retry_after": 30}])
    started = time.monotonic()
    (result,), client = complete(fresh, timeout=1.0, backoff_base=0.0)
    elapsed = time.monotonic() - started
    assert isinstance(result, Completion) and client.stats.retries == 1
    assert 1.0 <= elapsed < 4.0, elapsed


def test_the_retry_after_cap_follows_the_timeout():
    client = LLMClient(["http://127.0.0.1:9/v1"], "m", "k", timeout=7.0)
    assert client._backoff(0, retry_after=3.0) == 3.0
    assert client._backoff(0, retry_after=3000.0) == 7.0
    assert (
        LLMClient(["http://127.0.0.1:9/v1"], "m", "k", timeout=900.0)._backoff(0, 3000.0) == MAX_RETRY_AFTER
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rpm", -1),
        ("tpm", 0),
        ("timeout", 0),
        ("timeout", float("inf")),
        ("concurrency", 0),
        ("max_retries", -1),
    ],
)
def test_a_config_file_gets_the_same_numeric_checks_as_the_flags(key, value):
    with pytest.raises(LanternError, match=rf"llm.*{key}"):
        LLMConfig.from_flat({"base_urls": ["http://127.0.0.1:9/v1"], "model": "m", key: value}, "llm")
