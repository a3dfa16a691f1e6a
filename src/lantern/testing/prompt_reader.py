"""Reading a rendered Lantern prompt back: the inverse of :func:`lantern.llm.prompt.build_messages`.

The project's test server answers from the request alone, so it recovers the field a user message
was rendered from — dialogue, field bounds, classes, and per utterance its speaker, transcript and
the vanilla references it was shown. Only the test server and the benches use it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from lantern.llm.prompt import FieldUtterance


@dataclass
class PromptField:
    """What :func:`read_field` recovers from a rendered user message (utterance ids are not in it)."""

    dialogue_id: str
    start: int
    stop: int
    classes: list[str]
    utterances: list[FieldUtterance]


_HEADER = re.compile(r"^Dialogue: (\".*\") \(utterances (\d+)-(\d+)\)$", re.MULTILINE)
_CLASSES = re.compile(r"^Classes, in answer order: (\[.*\])$", re.MULTILINE)
_BLOCK = re.compile(r"^<dialogue>\n(.*?)\n</dialogue>$", re.MULTILINE | re.DOTALL)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def read_field(user_text: str) -> PromptField:
    """Recover the field a user message was rendered from; ValueError if it is not one of ours."""
    header, classes_match, block = (
        _HEADER.search(user_text),
        _CLASSES.search(user_text),
        _BLOCK.search(user_text),
    )
    if not (header and classes_match and block):
        raise ValueError(
            "not a Lantern prompt: missing the Dialogue line, the Classes line or the <dialogue> block"
        )
    decoder = json.JSONDecoder()
    classes = json.loads(classes_match.group(1))
    utterances = [_read_line(line, classes, decoder) for line in block.group(1).split("\n")]
    start, last = int(header.group(2)), int(header.group(3))
    return PromptField(
        dialogue_id=json.loads(header.group(1)),
        start=start,
        stop=last + 1,
        classes=classes,
        utterances=utterances,
    )


def _read_line(line: str, classes: list[str], decoder: json.JSONDecoder) -> FieldUtterance:
    m = re.match(r"(\d+) \| speaker ", line)
    if not m:
        raise ValueError(f"not an utterance line: {line[:80]!r}")
    speaker, pos = decoder.raw_decode(line, m.end())
    if not line.startswith(" | text ", pos):
        raise ValueError(f"utterance line without a text field: {line[:80]!r}")
    text, pos = decoder.raw_decode(line, pos + len(" | text "))
    probs: list[float] = []
    vad: list[float] | None = None
    for part in line[pos:].split(" | ")[1:]:
        key, _, rest = part.partition(" ")
        if key == "probs":
            items = rest.split(", ")
            if len(items) != len(classes):
                raise ValueError(
                    f"utterance {m.group(1)}: {len(items)} probabilities for {len(classes)} classes"
                )
            probs = [float(item.removeprefix(f"{c} ")) for c, item in zip(classes, items, strict=True)]
        elif key == "vad":
            vad = [float(x) for x in _NUMBER.findall(rest)]
    return FieldUtterance(index=int(m.group(1)), id="", speaker=speaker, text=text, probs=probs, vad=vad)
