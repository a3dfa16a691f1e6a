"""Macro F1 and the per-class precision, recall and support against scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support

from lantern.metrics import classification_report, macro_f1


@pytest.mark.parametrize("seed", range(6))
def test_macro_f1_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_classes = 6
    gold = rng.integers(0, n_classes - 1, size=40)  # the last class never gold ...
    pred = np.where(rng.random(40) < 0.6, gold, rng.integers(0, n_classes, size=40))
    if seed % 2:
        pred[pred == 2] = 3  # ... and, every other case, a class never predicted
    expected = f1_score(gold, pred, average="macro", zero_division=0)
    assert macro_f1(gold, pred, n_classes) == pytest.approx(expected)


def test_macro_f1_leaves_out_classes_neither_gold_nor_predicted_as_sklearn_does() -> None:
    gold, pred = [0, 0, 1, 1], [0, 0, 1, 0]
    # Class 2 of the label set occurs nowhere: it is not averaged in as a 0.
    assert macro_f1(gold, pred, 3) == pytest.approx(f1_score(gold, pred, average="macro"))
    assert macro_f1([], [], 3) == 0.0


def test_classification_report_per_class_figures_equal_sklearn() -> None:
    rng = np.random.default_rng(7)
    classes = ["hap", "sad", "neu", "ang"]
    gold = rng.integers(0, 4, size=60)
    pred = np.where(rng.random(60) < 0.5, gold, rng.integers(0, 4, size=60))
    report = classification_report(gold, pred, classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, pred, labels=range(4), zero_division=0
    )
    for k, c in enumerate(classes):
        assert report["per_class_precision"][c] == pytest.approx(100 * precision[k], abs=0.005)
        assert report["per_class_recall"][c] == pytest.approx(100 * recall[k], abs=0.005)
        assert report["per_class_f1"][c] == pytest.approx(100 * f1[k], abs=0.005)
        assert report["support"][c] == support[k]
    assert report["macro_f1"] == pytest.approx(100 * f1_score(gold, pred, average="macro"), abs=0.005)
