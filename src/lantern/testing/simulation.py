"""A simulated LLM for studying the fusion without a frontier model (answers labelled "simulated").

It answers a Lantern prompt from gold labels (METHOD.md, "Studying the fusion without a frontier
LLM"); the project's test server serves it over HTTP under the model name ``simulated-llm``.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lantern.predictions import read_predictions
from lantern.testing.prompt_reader import PromptField


@dataclass
class Simulation:
    """A simulated LLM of known accuracy, built from gold labels.

    For each utterance of a field, with probability ``accuracy`` interpolated linearly from the
    first utterance of the field (offset r = 0) to the last (``accuracy_last``), the answer puts
    ``confidence`` on the gold class and spreads the rest over the others; otherwise it puts it on
    a random wrong class. With probability ``fallback_rate`` the utterance is left out of the answer
    (so the client falls back). ``random_answers`` gives useless random distributions instead.
    Deterministic per (seed, dialogue, index, field start). Utterances without a gold label are
    echoed.
    """

    gold: dict[tuple[str, int], int]
    accuracy: float = 0.7
    accuracy_last: float | None = None
    confidence: float = 0.8
    fallback_rate: float = 0.0
    random_answers: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("accuracy", "confidence", "fallback_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"simulation {name} must be in [0, 1], got {getattr(self, name)}")
        if self.accuracy_last is not None and not 0.0 <= self.accuracy_last <= 1.0:
            raise ValueError(f"simulation accuracy_last must be in [0, 1], got {self.accuracy_last}")

    @classmethod
    def from_predictions(cls, paths: list[str | Path], **options: object) -> Simulation:
        """Gold labels from predictions JSONL files; an utterance's index is its position in its dialogue."""
        gold: dict[tuple[str, int], int] = {}
        position: Counter[str] = Counter()
        for path in paths:
            for p in read_predictions(path):
                index = position[p.dialogue]
                position[p.dialogue] += 1
                if p.label is not None:
                    gold[(p.dialogue, index)] = p.label
        return cls(gold=gold, **options)

    def accuracy_at(self, r: int, length: int) -> float:
        last = self.accuracy if self.accuracy_last is None else self.accuracy_last
        return self.accuracy + (last - self.accuracy) * (r / (length - 1) if length > 1 else 0.0)

    def answer(self, field: PromptField) -> dict[int, list[float]]:
        """Distributions for the field's utterances (left-out utterances are absent)."""
        n_classes = len(field.classes)
        length = field.stop - field.start
        out: dict[int, list[float]] = {}
        for u in field.utterances:
            rng = random.Random(f"{self.seed}|{field.dialogue_id}|{u.index}|{field.start}")
            if rng.random() < self.fallback_rate:
                continue
            label = self.gold.get((field.dialogue_id, u.index))
            if self.random_answers:
                out[u.index] = [rng.random() for _ in range(n_classes)]
                continue
            if label is None or not 0 <= label < n_classes:
                out[u.index] = echo(u.probs, n_classes)
                continue
            target = label
            if n_classes > 1 and rng.random() >= self.accuracy_at(u.index - field.start, length):
                target = rng.choice([c for c in range(n_classes) if c != label])
            rest = (1.0 - self.confidence) / (n_classes - 1) if n_classes > 1 else 0.0
            out[u.index] = [self.confidence if c == target else rest for c in range(n_classes)]
        return out


def echo(probs: list[float], n_classes: int) -> list[float]:
    """The vanilla distribution a prompt showed, or uniform weights when it showed none."""
    if len(probs) == n_classes and sum(probs) > 0:
        return list(probs)
    return [1.0] * n_classes
