"""The JSON-schema subset Lantern sends, compiled to forced text and choices; everything else refused."""

from __future__ import annotations

import itertools
import json

import pytest

from lantern.llm.formats import DigitsFormat, LogprobsFormat, ProbsFormat
from lantern.llm.json_plan import (
    Choice,
    Forced,
    TokenChoice,
    TokenPlanner,
    UnsupportedSchema,
    compile_schema,
)
from tests.llm.fake_lm import FakeTokenizer

C = ["hap", "sad", "neu", "ang", "exc", "fru"]
IDX = [4, 5]


def first_answer(segments: list) -> str:
    """The answer that takes the first option of every choice."""
    return "".join(s if isinstance(s, str) else s.options[0] for s in segments)


def test_the_logprobs_schema_is_forced_text_around_one_class_choice_per_utterance():
    segments = compile_schema(LogprobsFormat().schema(IDX, C))
    assert segments == ['{"4":"', Choice(tuple(C)), '","5":"', Choice(tuple(C)), '"}']


def test_the_digits_schema_chooses_one_digit_per_class():
    segments = compile_schema(DigitsFormat().schema(IDX, C))
    assert segments[0] == '{"4":"' and segments[1:7] == [Choice(tuple("0123456789"))] * 6
    assert json.loads(first_answer(segments)) == {"4": "000000", "5": "000000"}


def test_the_probs_schema_forces_every_class_name_and_chooses_integers_0_to_100():
    segments = compile_schema(ProbsFormat().schema(IDX, C))
    choices = [s for s in segments if isinstance(s, Choice)]
    assert len(choices) == 12 and all(c.options == tuple(str(i) for i in range(101)) for c in choices)
    assert segments[0] == '{"4":{"hap":' and segments[2] == ',"sad":'
    assert json.loads(first_answer(segments)) == {str(i): dict.fromkeys(C, 0) for i in IDX}


def test_keys_follow_required_order_and_strings_are_escaped():
    schema = {
        "type": "object",
        "properties": {
            "b": {"enum": ['say "hi"', "é"]},
            "a": {"type": "integer", "minimum": -2, "maximum": 2},
        },
        "required": ["a", "b"],
        "additionalProperties": False,
        "title": "ignored",
    }
    segments = compile_schema(schema)
    assert segments[0] == '{"a":' and segments[1].options == ("-2", "-1", "0", "1", "2")
    for a, b in itertools.product(segments[1].options, segments[3].options):
        assert json.loads(segments[0] + a + segments[2] + b + segments[4]) in (
            {"a": int(a), "b": 'say "hi"'},
            {"a": int(a), "b": "é"},
        )


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "array", "items": {"type": "string"}}, "top level must be an object"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, "pattern None"),
        ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}, "minimum"),
        (
            {"type": "object", "properties": {"a": {"enum": ["x"]}}, "required": []},
            "optional properties ('a')",
        ),
        ({"type": "object", "properties": {"a": {"type": "number"}}, "required": ["a"]}, "type 'number'"),
        ({"type": "object", "properties": {"a": {"enum": [1, 2]}}, "required": ["a"]}, "other than strings"),
        ({"type": "object", "properties": {"a": {"enum": []}}, "required": ["a"]}, "non-empty"),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string", "pattern": "^[a-z]+$"}},
                "required": ["a"],
            },
            "^[a-z]+$",
        ),
        (
            {"type": "object", "properties": {"a": {"enum": ["x"], "minLength": 1}}, "required": ["a"]},
            "keyword(s) 'minLength'",
        ),
        ({"type": "object", "properties": {}, "required": [], "oneOf": []}, "'oneOf'"),
        ({"type": "object", "properties": {"a": {"anyOf": []}}, "required": ["a"]}, "type None"),
    ],
)
def test_anything_outside_the_subset_is_refused_naming_it(schema, named):
    with pytest.raises(UnsupportedSchema, match="unsupported JSON schema") as caught:
        compile_schema(schema)
    assert named in str(caught.value)


def test_a_choice_that_may_end_or_go_on_is_ended_by_the_first_token_of_what_follows():
    tokenizer = FakeTokenizer()
    plan = TokenPlanner(tokenizer.encode).plan(compile_schema(ProbsFormat().schema([4], ["ha", "sad"])))
    assert isinstance(plan[0], Forced) and tokenizer.text(plan[0].ids) == '{"4":{"ha":'
    choice = plan[1]
    assert isinstance(choice, TokenChoice) and tokenizer.vocab[choice.end] == ',"'
    one = choice.root.children[tokenizer.ids["1"]]
    assert one.terminal and set(one.children) == {tokenizer.ids[d] for d in "0123456789"}
    assert not one.children[tokenizer.ids["0"]].children[tokenizer.ids["0"]].children  # 100 is the last
    assert tokenizer.vocab[plan[3].end] == "}}"


def test_options_that_cannot_be_told_from_what_follows_are_refused():
    # JSON escaping keeps schemas from doing this; a plan of other text could.
    planner = TokenPlanner(FakeTokenizer().encode)
    assert planner.plan([Choice(("1", "12")), "3"])
    with pytest.raises(UnsupportedSchema, match="cannot be told apart"):
        planner.plan([Choice(("1", "12")), "2"])
    with pytest.raises(UnsupportedSchema, match="cannot be told apart"):
        planner.plan([Choice(("1", "12")), Choice(("5",))])


def test_option_sets_are_tokenized_once():
    calls: list[str] = []
    tokenizer = FakeTokenizer()

    def encode(text: str) -> list[int]:
        calls.append(text)
        return tokenizer.encode(text)

    planner = TokenPlanner(encode)
    planner.plan(compile_schema(LogprobsFormat().schema([4, 5, 6], C)))
    planner.plan(compile_schema(LogprobsFormat().schema([7, 8], C)))
    assert sorted(c for c in calls if c in C) == sorted(C)
