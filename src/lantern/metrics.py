"""ERC metrics, in percent with two decimals where reported: accuracy, weighted and macro F1,
per-class precision, recall, F1 and support, confusion matrix; plus the paired dialogue bootstrap
used to compare two systems honestly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(gold: Sequence[int], pred: Sequence[int], n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` counts; row = gold class, column = predicted class.

    A label outside ``[0, n_classes)`` is refused: numpy's indexing would count a -1 in the last
    class, silently, in every figure computed from the matrix."""
    g, p = np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    for name, labels in (("gold", g), ("predicted", p)):
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            bad = labels[(labels < 0) | (labels >= n_classes)][0]
            raise ValueError(f"{name} label {bad} is outside the {n_classes} classes")
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (g, p), 1)
    return m


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    """F1 per class from a confusion matrix (0 where a class is neither present nor predicted)."""
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    actual = cm.sum(axis=1).astype(float)
    denom = predicted + actual
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def per_class_precision_recall(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) per class from a confusion matrix; 0 where the class is never predicted
    (precision) or never present (recall), as scikit-learn reports them."""
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    actual = cm.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    return precision, recall


def accuracy(gold: Sequence[int], pred: Sequence[int]) -> float:
    g, p = np.asarray(gold), np.asarray(pred)
    return float((g == p).mean()) if len(g) else 0.0


def weighted_f1(gold: Sequence[int], pred: Sequence[int], n_classes: int) -> float:
    """F1 averaged over classes weighted by their support (sklearn's ``average="weighted"``)."""
    cm = confusion_matrix(gold, pred, n_classes)
    support = cm.sum(axis=1).astype(float)
    if support.sum() == 0:
        return 0.0
    return float((per_class_f1(cm) * support).sum() / support.sum())


def macro_f1(gold: Sequence[int], pred: Sequence[int], n_classes: int) -> float:
    """Unweighted mean of the per-class F1 over the classes that occur in ``gold`` or ``pred``
    (sklearn's ``average="macro"``): every class counts alike, so a model that ignores the rare
    classes scores low even where the frequent ones carry its weighted F1."""
    cm = confusion_matrix(gold, pred, n_classes)
    seen = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(per_class_f1(cm)[seen].mean()) if seen.any() else 0.0


def classification_report(gold: Sequence[int], pred: Sequence[int], classes: Sequence[str]) -> dict:
    """Everything reported for one system: accuracy, weighted and macro F1 in %; per class the
    precision, recall and F1 in % and the support (gold utterances); the confusion matrix."""
    n = len(classes)
    cm = confusion_matrix(gold, pred, n)
    f1 = per_class_f1(cm)
    precision, recall = per_class_precision_recall(cm)

    def by_class(values: np.ndarray) -> dict[str, float]:
        return {c: round(100 * float(v), 2) for c, v in zip(classes, values, strict=True)}

    return {
        "n": len(gold),
        "accuracy": round(100 * accuracy(gold, pred), 2),
        "weighted_f1": round(100 * weighted_f1(gold, pred, n), 2),
        "macro_f1": round(100 * macro_f1(gold, pred, n), 2),
        "per_class_f1": by_class(f1),
        "per_class_precision": by_class(precision),
        "per_class_recall": by_class(recall),
        "support": {c: int(v) for c, v in zip(classes, cm.sum(axis=1), strict=True)},
        "confusion": cm.tolist(),
        "classes": list(classes),
    }


def paired_bootstrap(
    gold: Sequence[int],
    pred_a: Sequence[int],
    pred_b: Sequence[int],
    groups: Sequence[str],
    n_classes: int,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Interval of (A − B) in accuracy and weighted F1 points, resampling whole dialogues.

    Utterances of one dialogue are correlated, so resampling utterances would make the interval
    too narrow; ``groups`` gives each utterance's dialogue.
    """
    gold_a, a, b = np.asarray(gold), np.asarray(pred_a), np.asarray(pred_b)
    group_ids = np.unique(np.asarray(groups), return_inverse=True)[1]
    members = [np.flatnonzero(group_ids == g) for g in range(group_ids.max() + 1)] if len(gold_a) else []
    rng = np.random.default_rng(seed)
    diffs_acc, diffs_f1 = [], []
    for _ in range(n_resamples):
        pick = rng.integers(0, len(members), size=len(members))
        idx = np.concatenate([members[i] for i in pick])
        g = gold_a[idx]
        diffs_acc.append(100 * (accuracy(g, a[idx]) - accuracy(g, b[idx])))
        diffs_f1.append(100 * (weighted_f1(g, a[idx], n_classes) - weighted_f1(g, b[idx], n_classes)))
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2

    def summary(d: list[float], point: float) -> dict:
        return {
            "delta": round(point, 2),
            "low": round(float(np.percentile(d, lo)), 2),
            "high": round(float(np.percentile(d, hi)), 2),
        }

    return {
        "level": level,
        "n_resamples": n_resamples,
        "unit": "dialogue",
        "accuracy": summary(diffs_acc, 100 * (accuracy(gold_a, a) - accuracy(gold_a, b))),
        "weighted_f1": summary(
            diffs_f1, 100 * (weighted_f1(gold_a, a, n_classes) - weighted_f1(gold_a, b, n_classes))
        ),
    }


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; 0 when either side is constant (no linear relation can be read).

    Constancy is tested on the values, not the std: three equal values can leave a std of 1e-13
    after rounding, which would make a correlation out of rounding residue."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std()))


def concordance(x: Sequence[float], y: Sequence[float]) -> float:
    """Lin's concordance correlation coefficient: agreement in location and scale as well as
    correlation (the dimensional-emotion literature's usual score); 0 for fewer than two points."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) < 2:
        return 0.0
    denominator = a.var() + b.var() + (a.mean() - b.mean()) ** 2
    if denominator == 0:
        return 0.0
    return float(2 * ((a - a.mean()) * (b - b.mean())).mean() / denominator)
