"""Receptive fields: overlapping windows over a dialogue, so that every utterance lies in exactly t of them.

Construction (METHOD.md §2): stride ``s``, window length ``w = t·s``, windows
``R_k = [k·s, k·s + w) ∩ [0, N)`` for ``k = -(t-1) … ⌈N/s⌉-1``. Windows at the edges are truncated,
so that the first and last utterances are covered ``t`` times like every other one.

Utterance ``i`` lies in windows ``k = ⌊i/s⌋-t+1 … ⌊i/s⌋``. Its *position in the field*
``b = ⌊i/s⌋ - k ∈ {0..t-1}`` says which block of the window it sits in (``b = t-1``: the last block,
most past context; ``b = 0``: the first block, most future context); its offset inside the window
is ``r = i - max(0, k·s)``. In a short dialogue several truncated windows can cover the same
utterances; they stay separate windows (each contributes one of the ``t`` answers), and
:func:`unique_windows` groups them so that the LLM is asked once per distinct span.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReceptiveField:
    """Window ``k`` of a dialogue: utterances ``start`` (inclusive) to ``stop`` (exclusive)."""

    k: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Membership:
    """Utterance ``i`` in window ``k``: its receptive-field position ``b`` and offset ``r`` in the window."""

    k: int
    b: int
    r: int


def _check(stride: int, t: int) -> None:
    if stride < 1:
        raise ValueError(f"receptive-field stride must be >= 1, got {stride}")
    if t < 1:
        raise ValueError(f"receptive-field count t must be >= 1, got {t}")


def receptive_fields(n_utterances: int, stride: int, t: int) -> list[ReceptiveField]:
    """All windows of a dialogue of ``n_utterances``, in order of ``k`` (``⌈N/s⌉ + t - 1`` of them)."""
    _check(stride, t)
    if n_utterances < 1:
        raise ValueError(f"a dialogue needs at least one utterance, got {n_utterances}")
    last = -(-n_utterances // stride) - 1
    return [
        ReceptiveField(k=k, start=max(0, k * stride), stop=min(n_utterances, (k + t) * stride))
        for k in range(-(t - 1), last + 1)
    ]


def memberships(i: int, stride: int, t: int) -> list[Membership]:
    """The ``t`` windows holding utterance ``i``, in order of ``k`` (so ``b`` runs from t-1 down to 0)."""
    _check(stride, t)
    if i < 0:
        raise ValueError(f"utterance index must be >= 0, got {i}")
    block = i // stride
    return [Membership(k=k, b=block - k, r=i - max(0, k * stride)) for k in range(block - t + 1, block + 1)]


def field_memberships(n_utterances: int, stride: int, t: int) -> list[list[Membership]]:
    """:func:`memberships` for every utterance of a dialogue: ``result[i]`` has ``t`` entries."""
    if n_utterances < 1:
        raise ValueError(f"a dialogue needs at least one utterance, got {n_utterances}")
    return [memberships(i, stride, t) for i in range(n_utterances)]


def unique_windows(fields: list[ReceptiveField]) -> dict[tuple[int, int], list[ReceptiveField]]:
    """Windows grouped by span ``(start, stop)``, in first-seen order: one LLM request per key."""
    groups: dict[tuple[int, int], list[ReceptiveField]] = {}
    for f in fields:
        groups.setdefault((f.start, f.stop), []).append(f)
    return groups
