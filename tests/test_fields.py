"""Receptive fields (METHOD.md §2): every utterance in exactly t fields, edges included."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lantern.fields import (
    FieldSpec,
    Membership,
    ReceptiveField,
    field_memberships,
    receptive_fields,
    unique_fields,
)

sizes = st.integers(min_value=1, max_value=120)
strides = st.integers(min_value=1, max_value=9)
ts = st.integers(min_value=1, max_value=6)


@settings(max_examples=300, deadline=None)
@given(n=sizes, s=strides, t=ts)
def test_every_utterance_in_exactly_t_fields(n: int, s: int, t: int) -> None:
    fields = receptive_fields(n, s, t)
    counts = [0] * n
    for f in fields:
        for i in range(f.start, f.stop):
            counts[i] += 1
    assert counts == [t] * n


@settings(max_examples=300, deadline=None)
@given(n=sizes, s=strides, t=ts)
def test_fields_are_contiguous_nonempty_ordered_and_counted(n: int, s: int, t: int) -> None:
    fields = receptive_fields(n, s, t)
    assert len(fields) == -(-n // s) + t - 1
    assert [f.k for f in fields] == list(range(-(t - 1), -(-n // s)))
    for f in fields:
        assert 0 <= f.start < f.stop <= n
        assert len(f) <= t * s
        assert f.start == max(0, f.k * s) and f.stop == min(n, (f.k + t) * s)
    assert fields[0].start == 0 and fields[-1].stop == n


@settings(max_examples=300, deadline=None)
@given(n=sizes, s=strides, t=ts)
def test_memberships_agree_with_the_fields(n: int, s: int, t: int) -> None:
    by_k = {f.k: f for f in receptive_fields(n, s, t)}
    per_utterance = field_memberships(n, s, t)
    assert len(per_utterance) == n
    for i, ms in enumerate(per_utterance):
        assert ms == FieldSpec(s, t).memberships(i, n)
        assert len(ms) == t
        assert sorted(m.b for m in ms) == list(range(t))  # b in 0..t-1, distinct
        for m in ms:
            f = by_k[m.k]
            assert f.start <= i < f.stop
            assert m.r == i - f.start
            assert m.b == i // s - m.k
            assert (m.start, m.stop) == (f.start, f.stop)
            assert m.past == i - f.start and m.future == f.stop - 1 - i
            assert FieldSpec(s, t).position(i, f) == m
        fields_holding_i = {f.k for f in by_k.values() if f.start <= i < f.stop}
        assert fields_holding_i == {m.k for m in ms}


@settings(max_examples=200, deadline=None)
@given(n=sizes, s=strides)
def test_t1_is_a_partition(n: int, s: int) -> None:
    fields = receptive_fields(n, s, 1)
    covered = [i for f in fields for i in range(f.start, f.stop)]
    assert covered == list(range(n))
    assert all(
        ms == [Membership(k=i // s, b=0, r=i % s, start=i - i % s, stop=min(n, i - i % s + s))]
        for i, ms in enumerate(field_memberships(n, s, 1))
    )


def test_default_example_positions() -> None:
    # N=10, s=4, t=3: k = -2..2; utterance 5 sits in k=-1 (b=2), k=0 (b=1), k=1 (b=0).
    fields = receptive_fields(10, 4, 3)
    spans = [(f.k, f.start, f.stop) for f in fields]
    assert spans == [(-2, 0, 4), (-1, 0, 8), (0, 0, 10), (1, 4, 10), (2, 8, 10)]
    assert FieldSpec(4, 3).memberships(5, 10) == [
        Membership(-1, 2, 5, 0, 8),
        Membership(0, 1, 5, 0, 10),
        Membership(1, 0, 1, 4, 10),
    ]


def test_edge_fields_carry_their_true_context() -> None:
    # Utterance 1 of 10 (s=4, t=3) is at b = 2 ("most past context") in field k=-2 = [0, 4), yet it
    # has one utterance before it there: b alone is nominal at the edges, past/future are not.
    first = FieldSpec(4, 3).memberships(1, 10)[0]
    assert (first.k, first.b, first.past, first.future) == (-2, 2, 1, 2)


def test_short_dialogue_has_identical_fields_grouped_once() -> None:
    fields = receptive_fields(3, 4, 3)
    assert fields == [ReceptiveField(-2, 0, 3), ReceptiveField(-1, 0, 3), ReceptiveField(0, 0, 3)]
    groups = unique_fields(fields)
    assert list(groups) == [(0, 3)]
    assert groups[(0, 3)] == fields


@settings(max_examples=200, deadline=None)
@given(n=sizes, s=strides, t=ts)
def test_unique_fields_keeps_every_field_once(n: int, s: int, t: int) -> None:
    fields = receptive_fields(n, s, t)
    groups = unique_fields(fields)
    flat = [f for group in groups.values() for f in group]
    assert sorted(flat, key=lambda f: f.k) == fields
    assert all((f.start, f.stop) == key for key, group in groups.items() for f in group)


@pytest.mark.parametrize(("n", "s", "t"), [(0, 4, 3), (5, 0, 3), (5, 4, 0), (-1, 1, 1)])
def test_invalid_arguments_raise(n: int, s: int, t: int) -> None:
    with pytest.raises(ValueError):
        receptive_fields(n, s, t)
    with pytest.raises(ValueError):
        field_memberships(n, s, t)
