"""Checks shared by the readers of the public pickle layouts (COGMEN, CORECT, SDT, MELD).

Those files hold one parallel list per field and dialogue (ids, speakers, labels, features, ...).
Everything that can go wrong between the lists — lengths that differ, a feature row that is missing
or has another width, a label outside the set — is caught here, with the file, dialogue and
utterance, before a :class:`~lantern.corpus.dialogue.Corpus` is built.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lantern.corpus.dialogue import Corpus, CorpusError, Dialogue, Utterance
from lantern.errors import LanternError
from lantern.labels import LabelSet

log = logging.getLogger(__name__)


def as_text(value: Any) -> str:
    """A transcript, id or speaker as str: Python-2 files may hold bytes (UTF-8, else latin1)."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(value).decode("latin1")
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def as_list(value: Any, *, field: str, file: str, dialogue: str | None) -> list:
    """One dialogue's entry of a field as a list (arrays become lists of rows)."""
    if value is None:
        raise CorpusError(f"field {field} has no entry for this dialogue", file=file, dialogue=dialogue)
    if isinstance(value, np.ndarray):
        return list(value) if value.ndim > 0 else [value.item()]
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise CorpusError(
            f"field {field} should hold a list per dialogue, got {type(value).__name__}",
            file=file,
            dialogue=dialogue,
        )
    return list(value)


def field_entry(table: Any, key: Any, *, field: str, file: str, dialogue: str) -> list:
    """``table[key]`` for a per-dialogue dict field, as a list; CorpusError if the dialogue is absent."""
    if not isinstance(table, Mapping):
        raise CorpusError(
            f"field {field} should be a dict keyed by dialogue id, got {type(table).__name__}", file=file
        )
    if key not in table:
        raise CorpusError(f"field {field} has no entry for this dialogue", file=file, dialogue=dialogue)
    return as_list(table[key], field=field, file=file, dialogue=dialogue)


def check_lengths(lists: Mapping[str, Sequence], *, file: str, dialogue: str) -> int:
    """The common length of one dialogue's parallel lists; CorpusError naming the two that differ."""
    lengths = {name: len(values) for name, values in lists.items()}
    first_name, n = next(iter(lengths.items()))
    for name, length in lengths.items():
        if length != n:
            raise CorpusError(
                f"length mismatch: {first_name} has {n} entries, {name} has {length}",
                file=file,
                dialogue=dialogue,
            )
    if n == 0:
        raise CorpusError("empty dialogue (no utterances)", file=file, dialogue=dialogue)
    return n


def stack_rows(
    rows: Sequence[Any], *, modality: str, utterance_ids: Sequence[str], file: str, dialogue: str
) -> np.ndarray:
    """Per-utterance vectors → ``(n, width)`` float32, refusing missing rows, ragged widths and NaN/inf."""
    width: int | None = None
    out: list[np.ndarray] = []
    for uid, row in zip(utterance_ids, rows, strict=True):
        if row is None:
            raise CorpusError(
                f"modality {modality!r} is missing", file=file, dialogue=dialogue, utterance=uid
            )
        try:
            vector = np.asarray(row, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise CorpusError(
                f"modality {modality!r} is not a numeric vector ({exc})",
                file=file,
                dialogue=dialogue,
                utterance=uid,
            ) from None
        if vector.ndim == 2 and vector.shape[0] == 1:
            vector = vector[0]
        if vector.ndim != 1 or vector.size == 0:
            raise CorpusError(
                f"modality {modality!r} has shape {vector.shape}, expected a vector",
                file=file,
                dialogue=dialogue,
                utterance=uid,
            )
        if width is None:
            width = vector.size
        elif vector.size != width:
            raise CorpusError(
                f"modality {modality!r} has width {vector.size}, earlier utterances have {width}",
                file=file,
                dialogue=dialogue,
                utterance=uid,
            )
        if not np.isfinite(vector).all():
            raise CorpusError(
                f"modality {modality!r} has a NaN/inf value", file=file, dialogue=dialogue, utterance=uid
            )
        out.append(vector)
    return np.stack(out)


def check_width(
    features: np.ndarray, widths: dict[str, int], modality: str, *, file: str, dialogue: str
) -> None:
    """Record the first dialogue's width of a modality; refuse a later dialogue whose width differs."""
    width = widths.setdefault(modality, features.shape[1])
    if features.shape[1] != width:
        raise CorpusError(
            f"modality {modality!r} has width {features.shape[1]}, earlier dialogues have {width}",
            file=file,
            dialogue=dialogue,
        )


def label_index(value: Any, labels: LabelSet, *, file: str, dialogue: str, utterance: str) -> int:
    """An integer class index checked against the label set."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CorpusError(
            f"label {value!r} is not a class index", file=file, dialogue=dialogue, utterance=utterance
        )
    if not 0 <= value < len(labels):
        raise CorpusError(
            f"label {value} is outside label set {labels.name!r} "
            f"(0..{len(labels) - 1}: {', '.join(labels.classes)})",
            file=file,
            dialogue=dialogue,
            utterance=utterance,
        )
    return value


def utterance_id(raw: Any, dialogue: str) -> str:
    """Text ids are kept; numeric ids (MELD files number utterances) are prefixed with the dialogue id."""
    if isinstance(raw, np.generic):
        raw = raw.item()
    if isinstance(raw, int):
        return f"{dialogue}_{raw:03d}"
    return as_text(raw)


def split_ids(value: Any, *, field: str, file: str) -> list:
    """A train/test id collection in file order (a set has none, so it is sorted for determinism)."""
    if isinstance(value, set | frozenset):
        return sorted(value, key=as_text)
    if isinstance(value, np.ndarray):
        return list(value)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise CorpusError(f"{field} should be a list of dialogue ids, got {type(value).__name__}", file=file)
    return list(value)


def assign_splits(
    train_ids: Sequence[str], test_ids: Sequence[str], dev_fraction: float
) -> list[tuple[str, str]]:
    """(dialogue id, split) pairs; the first ``int(dev_fraction * len(train_ids))`` train ids become dev."""
    if not 0.0 <= dev_fraction < 1.0:
        raise LanternError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    n_dev = int(dev_fraction * len(train_ids))
    pairs = [(d, "dev" if i < n_dev else "train") for i, d in enumerate(train_ids)]
    return pairs + [(d, "test") for d in test_ids]


def check_unique_dialogues(ids: Sequence[str], *, file: str) -> None:
    seen: set[str] = set()
    for d in ids:
        if d in seen:
            raise CorpusError(
                "duplicate dialogue id (listed twice among the train/test ids)", file=file, dialogue=d
            )
        seen.add(d)


def warn_unused_label_slots(dialogues: Sequence[Dialogue], labels: LabelSet, file: str) -> None:
    """Log when whole classes never occur: usually the 4-way file read with the 6-way label set."""
    used = {u.label for d in dialogues for u in d.utterances if u.label is not None}
    unused = [labels.classes[i] for i in range(len(labels)) if i not in used]
    if used and unused:
        log.warning("%s: classes %s of label set %r never occur", file, ", ".join(unused), labels.name)


def build_dialogue(
    *,
    dialogue: str,
    split: str,
    ids: Sequence[Any],
    speakers: Sequence[str],
    texts: Sequence[Any],
    labels: Sequence[int | None],
    features: dict[str, np.ndarray],
) -> Dialogue:
    utterances = [
        Utterance(id=uid, speaker=speaker, text=as_text(text), label=label)
        for uid, speaker, text, label in zip(ids, speakers, texts, labels, strict=True)
    ]
    return Dialogue(id=dialogue, split=split, utterances=utterances, features=features)


def speaker_name(value: Any, *, file: str, dialogue: str, utterance: str) -> str:
    """A speaker as a name: text is kept; a one-hot vector over speaker slots (MELD) → ``speaker<argmax>``."""
    if isinstance(value, str | bytes):
        return as_text(value)
    vector = np.asarray(value, dtype=np.float64)
    if vector.ndim != 1 or vector.size == 0 or not np.isfinite(vector).all() or vector.max() <= 0:
        raise CorpusError(
            f"speaker {value!r} is neither a name nor a one-hot vector",
            file=file,
            dialogue=dialogue,
            utterance=utterance,
        )
    return f"speaker{int(np.argmax(vector))}"


def read_dialogue_tables(
    tables: Mapping[str, Any],
    *,
    modalities: Mapping[str, str],
    splits: Sequence[tuple[Any, str]],
    labels: LabelSet,
    file: str,
) -> tuple[list[Dialogue], dict[str, int]]:
    """Dialogues from per-dialogue dict fields ("ids", "speakers", "labels", "sentences", feature fields).

    ``tables`` maps a role to the file's dict (keyed by dialogue id); ``modalities`` maps "t"/"a"/"v" to
    the role holding its features; ``splits`` lists (raw dialogue id, split) in corpus order.
    Returns the dialogues and the width of each modality.
    """
    widths: dict[str, int] = {}
    dialogues: list[Dialogue] = []
    for raw_id, split in splits:
        did = as_text(raw_id)
        columns = {
            role: field_entry(tables[role], raw_id, field=role, file=file, dialogue=did)
            for role in ("ids", "speakers", "labels", "sentences", *modalities.values())
        }
        check_lengths(columns, file=file, dialogue=did)
        ids = [utterance_id(raw, did) for raw in columns["ids"]]
        speakers = [
            speaker_name(s, file=file, dialogue=did, utterance=uid)
            for uid, s in zip(ids, columns["speakers"], strict=True)
        ]
        label_ids = [
            label_index(v, labels, file=file, dialogue=did, utterance=uid)
            for uid, v in zip(ids, columns["labels"], strict=True)
        ]
        features = {}
        for modality, role in modalities.items():
            x = stack_rows(columns[role], modality=modality, utterance_ids=ids, file=file, dialogue=did)
            check_width(x, widths, modality, file=file, dialogue=did)
            features[modality] = x
        dialogues.append(
            build_dialogue(
                dialogue=did,
                split=split,
                ids=ids,
                speakers=speakers,
                texts=columns["sentences"],
                labels=label_ids,
                features=features,
            )
        )
    listed = {raw for raw, _ in splits}
    unlisted = [k for k in tables["ids"] if k not in listed] if isinstance(tables["ids"], Mapping) else []
    if unlisted:
        log.warning(
            "%s: %d dialogues are in neither the train nor the test ids; left out", file, len(unlisted)
        )
    return dialogues, widths


def corpus_from_tables(
    tables: Mapping[str, Any],
    *,
    modalities: Mapping[str, str],
    labels: LabelSet,
    dev_fraction: float,
    path: Path,
) -> Corpus:
    """A validated corpus from a tuple layout's dict fields and its train/test id lists: the common
    tail of the COGMEN and SDT readers (dev = the first ``dev_fraction`` of the train ids)."""
    file = str(path)
    train = split_ids(tables["train_ids"], field="train_vids", file=file)
    test = split_ids(tables["test_ids"], field="test_vids", file=file)
    check_unique_dialogues([as_text(d) for d in train + test], file=file)
    dialogues, widths = read_dialogue_tables(
        tables,
        modalities=modalities,
        splits=assign_splits(train, test, dev_fraction),
        labels=labels,
        file=file,
    )
    warn_unused_label_slots(dialogues, labels, file)
    corpus = Corpus(name=path.stem, labels=labels, dialogues=dialogues, modalities=widths)
    corpus.validate(file=file)
    return corpus
