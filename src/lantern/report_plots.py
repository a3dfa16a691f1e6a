"""The report's plots, each a matplotlib Figure on the Agg canvas (no pyplot, no global backend).

Drawn so that they cannot mislead: score axes start at 0, legends sit outside the axes where they
cover no bar or point, and in the reliability diagram vanilla is drawn last and distinctly, so a
method whose curve lies on it does not hide it.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lantern.evaluation import SCORES, VANILLA


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _outside_legend(ax: Any) -> None:
    """A legend right of the axes, where it cannot cover a bar or a point."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def results_plot(metrics: dict[str, Any]) -> Figure:
    """Accuracy, weighted and macro F1 by method; the score axis starts at 0, so bar heights compare."""
    methods = metrics["methods"]
    fig = Figure(figsize=(max(6, 1.3 * len(methods)), 4))
    ax = fig.add_subplot()
    x = np.arange(len(methods))
    width = 0.8 / len(SCORES)
    for i, key in enumerate(SCORES):
        means = [metrics["summary"][m][key]["mean"] for m in methods]
        stds = [metrics["summary"][m][key]["std"] for m in methods]
        offset = (i - (len(SCORES) - 1) / 2) * width
        label = key.replace("_", " ").replace("f1", "F1")
        ax.bar(x + offset, means, width, yerr=stds, capsize=3, label=label)
    ax.set_ylim(0, 100)
    ax.set_xticks(x, methods, rotation=20)
    ax.set_ylabel("% (axis from 0)")
    ax.set_title("Test scores (mean ± std over seeds)")
    _outside_legend(ax)
    return fig


def _confusion(metrics: dict[str, Any], method: str) -> np.ndarray:
    return sum(
        (
            np.array(s["methods"][method]["confusion"])
            for s in metrics["per_seed"].values()
            if method in s["methods"]
        ),
        np.zeros((len(metrics["labels"]["classes"]),) * 2, dtype=np.int64),
    )


def confusion_plot(metrics: dict[str, Any], methods: list[str]) -> Figure:
    classes = metrics["labels"]["classes"]
    fig = Figure(figsize=(5.2 * len(methods), 4.6))
    for i, method in enumerate(methods):
        ax = fig.add_subplot(1, len(methods), i + 1)
        cm = _confusion(metrics, method)
        rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for (r, c), count in np.ndenumerate(cm):
            ax.text(
                c, r, str(count), ha="center", va="center", color="white" if rates[r, c] > 0.5 else "black"
            )
        ax.set_xticks(range(len(classes)), classes, rotation=45)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(f"{method} (counts summed over seeds)")
    return fig


def per_class_mean(metrics: dict[str, Any], method: str, key: str) -> dict[str, float]:
    """A per-class figure (``per_class_f1``, ``per_class_precision``...) of a method, mean over seeds."""
    reports = [s["methods"][method][key] for s in metrics["per_seed"].values() if method in s["methods"]]
    return {c: float(np.mean([r[c] for r in reports])) for c in metrics["labels"]["classes"]}


def per_class_plot(metrics: dict[str, Any], methods: list[str]) -> Figure:
    classes = metrics["labels"]["classes"]
    fig = Figure(figsize=(max(6, 1.0 * len(classes)), 4))
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        f1 = per_class_mean(metrics, method, "per_class_f1")
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, [f1[c] for c in classes], width, label=method)
    ax.set_xticks(x, classes)
    ax.set_ylabel("F1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-class F1 on test (mean over seeds)")
    _outside_legend(ax)
    return fig


def attention_plot(weights: dict[str, dict[str, float]]) -> Figure:
    keys = list(next(iter(weights.values())))
    fig = Figure(figsize=(max(6, 1.2 * len(keys)), 4))
    ax = fig.add_subplot()
    x = np.arange(len(keys))
    width = 0.8 / len(weights)
    for i, (method, w) in enumerate(weights.items()):
        ax.bar(x + (i - (len(weights) - 1) / 2) * width, [w.get(k, 0.0) for k in keys], width, label=method)
    ax.set_xticks(x, [k if k == VANILLA else f"b={k}" for k in keys])
    ax.set_xlabel("receptive-field position (b = t−1: most past context) / vanilla candidate")
    ax.set_ylabel("mean weight on test")
    ax.set_ylim(0, 1)
    ax.set_title("Attention weight by receptive-field position")
    _outside_legend(ax)
    return fig


def reliability_plot(metrics: dict[str, Any], methods: list[str]) -> Figure:
    """Accuracy against confidence per method; vanilla is drawn last, dashed with hollow squares, so
    it stays visible where another method's curve lies on it."""
    fig = Figure(figsize=(6.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration", zorder=1)
    for method in sorted(methods, key=lambda m: m == VANILLA):
        merged: dict[float, list[float]] = {}
        eces = []
        for s in metrics["per_seed"].values():
            if method not in s["methods"]:
                continue
            calib = s["methods"][method]["calibration"]
            eces.append(calib["ece"])
            for b in calib["bins"]:
                m = merged.setdefault(b["low"], [0.0, 0.0, 0.0])
                m[0] += b["count"]
                m[1] += b["count"] * b["confidence"]
                m[2] += b["count"] * b["accuracy"]
        lows = sorted(merged)
        conf = [merged[k][1] / merged[k][0] for k in lows]
        acc = [merged[k][2] / merged[k][0] for k in lows]
        label = f"{method} (ECE {np.mean(eces):.2f}%)"
        if method == VANILLA:
            style = {"color": "black", "linestyle": "--", "marker": "s", "markerfacecolor": "none",
                     "markersize": 9, "linewidth": 2, "zorder": 4}  # fmt: skip
        else:
            style = {"linestyle": "-", "marker": "o", "markersize": 5, "alpha": 0.85, "zorder": 3}
        ax.plot(conf, acc, label=label, **style)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability on test")
    _outside_legend(ax)
    return fig


def training_plot(records: dict[str, dict[str, Any]]) -> Figure:
    """Per seed: train and dev loss by epoch, and dev weighted F1 with the chosen epoch marked."""
    fig = Figure(figsize=(11, 4))
    loss_ax, f1_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, (seed, record) in enumerate(records.items()):
        color = f"C{i}"
        epochs = [h["epoch"] for h in record["history"]]
        train_loss = [h["train_loss"] for h in record["history"]]
        dev_loss = [h["dev_loss"] for h in record["history"]]
        loss_ax.plot(epochs, train_loss, color=color, label=f"{seed} train")
        loss_ax.plot(epochs, dev_loss, color=color, linestyle="--", label=f"{seed} dev")
        f1 = [h["dev_weighted_f1"] for h in record["history"]]
        f1_ax.plot(epochs, f1, color=color, label=f"{seed} dev weighted F1")
        best = record["best_epoch"]
        f1_ax.axvline(best, color=color, linestyle=":", linewidth=1)
        f1_ax.plot([best], [f1[epochs.index(best)]], marker="*", markersize=14, color=color, linestyle="none",
                   label=f"{seed} chosen epoch {best}")  # fmt: skip
    for ax in (loss_ax, f1_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("Loss")
    loss_ax.legend(fontsize="small")
    f1_ax.set_xlabel("epoch")
    f1_ax.set_ylabel("dev weighted F1 (%)")
    f1_ax.set_ylim(0, 100)
    f1_ax.set_title("Dev weighted F1 (chosen epoch: the best)")
    _outside_legend(f1_ax)
    return fig
