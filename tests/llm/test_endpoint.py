"""Endpoint settings without a server: the per-kind defaults, the price table, the endpoint a run
recorded (what annotate asks), and the LLM table's fallback keys."""

from __future__ import annotations

import json

import pytest

from lantern.errors import LanternError
from lantern.llm.config import EMBEDDED, SERVER_KINDS, Endpoint, LLMConfig, recorded_endpoint
from lantern.llm.endpoint import endpoint
from lantern.llm.formats import DEFAULT_MODE
from lantern.llm.prices import Price, base_name, price_for, price_list
from lantern.llm.stage import stage_price
from lantern.rundir import DEFAULT_MAX_FALLBACK_RATE, LLMSettings

URL = "http://gpu-box:8000/v1"


def test_every_server_kind_has_defaults_and_llamacpp_answers_one_at_a_time():
    assert set(SERVER_KINDS) == set(DEFAULT_MODE)
    with endpoint(Endpoint(base_urls=[URL], model="m", server_kind="llamacpp")) as ep:
        assert (ep.concurrency, ep.timeout) == (EMBEDDED.concurrency, EMBEDDED.timeout) == (1, 900.0)
    with endpoint(Endpoint(base_urls=[URL], model="m")) as ep:
        assert ep.server_kind == "openai" and (ep.concurrency, ep.timeout) == (4, 120.0)
    # What the user sets wins over the kind's default.
    chosen = Endpoint(base_urls=[URL], model="m", server_kind="llamacpp", concurrency=3, timeout=5.0)
    with endpoint(chosen) as ep:
        assert (ep.concurrency, ep.timeout) == (3, 5.0)


def test_the_built_in_prices_state_their_date_and_source():
    table = price_list()
    assert table["as_of"] and "verify" in table["source"]
    for name in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3-mini", "o4-mini",
                 "claude-3-5-haiku"):  # fmt: skip
        assert name in table["prices"]


@pytest.mark.parametrize(
    ("model", "price"),
    [
        ("gpt-4o", Price(2.5, 10.0)),
        ("gpt-4o-2024-08-06", Price(2.5, 10.0)),  # a dated snapshot costs what its family costs ...
        ("gpt-4o-2024-05-13", Price(5.0, 15.0)),  # ... unless the table lists it
        ("gpt-4o-mini-2024-07-18", Price(0.15, 0.6)),
        ("claude-3-5-haiku-20241022", Price(0.8, 4.0)),
        ("claude-3-5-haiku-latest", Price(0.8, 4.0)),
        ("my-own-model", None),
    ],
)
def test_a_model_name_finds_its_built_in_price(model, price):
    assert price_for(model) == price


def test_the_users_prices_override_and_extend_the_built_in_ones():
    prices = {"gpt-4o": [1.0, 2.0], "my-own-model": [0.0, 0.0]}
    assert price_for("gpt-4o-2024-11-20", prices) == Price(1.0, 2.0)
    assert price_for("my-own-model", prices) == Price(0.0, 0.0)
    assert base_name("o3-mini-2025-01-31") == "o3-mini"


def test_a_budget_needs_a_price_except_for_the_embedded_model():
    with pytest.raises(LanternError, match=r"--max-cost needs the price of model 'my-own-model'.*--prices"):
        stage_price(Endpoint(base_urls=[URL], model="my-own-model", max_cost=1.0))
    assert stage_price(Endpoint(base_urls=[URL], model="my-own-model")) is None  # no budget: not counted
    assert stage_price(Endpoint(max_cost=1.0)) == Price(0.0, 0.0)
    assert stage_price(Endpoint(base_urls=[URL], model="gpt-4o", max_cost=1.0)) == Price(2.5, 10.0)


def _settings(**endpoint) -> LLMSettings:
    record = {"model": "gpt-4o", "server_kind": "openai", "response_format": "json_schema", "stride": 4,
              "t": 3, "template": "erc-v1", "template_version": "v", "answer_format": "probs",
              "include_probs": True, "include_vad": True, **endpoint}  # fmt: skip
    return LLMSettings.from_json(record)


def test_the_recorded_endpoint_is_used_with_the_users_limits():
    settings = _settings(base_urls=[URL], api_key_env="MY_KEY")
    ep = recorded_endpoint(settings, {"max_cost": 2.0, "concurrency": 2}, "config.json")
    assert ep.base_urls == [URL] and ep.model == "gpt-4o" and ep.api_key_env == "MY_KEY"
    assert ep.server_kind == "openai" and ep.response_format == "json_schema"
    assert (ep.max_cost, ep.concurrency) == (2.0, 2)
    # The same model at another URL is the same LLM.
    assert recorded_endpoint(settings, {"base_urls": ["http://other:1/v1"]}, "c").base_urls == [
        "http://other:1/v1"
    ]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"model": "gpt-4.1"}, "--llm-model gpt-4.1"),
        ({"base_urls": []}, r"--local \(the embedded model\)"),
        ({"server_kind": "vllm"}, "--server-kind vllm"),
    ],
)
def test_another_llm_than_the_recorded_one_is_refused(overrides, named):
    with pytest.raises(LanternError, match=rf"{named} asks another LLM .*trained on \(gpt-4o at {URL}\)"):
        recorded_endpoint(_settings(base_urls=[URL]), overrides, "config.json")


def test_the_embedded_model_is_reused_and_a_url_refused():
    settings = _settings(model="smollm2-135m-instruct", base_urls=[], local_model="/m/x.gguf",
                         local_backend="llamacpp")  # fmt: skip
    ep = recorded_endpoint(settings, {}, "c")
    assert ep.local and ep.local_model == "/m/x.gguf" and ep.local_backend == "llamacpp"
    assert ep.describe() == "embedded x.gguf via llamacpp"
    assert recorded_endpoint(settings, {"local_backend": "auto"}, "c").local_backend == "auto"
    with pytest.raises(LanternError, match=r"--base-url .* trained on \(embedded x.gguf via llamacpp\)"):
        recorded_endpoint(settings, {"base_urls": [URL]}, "c")
    with pytest.raises(LanternError, match="--local-backend transformers"):
        recorded_endpoint(settings, {"local_backend": "transformers"}, "c")


def test_a_url_with_credentials_or_an_old_run_needs_the_url_again():
    with pytest.raises(LanternError, match=r"carried credentials.*--base-url"):
        recorded_endpoint(_settings(base_urls=[URL], url_credentials=True), {}, "c")
    old = _settings()  # recorded before base_urls were
    with pytest.raises(LanternError, match=r"before Lantern recorded its endpoint.*--llm-model gpt-4o"):
        recorded_endpoint(old, {}, "c")
    assert recorded_endpoint(old, {"base_urls": [URL]}, "c").model == "gpt-4o"
    with pytest.raises(LanternError, match="--llm-model m2"):
        recorded_endpoint(old, {"base_urls": [URL], "model": "m2"}, "c")
    assert recorded_endpoint(old, {"base_urls": []}, "c").local


def test_the_llm_table_takes_the_fallback_limit():
    config = LLMConfig.from_flat({"max_fallback_rate": 0.5, "allow_fallbacks": True})
    assert config.max_fallback_rate == 0.5 and config.allow_fallbacks
    assert LLMConfig().max_fallback_rate == DEFAULT_MAX_FALLBACK_RATE
    assert json.loads(json.dumps(config.to_json()))["max_fallback_rate"] == 0.5
    with pytest.raises(LanternError, match="max_fallback_rate must be a number from 0 to 1"):
        LLMConfig.from_flat({"max_fallback_rate": 1.5})
    with pytest.raises(LanternError, match=r"unknown key.*embedded"):
        LLMConfig.from_flat({"embedded": True})
