"""How the LLM is asked to answer one field, and how its answer is read (``answer_format``).

Three forms, an experiment axis (docs/method.md §3), each asking for every utterance of the field by its
index and each read into one distribution per utterance:

- ``probs``: adjusted probabilities, the paper's form: ``{"4": {"hap": 10, "sad": 0, ...}, ...}``
  (percentages or decimals, renormalised);
- ``logprobs``: one class name per utterance, ``{"4": "neu", ...}``; the distribution is read from
  the server's ``top_logprobs`` at each label's first token (OpenAI, vLLM and llama.cpp return
  them), so the answer is short and its confidence is the model's own;
- ``digits``: one digit 0-9 per class, ``{"4": "106003"}``, read as relative weights: compact for
  tiny local models whose tokenizers split every digit, but it quantises (a class under 1/18 of the
  top becomes 0, confident answers become one-hot).

:class:`AnswerFormat` gives, per form, the JSON schema a server is asked to enforce
(:func:`response_format`), the extra request parameters, the room to leave for the answer, and
the reader; :func:`parse_answer` reads every numeric form tolerantly (and other forms a model may
fall back to), never raising on a bad utterance: it reports a reason per utterance so the stage
can fall back there.
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import cache
from itertools import accumulate

from lantern.errors import LanternError
from lantern.llm.prompt import ANSWER_FORMATS, CLASS_GLOSS

MODES = ("json_schema", "json_object_schema", "json_object", "none")
# How each kind of server is asked for structured output. llama.cpp's servers (llama-server before
# it learnt ``json_schema``, and llama-cpp-python's) answer HTTP 500 to ``json_schema`` but
# constrain decoding to a schema given beside ``json_object``; Ollama (>= 0.5) and vLLM accept
# OpenAI's form. An unknown server gets no response_format and the tolerant parser.
DEFAULT_MODE: dict[str, str] = {
    "openai": "json_schema",
    "vllm": "json_schema",
    "llamacpp": "json_object_schema",
    "ollama": "json_schema",
    "other": "none",
}
SCHEMA_NAME = "lantern_field_answer"


class AnswerError(ValueError):
    """The whole answer is unusable (no JSON object in it, not an object, oversized)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ParsedAnswer:
    """Per utterance index: a distribution (sums to 1, class order) or the reason there is none.

    Every requested index is in exactly one of ``probs`` and ``errors``. ``evidence``: for a form
    read from token log-probabilities, those the reading used — every token's text (which places the
    labels) and the readable alternatives at each label — which is what the response cache keeps:
    the server's full lists (20 alternatives per token, with their bytes) are most of a response.
    """

    probs: dict[int, list[float]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    evidence: list[dict] | None = None


def _object_of(indices: list[int], value: dict) -> dict:
    """A schema for ``{"<index>": value, ...}`` with every index required and nothing else."""
    keys = [str(i) for i in indices]
    return {
        "type": "object",
        "properties": {k: dict(value) for k in keys},
        "required": keys,
        "additionalProperties": False,
    }


class AnswerFormat(ABC):
    """One way of asking for and reading a field's answer (see the module docstring)."""

    name: str = ""
    slack = 32  # tokens of room beyond the answer's own length

    @abstractmethod
    def schema(self, indices: list[int], classes: list[str] | tuple[str, ...]) -> dict:
        """The JSON schema of an answer for the utterances ``indices``."""

    def request_params(self) -> dict:
        """Sampling parameters this form needs beyond temperature and max_tokens."""
        return {}

    @abstractmethod
    def max_tokens(self, n_utterances: int, n_classes: int) -> int:
        """Room for the answer of a field of ``n_utterances``."""

    def parse(
        self, text: str, logprobs: list[dict] | None, indices: list[int], classes: list[str] | tuple[str, ...]
    ) -> ParsedAnswer:
        """Read the answer ``text`` (and, when asked for, the per-token log-probabilities: OpenAI's
        ``choices[0].logprobs.content``, dicts with ``token``, ``logprob`` and ``top_logprobs``)."""
        return parse_answer(text, indices, classes)

    @abstractmethod
    def render(self, probs: dict[int, list[float]], classes: list[str] | tuple[str, ...]) -> str:
        """An answer in this form carrying ``probs`` (what a model that believed them would write)."""


class DigitsFormat(AnswerFormat):
    """``"index": "digits",`` is about 6 + C tokens per utterance."""

    name = "digits"

    def max_tokens(self, n_utterances: int, n_classes: int) -> int:
        return n_utterances * (6 + n_classes) + self.slack

    def schema(self, indices: list[int], classes: list[str] | tuple[str, ...]) -> dict:
        return _object_of(indices, {"type": "string", "pattern": f"^[0-9]{{{len(classes)}}}$"})

    def render(self, probs: dict[int, list[float]], classes: list[str] | tuple[str, ...]) -> str:
        return compact_answer(probs)


class ProbsFormat(AnswerFormat):
    """Integer percentages per class name: ``"hap": 12`` costs about four tokens per class."""

    name = "probs"

    def max_tokens(self, n_utterances: int, n_classes: int) -> int:
        return n_utterances * (6 + 5 * n_classes) + self.slack

    def schema(self, indices: list[int], classes: list[str] | tuple[str, ...]) -> dict:
        value = {
            "type": "object",
            "properties": {c: {"type": "integer", "minimum": 0, "maximum": 100} for c in classes},
            "required": list(classes),
            "additionalProperties": False,
        }
        return _object_of(indices, value)

    def render(self, probs: dict[int, list[float]], classes: list[str] | tuple[str, ...]) -> str:
        out = {}
        for index, p in probs.items():
            total = sum(p) or 1.0
            out[str(index)] = {c: round(100 * x / total) for c, x in zip(classes, p, strict=True)}
        return json.dumps(out, separators=(",", ":"))


class LogprobsFormat(AnswerFormat):
    """One class name per utterance; the distribution comes from ``top_logprobs`` at the label."""

    name = "logprobs"
    top_logprobs = 20  # OpenAI's maximum

    def max_tokens(self, n_utterances: int, n_classes: int) -> int:
        return n_utterances * 10 + self.slack

    def schema(self, indices: list[int], classes: list[str] | tuple[str, ...]) -> dict:
        return _object_of(indices, {"type": "string", "enum": list(classes)})

    def request_params(self) -> dict:
        return {"logprobs": True, "top_logprobs": self.top_logprobs}

    def parse(
        self, text: str, logprobs: list[dict] | None, indices: list[int], classes: list[str] | tuple[str, ...]
    ) -> ParsedAnswer:
        parsed = parse_answer(text, indices, classes)
        if not readable_tokens(logprobs):
            # A server that returns no log-probabilities leaves only the chosen labels: one-hot
            # answers would fake certainty, so they fall back (and the stats say why).
            return ParsedAnswer(errors={i: parsed.errors.get(i, "no logprobs") for i in indices})
        spans = _label_spans(text, indices)
        starts = _token_starts(logprobs)
        names = _label_names(tuple(classes))
        matches: dict[str, tuple[int, ...]] = {}
        result = ParsedAnswer(errors=dict(parsed.errors))
        read: dict[int, list[dict]] = {}
        for i in indices:
            if i in result.errors:
                continue
            at = _token_at(starts, spans.get(i))
            probs = None
            if at is not None:
                candidates = _candidates(logprobs[at])
                probs = _label_distribution(candidates, spans[i] - starts[at], names, matches)
                read[at] = candidates
            if probs is None:
                result.errors[i] = "no logprobs at label"
            else:
                result.probs[i] = probs
        result.evidence = [
            {"token": item["token"], "top_logprobs": read[n]} if n in read else {"token": item["token"]}
            for n, item in enumerate(logprobs)
        ]
        return result

    def render(self, probs: dict[int, list[float]], classes: list[str] | tuple[str, ...]) -> str:
        labels = {str(i): classes[max(range(len(p)), key=p.__getitem__)] for i, p in probs.items()}
        return json.dumps(labels, separators=(",", ":"))


def answer_format(name: str) -> AnswerFormat:
    """The :class:`AnswerFormat` called ``name``; LanternError naming the known ones otherwise."""
    formats: dict[str, type[AnswerFormat]] = {
        "probs": ProbsFormat,
        "logprobs": LogprobsFormat,
        "digits": DigitsFormat,
    }
    if name not in formats:
        raise LanternError(f"unknown answer format {name!r}; known: {', '.join(ANSWER_FORMATS)}")
    return formats[name]()


def readable_tokens(logprobs: object) -> bool:
    """Whether ``logprobs`` (a ``logprobs.content`` list, from a server or the cache) is non-empty and
    every entry an object with a text ``token``: what places the labels in the answer. The
    alternatives are checked where a label reads them (``_candidates``)."""
    return (
        isinstance(logprobs, list)
        and bool(logprobs)
        and all(isinstance(t, dict) and isinstance(t.get("token"), str) for t in logprobs)
    )


_LABEL_START = re.compile(r'"\s*(\d+)\s*"\s*:\s*"')


def _label_spans(text: str, indices: list[int]) -> dict[int, int]:
    """Character offset in ``text`` of the first character of each index's string value (its first
    occurrence)."""
    wanted = set(indices)
    spans: dict[int, int] = {}
    for m in _LABEL_START.finditer(text):
        index = int(m.group(1))
        if index in wanted:
            spans.setdefault(index, m.end())
    return spans


def _token_starts(logprobs: list[dict]) -> list[int]:
    """Character offset in the answer text at which each token starts, and the text's length last."""
    return list(accumulate((len(item["token"]) for item in logprobs), initial=0))


def _token_at(starts: list[int], offset: int | None) -> int | None:
    """Index of the token holding character ``offset`` (None past the end, or for no offset)."""
    if offset is None or offset >= starts[-1]:
        return None
    return bisect_right(starts, offset) - 1


def _candidates(item: dict) -> list[dict]:
    """A token's ``top_logprobs`` that can be read: a text token and a finite number each (the rest
    of a server's entry, such as ``bytes``, is dropped)."""
    top = item.get("top_logprobs")
    if not isinstance(top, list):
        return []
    return [
        {"token": c["token"], "logprob": float(c["logprob"])}
        for c in top
        if isinstance(c, dict)
        and isinstance(c.get("token"), str)
        and isinstance(c.get("logprob"), int | float)
        and not isinstance(c["logprob"], bool)
        and math.isfinite(c["logprob"])
    ]


def _label_distribution(
    candidates: list[dict], lead: int, names: dict[int, list[str]], matches: dict[str, tuple[int, ...]]
) -> list[float] | None:
    """The distribution over classes read from the ``candidates`` of the token where a label starts,
    ``lead`` characters into it.

    Each candidate is read as the start of a label: the characters it adds past the value's opening
    are matched against the class names (and their glosses, ``names``); a token that starts several
    names shares its probability between them. Candidates that start no name (another quote, a
    space) are dropped and the rest renormalised. ``matches`` remembers, across the labels of one
    answer, which classes a candidate's text starts.
    """
    mass = [0.0] * len(names)
    for candidate in candidates:
        text = candidate["token"]
        if len(text) <= lead:
            continue
        start = text[lead:].lower()
        found = matches.get(start)
        if found is None:
            found = matches[start] = tuple(
                j
                for j, options in names.items()
                if any(n.startswith(start) or start.startswith(n) for n in options)
            )
        for j in found:
            mass[j] += math.exp(candidate["logprob"]) / len(found)
    total = math.fsum(mass)
    return [m / total for m in mass] if total > 0 else None


@cache
def _label_names(classes: tuple[str, ...]) -> dict[int, list[str]]:
    """Per class index, the lower-case names a label may be written as (name and gloss)."""
    out: dict[int, list[str]] = {}
    for j, c in enumerate(classes):
        gloss = CLASS_GLOSS.get(c.lower())
        out[j] = [c.lower()] + ([gloss] if gloss else [])
    return out


def response_format(mode: str, schema: dict, *, name: str = SCHEMA_NAME) -> dict | None:
    """The chat-completions ``response_format`` field for a structured-output ``mode`` (see MODES)."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": schema}
    if mode == "json_object":
        return {"type": "json_object"}
    if mode == "none":
        return None
    raise LanternError(f"unknown structured-output mode {mode!r}; known: {', '.join(MODES)}")


def compact_answer(probs: dict[int, list[float]]) -> str:
    """Write distributions in the compact form, scaled so each utterance's top class reads 9.

    The inverse of :func:`parse_answer` up to that resolution (1/9 of the top class's weight).
    """
    out = {}
    for index, p in probs.items():
        top = max(p) if p and max(p) > 0 else 1.0
        out[str(index)] = "".join(str(min(9, max(0, round(9 * x / top)))) for x in p)
    return json.dumps(out, separators=(",", ":"))


def answer_char_limit(n_utterances: int) -> int:
    """Longest answer text accepted for a field: generous for every accepted form, short of a runaway."""
    return 2000 + 500 * n_utterances


_MAX_OBJECT_TRIES = 64
_NUMBER_TOKEN = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)%?$")
_NAMED_PAIR = re.compile(r"([^\W\d][\w-]*)\s*[:=]?\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)%?")
_SEPARATORS = re.compile(r"[\s,;/|]+")


def parse_answer(
    text: str,
    indices: list[int],
    classes: list[str] | tuple[str, ...],
    *,
    max_chars: int | None = None,
) -> ParsedAnswer:
    """Read an LLM answer for the field ``indices``; AnswerError when no usable JSON object is in it.

    Accepted (tolerantly: code fences and prose around the object are skipped, the first balanced
    object is taken, one wrapping object such as ``{"answer": {...}}`` is looked through): per index,
    a string of one digit per class; a string or array of numbers in class order (percentages or
    fractions); an object or string of class names to numbers (missing names count 0). Values are
    renormalised to sum 1; a bad utterance gets a reason in ``errors`` and the others still count.
    """
    limit = answer_char_limit(len(indices)) if max_chars is None else max_chars
    if not isinstance(text, str):
        raise AnswerError(f"answer is {type(text).__name__}, not text")
    if len(text) > limit:
        raise AnswerError(f"oversized answer: {len(text)} characters (limit {limit})")
    obj = _find_object(text, indices)
    by_index: dict[int, object] = {}
    for key, value in obj.items():
        stripped = key.strip()
        if stripped.isdigit() and stripped.isascii():
            by_index.setdefault(int(stripped), value)
    result = ParsedAnswer()
    for i in indices:
        if i not in by_index:
            result.errors[i] = "missing"
            continue
        probs, error = _distribution(by_index[i], classes)
        if error is not None:
            result.errors[i] = error
        else:
            result.probs[i] = probs
    return result


def _find_object(text: str, indices: list[int]) -> dict:
    """The first JSON object in ``text`` that answers for some of ``indices`` (directly, or inside one
    wrapping object such as ``{"answer": {...}}``); the distributions nested in a truncated answer
    are not taken for the answer."""
    decoder = json.JSONDecoder()
    stripped = text.strip()
    if stripped and stripped[0] in '["0123456789-tfn':
        try:
            whole = json.loads(stripped)
        except ValueError:
            whole = None
        if whole is not None and not isinstance(whole, dict):
            raise AnswerError(f"answer is a JSON {type(whole).__name__}, not an object")
    wanted = {str(i) for i in indices}
    start = text.find("{")
    for _ in range(_MAX_OBJECT_TRIES):
        if start < 0:
            break
        try:
            obj, _end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            start = text.find("{", start + 1)
            continue
        obj = _unwrap(obj, indices)
        if any(str(k).strip() in wanted for k in obj):
            return obj
        start = text.find("{", start + 1)
    raise AnswerError("no JSON object found in the answer")


def _unwrap(obj: dict, indices: list[int]) -> dict:
    wanted = {str(i) for i in indices}
    if not any(k.strip() in wanted for k in obj):
        inner = [v for v in obj.values() if isinstance(v, dict)]
        if len(obj) == 1 and len(inner) == 1:
            return inner[0]
    return obj


def _distribution(value: object, classes: list[str] | tuple[str, ...]) -> tuple[list[float], str | None]:
    n = len(classes)
    if value is None:
        return [], "missing"
    if isinstance(value, str):
        raw, error = _from_string(value.strip(), classes)
    elif isinstance(value, list):
        raw, error = _from_list(value, n)
    elif isinstance(value, dict):
        raw, error = _from_names(list(value.items()), classes)
    else:
        return [], f"not a distribution ({type(value).__name__})"
    if error is not None:
        return [], error
    return _normalise(raw)


def _from_string(value: str, classes: list[str] | tuple[str, ...]) -> tuple[list, str | None]:
    n = len(classes)
    if len(value) == n and value.isdigit() and value.isascii():
        return [int(c) for c in value], None
    label = value.lower()
    named = [j for j, options in _label_names(tuple(classes)).items() if label in options]
    if named:
        return [1 if j == named[0] else 0 for j in range(n)], None
    tokens = [token for token in _SEPARATORS.split(value) if token]
    if tokens and all(_NUMBER_TOKEN.match(token) for token in tokens):
        return _from_list([_NUMBER_TOKEN.match(token).group(1) for token in tokens], n)
    pairs = _NAMED_PAIR.findall(value)
    if pairs and _NAMED_PAIR.sub("", value).strip(" \t,;/|") == "":
        return _from_names(pairs, classes)
    return [], f"unreadable value {value[:40]!r}"


def _from_list(values: list, n: int) -> tuple[list, str | None]:
    if len(values) != n:
        return [], f"wrong number of classes ({len(values)}, expected {n})"
    out = []
    for v in values:
        number = _number(v)
        if number is None:
            return [], f"not a number: {str(v)[:20]!r}"
        out.append(number)
    return out, None


def _from_names(
    pairs: list[tuple[object, object]], classes: list[str] | tuple[str, ...]
) -> tuple[list, str | None]:
    lookup = {c.lower(): j for j, c in enumerate(classes)}
    for j, c in enumerate(classes):
        gloss = CLASS_GLOSS.get(c.lower())
        if gloss is not None:
            lookup.setdefault(gloss, j)
    out: list = [0] * len(classes)
    for name, v in pairs:
        j = lookup.get(str(name).strip().lower())
        if j is None:
            return [], f"unknown class {str(name)[:30]!r}"
        number = _number(v)
        if number is None:
            return [], f"not a number: {str(v)[:20]!r}"
        out[j] = number
    return out, None


def _number(v: object) -> float | None:
    """A JSON number or numeric string as a float (overflow → inf); None for anything else."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        try:
            return float(v)
        except OverflowError:
            return math.inf if v > 0 else -math.inf
    if isinstance(v, float):
        return v
    if isinstance(v, str):
        m = _NUMBER_TOKEN.match(v.strip())
        return float(m.group(1)) if m else None
    return None


def _normalise(raw: list) -> tuple[list[float], str | None]:
    values = [float(x) for x in raw]
    if not all(math.isfinite(x) for x in values):
        return [], "non-finite value"
    if any(x < 0 for x in values):
        return [], "negative value"
    top = max(values)
    if top <= 0:
        return [], "all zero"
    scaled = [x / top for x in values]  # first scale by the top value, so the sum cannot overflow
    total = math.fsum(scaled)
    return [x / total for x in scaled], None
