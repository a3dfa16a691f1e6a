"""What a structured answer may look like: text to force, and the few places where the model chooses.

Lantern's answer formats (:mod:`lantern.llm.formats`) send one shape of JSON schema: an object whose
keys are all required, in a fixed order, whose values are

- a string from an ``enum`` (the ``logprobs`` format's class names),
- a string of exactly ``n`` digits, ``"pattern": "^[0-9]{n}$"`` (the ``digits`` format),
- an ``integer`` with a ``minimum`` and a ``maximum`` (the ``probs`` format's percentages),
- or an object of these (the ``probs`` format's per-utterance objects).

Such a schema fixes every character of a valid answer except the values, so it compiles
(:func:`compile_schema`) to a sequence of segments: forced text — braces, keys, quotes and
separators, written as compact JSON because that takes the fewest tokens (Lantern's ``max_tokens``
leaves room for the compact form only) — and :class:`Choice` among finitely many strings. Anything
else raises :class:`UnsupportedSchema` naming it, so a request the server cannot honour is refused
rather than answered unconstrained.

For a tokenizer, :class:`TokenPlanner` turns the segments into token ids: forced text into the
ids fed to the model without looking at its vocabulary, each choice into a trie of its options'
token sequences, so a value position weighs only the tokens that continue an allowed value. Options
are tokenized on their own; with a tokenizer that splits words, digits and punctuation apart before
merging (SmolLM2's, like GPT-2's) that is exactly how they are tokenized inside the answer. The tries
are cached per option set, so a label set's class names, the digits and the integers 0-100 are
tokenized once per server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

# Keywords that only describe a schema, never constrain it.
ANNOTATIONS = frozenset({"title", "description", "$schema", "$comment"})
MAX_DIGITS = 64
MAX_INTEGER_OPTIONS = 10_001
DIGITS = tuple("0123456789")
MAX_CACHED = 4096  # token sequences kept per planner: forced texts differ by utterance index
_DIGITS_PATTERN = re.compile(r"\^(?:\[0-9\]|\\d)\{(\d+)\}\$")


class UnsupportedSchema(ValueError):
    """The schema asks for something outside the supported subset; the message names it and where."""


@dataclass(frozen=True)
class Choice:
    """One value the model picks: exactly one of ``options`` (JSON text, already escaped)."""

    options: tuple[str, ...]


Segment = str | Choice


def compile_schema(schema: object) -> list[Segment]:
    """The segments of every answer valid under ``schema``; adjacent forced text is merged."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise UnsupportedSchema("unsupported JSON schema at $: the top level must be an object schema")
    segments: list[Segment] = []
    _value(schema, "$", segments)
    merged: list[Segment] = []
    for segment in segments:
        if isinstance(segment, str) and merged and isinstance(merged[-1], str):
            merged[-1] += segment
        else:
            merged.append(segment)
    return merged


def _unsupported(path: str, what: str) -> UnsupportedSchema:
    return UnsupportedSchema(f"unsupported JSON schema at {path}: {what}")


def _check_keywords(schema: dict, path: str, allowed: set[str]) -> None:
    extra = sorted(set(schema) - allowed - ANNOTATIONS)
    if extra:
        raise _unsupported(path, f"keyword(s) {', '.join(map(repr, extra))}")


def _value(schema: object, path: str, out: list[Segment]) -> None:
    if not isinstance(schema, dict):
        raise _unsupported(path, "a schema must be an object")
    kind = schema.get("type")
    if "enum" in schema:
        _enum(schema, path, out)
    elif kind == "object":
        _object(schema, path, out)
    elif kind == "string":
        _digit_string(schema, path, out)
    elif kind == "integer":
        _integer(schema, path, out)
    else:
        raise _unsupported(path, f"type {kind!r} (supported: object, string enum or digits, integer range)")


def _object(schema: dict, path: str, out: list[Segment]) -> None:
    _check_keywords(schema, path, {"type", "properties", "required", "additionalProperties"})
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    if not isinstance(properties, dict) or not isinstance(required, list):
        raise _unsupported(path, "properties must be an object and required a list")
    if not isinstance(schema.get("additionalProperties", False), bool):
        raise _unsupported(path, "additionalProperties other than true or false")
    optional = sorted(set(properties) - set(required))
    if optional:
        raise _unsupported(
            path, f"optional properties ({', '.join(map(repr, optional))}); all must be required"
        )
    undefined = [k for k in required if k not in properties]
    if undefined or len(set(required)) != len(required):
        raise _unsupported(path, f"required names undefined or repeated properties: {undefined or required}")
    out.append("{")
    for n, key in enumerate(required):
        out.append(("," if n else "") + json.dumps(key, ensure_ascii=False) + ":")
        _value(properties[key], f"{path}.{key}", out)
    out.append("}")


def _enum(schema: dict, path: str, out: list[Segment]) -> None:
    _check_keywords(schema, path, {"type", "enum"})
    values = schema["enum"]
    if schema.get("type", "string") != "string" or not isinstance(values, list) or not values:
        raise _unsupported(path, "an enum must be a non-empty list of strings")
    if not all(isinstance(v, str) for v in values):
        raise _unsupported(path, "an enum of values other than strings")
    options = tuple(dict.fromkeys(json.dumps(v, ensure_ascii=False)[1:-1] for v in values))
    out.extend(['"', Choice(options), '"'])


def _digit_string(schema: dict, path: str, out: list[Segment]) -> None:
    _check_keywords(schema, path, {"type", "pattern"})
    pattern = schema.get("pattern")
    match = _DIGITS_PATTERN.fullmatch(pattern) if isinstance(pattern, str) else None
    if match is None:
        raise _unsupported(path, f"a string other than an enum or pattern ^[0-9]{{n}}$ (pattern {pattern!r})")
    n = int(match.group(1))
    if not 1 <= n <= MAX_DIGITS:
        raise _unsupported(path, f"a digit string of length {n} (1 to {MAX_DIGITS})")
    out.extend(['"', *[Choice(DIGITS)] * n, '"'])


def _integer(schema: dict, path: str, out: list[Segment]) -> None:
    _check_keywords(schema, path, {"type", "minimum", "maximum"})
    low, high = schema.get("minimum"), schema.get("maximum")
    bounds_ok = all(isinstance(b, int) and not isinstance(b, bool) for b in (low, high))
    if not bounds_ok or low > high or high - low + 1 > MAX_INTEGER_OPTIONS:
        raise _unsupported(
            path,
            f"an integer without integer minimum <= maximum spanning at most {MAX_INTEGER_OPTIONS} values",
        )
    out.append(Choice(tuple(str(i) for i in range(low, high + 1))))


@dataclass
class TrieNode:
    """Token sequences of a choice's options sharing a prefix; ``terminal``: an option ends here."""

    children: dict[int, TrieNode] = field(default_factory=dict)
    terminal: bool = False


@dataclass(frozen=True)
class Forced:
    """Token ids fed as they are."""

    ids: tuple[int, ...]


@dataclass(frozen=True)
class TokenChoice:
    """A choice as a trie; ``end`` is the first token of the forced text after it: where an option
    may end or go on (``1`` or ``10``), the model ends it by choosing that token."""

    root: TrieNode
    end: int | None


TokenSegment = Forced | TokenChoice


class TokenPlanner:
    """Segments to token ids for one tokenizer (``encode``: text to ids, no special tokens)."""

    def __init__(self, encode: Callable[[str], list[int]]) -> None:
        self._encode = encode
        self._tries: dict[tuple[str, ...], TrieNode] = {}
        self._forced: dict[str, tuple[int, ...]] = {}

    def plan(self, segments: list[Segment]) -> list[TokenSegment]:
        planned: list[TokenSegment] = []
        for n, segment in enumerate(segments):
            if isinstance(segment, str):
                planned.append(Forced(self._forced_ids(segment)))
                continue
            root = self._trie(segment.options)
            following = segments[n + 1] if n + 1 < len(segments) else None
            end = self._forced_ids(following)[0] if isinstance(following, str) and following else None
            _check_end(root, end, segment)
            planned.append(TokenChoice(root, end))
        return planned

    def _forced_ids(self, text: str) -> tuple[int, ...]:
        if text not in self._forced:
            if len(self._forced) >= MAX_CACHED:
                self._forced.clear()
            self._forced[text] = tuple(self._encode(text))
        return self._forced[text]

    def _trie(self, options: tuple[str, ...]) -> TrieNode:
        if options not in self._tries:
            if len(self._tries) >= MAX_CACHED:
                self._tries.clear()
            root = TrieNode()
            for option in options:
                node = root
                for token in self._encode(option):
                    node = node.children.setdefault(token, TrieNode())
                node.terminal = True
            self._tries[options] = root
        return self._tries[options]


def _check_end(root: TrieNode, end: int | None, choice: Choice) -> None:
    """Where an option may end or go on, the token that ends it must not also continue it."""
    todo = [root]
    while todo:
        node = todo.pop()
        if node.terminal and node.children and (end is None or end in node.children):
            raise UnsupportedSchema(
                f"unsupported JSON schema: the options {list(choice.options)[:5]} cannot be told apart "
                "from the text that follows them"
            )
        todo.extend(node.children.values())
