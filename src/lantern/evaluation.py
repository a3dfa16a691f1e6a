"""Evaluation of a run: every seed × method on the test split, once, at the end (METHOD.md, Protocol).

A run directory holds one seed (RUN_DIR/vanilla exists) or several (RUN_DIR/seed-*/, each a full
single-seed run directory). For each seed, the vanilla model and every fused method present under
fusion/<method>/ are scored on the labelled test utterances; across seeds, accuracy and weighted F1
are summarised as mean ± std (sample std, ddof = 1; 0 for one seed). Each method is compared with
vanilla by a paired bootstrap over dialogues, per seed and pooled over seeds (a resampled dialogue
brings its utterances from every seed, so the pooled interval covers the test-set sampling of the
seed-averaged difference). Calibration (expected calibration error and a reliability table) is
computed beside the scores for the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lantern.fusion import METHODS
from lantern.metrics import classification_report, paired_bootstrap
from lantern.predictions import Prediction, read_predictions
from lantern.rundir import RunDir, read_json, write_json

SIMULATED_MODEL = "simulated-llm"
VANILLA = "vanilla"
LANTERN = "attention"
N_RESAMPLES = 1000
CALIBRATION_BINS = 15
METRICS = ("accuracy", "weighted_f1")


def seed_dirs(run_dir: str | Path) -> dict[str, Path]:
    """Seed name → single-seed run directory (``{"seed-0": RUN_DIR}`` for a one-seed run)."""
    root = Path(run_dir)
    if (root / "vanilla").is_dir():
        config = root / "vanilla" / "config.json"
        seed = read_json(config).get("seed", 0) if config.exists() else 0
        return {f"seed-{seed}": root}
    found = {p.name: p for p in sorted(root.glob("seed-*")) if (p / "vanilla").is_dir()}
    if not found:
        raise FileNotFoundError(f"{root}: no vanilla/ and no seed-*/vanilla/ (nothing to evaluate)")
    return found


def calibration(probs: np.ndarray, gold: np.ndarray, n_bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Expected calibration error (in %) of the top-class confidence, and the reliability table.

    probs: ``(n, C)``; gold: ``(n,)``. Equal-width confidence bins on [0, 1]; ECE = Σ_bins
    (count / n) · |accuracy − mean confidence|.
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == gold
    which = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    bins, ece = [], 0.0
    for k in range(n_bins):
        in_bin = which == k
        count = int(in_bin.sum())
        if count == 0:
            continue
        acc, conf = float(correct[in_bin].mean()), float(confidence[in_bin].mean())
        ece += count / len(gold) * abs(acc - conf)
        bins.append(
            {"low": k / n_bins, "high": (k + 1) / n_bins, "count": count, "accuracy": acc, "confidence": conf}
        )
    return {"ece": round(100 * ece, 2), "bins": bins}


def _method_order(names: set[str]) -> list[str]:
    known = [m for m in METHODS if m in names]
    return known + sorted(names - set(known))


def _aligned(vanilla: list[Prediction], other: list[Prediction], path: Path) -> np.ndarray:
    """The other system's probabilities ``(n, C)`` in vanilla's utterance order."""
    by_id = {p.id: p.probs for p in other}
    missing = [p.id for p in vanilla if p.id not in by_id]
    if missing:
        raise ValueError(f"{path}: no prediction for test utterance {missing[0]!r} ({len(missing)} missing)")
    return np.array([by_id[p.id] for p in vanilla], dtype=np.float64)


def _llm_summary(per_seed: dict[str, dict | None]) -> dict[str, Any]:
    stats = [s for s in per_seed.values() if s]
    if not stats:
        return {"available": False, "simulated": False}
    models = sorted({str(s.get("model")) for s in stats})
    served = {m for s in stats for m in (s.get("served_models") or {})}

    def total(key: str) -> float:
        return float(sum(s.get(key) or 0 for s in stats))

    return {
        "available": True,
        "model": models[0] if len(models) == 1 else models,
        "simulated": SIMULATED_MODEL in models or SIMULATED_MODEL in served,
        "fallback_rate": round(float(np.mean([s.get("fallback_rate") or 0.0 for s in stats])), 4),
        "requests_sent": int(total("requests_sent")),
        "cache_hits": int(total("cache_hits")),
        "retries": int(total("retries")),
        "prompt_tokens": int(total("prompt_tokens")),
        "completion_tokens": int(total("completion_tokens")),
        "cost_usd": round(total("cost_usd"), 4),
        "wall_seconds": round(total("wall_seconds"), 1),
        "t": stats[0].get("t"),
        "stride": stats[0].get("stride"),
    }


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": round(float(v.mean()), 2), "std": round(std, 2), "values": [float(x) for x in v]}


def evaluate_run(run_dir: str | Path, *, n_resamples: int = N_RESAMPLES) -> dict[str, Any]:
    """Score every seed × method on test, summarise over seeds, write RUN_DIR/eval/metrics.json."""
    root = Path(run_dir)
    seeds = seed_dirs(root)
    labels: dict[str, Any] | None = None
    per_seed: dict[str, Any] = {}
    pooled: dict[str, dict[str, list]] = {}
    llm_stats: dict[str, dict | None] = {}
    for seed_name, path in seeds.items():
        run = RunDir(path)
        config_path = run.vanilla / "config.json"
        seed_labels = read_json(config_path).get("label_set") if config_path.exists() else None
        test_path = run.predictions("test")
        if not test_path.exists():
            raise FileNotFoundError(f"{test_path}: missing (train the vanilla model first)")
        vanilla = [p for p in read_predictions(test_path) if p.label is not None]
        if not vanilla:
            raise ValueError(f"{test_path}: no test utterance has a gold label")
        n_classes = len(vanilla[0].probs)
        if seed_labels is None:
            seed_labels = {"name": "unnamed", "classes": [str(c) for c in range(n_classes)]}
        if labels is None:
            labels = seed_labels
        elif seed_labels["classes"] != labels["classes"]:
            raise ValueError(f"{config_path}: label set differs from the other seeds' ({labels['classes']})")
        classes = labels["classes"]
        gold = np.array([p.label for p in vanilla])
        dialogues = [p.dialogue for p in vanilla]
        systems = {VANILLA: np.array([p.probs for p in vanilla], dtype=np.float64)}
        for method_dir in sorted(run.fusion.glob("*/predictions-test.jsonl")) if run.fusion.is_dir() else []:
            name = method_dir.parent.name
            if name != VANILLA:
                systems[name] = _aligned(vanilla, read_predictions(method_dir), method_dir)
        predicted = {name: probs.argmax(axis=1) for name, probs in systems.items()}
        reports = {name: classification_report(gold, predicted[name], classes) for name in systems}
        for name, probs in systems.items():
            reports[name]["calibration"] = calibration(probs, gold)
        bootstrap = {
            name: paired_bootstrap(
                gold,
                predicted[name],
                predicted[VANILLA],
                dialogues,
                n_classes,
                n_resamples=n_resamples,
                seed=0,
            )
            for name in systems
            if name != VANILLA
        }
        per_seed[seed_name] = {"n_test": len(gold), "methods": reports, "bootstrap_vs_vanilla": bootstrap}
        for name in systems:
            entry = pooled.setdefault(name, {"gold": [], "pred": [], "vanilla": [], "groups": []})
            entry["gold"].append(gold)
            entry["pred"].append(predicted[name])
            entry["vanilla"].append(predicted[VANILLA])
            entry["groups"] += dialogues
        stats_path = run.llm / "stats.json"
        llm_stats[seed_name] = read_json(stats_path) if stats_path.exists() else None

    assert labels is not None
    methods = [VANILLA, *_method_order({m for s in per_seed.values() for m in s["methods"]} - {VANILLA})]
    summary = {
        m: {
            "n_seeds": sum(m in s["methods"] for s in per_seed.values()),
            **{
                k: _mean_std([s["methods"][m][k] for s in per_seed.values() if m in s["methods"]])
                for k in METRICS
            },
        }
        for m in methods
    }
    vs_vanilla = {
        m: paired_bootstrap(
            np.concatenate(pooled[m]["gold"]),
            np.concatenate(pooled[m]["pred"]),
            np.concatenate(pooled[m]["vanilla"]),
            pooled[m]["groups"],
            len(labels["classes"]),
            n_resamples=n_resamples,
            seed=0,
        )
        for m in methods
        if m != VANILLA
    }
    llm = _llm_summary(llm_stats)
    metrics = {
        "labels": labels,
        "seeds": list(seeds),
        "methods": methods,
        "lantern_method": LANTERN,
        "simulated_llm": llm["simulated"],
        "summary": summary,
        "vs_vanilla": vs_vanilla,
        "per_seed": per_seed,
        "llm": llm,
        "llm_per_seed": llm_stats,
        "bootstrap": {"n_resamples": n_resamples, "unit": "dialogue", "level": 0.95},
        "protocol": "fusion trained and tuned without test; test read once here",
    }
    write_json(root / "eval" / "metrics.json", metrics)
    return metrics


def _interval(entry: dict[str, Any]) -> str:
    return f"{entry['delta']:+.2f} [{entry['low']:+.2f}, {entry['high']:+.2f}]"


def results_table(metrics: dict[str, Any]) -> str:
    """A markdown table: method, accuracy and weighted F1 (mean ± std over seeds), Δ vs vanilla (95% CI)."""
    n_seeds = len(metrics["seeds"])
    lines = []
    if metrics.get("simulated_llm"):
        lines.append(
            "**simulated LLM**: these LLM answers come from the simulation server, not a real model.\n"
        )
    lines.append(
        f"Test results, {n_seeds} seed{'s' if n_seeds != 1 else ''} (mean ± std), "
        f"label set {metrics['labels']['name']}"
    )
    lines.append("")
    lines.append(
        "| method | accuracy | weighted F1 | Δ acc vs vanilla [95% CI] | Δ wF1 vs vanilla [95% CI] |"
    )
    lines.append("|---|---|---|---|---|")
    for m in metrics["methods"]:
        s = metrics["summary"][m]
        cells = [f"{s[k]['mean']:.2f} ± {s[k]['std']:.2f}" for k in METRICS]
        if m in metrics["vs_vanilla"]:
            cells += [_interval(metrics["vs_vanilla"][m][k]) for k in METRICS]
        else:
            cells += ["—", "—"]
        label = f"{m} (Lantern)" if m == metrics.get("lantern_method") else m
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
