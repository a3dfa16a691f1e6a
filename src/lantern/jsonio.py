"""JSON and JSON Lines files that people write and edit: every fault names the file and the line.

``json.loads`` alone reports a stray non-UTF-8 byte, a 5,000-digit number (Python's limit on integer
digits) or a 100,000-deep array as an unlocated ValueError or a RecursionError; these readers turn
each into a :class:`CorpusError` naming the file and the line. Values nested deeper than
:data:`MAX_NESTING` are refused too, because code that later walks or prints them would hit the
recursion limit far from the file. A UTF-8 byte-order mark at the start of a file (Windows editors
and exports write one) is accepted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lantern.errors import CorpusError

# Lantern's own files nest four levels (dialogue > utterances > utterance > vad); 100 leaves room
# for any hand-written file and stays far below Python's recursion limit (1000).
MAX_NESTING = 100
BOM = b"\xef\xbb\xbf"


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_json(data: bytes, *, file: str, line: int | None = None) -> Any:
    """Decode and parse one JSON text: a whole file (``line=None``) or one line of a JSONL file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        at = line if line is not None else data.count(b"\n", 0, exc.start) + 1
        raise CorpusError(
            f"line {at}, column {exc.start - line_start + 1}: not UTF-8 text "
            f"(byte 0x{data[exc.start]:02x}); save the file as UTF-8",
            file=file,
        ) from None
    where = "" if line is None else f"line {line}: "
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        at = line if line is not None else exc.lineno
        raise CorpusError(f"line {at}: invalid JSON ({exc.msg} at column {exc.colno})", file=file) from None
    except RecursionError:
        raise CorpusError(f"{where}JSON nested more than {MAX_NESTING} levels deep", file=file) from None
    except ValueError:  # not a syntax error: an integer beyond Python's digit limit
        raise CorpusError(
            f"{where}a number has more than {sys.get_int_max_str_digits()} digits", file=file
        ) from None
    # Only a text with more brackets than the limit can nest beyond it: most lines skip the walk.
    if text.count("[") + text.count("{") > MAX_NESTING and _too_deep(value):
        raise CorpusError(f"{where}JSON nested more than {MAX_NESTING} levels deep", file=file)
    return value


def read_json(path: str | Path) -> Any:
    """The JSON value in a file (a leading byte-order mark is skipped)."""
    path = Path(path)
    return parse_json(path.read_bytes().removeprefix(BOM), file=str(path))


def json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line of a JSON Lines file, numbered from 1.

    Lines are split and decoded as bytes, so a bad byte is reported on its own line rather than
    wherever a text decoder's buffer happened to end.
    """
    path = Path(path)
    file = str(path)
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            data = raw.removeprefix(BOM) if number == 1 else raw
            if data.strip():
                yield number, parse_json(data, file=file, line=number)
