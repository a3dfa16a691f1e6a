"""The LLM answer: the three answer formats, schemas, response_format modes, tolerant parsing that
never crashes, and distributions read from top_logprobs."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lantern.llm.formats import (
    DEFAULT_MODE,
    AnswerError,
    DigitsFormat,
    LogprobsFormat,
    ParsedAnswer,
    ProbsFormat,
    answer_char_limit,
    answer_format,
    compact_answer,
    parse_answer,
    response_format,
)

C = ["hap", "sad", "neu", "ang", "exc", "fru"]
IDX = [4, 5]


def close(a: list[float], b: list[float]) -> bool:
    return all(math.isclose(x, y, abs_tol=1e-9) for x, y in zip(a, b, strict=True))


def test_compact_form_renormalised() -> None:
    parsed = parse_answer('{"4": "106003", "5": "000900"}', IDX, C)
    assert parsed.errors == {}
    assert close(parsed.probs[4], [0.1, 0, 0.6, 0, 0, 0.3])
    assert close(parsed.probs[5], [0, 0, 0, 1, 0, 0])


def test_percentages_fractions_and_arrays() -> None:
    text = '{"4": "10 0 70 5 5 10", "5": [0.1, 0.2, 0.3, 0.4, 0, 0]}'
    parsed = parse_answer(text, IDX, C)
    assert close(parsed.probs[4], [0.1, 0, 0.7, 0.05, 0.05, 0.1])
    assert close(parsed.probs[5], [0.1, 0.2, 0.3, 0.4, 0, 0])
    assert close(
        parse_answer('{"4": "10%, 90%, 0, 0, 0, 0", "5": "1 1 1 1 1 1"}', IDX, C).probs[4],
        [0.1, 0.9, 0, 0, 0, 0],
    )


def test_name_keyed_form_missing_names_are_zero_unknown_is_an_error() -> None:
    parsed = parse_answer('{"4": {"neu": 70, "Happy": 30}, "5": {"xyz": 1}}', IDX, C)
    assert close(parsed.probs[4], [0.3, 0, 0.7, 0, 0, 0])
    assert parsed.errors == {5: "unknown class 'xyz'"}
    named_string = parse_answer('{"4": "neu: 70, fru: 30", "5": "sad 1"}', IDX, C)
    assert close(named_string.probs[4], [0, 0, 0.7, 0, 0, 0.3])
    assert close(named_string.probs[5], [0, 1, 0, 0, 0, 0])


def test_code_fences_prose_and_trailing_text_are_skipped() -> None:
    text = 'Sure! Here is my answer:\n```json\n{"4": "000900", "5": "900000"}\n```\nHope this {helps}.'
    parsed = parse_answer(text, IDX, C)
    assert parsed.errors == {} and parsed.probs[4][3] == 1.0 and parsed.probs[5][0] == 1.0


def test_first_balanced_object_wins_and_wrapper_is_looked_through() -> None:
    parsed = parse_answer('{"answer": {"4": "000900", "5": "900000"}} {"4": "900000"}', IDX, C)
    assert parsed.probs[4][3] == 1.0
    broken_first = parse_answer('{"4": oops} then {"4": "000900", "5": "900000"}', IDX, C)
    assert broken_first.probs[4][3] == 1.0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('"12345"', "wrong number of classes"),
        ("[1, 2, 3]", "wrong number of classes"),
        ('"-1 2 3 4 5 6"', "negative value"),
        ("[-1, 2, 3, 4, 5, 6]", "negative value"),
        ("[NaN, 1, 1, 1, 1, 1]", "non-finite value"),
        ("[Infinity, 1, 1, 1, 1, 1]", "non-finite value"),
        ("[1e999, 1, 1, 1, 1, 1]", "non-finite value"),
        ('"000000"', "all zero"),
        ("[0, 0, 0, 0, 0, 0]", "all zero"),
        ('{"xyz": 3}', "unknown class 'xyz'"),
        ("3", "not a distribution"),
        ("null", "missing"),
        ('"sort of angry"', "unreadable value"),
        ("[true, 1, 1, 1, 1, 1]", "not a number"),
    ],
)
def test_bad_utterance_gets_a_reason_and_others_still_count(value: str, reason: str) -> None:
    parsed = parse_answer(f'{{"4": {value}, "5": "000900"}}', IDX, C)
    assert set(parsed.errors) == {4} and parsed.errors[4].startswith(reason)
    assert parsed.probs[5][3] == 1.0


def test_missing_utterance() -> None:
    parsed = parse_answer('{"5": "000900", "99": "900000", "note": "x"}', IDX, C)
    assert parsed.errors == {4: "missing"} and list(parsed.probs) == [5]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("I think they are all neutral.", "no JSON object"),
        ("", "no JSON object"),
        ('[["1", "2"]]', "not an object"),
        ('"000900"', "not an object"),
        ("42", "not an object"),
    ],
)
def test_whole_answer_failures_raise(text: str, reason: str) -> None:
    with pytest.raises(AnswerError, match=reason):
        parse_answer(text, IDX, C)


def test_oversized_answer_raises() -> None:
    text = '{"4": "000900", "5": "900000", "pad": "' + "x" * answer_char_limit(2) + '"}'
    with pytest.raises(AnswerError, match="oversized"):
        parse_answer(text, IDX, C)
    assert parse_answer(text, IDX, C, max_chars=len(text)).errors == {}


@pytest.mark.parametrize("name", ["digits", "probs", "logprobs"])
def test_schema_requires_every_index_and_nothing_else(name: str) -> None:
    schema = answer_format(name).schema([4, 5, 6], C)
    assert schema["required"] == ["4", "5", "6"]
    assert set(schema["properties"]) == {"4", "5", "6"}
    assert schema["additionalProperties"] is False
    value = schema["properties"]["4"]
    if name == "digits":
        assert value["pattern"] == "^[0-9]{6}$"
    elif name == "probs":
        assert value["required"] == C and value["properties"]["fru"] == {
            "type": "integer",
            "minimum": 0,
            "maximum": 100,
        }
    else:
        assert value == {"type": "string", "enum": C}


@pytest.mark.parametrize("name", ["digits", "probs", "logprobs"])
def test_each_format_reads_back_what_it_writes(name: str) -> None:
    fmt = answer_format(name)
    probs = {4: [0.1, 0.0, 0.62, 0.05, 0.03, 0.2], 5: [0.05, 0.8, 0.05, 0.05, 0.05, 0.0]}
    text = fmt.render(probs, C)
    if name == "logprobs":
        assert json.loads(text) == {"4": "neu", "5": "sad"}
        assert fmt.request_params() == {"logprobs": True, "top_logprobs": 20}
        return
    parsed = fmt.parse(text, None, IDX, C)
    assert parsed.errors == {}
    for i in IDX:  # digits resolve about 1/9 of the top class (renormalised), percentages 1%
        assert max(abs(a - b) for a, b in zip(parsed.probs[i], probs[i], strict=True)) < (
            0.12 if name == "digits" else 0.01
        )
    assert fmt.max_tokens(6, 6) > 6 * 6


def logprob_tokens(*pieces: tuple[str, dict[str, float] | None]) -> list[dict]:
    """OpenAI-style logprobs.content: each piece a token, with top_logprobs given as token → probability."""
    out = []
    for token, top in pieces:
        top = top or {token: 1.0}
        out.append(
            {
                "token": token,
                "logprob": math.log(top.get(token, 1e-9)),
                "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in top.items()],
            }
        )
    return out


def neu_hap_tokens() -> list[dict]:
    """The tokens of ``{"4": "neu", "5": "hap"}``, with alternatives at the two labels."""
    return logprob_tokens(
        ('{"', None), ("4", None), ('": "', None),
        ("ne", {"ne": 0.6, "ang": 0.3, "h": 0.1}),
        ("u", None), ('", "', None), ("5", None), ('": "', None),
        ("hap", {"hap": 0.5, "exc": 0.25, "happy": 0.25, " ": 0.3}),
        ('"}', None),
    )  # fmt: skip


def test_logprobs_are_read_at_each_label_with_shared_first_tokens_split() -> None:
    fmt = LogprobsFormat()
    text = '{"4": "neu", "5": "hap"}'
    tokens = neu_hap_tokens()
    assert "".join(t["token"] for t in tokens) == text
    parsed = fmt.parse(text, tokens, IDX, C)
    assert parsed.errors == {}
    assert close(parsed.probs[4], [0.1, 0, 0.6, 0.3, 0, 0])
    # "happy" is hap's gloss; a token starting no class (a space) is dropped and the rest renormalised.
    assert close(parsed.probs[5], [0.75, 0, 0, 0, 0.25, 0])


def test_logprobs_tokens_that_begin_inside_the_quote_and_shared_prefixes() -> None:
    fmt = LogprobsFormat()
    classes = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
    text = '{"0":"sadness"}'
    tokens = logprob_tokens(('{"0":', None), ('"s', {'"s': 0.8, '"joy': 0.2}), ("adness", None), ('"}', None))
    parsed = fmt.parse(text, tokens, [0], classes)
    # '"s' starts both sadness and surprise: its probability is shared between them.
    assert close(parsed.probs[0], [0, 0.4, 0, 0.4, 0.2, 0, 0])


def test_what_a_logprobs_answer_keeps_is_the_evidence_read_and_reads_the_same() -> None:
    """A hosted server sends 20 alternatives, each with its bytes, for every token: the reading keeps
    every token's text and the alternatives at the labels only, and reading that gives the same."""
    fmt = LogprobsFormat()
    text = '{"4": "neu", "5": "hap"}'
    tokens = neu_hap_tokens()
    for token in tokens:
        token["bytes"] = list(token["token"].encode())
        token["top_logprobs"] += [{"token": f"x{n}", "logprob": -20.0, "bytes": [120]} for n in range(17)]
    parsed = fmt.parse(text, tokens, IDX, C)
    assert parsed.errors == {}
    kept = parsed.evidence
    assert [t["token"] for t in kept] == [t["token"] for t in tokens]
    assert [n for n, t in enumerate(kept) if "top_logprobs" in t] == [3, 8]
    assert all(set(c) == {"token", "logprob"} for t in kept for c in t.get("top_logprobs", []))
    again = fmt.parse(text, json.loads(json.dumps(kept)), IDX, C)
    assert again.probs == parsed.probs and again.errors == {}
    assert len(json.dumps(kept)) < len(json.dumps(tokens)) / 5


def test_unreadable_alternatives_at_a_label_are_skipped_and_unreadable_tokens_read_as_none() -> None:
    fmt = LogprobsFormat()
    text = '{"4": "neu", "5": "hap"}'
    tokens = logprob_tokens(
        ('{"4": "', None), ("ne", {"ne": 0.6, "ang": 0.4}), ('u", "5": "', None), ("hap", {"hap": 1.0}),
        ('"}', None),
    )  # fmt: skip
    tokens[1]["top_logprobs"] += [
        "neu",
        {"token": "h", "logprob": True},
        {"token": "h", "logprob": float("nan")},
        {"token": 7, "logprob": -0.1},
        {"logprob": -0.1},
    ]
    parsed = fmt.parse(text, tokens, IDX, C)
    assert parsed.errors == {} and close(parsed.probs[4], [0, 0, 0.6, 0.4, 0, 0])
    tokens[3]["top_logprobs"] = "hap"  # not a list: nothing to read at that label
    assert fmt.parse(text, tokens, IDX, C).errors == {5: "no logprobs at label"}
    tokens[2] = {"text": 'u", "5": "'}  # a token without its text: the labels cannot be placed
    assert fmt.parse(text, tokens, IDX, C).errors == {4: "no logprobs", 5: "no logprobs"}


def test_logprobs_format_without_logprobs_falls_back_rather_than_faking_certainty() -> None:
    parsed = LogprobsFormat().parse('{"4": "neu", "5": "hap"}', None, IDX, C)
    assert parsed.probs == {} and parsed.errors == {4: "no logprobs", 5: "no logprobs"}
    # A bare label is still read as a one-hot answer by the numeric formats' tolerant reader.
    assert close(ProbsFormat().parse('{"4": "neu", "5": "happy"}', None, IDX, C).probs[5], [1, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="unknown answer format"):
        answer_format("words")
    assert isinstance(answer_format("digits"), DigitsFormat)


def test_response_format_modes() -> None:
    schema = DigitsFormat().schema([4], C)
    strict = response_format("json_schema", schema)
    assert strict["type"] == "json_schema" and strict["json_schema"]["strict"] is True
    assert strict["json_schema"]["schema"] == schema and strict["json_schema"]["name"]
    assert response_format("json_object_schema", schema) == {"type": "json_object", "schema": schema}
    assert response_format("json_object", schema) == {"type": "json_object"}
    assert response_format("none", schema) is None
    with pytest.raises(ValueError, match="unknown structured-output mode"):
        response_format("grammar", schema)
    assert DEFAULT_MODE["llamacpp"] == "json_object_schema" and DEFAULT_MODE["openai"] == "json_schema"
    assert DEFAULT_MODE["other"] == "none"


def test_compact_answer_round_trips_within_resolution() -> None:
    probs = {4: [0.1, 0.0, 0.62, 0.05, 0.03, 0.2], 5: [0.5, 0.5, 0, 0, 0, 0]}
    text = compact_answer(probs)
    assert json.loads(text)["4"] == "109103"
    parsed = parse_answer(text, IDX, C)
    assert parsed.errors == {}
    assert close(parsed.probs[5], [0.5, 0.5, 0, 0, 0, 0])
    assert max(abs(a - b) for a, b in zip(parsed.probs[4], probs[4], strict=True)) < 0.1


def check_covers(parsed: ParsedAnswer, indices: list[int]) -> None:
    assert set(parsed.probs) | set(parsed.errors) == set(indices)
    assert not set(parsed.probs) & set(parsed.errors)
    for p in parsed.probs.values():
        assert len(p) == len(C) and all(math.isfinite(x) and x >= 0 for x in p)
        assert math.isclose(sum(p), 1.0, rel_tol=1e-9)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_arbitrary_text_never_crashes(text: str) -> None:
    try:
        parsed = parse_answer(text, IDX, C)
    except AnswerError:
        return
    check_covers(parsed, IDX)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=7) | st.dictionaries(st.text(max_size=5), children, max_size=7)
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["4", "5", " 5", "x", "hap"]), json_values, max_size=4),
    st.text(max_size=20),
)
def test_fuzz_json_shaped_answers_never_crash(obj: dict, noise: str) -> None:
    try:
        parsed = parse_answer(noise + json.dumps(obj) + noise, IDX, C)
    except AnswerError:
        return
    check_covers(parsed, IDX)
