"""The dialogue model every stage shares: a corpus is dialogues, a dialogue is utterances.

Feature vectors are held per dialogue as one ``(n_utterances, width)`` float32 array per modality,
because every model consumes whole dialogues and the native format memory-maps them that way.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from lantern.errors import CorpusError
from lantern.labels import LabelSet

SPLITS = ("train", "dev", "test")
MODALITIES = ("t", "a", "v")
VAD_RANGE = (1.0, 5.0)


@dataclass
class Utterance:
    """One turn. ``label`` indexes the corpus label set; ``vad`` is (valence, arousal, dominance), 1-5."""

    id: str
    speaker: str
    text: str
    label: int | None = None
    vad: tuple[float, float, float] | None = None


@dataclass
class Dialogue:
    """An ordered list of utterances, their split, and per-modality features ``(n, width)``."""

    id: str
    split: str
    utterances: list[Utterance]
    features: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def speakers(self) -> list[str]:
        return [u.speaker for u in self.utterances]

    @property
    def labels(self) -> list[int | None]:
        return [u.label for u in self.utterances]


@dataclass
class Corpus:
    """Dialogues with one label set and fixed feature widths per modality (``{"t": 768, ...}``).

    ``feature_sources`` says where a modality's vectors came from when that matters for reuse
    (``{"t": "sentence-transformers/all-MiniLM-L6-v2"}``); modalities absent from it came from the file.
    """

    name: str
    labels: LabelSet
    dialogues: list[Dialogue]
    modalities: dict[str, int] = field(default_factory=dict)
    feature_sources: dict[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Dialogue]:
        return iter(self.dialogues)

    def __len__(self) -> int:
        return len(self.dialogues)

    def split(self, name: str) -> list[Dialogue]:
        """The dialogues of one split, in corpus order."""
        return [d for d in self.dialogues if d.split == name]

    @property
    def n_utterances(self) -> int:
        return sum(len(d) for d in self.dialogues)

    @property
    def speakers(self) -> list[str]:
        """Distinct speaker names, sorted: the vocabulary of the models' speaker embeddings."""
        return sorted({u.speaker for d in self.dialogues for u in d.utterances})

    def summary(self) -> dict:
        """Counts a person checks first (what ``lantern data inspect --json`` prints)."""
        label_counts = Counter(
            self.labels.classes[u.label] for d in self.dialogues for u in d.utterances if u.label is not None
        )
        n = self.n_utterances
        with_vad = sum(u.vad is not None for d in self.dialogues for u in d.utterances)
        return {
            "name": self.name,
            "dialogues": len(self.dialogues),
            "utterances": n,
            "splits": {s: len(self.split(s)) for s in SPLITS},
            "split_utterances": {s: sum(len(d) for d in self.split(s)) for s in SPLITS},
            "labels": list(self.labels.classes),
            "label_set": self.labels.name,
            "label_counts": {c: label_counts.get(c, 0) for c in self.labels.classes},
            "unlabelled": sum(u.label is None for d in self.dialogues for u in d.utterances),
            "speakers": len(self.speakers),
            "modalities": dict(self.modalities),
            "vad_coverage": (with_vad / n) if n else 0.0,
        }

    def validate(self, file: str | None = None) -> None:
        """Raise CorpusError at the first fault: every check a reader relies on, in one place."""
        seen_dialogues: set[str] = set()
        seen_utterances: set[str] = set()
        for d in self.dialogues:
            if d.id in seen_dialogues:
                raise CorpusError("duplicate dialogue id", file=file, dialogue=d.id)
            seen_dialogues.add(d.id)
            if d.split not in SPLITS:
                raise CorpusError(f"split {d.split!r} is not one of {SPLITS}", file=file, dialogue=d.id)
            if not d.utterances:
                raise CorpusError("empty dialogue (no utterances)", file=file, dialogue=d.id)
            for u in d.utterances:
                _validate_utterance(u, self.labels, file, d.id, seen_utterances)
            _validate_features(d, self.modalities, file)


def _validate_utterance(
    u: Utterance, labels: LabelSet, file: str | None, dialogue: str, seen: set[str]
) -> None:
    if u.id in seen:
        raise CorpusError("duplicate utterance id", file=file, dialogue=dialogue, utterance=u.id)
    seen.add(u.id)
    if u.label is not None and not (0 <= u.label < len(labels)):
        raise CorpusError(
            f"label {u.label} is outside label set {labels.name!r} (0..{len(labels) - 1})",
            file=file,
            dialogue=dialogue,
            utterance=u.id,
        )
    if u.vad is not None:
        if len(u.vad) != 3:
            raise CorpusError(
                f"VAD must have 3 values, got {u.vad}", file=file, dialogue=dialogue, utterance=u.id
            )
        for value in u.vad:
            if not (math.isfinite(value) and VAD_RANGE[0] <= value <= VAD_RANGE[1]):
                raise CorpusError(
                    f"VAD value {value} is outside {VAD_RANGE[0]:g}-{VAD_RANGE[1]:g}",
                    file=file,
                    dialogue=dialogue,
                    utterance=u.id,
                )


def _validate_features(d: Dialogue, modalities: dict[str, int], file: str | None) -> None:
    if set(d.features) != set(modalities):
        missing = sorted(set(modalities) - set(d.features))
        extra = sorted(set(d.features) - set(modalities))
        raise CorpusError(
            f"modalities differ from the corpus's: missing {missing}, unexpected {extra}",
            file=file,
            dialogue=d.id,
        )
    for m, width in modalities.items():
        x = d.features[m]
        if x.ndim != 2 or x.shape[0] != len(d):
            raise CorpusError(
                f"modality {m!r} has shape {tuple(x.shape)}, expected ({len(d)}, {width})",
                file=file,
                dialogue=d.id,
            )
        if x.shape[1] != width:
            raise CorpusError(
                f"modality {m!r} has width {x.shape[1]}, the corpus's is {width}", file=file, dialogue=d.id
            )
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise CorpusError(
                f"modality {m!r} has a NaN/inf value", file=file, dialogue=d.id, utterance=d.utterances[i].id
            )
