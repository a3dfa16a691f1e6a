"""What fusion sees: the vanilla distribution and VAD of each utterance, and its t LLM answers.

Each utterance i lies in t receptive fields, so the LLM stage gives it t distributions q_ik, one per
receptive-field position b_ik ∈ {0..t-1} (docs/method.md §4). :func:`build_inputs` joins a predictions
file with an answers file into arrays, one row per utterance, candidates ordered by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lantern.answers import OK, FieldAnswer
from lantern.errors import LanternError
from lantern.models.batch import vad_to_unit
from lantern.predictions import Prediction


@dataclass
class FusionInputs:
    """Everything fusion sees for n utterances with t LLM answers each and C classes.

    p: ``(n, C)`` vanilla probabilities; d: ``(n, 3)`` vanilla VAD rescaled from 1-5 to [0, 1]
    (zeros when the vanilla model has no VAD output, ``has_vad`` False); q: ``(n, t, C)`` the LLM
    answers ordered by receptive-field position (a fallback answer carries p); b: ``(n, t)``
    positions (column k holds b = k); r: ``(n, t)`` offsets inside the fields, which are also the
    past context the utterance has there; future: ``(n, t)`` utterances after it in each field;
    labels: ``(n,)`` gold index or −1; ids, dialogues: ``n`` strings.
    """

    p: np.ndarray
    d: np.ndarray
    q: np.ndarray
    b: np.ndarray
    r: np.ndarray
    future: np.ndarray
    labels: np.ndarray
    ids: list[str]
    dialogues: list[str]
    has_vad: bool = False

    @property
    def n(self) -> int:
        return int(self.p.shape[0])

    @property
    def t(self) -> int:
        return int(self.q.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.p.shape[1])

    def candidates(self) -> np.ndarray:
        """``(n, t + 1, C)``: the t LLM answers then the vanilla distribution."""
        return np.concatenate([self.q, self.p[:, None, :]], axis=1)

    def subset(self, index: np.ndarray | Sequence[int]) -> FusionInputs:
        idx = np.asarray(index, dtype=np.int64)
        return FusionInputs(
            p=self.p[idx],
            d=self.d[idx],
            q=self.q[idx],
            b=self.b[idx],
            r=self.r[idx],
            future=self.future[idx],
            labels=self.labels[idx],
            ids=[self.ids[i] for i in idx],
            dialogues=[self.dialogues[i] for i in idx],
            has_vad=self.has_vad,
        )

    def labelled(self) -> FusionInputs:
        """The utterances with a gold label (the only ones a loss can use)."""
        return self.subset(np.flatnonzero(self.labels >= 0))


def _normalised(probs: Sequence[float], what: str) -> np.ndarray:
    x = np.asarray(probs, dtype=np.float64)
    total = x.sum()
    if not np.all(np.isfinite(x)) or np.any(x < 0) or total <= 0:
        raise LanternError(f"{what}: probabilities must be finite, >= 0 and not all zero")
    return x / total


def build_inputs(predictions: Sequence[Prediction], answers: Sequence[FieldAnswer], t: int) -> FusionInputs:
    """Join vanilla predictions with the LLM's field answers, one row per prediction (same order).

    Every utterance must have exactly t answers, one at each receptive-field position 0..t-1;
    otherwise a LanternError names the utterance and its dialogue.
    """
    if t < 1:
        raise LanternError(f"t must be >= 1, got {t}")
    if not predictions:
        raise LanternError("no vanilla predictions to fuse")
    n_classes = len(predictions[0].probs)
    by_id: dict[str, list[tuple[int, int, int, np.ndarray, bool]]] = {p.id: [] for p in predictions}
    for a in answers:
        for u in a.utterances:
            where = f"utterance {u.id!r} (dialogue {a.dialogue!r}, field [{a.start}, {a.stop}))"
            if u.id not in by_id:
                raise LanternError(f"LLM answer for {where} has no vanilla prediction")
            if len(u.probs) != n_classes:
                raise LanternError(f"LLM answer for {where} has {len(u.probs)} classes, expected {n_classes}")
            future = a.stop - a.start - 1 - int(u.r)
            probs = _normalised(u.probs, f"LLM answer for {where}")
            by_id[u.id].append((int(u.b), int(u.r), future, probs, u.status == OK))

    n = len(predictions)
    p = np.zeros((n, n_classes))
    d = np.zeros((n, 3))
    q = np.zeros((n, t, n_classes))
    b = np.tile(np.arange(t), (n, 1))
    r = np.zeros((n, t), dtype=np.int64)
    future = np.zeros((n, t), dtype=np.int64)
    labels = np.full(n, -1, dtype=np.int64)
    has_vad = all(pred.vad is not None for pred in predictions)
    for i, pred in enumerate(predictions):
        where = f"utterance {pred.id!r} (dialogue {pred.dialogue!r})"
        if len(pred.probs) != n_classes:
            raise LanternError(
                f"vanilla prediction for {where} has {len(pred.probs)} classes, expected {n_classes}"
            )
        p[i] = _normalised(pred.probs, f"vanilla prediction for {where}")
        if has_vad:
            d[i] = np.clip(vad_to_unit(pred.vad), 0.0, 1.0)
        if pred.label is not None:
            if not 0 <= pred.label < n_classes:
                raise LanternError(f"{where}: label {pred.label} outside 0..{n_classes - 1}")
            labels[i] = pred.label
        found = sorted(by_id[pred.id], key=lambda a: a[0])
        positions = [a[0] for a in found]
        if positions != list(range(t)):
            raise LanternError(
                f"{where} has {len(found)} LLM answers at positions {positions}; expected exactly "
                f"t={t}, one at each receptive-field position 0..{t - 1}"
            )
        for k, (_, offset, after, probs, answered) in enumerate(found):
            r[i, k] = offset
            future[i, k] = after
            # A fallback answer stands for "no LLM opinion": it is the vanilla distribution.
            q[i, k] = probs if answered else p[i]
    return FusionInputs(
        p=p,
        d=d,
        q=q,
        b=b,
        r=r,
        future=future,
        labels=labels,
        ids=[x.id for x in predictions],
        dialogues=[x.dialogue for x in predictions],
        has_vad=has_vad,
    )
