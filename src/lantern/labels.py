"""Emotion label sets. A corpus stores label *indices*; the set says what each index means."""

from __future__ import annotations

from dataclasses import dataclass

from lantern.errors import LanternError


@dataclass(frozen=True)
class LabelSet:
    """An ordered set of class names; index i of a probability vector is ``classes[i]``."""

    name: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.classes:
            raise LanternError(f"label set {self.name!r} has no classes")
        if len(set(self.classes)) != len(self.classes):
            raise LanternError(f"label set {self.name!r} repeats a class: {self.classes}")

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, name: str) -> int:
        """The index of a class name (case-insensitive); ValueError naming the set otherwise."""
        lowered = [c.lower() for c in self.classes]
        try:
            return lowered.index(name.strip().lower())
        except ValueError:
            raise LanternError(
                f"label {name!r} is not in label set {self.name!r} ({', '.join(self.classes)})"
            ) from None

    def to_json(self) -> dict:
        return {"name": self.name, "classes": list(self.classes)}

    @classmethod
    def from_json(cls, data: dict) -> LabelSet:
        return cls(name=data["name"], classes=tuple(data["classes"]))


IEMOCAP6 = LabelSet("iemocap6", ("hap", "sad", "neu", "ang", "exc", "fru"))
IEMOCAP4 = LabelSet("iemocap4", ("hap", "sad", "neu", "ang"))
MELD7 = LabelSet("meld7", ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"))
# MELD's Sentiment column, ordered from low to high valence so that the index reads as a scale.
MELD_SENTIMENT = LabelSet("meld-sentiment", ("negative", "neutral", "positive"))
# EmoryNLP's 7 emotions (Willcox's feeling wheel) in the dataset's own index order.
EMORYNLP7 = LabelSet("emorynlp7", ("joyful", "mad", "neutral", "peaceful", "powerful", "sad", "scared"))

BUILTIN: dict[str, LabelSet] = {s.name: s for s in (IEMOCAP6, IEMOCAP4, MELD7, MELD_SENTIMENT, EMORYNLP7)}


def get_label_set(name: str) -> LabelSet:
    """A built-in label set by name; ValueError listing the known names otherwise."""
    try:
        return BUILTIN[name]
    except KeyError:
        raise LanternError(f"unknown label set {name!r}; known: {', '.join(BUILTIN)}") from None


def custom_label_set(classes: list[str] | tuple[str, ...], name: str = "custom") -> LabelSet:
    """A label set built from the data (e.g. label names met in a JSONL corpus, in first-seen order)."""
    return LabelSet(name=name, classes=tuple(classes))
