"""ERC metrics against cases worked out by hand and against scikit-learn on random labels, and the
paired dialogue bootstrap's behaviour.

Lantern keeps its own few lines of numpy for the metrics (no scikit-learn import at run time, and
the bootstrap calls them thousands of times); these tests hold them to scikit-learn's definitions,
including classes absent from gold or from the predictions, where the zero-division convention
decides the score.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn import metrics as sk

from lantern.metrics import (
    accuracy,
    classification_report,
    concordance,
    confusion_matrix,
    paired_bootstrap,
    pearson,
    per_class_f1,
    weighted_f1,
)


@st.composite
def labelled(draw: st.DrawFn, min_size: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """(gold, pred, n_classes): labels in [0, n_classes), often leaving some classes out of gold or
    out of the predictions (a small n drawn from a large class count), sometimes a single class."""
    n_classes = draw(st.integers(1, 8))
    n = draw(st.integers(min_size, 40))
    used = draw(st.lists(st.integers(0, n_classes - 1), min_size=1, max_size=n_classes, unique=True))
    gold = draw(st.lists(st.sampled_from(used), min_size=n, max_size=n))
    pred = draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n))
    return np.array(gold), np.array(pred), n_classes


# scikit-learn warns when asked for a one-class confusion matrix; here that case is on purpose.
one_class = pytest.mark.filterwarnings("ignore:A single label was found")


@one_class
@settings(max_examples=300, deadline=None)
@given(labelled())
def test_accuracy_confusion_and_f1_equal_scikit_learn(case) -> None:
    gold, pred, n = case
    labels = list(range(n))
    assert accuracy(gold, pred) == pytest.approx(sk.accuracy_score(gold, pred))
    cm = confusion_matrix(gold, pred, n)
    np.testing.assert_array_equal(cm, sk.confusion_matrix(gold, pred, labels=labels))
    f1 = sk.f1_score(gold, pred, labels=labels, average=None, zero_division=0)
    np.testing.assert_allclose(per_class_f1(cm), f1, atol=1e-12)
    expected = sk.f1_score(gold, pred, labels=labels, average="weighted", zero_division=0)
    assert weighted_f1(gold, pred, n) == pytest.approx(expected, abs=1e-12)
    report = classification_report(gold, pred, [f"c{i}" for i in labels])
    assert report["accuracy"] == round(100 * sk.accuracy_score(gold, pred), 2)
    assert report["weighted_f1"] == round(100 * expected, 2)
    assert list(report["per_class_f1"].values()) == [round(100 * float(v), 2) for v in f1]


@one_class
@settings(max_examples=150, deadline=None)
@given(labelled(), st.randoms(use_true_random=False))
def test_a_class_order_permutes_the_confusion_matrix_and_f1_as_in_scikit_learn(case, rnd) -> None:
    # scikit-learn's ``labels`` argument orders rows and columns; Lantern's order is the class index.
    gold, pred, n = case
    order = list(range(n))
    rnd.shuffle(order)
    cm = confusion_matrix(gold, pred, n)
    np.testing.assert_array_equal(cm[np.ix_(order, order)], sk.confusion_matrix(gold, pred, labels=order))
    f1 = sk.f1_score(gold, pred, labels=order, average=None, zero_division=0)
    np.testing.assert_allclose(per_class_f1(cm)[order], f1, atol=1e-12)


@one_class
@pytest.mark.parametrize(
    ("gold", "pred", "n"),
    [
        ([2, 2, 2], [2, 2, 2], 3),  # one class, all right: the absent classes weigh nothing
        ([1, 1], [0, 0], 2),  # one class in gold, never predicted
        ([0, 0, 0], [1, 2, 1], 4),  # gold's only class predicted nowhere; class 3 absent everywhere
        ([0], [0], 1),  # a single class in all
    ],
)
def test_single_class_and_absent_class_cases_equal_scikit_learn(gold, pred, n) -> None:
    labels = list(range(n))
    assert weighted_f1(gold, pred, n) == pytest.approx(
        sk.f1_score(gold, pred, labels=labels, average="weighted", zero_division=0)
    )
    np.testing.assert_allclose(
        per_class_f1(confusion_matrix(gold, pred, n)),
        sk.f1_score(gold, pred, labels=labels, average=None, zero_division=0),
    )


@pytest.mark.parametrize("label", [-1, 3])
def test_a_label_outside_the_classes_is_refused_not_counted_elsewhere(label) -> None:
    # numpy would count a -1 in the last class: a silent error in every reported figure.
    with pytest.raises(ValueError, match="outside the 3 classes"):
        confusion_matrix([0, 1], [0, label], 3)
    with pytest.raises(ValueError, match="outside the 3 classes"):
        weighted_f1([label, 1], [0, 1], 3)


finite = st.floats(-1e3, 1e3, allow_nan=False).map(lambda x: round(x, 3))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=2, max_size=30))
def test_pearson_equals_scipy_and_concordance_is_bounded_by_it(pairs) -> None:
    x, y = (np.array(v) for v in zip(*pairs, strict=True))
    r = pearson(x, y)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        # Constant, though rounding can leave the std at 1e-13 (three times 682.742): scipy answers
        # nan, Lantern exactly 0 (no linear relation can be read), never a rounding residue.
        assert r == 0.0
        return
    assert r == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-9)
    # Lin's coefficient is Pearson's shrunk by the gap in location and scale; equal when there is none.
    assert abs(concordance(x, y)) <= abs(r) + 1e-12
    assert concordance(x, x) == pytest.approx(1.0)


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
