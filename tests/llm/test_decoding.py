"""Constrained decoding on a stand-in tokenizer and model (no weights): valid answers whatever the
model wants, forced text never scored, log-probabilities renormalised over the allowed tokens."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lantern.llm.decoding import Sampler, generate_free, generate_planned
from lantern.llm.formats import DigitsFormat, LogprobsFormat, ProbsFormat, answer_format, parse_answer
from lantern.llm.json_plan import TokenPlanner, compile_schema
from tests.llm.fake_lm import FakeTokenizer, WantsText

C = ["hap", "sad", "neu", "ang", "exc", "fru"]
IDX = [4, 5]
TOKENIZER = FakeTokenizer()
VALID = {
    "logprobs": '{"4":"neu","5":"ang"}',
    "digits": '{"4":"106003","5":"000900"}',
    "probs": '{"4":{"hap":10,"sad":0,"neu":100,"ang":5,"exc":0,"fru":7},'
    '"5":{"hap":0,"sad":99,"neu":1,"ang":0,"exc":0,"fru":0}}',
}


def decode(fmt: str, want: str, max_tokens: int = 500, bonus: dict | None = None, top_k: int = 0):
    plan = TokenPlanner(TOKENIZER.encode).plan(compile_schema(answer_format(fmt).schema(IDX, C)))
    context = WantsText(TOKENIZER, want, bonus)
    generation = generate_planned(context, plan, Sampler(0.0), max_tokens, top_k)
    return generation, TOKENIZER.text([s.token for s in generation.steps]), context


@pytest.mark.parametrize("fmt", ["logprobs", "digits", "probs"])
def test_an_answer_the_model_wants_and_the_schema_allows_comes_out_as_it_is(fmt):
    generation, text, _ = decode(fmt, VALID[fmt])
    assert text == VALID[fmt] and generation.finish_reason == "stop"


@pytest.mark.parametrize("fmt", ["logprobs", "digits", "probs"])
@pytest.mark.parametrize(
    "want", ["I think they are happy!", '{"4": "happy", "5": [1, 2]}', '{"5":"sad","4":"neu"}', ""]
)
def test_whatever_the_model_wants_the_answer_is_valid_under_the_schema(fmt, want):
    generation, text, _ = decode(fmt, want)
    assert generation.finish_reason == "stop"
    assert list(json.loads(text)) == ["4", "5"]
    errors = parse_answer(text, IDX, C).errors
    assert set(errors.values()) <= {"all zero"}  # valid; only a model that weighs nothing falls back
    if fmt == "logprobs":
        assert errors == {}


@pytest.mark.parametrize("fmt", ["logprobs", "digits", "probs"])
def test_only_value_positions_are_scored_and_only_among_allowed_tokens(fmt):
    generation, _, context = decode(fmt, VALID[fmt])
    assert context.calls and None not in context.calls  # never the whole vocabulary
    assert all(len(allowed) >= 2 for allowed in context.calls)  # a lone candidate is fed, not scored
    # probs: each integer's first digit, then "end or go on" after 1-9 and after 10; 0, 100 and
    # 11-99 end by themselves: 10,0,100,5,0,7 take 3+1+3+2+1+2 calls, 0,99,1,0,0,0 take 1+2+2+1+1+1
    expected_calls = {"logprobs": 2, "digits": 12, "probs": 12 + 8}[fmt]
    assert len(context.calls) == expected_calls
    assert len(generation.steps) == len(TOKENIZER.encode(VALID[fmt]))


def test_integers_end_when_the_model_ends_them():
    for value in ("0", "7", "10", "42", "100"):
        want = '{"4":{"hap":' + value + ',"sad":3}}'
        _, text, _ = decode_probs_two_classes(want)
        assert text == want


def decode_probs_two_classes(want: str):
    plan = TokenPlanner(TOKENIZER.encode).plan(compile_schema(ProbsFormat().schema([4], ["hap", "sad"])))
    context = WantsText(TOKENIZER, want)
    generation = generate_planned(context, plan, Sampler(0.0), 100)
    return generation, TOKENIZER.text([s.token for s in generation.steps]), context


def test_max_tokens_cuts_the_answer_with_finish_reason_length():
    full = len(TOKENIZER.encode(VALID["probs"]))
    for limit in (1, 5, full - 1):
        generation, text, _ = decode("probs", VALID["probs"], max_tokens=limit)
        assert generation.finish_reason == "length" and len(generation.steps) == limit
        assert VALID["probs"].startswith(text)
    generation, text, _ = decode("probs", VALID["probs"], max_tokens=full)
    assert generation.finish_reason == "stop" and text == VALID["probs"]


def test_logprobs_are_renormalised_over_the_allowed_tokens_and_forced_tokens_report_zero():
    bonus = {"sad": 11.0}  # "sad" scores 1 (wrong, +11) against "ne" scoring 2 (right)
    generation, text, context = decode("logprobs", VALID["logprobs"], bonus=bonus, top_k=3)
    assert text == VALID["logprobs"]
    label = next(s for s in generation.steps if s.top and len(s.top) > 1)
    allowed = context.calls[0]
    expected = dict(zip(allowed, torch.log_softmax(context.returned[0].double(), 0).tolist(), strict=True))
    assert TOKENIZER.vocab[label.token] == "ne" and math.isclose(label.logprob, expected[label.token])
    assert len(label.top) == 3 and [TOKENIZER.vocab[t] for t, _ in label.top[:2]] == ["ne", "sad"]
    assert all(math.isclose(lp, expected[t]) for t, lp in label.top)
    forced = [s for s in generation.steps if s is not label and len(s.top) == 1]
    assert forced and all(s.logprob == 0.0 and s.top == ((s.token, 0.0),) for s in forced)


def test_the_logprobs_format_reads_the_label_distribution_from_these_logprobs():
    bonus = {"sad": 11.0}
    generation, text, context = decode("logprobs", VALID["logprobs"], bonus=bonus, top_k=20)
    content = [
        {
            "token": TOKENIZER.vocab[s.token],
            "logprob": s.logprob,
            "top_logprobs": [{"token": TOKENIZER.vocab[t], "logprob": lp} for t, lp in s.top],
        }
        for s in generation.steps
    ]
    parsed = LogprobsFormat().parse(text, content, IDX, C)
    assert parsed.errors == {}
    # Every label starts with a token of its own here, so the distribution is the first choice's.
    first = dict(zip(context.calls[0], context.returned[0].tolist(), strict=True))
    scores = [first[TOKENIZER.encode(c)[0]] for c in C]
    total = sum(math.exp(v) for v in scores)
    assert parsed.probs[4] == pytest.approx([math.exp(v) / total for v in scores])
    assert max(parsed.probs[4]) < 0.75  # "sad" keeps its share: not a one-hot answer


def test_sampling_follows_the_seed_and_temperature_zero_is_greedy():
    def sample(seed: int, temperature: float) -> str:
        plan = TokenPlanner(TOKENIZER.encode).plan(compile_schema(DigitsFormat().schema(IDX, C)))
        context = WantsText(TOKENIZER, "")  # every digit equally likely
        steps = generate_planned(context, plan, Sampler(temperature, seed), 100).steps
        return TOKENIZER.text([s.token for s in steps])

    assert sample(1, 1.0) == sample(1, 1.0) != sample(2, 1.0)
    assert sample(1, 0.0) == sample(2, 0.0) == '{"4":"000000","5":"000000"}'


def test_free_generation_stops_at_the_stop_token_or_max_tokens():
    context = WantsText(TOKENIZER, "hello world")
    generation = generate_free(context, Sampler(0.0), 50, TOKENIZER.stop_ids, top_k=2)
    assert TOKENIZER.text([s.token for s in generation.steps]) == "hello world"
    assert generation.finish_reason == "stop" and context.calls == [None] * (len(generation.steps) + 1)
    assert all(len(s.top) == 2 and s.top[0][0] == s.token for s in generation.steps)
    generation = generate_free(WantsText(TOKENIZER, "hello world"), Sampler(0.0), 3, TOKENIZER.stop_ids)
    assert generation.finish_reason == "length" and len(generation.steps) == 3
