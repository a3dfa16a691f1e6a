"""ERC metrics against cases worked out by hand, and the paired dialogue bootstrap's behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from lantern.metrics import accuracy, classification_report, confusion_matrix, paired_bootstrap, weighted_f1


def test_weighted_f1_of_a_hand_computed_case() -> None:
    # gold:  0 0 0 1 1 2      pred: 0 0 1 1 2 2
    # class 0: tp 2, fp 0, fn 1 → F1 = 4/5;  class 1: tp 1, fp 1, fn 1 → 1/2;  class 2: tp 1, fp 1, fn 0 → 2/3
    # weighted by support (3, 2, 1): (3·0.8 + 2·0.5 + 1·2/3) / 6 = 0.6777…
    gold, pred = [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2]
    assert weighted_f1(gold, pred, 3) == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 / 3) / 6)
    assert accuracy(gold, pred) == pytest.approx(4 / 6)
    assert confusion_matrix(gold, pred, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    report = classification_report(gold, pred, ["a", "b", "c"])
    assert report["weighted_f1"] == 67.78 and report["per_class_f1"] == {"a": 80.0, "b": 50.0, "c": 66.67}


def test_weighted_f1_ignores_classes_without_support_and_is_zero_on_nothing() -> None:
    # A class predicted but never gold has no weight; its false positives still cost the others' F1.
    assert weighted_f1([0, 0], [0, 1], 3) == pytest.approx(2 / 3)
    assert weighted_f1([], [], 3) == 0.0


def test_bootstrap_of_identical_systems_is_exactly_zero() -> None:
    rng = np.random.default_rng(0)
    gold = rng.integers(4, size=300)
    pred = rng.integers(4, size=300)
    groups = [f"d{i // 10}" for i in range(300)]
    out = paired_bootstrap(gold, pred, pred, groups, 4, n_resamples=200)
    for key in ("accuracy", "weighted_f1"):
        assert out[key] == {"delta": 0.0, "low": 0.0, "high": 0.0}
    assert out["unit"] == "dialogue"


def test_bootstrap_interval_covers_a_known_shift() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    gold = rng.integers(5, size=n)
    groups = [f"d{i // 20}" for i in range(n)]
    base = np.where(rng.random(n) < 0.6, gold, rng.integers(5, size=n))
    # B fixes a fixed 10% of A's utterances: a true accuracy gain of about 10 × P(A wrong) points.
    better = np.where(rng.random(n) < 0.25, gold, base)
    true_shift = 100 * (accuracy(gold, better) - accuracy(gold, base))
    out = paired_bootstrap(gold, better, base, groups, 5, n_resamples=500)
    assert out["accuracy"]["delta"] == pytest.approx(true_shift, abs=0.01)
    assert out["accuracy"]["low"] < true_shift < out["accuracy"]["high"]
    assert out["accuracy"]["low"] > 0  # a real gain of this size is resolved
    assert out["weighted_f1"]["low"] < out["weighted_f1"]["delta"] < out["weighted_f1"]["high"]
