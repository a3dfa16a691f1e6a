"""Per-split CSV tables with one utterance per row (MELD, EmoryNLP) turned into dialogues.

The public releases are comma-separated UTF-8 files (CRLF or LF, a UTF-8 BOM tolerated) whose
quoted fields may hold commas, doubled quotes and line breaks, so one record can span several
lines. Every fault is reported with the file and the line where the record starts, counted as an
editor counts lines, so a person can jump to it:

- the file is missing or not UTF-8 (the line of the first bad byte);
- the header lacks a column the reader needs (other columns, in any order, are ignored);
- a record is malformed CSV or has more or fewer fields than the header: a long row is usually an
  unquoted comma that would shift every column after it, a short one a truncated file, so neither
  is guessed at;
- a value does not parse (an id that is not a whole number, a label outside the set, ...);
- two rows claim the same utterance of the same dialogue.

Rows are grouped by their dialogue key, dialogues are ordered by key, utterances by their source
utterance number. Numbers are kept as the file gives them: a gap (an utterance the curators removed)
stays a gap, never renumbered.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lantern.corpus.dialogue import Corpus, CorpusError, Dialogue, Utterance
from lantern.labels import LabelSet

log = logging.getLogger(__name__)

_WHOLE_NUMBER = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Record:
    """One CSV record: the line it starts on and the values of the columns asked for, by name."""

    line: int
    values: dict[str, str]


@dataclass(frozen=True)
class Row:
    """One utterance row, parsed: its dialogue (a sortable key and the Lantern id) and number."""

    line: int
    dialogue_key: tuple[int, ...]
    dialogue_id: str
    number: int
    utterance: Utterance


RowParser = Callable[[str, Record, str], Row]
"""``(split, record, file) -> Row``: a layout's reading of one record."""


def _decode(raw: bytes, file: str) -> str:
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise CorpusError(
            f"line {line}: not UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8", file=file
        ) from None


def _is_blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def read_table(path: Path, columns: Sequence[str]) -> list[Record]:
    """The records of a CSV file with a header line, holding the named ``columns`` only.

    Blank lines are skipped; every other record must have as many fields as the header.
    """
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"cannot read ({exc.strerror or exc})", file=file) from None
    reader = csv.reader(io.StringIO(_decode(raw, file), newline=""), strict=True)
    records: list[Record] = []
    header: list[str] | None = None
    index: dict[str, int] = {}
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise CorpusError(f"line {start}: malformed CSV record ({exc})", file=file) from None
        if _is_blank(row):
            pass
        elif header is None:
            header = [name.strip() for name in row]
            index = _column_index(header, columns, line=start, file=file)
        elif len(row) != len(header):
            raise CorpusError(
                f"line {start}: {len(row)} fields where the header has {len(header)} "
                "(an unquoted comma, or a cut-off line?)",
                file=file,
            )
        else:
            records.append(Record(start, {c: row[i] for c, i in index.items()}))
        start = reader.line_num + 1
    if header is None:
        raise CorpusError("empty file (no header line)", file=file)
    if not records:
        raise CorpusError("no rows after the header", file=file)
    return records


def _column_index(header: list[str], columns: Sequence[str], *, line: int, file: str) -> dict[str, int]:
    index = {}
    for column in columns:
        positions = [i for i, name in enumerate(header) if name == column]
        if not positions:
            raise CorpusError(
                f"line {line}: missing column {column!r} (the header has {', '.join(map(repr, header))})",
                file=file,
            )
        if len(positions) > 1:
            raise CorpusError(f"line {line}: column {column!r} appears {len(positions)} times", file=file)
        index[column] = positions[0]
    return index


def whole_number(record: Record, column: str, *, file: str, dialogue: str | None = None) -> int:
    """A column's value as an integer >= 0 (surrounding spaces allowed; no sign, point or exponent)."""
    value = record.values[column]
    if not _WHOLE_NUMBER.fullmatch(value.strip()):
        raise CorpusError(
            f"line {record.line}: {column} must be a whole number, got {value!r}",
            file=file,
            dialogue=dialogue,
        )
    return int(value)


def label_index(
    record: Record, column: str, labels: LabelSet, *, file: str, dialogue: str, utterance: str
) -> int:
    """A column's class name as an index of ``labels`` (case and surrounding spaces ignored)."""
    try:
        return labels.index(record.values[column])
    except ValueError as exc:
        raise CorpusError(
            f"line {record.line}: {column}: {exc}", file=file, dialogue=dialogue, utterance=utterance
        ) from None


def _dialogues(split: str, rows: list[Row], file: str, number_column: str) -> list[Dialogue]:
    groups: dict[tuple[int, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(row.dialogue_key, []).append(row)
    dialogues = []
    with_gaps = 0
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda r: (r.number, r.line))
        for before, after in itertools.pairwise(members):
            if before.number == after.number:
                raise CorpusError(
                    f"line {after.line}: {number_column} {after.number} repeats in this dialogue "
                    f"(first at line {before.line})",
                    file=file,
                    dialogue=after.dialogue_id,
                    utterance=after.utterance.id,
                )
        numbers = [r.number for r in members]
        with_gaps += numbers[-1] - numbers[0] + 1 != len(numbers)
        dialogues.append(
            Dialogue(id=members[0].dialogue_id, split=split, utterances=[r.utterance for r in members])
        )
    if with_gaps:
        log.info(
            "%s: %d of %d dialogues skip utterance numbers (kept as given)", file, with_gaps, len(groups)
        )
    return dialogues


def read_split_tables(
    src: str | Path,
    files: Mapping[str, str],
    columns: Sequence[str],
    parse: RowParser,
    *,
    name: str,
    labels: LabelSet,
    layout: str,
    number_column: str,
) -> Corpus:
    """A validated corpus from ``src/<files[split]>`` for every split.

    ``layout`` names the format in errors; ``number_column`` is the column ``parse`` reads
    :attr:`Row.number` from, named when two rows of a dialogue share a number.
    """
    root = Path(src)
    expected = ", ".join(files.values())
    if not root.is_dir():
        what = "no such directory" if not root.exists() else "not a directory"
        raise CorpusError(f"{what}; {layout} reads the folder that holds {expected}", file=str(root))
    dialogues: list[Dialogue] = []
    for split, filename in files.items():
        path = root / filename
        file = str(path)
        if not path.is_file():
            raise CorpusError(f"missing ({layout} needs {expected} in {root})", file=file)
        rows = [parse(split, record, file) for record in read_table(path, columns)]
        dialogues.extend(_dialogues(split, rows, file, number_column))
    corpus = Corpus(name=name, labels=labels, dialogues=dialogues, modalities={})
    corpus.validate(file=str(root))
    return corpus
