"""The run report: one self-contained HTML page (RUN_DIR/report/index.html) and its PNGs beside it.

The page opens from disk with no network: plots are embedded as base64 data URIs, the CSS is
inline, there is no script. It shows the results table (vanilla vs every fusion method, mean ± std
over seeds, Δ vs vanilla with its bootstrap interval), confusion matrices and per-class F1 of
vanilla and Lantern, the attention weight by receptive-field position, a reliability diagram with
ECE, the LLM statistics and the run configuration (secrets removed). A run whose LLM was the
simulation server says so in a banner. Plots use matplotlib's Agg canvas directly (no pyplot, so
no global backend state).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lantern.evaluation import METRICS, VANILLA, evaluate_run
from lantern.llm.redact import scrub
from lantern.rundir import RunDir, atomic_write_bytes, atomic_write_text, read_json

_SECRET_KEY = re.compile(
    r"(api[_-]?key|secret|password|passwd|authorization|bearer|credential|(^|_)token$)", re.I
)
_REDACTED = "<redacted>"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.banner{background:#b00020;color:#fff;font-weight:bold;font-size:1.3em;padding:.6em 1em;border-radius:4px}
.note{color:#555;font-size:.9em}img{max-width:100%;border:1px solid #eee}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
"""


def redact(obj: Any) -> Any:
    """A copy of a JSON-able object with secret-looking keys' values (API keys, tokens) replaced and
    every URL in a string made public (run.json files written by older versions may hold credentials)."""
    if isinstance(obj, dict):
        return {k: _REDACTED if _SECRET_KEY.search(str(k)) and v else redact(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return _REDACTED if obj.startswith("sk-") else scrub(obj)
    return obj


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _results_plot(metrics: dict[str, Any]) -> Figure:
    methods = metrics["methods"]
    fig = Figure(figsize=(max(6, 1.1 * len(methods)), 4))
    ax = fig.add_subplot()
    x = np.arange(len(methods))
    for i, key in enumerate(METRICS):
        means = [metrics["summary"][m][key]["mean"] for m in methods]
        stds = [metrics["summary"][m][key]["std"] for m in methods]
        ax.bar(x + (i - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=3, label=key.replace("_", " "))
    low = min(metrics["summary"][m][k]["mean"] for m in methods for k in METRICS)
    ax.set_ylim(max(0, low - 10), 100)
    ax.set_xticks(x, methods, rotation=20)
    ax.set_ylabel("%")
    ax.set_title("Test scores (mean ± std over seeds)")
    ax.legend()
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


def _confusion_plot(metrics: dict[str, Any], methods: list[str]) -> Figure:
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


def _per_class_plot(metrics: dict[str, Any], methods: list[str]) -> Figure:
    classes = metrics["labels"]["classes"]
    fig = Figure(figsize=(max(6, 1.0 * len(classes)), 4))
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        f1 = [
            np.mean(
                [
                    s["methods"][method]["per_class_f1"][c]
                    for s in metrics["per_seed"].values()
                    if method in s["methods"]
                ]
            )
            for c in classes
        ]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, f1, width, label=method)
    ax.set_xticks(x, classes)
    ax.set_ylabel("F1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-class F1 on test (mean over seeds)")
    ax.legend()
    return fig


def _attention_weights(run: RunDir, methods: list[str]) -> dict[str, dict[str, float]]:
    """Method → mean test weight per position key ("0".."t-1", "vanilla"), averaged over seeds."""
    out: dict[str, dict[str, float]] = {}
    for method in methods:
        runs = [
            read_json(p)["test"]
            for seed_run in run.seed_runs().values()
            if (p := seed_run.method(method).attention).exists()
        ]
        if runs:
            out[method] = {k: float(np.mean([r.get(k, 0.0) for r in runs])) for k in runs[0]}
    return out


def _attention_plot(weights: dict[str, dict[str, float]]) -> Figure:
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
    ax.legend()
    return fig


def _reliability_plot(metrics: dict[str, Any], methods: list[str]) -> Figure:
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    for method in methods:
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
        ax.plot(conf, acc, marker="o", label=f"{method} (ECE {np.mean(eces):.2f}%)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability on test")
    ax.legend(loc="upper left")
    return fig


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _results_rows(metrics: dict[str, Any]) -> list[list[str]]:
    rows = []
    for m in metrics["methods"]:
        s = metrics["summary"][m]
        cells = [f"{m} (Lantern)" if m == metrics.get("lantern_method") else m]
        cells += [f"{s[k]['mean']:.2f} ± {s[k]['std']:.2f}" for k in METRICS]
        for k in METRICS:
            e = metrics["vs_vanilla"].get(m, {}).get(k)
            cells.append(f"{e['delta']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]" if e else "—")
        eces = [
            r["methods"][m]["calibration"]["ece"] for r in metrics["per_seed"].values() if m in r["methods"]
        ]
        cells.append(f"{np.mean(eces):.2f}")
        cells.append(str(s["n_seeds"]))
        rows.append(cells)
    return rows


def _run_config(run: RunDir) -> dict[str, Any]:
    configs = {}
    seeds = run.seed_runs()
    for name, seed_run in seeds.items():
        if seed_run.run_json.exists():
            configs[name] = redact(read_json(seed_run.run_json))
    if run.run_json.exists() and not run.is_single_seed():
        configs["run"] = redact(read_json(run.run_json))
    return configs


def write_report(run_dir: str | Path) -> Path:
    """Render RUN_DIR/report/index.html (+ the PNGs beside it); evaluates the run if not done yet."""
    run = RunDir(run_dir)
    root = run.root
    metrics = read_json(run.eval_metrics) if run.eval_metrics.exists() else evaluate_run(root)
    out = run.report_dir
    fused = [m for m in metrics["methods"] if m != VANILLA]
    lantern = (
        metrics.get("lantern_method")
        if metrics.get("lantern_method") in fused
        else (fused[0] if fused else None)
    )
    compared = [VANILLA] + ([lantern] if lantern else [])
    simulated = bool(metrics.get("simulated_llm"))

    figures: list[tuple[str, str, Figure]] = [
        ("results.png", "Accuracy and weighted F1 by method", _results_plot(metrics)),
        ("confusion.png", "Confusion matrices (rows: gold)", _confusion_plot(metrics, compared)),
        ("per_class_f1.png", "Per-class F1", _per_class_plot(metrics, compared)),
    ]
    weights = _attention_weights(run, fused)
    if weights:
        figures.append(
            ("attention.png", "Attention weight by receptive-field position", _attention_plot(weights))
        )
    figures.append(("reliability.png", "Reliability (calibration)", _reliability_plot(metrics, compared)))

    title = "Lantern run report" + (" — simulated LLM" if simulated else "")
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
    ]
    parts.append(f"<style>{_CSS}</style></head><body>")
    if simulated:
        parts.append(
            "<div class='banner'>simulated LLM — the LLM answers in this run come from the simulation "
            "server (answers built from gold labels at a set accuracy), not from a language model. "
            "These numbers test the machinery; they are not results.</div>"
        )
    parts.append(f"<h1>{html.escape(title)}</h1>")
    parts.append(
        f"<p class='note'>Run directory: {html.escape(str(root.resolve()))}. Seeds: "
        f"{html.escape(', '.join(metrics['seeds']))}. Label set: {html.escape(metrics['labels']['name'])} "
        f"({html.escape(', '.join(metrics['labels']['classes']))}). Fusion is trained and tuned without the "
        "test split; test is read once, at evaluation. No epoch or hyperparameter is selected on test.</p>"
    )
    parts.append("<h2>Results</h2>")
    parts.append(
        _table(
            [
                "method",
                "accuracy (%)",
                "weighted F1 (%)",
                "Δ acc vs vanilla [95% CI]",
                "Δ wF1 vs vanilla [95% CI]",
                "ECE (%)",
                "seeds",
            ],
            _results_rows(metrics),
        )
    )
    parts.append(
        f"<p class='note'>Intervals: paired bootstrap over test dialogues "
        f"({metrics['bootstrap']['n_resamples']} resamples), pooled over seeds.</p>"
    )
    for filename, caption, fig in figures:
        data = _png(fig)
        atomic_write_bytes(out / filename, data)
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        parts.append(f"<img alt='{html.escape(caption)}' src='data:image/png;base64,{encoded}'>")
    if not weights:
        parts.append("<p class='note'>No fusion method with attention weights in this run.</p>")

    guards = {name: g for name, g in (metrics.get("guard") or {}).items() if g}
    parts.append("<h2>Vanilla guard</h2>")
    if guards:
        parts.append(
            "<p class='note'>Lantern's attention keeps its learned weighting only when, on held-out "
            "dialogue folds of the fusion training split, its likelihood beats the vanilla model's by more "
            "than one standard error; otherwise it is the vanilla model. The unguarded attention is "
            "reported beside it.</p>"
        )
        rows = [
            [
                name,
                "attention" if g["kept"] else "vanilla",
                f"{g['nll_vanilla']:.4f}",
                f"{g['nll_unguarded']:.4f}",
                f"{g['nll_gain']:+.4f} ± {g['standard_error']:.4f}",
            ]
            for name, g in guards.items()
        ]
        parts.append(_table(["seed", "decision", "NLL vanilla", "NLL unguarded", "NLL gain ± SE"], rows))
    else:
        parts.append("<p class='note'>No guarded method in this run.</p>")
    vad = metrics.get("dev_vad")
    if vad:
        parts.append("<h2>Vanilla VAD quality (dev)</h2>")
        rows = [[name, f"{v['pearson']:.3f}", f"{v['ccc']:.3f}"] for name, v in vad.items()]
        parts.append(_table(["dimension", "Pearson r", "CCC"], rows))
    llm = metrics.get("llm", {})
    parts.append("<h2>LLM statistics</h2>")
    if llm.get("available"):
        rows = [
            [k, "yes — simulated LLM" if k == "simulated" and v else v]
            for k, v in llm.items()
            if k != "available"
        ]
        parts.append(_table(["statistic", "value (summed over seeds; fallback rate averaged)"], rows))
    else:
        parts.append("<p class='note'>No LLM statistics in this run.</p>")
    parts.append("<h2>Configuration</h2>")
    parts.append(f"<pre>{html.escape(json.dumps(_run_config(run), indent=2))}</pre>")
    parts.append("</body></html>\n")
    atomic_write_text(run.report_index, "\n".join(parts))
    return run.report_index
