"""A simulated LLM for studying the fusion without a frontier model (answers labelled "simulated").

It answers a Lantern prompt from gold labels (docs/method.md, "Studying the fusion without a frontier
LLM"); the project's test server serves it over HTTP under the model name ``simulated-llm``. Two
modes:

``realistic`` (the default) makes errors the way a real LLM reading overlapping fields would:

- a *latent judgement per utterance*, shared by every field that holds it, plus per-field noise:
  the field's observation is ``x_ik = μ_y + √ρ·u_i + √(1−ρ)·e_ik`` with ``u_i, e_ik ~ N(0, I)``, so
  ``correlation`` ρ is the correlation of the judgements of two fields about the same utterance;
- errors from a *confusion structure*: the prototype ``μ_c`` of class c leans toward its
  neighbouring classes (hap/exc, ang/fru, ...; :data:`NEIGHBOURS`), so a wrong answer is most often
  a neighbour, not a uniformly random class;
- *calibrated, graded* answers: the answer is the Bayes posterior of the class given ``x_ik`` under
  this model (uniform prior), so its confidence matches its accuracy; the prototypes' scale is
  solved so that the posterior's top class is right with probability ``accuracy``;
- *anchoring* on the vanilla distribution p shown in the prompt: ``log q ∝ (1−β)·log post + β·log p``
  with β = ``anchoring`` (β = 1 echoes the references);
- optionally, *reliability that depends on context*: the prototypes' scale is multiplied by
  ``1 + γ·(2c − 1)`` where c = min(n / CONTEXT_FULL, 1) counts the n utterances the field shows on
  the side ``context`` names ("past" or "future") and γ = ``context_weight``.

``independent`` keeps the older behaviour for comparison: each answer is an independent draw that
puts ``confidence`` on the gold class with probability ``accuracy`` (interpolated from the field's
first utterance to its last, ``accuracy_last``), else on a uniformly random wrong class.

Both modes: ``random_answers`` gives useless random distributions; ``fallback_rate`` leaves
utterances out of the answer (the client falls back); utterances without a gold label are echoed.
Everything is deterministic per seed, dialogue, utterance and field.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from lantern.errors import LanternError
from lantern.llm.prompt import dialogue_alias
from lantern.predictions import read_predictions
from lantern.testing.prompt_reader import PromptField

MODES = ("realistic", "independent")
CONTEXT_SIDES = ("past", "future")
CONTEXT_FULL = 8  # utterances of context at which a context-dependent reader is at its best
# Pairs of classes a reader confuses first (IEMOCAP, MELD, EmoryNLP names).
NEIGHBOURS = (
    ("hap", "exc"),
    ("ang", "fru"),
    ("sad", "fru"),
    ("neu", "fru"),
    ("anger", "disgust"),
    ("fear", "surprise"),
    ("joy", "surprise"),
    ("sadness", "fear"),
    ("joyful", "powerful"),
    ("peaceful", "neutral"),
    ("mad", "scared"),
    ("sad", "scared"),
)
NEIGHBOUR_SHARE = 0.35  # how far a class's prototype leans toward each of its neighbours
SHOWN_FLOOR = 0.005  # the prompt rounds to 2 decimals: a shown 0.00 is read as at most this
_CALIBRATION_DRAWS = 20_000


@dataclass
class Simulation:
    """A simulated LLM of known behaviour, built from gold labels (see the module docstring)."""

    gold: dict[tuple[str, int], int]
    mode: str = "realistic"
    accuracy: float = 0.7
    correlation: float = 0.7
    anchoring: float = 0.0
    context_weight: float = 0.0
    context: str = "past"
    accuracy_last: float | None = None
    confidence: float = 0.8
    fallback_rate: float = 0.0
    random_answers: bool = False
    seed: int = 0
    _scales: dict[tuple[str, ...], float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LanternError(f"simulation mode must be one of {MODES}, got {self.mode!r}")
        if self.context not in CONTEXT_SIDES:
            raise LanternError(f"simulation context must be one of {CONTEXT_SIDES}, got {self.context!r}")
        for name in ("accuracy", "correlation", "anchoring", "context_weight", "confidence", "fallback_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise LanternError(f"simulation {name} must be in [0, 1], got {value}")
        if self.accuracy_last is not None and not 0.0 <= self.accuracy_last <= 1.0:
            raise LanternError(f"simulation accuracy_last must be in [0, 1], got {self.accuracy_last}")

    @classmethod
    def from_predictions(cls, paths: list[str | Path], **options: object) -> Simulation:
        """Gold labels from predictions JSONL files, keyed by the dialogue's alias (what a prompt names
        it by) and the utterance's position in its dialogue."""
        gold: dict[tuple[str, int], int] = {}
        position: Counter[str] = Counter()
        for path in paths:
            for p in read_predictions(path):
                index = position[p.dialogue]
                position[p.dialogue] += 1
                if p.label is not None:
                    gold[(dialogue_alias(p.dialogue), index)] = p.label
        return cls(gold=gold, **options)

    # ----- answering

    def answer(self, prompt: PromptField) -> dict[int, list[float]]:
        """Distributions for the field's utterances (left-out utterances are absent)."""
        n_classes = len(prompt.classes)
        out: dict[int, list[float]] = {}
        for u in prompt.utterances:
            rng = self._rng("field", prompt.dialogue_id, u.index, prompt.start)
            if rng.random() < self.fallback_rate:
                continue
            label = self.gold.get((prompt.dialogue_id, u.index))
            if self.random_answers:
                out[u.index] = rng.random(n_classes).tolist()
            elif label is None or not 0 <= label < n_classes:
                out[u.index] = echo(u.probs, n_classes)
            elif self.mode == "independent":
                out[u.index] = self._independent(label, u.index - prompt.start, prompt, rng)
            else:
                out[u.index] = self.judge(label, prompt, u.index, u.probs, rng).tolist()
        return out

    def judge(
        self, label: int, prompt: PromptField, index: int, shown: list[float], rng: np.random.Generator
    ) -> np.ndarray:
        """The realistic answer ``(C,)`` for utterance ``index`` of the field (gold ``label``)."""
        mu = self.means(prompt, index)  # (C, C): one row per class
        n_classes = mu.shape[0]
        shared = self._rng("utterance", prompt.dialogue_id, index).standard_normal(n_classes)
        noise = rng.standard_normal(n_classes)
        x = mu[label] + np.sqrt(self.correlation) * shared + np.sqrt(1.0 - self.correlation) * noise
        # The Bayes posterior of the class given x (uniform prior): calibrated by construction.
        log_q = mu @ x - 0.5 * (mu**2).sum(axis=1)
        log_q -= np.logaddexp.reduce(log_q)
        if self.anchoring > 0 and len(shown) == n_classes:
            p = np.maximum(np.asarray(shown, dtype=float), SHOWN_FLOOR)
            log_q = (1.0 - self.anchoring) * log_q + self.anchoring * np.log(p / p.sum())
        q = np.exp(log_q - log_q.max())
        return q / q.sum()

    def means(self, prompt: PromptField, index: int) -> np.ndarray:
        """``(C, C)`` class means of the judgement of utterance ``index`` in this field."""
        classes = tuple(prompt.classes)
        return self.scale(classes) * self.context_factor(prompt, index) * self.prototypes(classes)

    def context_factor(self, prompt: PromptField, index: int) -> float:
        """1 + γ(2c − 1): reliability grows with c = min(context / CONTEXT_FULL, 1), the utterances
        the field shows before (``past``) or after (``future``) this one."""
        if self.context_weight == 0:
            return 1.0
        count = index - prompt.start if self.context == "past" else prompt.stop - 1 - index
        return 1.0 + self.context_weight * (2.0 * min(count / CONTEXT_FULL, 1.0) - 1.0)

    @staticmethod
    def prototypes(classes: tuple[str, ...]) -> np.ndarray:
        """``(C, C)`` unit-norm class prototypes, each leaning toward its :data:`NEIGHBOURS`."""
        names = [c.lower() for c in classes]
        p = np.eye(len(names))
        for a, b in NEIGHBOURS:
            if a in names and b in names:
                i, j = names.index(a), names.index(b)
                p[i, j] = p[j, i] = NEIGHBOUR_SHARE
        return p / np.linalg.norm(p, axis=1, keepdims=True)

    def scale(self, classes: tuple[str, ...]) -> float:
        """The prototypes' scale m at which the posterior's top class is right with probability
        ``accuracy`` (solved once per label set by bisection on seeded draws)."""
        if classes not in self._scales:
            self._scales[classes] = _solve_scale(self.prototypes(classes), self.accuracy, self.seed)
        return self._scales[classes]

    def _independent(self, label: int, r: int, prompt: PromptField, rng: np.random.Generator) -> list[float]:
        n_classes = len(prompt.classes)
        length = prompt.stop - prompt.start
        last = self.accuracy if self.accuracy_last is None else self.accuracy_last
        accuracy = self.accuracy + (last - self.accuracy) * (r / (length - 1) if length > 1 else 0.0)
        target = label
        if n_classes > 1 and rng.random() >= accuracy:
            target = int(rng.choice([c for c in range(n_classes) if c != label]))
        rest = (1.0 - self.confidence) / (n_classes - 1) if n_classes > 1 else 0.0
        return [self.confidence if c == target else rest for c in range(n_classes)]

    def _rng(self, *key: object) -> np.random.Generator:
        digest = hashlib.sha256("|".join(map(str, (self.seed, *key))).encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    @cached_property
    def description(self) -> dict[str, object]:
        """The knobs, for records that say what the simulated LLM was."""
        return {
            "mode": self.mode,
            "accuracy": self.accuracy,
            "correlation": self.correlation,
            "anchoring": self.anchoring,
            "context_weight": self.context_weight,
            "context": self.context,
            "random_answers": self.random_answers,
        }


def _solve_scale(prototypes: np.ndarray, accuracy: float, seed: int) -> float:
    """m such that argmax of the posterior given x = m·μ_y + N(0, I) is y with probability ``accuracy``."""
    n_classes = prototypes.shape[0]
    chance = 1.0 / n_classes
    if accuracy <= chance:
        return 0.0
    rng = np.random.default_rng(seed)
    labels = rng.integers(n_classes, size=_CALIBRATION_DRAWS)
    noise = rng.standard_normal((_CALIBRATION_DRAWS, n_classes))

    def hit_rate(m: float) -> float:
        x = m * prototypes[labels] + noise
        mu = m * prototypes
        logits = x @ mu.T - 0.5 * (mu**2).sum(axis=1)
        return float((logits.argmax(axis=1) == labels).mean())

    low, high = 0.0, 1.0
    while hit_rate(high) < accuracy and high < 1e3:
        high *= 2
    for _ in range(40):
        middle = (low + high) / 2
        if hit_rate(middle) < accuracy:
            low = middle
        else:
            high = middle
    return high


def echo(probs: list[float], n_classes: int) -> list[float]:
    """The vanilla distribution a prompt showed, or uniform weights when it showed none."""
    if len(probs) == n_classes and sum(probs) > 0:
        return list(probs)
    return [1.0] * n_classes
