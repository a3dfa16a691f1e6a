"""Receptive fields: overlapping windows over a dialogue, so that every utterance lies in exactly t of them.

Construction (docs/method.md §2): stride ``s``, field length ``w = t·s``, fields
``R_k = [k·s, k·s + w) ∩ [0, N)`` for ``k = -(t-1) … ⌈N/s⌉-1``. Fields at the edges are truncated,
so that the first and last utterances are covered ``t`` times like every other one.

Utterance ``i`` lies in fields ``k = ⌊i/s⌋-t+1 … ⌊i/s⌋``. Its *position in the field*
``b = ⌊i/s⌋ - k ∈ {0..t-1}`` says which block of the field it sits in (``b = t-1``: the last block,
most past context; ``b = 0``: the first block, most future context); its offset inside the field
is ``r = i - max(0, k·s)``. Truncation makes ``b`` nominal at the edges (for ``i < s`` the field at
``b = t-1`` starts at 0: no past context at all), so a membership also carries the true context the
utterance has in that field: ``past`` utterances before it and ``future`` after it.

In a short dialogue several truncated fields can cover the same utterances; they stay separate
fields (each contributes one of the ``t`` answers), and :func:`unique_fields` groups them so that
the LLM is asked once per distinct span. This module is the only place that computes field bounds
and positions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lantern.errors import LanternError


@dataclass(frozen=True)
class ReceptiveField:
    """Field ``k`` of a dialogue: utterances ``start`` (inclusive) to ``stop`` (exclusive)."""

    k: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Membership:
    """Utterance ``i`` in field ``k = [start, stop)``: its receptive-field position ``b`` and offset ``r``."""

    k: int
    b: int
    r: int
    start: int
    stop: int

    @property
    def past(self) -> int:
        """Utterances of the field before this one (its true past context there)."""
        return self.r

    @property
    def future(self) -> int:
        """Utterances of the field after this one."""
        return self.stop - self.start - 1 - self.r


@dataclass(frozen=True)
class FieldSpec:
    """How a dialogue is cut: stride ``s`` and field count ``t`` (every utterance in t fields).

    Defaults **[ours]** s = 4, t = 3 (fields of 12 utterances); t = 1 is the no-overlap ablation.
    """

    stride: int = 4
    t: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise LanternError(f"receptive-field stride must be an integer >= 1, got {self.stride!r}")
        if isinstance(self.t, bool) or not isinstance(self.t, int) or self.t < 1:
            raise LanternError(f"receptive-field count t must be an integer >= 1, got {self.t!r}")

    @property
    def width(self) -> int:
        return self.stride * self.t

    def fields(self, n_utterances: int) -> list[ReceptiveField]:
        """All fields of a dialogue of ``n_utterances``, in order of ``k`` (``⌈N/s⌉ + t - 1`` of them)."""
        if n_utterances < 1:
            raise LanternError(f"a dialogue needs at least one utterance, got {n_utterances}")
        last = -(-n_utterances // self.stride) - 1
        return [
            ReceptiveField(
                k=k, start=max(0, k * self.stride), stop=min(n_utterances, (k + self.t) * self.stride)
            )
            for k in range(-(self.t - 1), last + 1)
        ]

    def memberships(self, i: int, n_utterances: int) -> list[Membership]:
        """The ``t`` fields holding utterance ``i`` of an ``n_utterances`` dialogue, in order of ``k``
        (so ``b`` runs from t-1 down to 0)."""
        if not 0 <= i < n_utterances:
            raise LanternError(f"utterance index {i} is outside a dialogue of {n_utterances}")
        block = i // self.stride
        out = []
        for k in range(block - self.t + 1, block + 1):
            start = max(0, k * self.stride)
            stop = min(n_utterances, (k + self.t) * self.stride)
            out.append(Membership(k=k, b=block - k, r=i - start, start=start, stop=stop))
        return out

    def position(self, i: int, field: ReceptiveField) -> Membership:
        """Utterance ``i``'s membership in ``field`` (which must hold it)."""
        if not field.start <= i < field.stop:
            raise LanternError(f"utterance {i} is not in field {field.k} [{field.start}, {field.stop})")
        return Membership(
            k=field.k, b=i // self.stride - field.k, r=i - field.start, start=field.start, stop=field.stop
        )

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def receptive_fields(n_utterances: int, stride: int, t: int) -> list[ReceptiveField]:
    """``FieldSpec(stride, t).fields(n_utterances)``."""
    return FieldSpec(stride, t).fields(n_utterances)


def field_memberships(n_utterances: int, stride: int, t: int) -> list[list[Membership]]:
    """Every utterance's memberships: ``result[i]`` has ``t`` entries."""
    spec = FieldSpec(stride, t)
    if n_utterances < 1:
        raise LanternError(f"a dialogue needs at least one utterance, got {n_utterances}")
    return [spec.memberships(i, n_utterances) for i in range(n_utterances)]


def unique_fields(fields: list[ReceptiveField]) -> dict[tuple[int, int], list[ReceptiveField]]:
    """Fields grouped by span ``(start, stop)``, in first-seen order: one LLM request per key."""
    groups: dict[tuple[int, int], list[ReceptiveField]] = {}
    for f in fields:
        groups.setdefault((f.start, f.stop), []).append(f)
    return groups
