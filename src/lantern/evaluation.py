"""Evaluation of a run: every seed × method on the test split, once, at the end (docs/method.md, Protocol).

A run directory holds one seed (RUN_DIR/vanilla exists) or several (RUN_DIR/seed-*/, each a full
single-seed run directory). For each seed, the vanilla model and every fused method present under
fusion/<method>/ are scored on the labelled test utterances; across seeds, accuracy, weighted F1
and macro F1 are summarised as mean ± std (sample std, ddof = 1; 0 for one seed). Each method is compared with
vanilla by a paired bootstrap over dialogues, per seed and pooled over seeds (a resampled dialogue
brings its utterances from every seed, so the pooled interval covers the test-set sampling of the
seed-averaged difference). Calibration (expected calibration error and a reliability table) is
computed beside the scores for the report, and so is the quality of the LLM's answers themselves
(:func:`answer_quality`): a fallback rate of 0 says only that the answers parsed, not that they
say anything.

The vanilla test predictions must cover exactly the test split of the corpus the run recorded in
run.json (checked whenever that corpus is still where it was): a file that lost an utterance would
otherwise shrink the test set without a word, and every score with it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lantern.answers import OK, FieldAnswer, read_field_answers
from lantern.corpus.dialogue import Corpus
from lantern.errors import LanternError
from lantern.fusion.methods import METHODS
from lantern.metrics import (
    accuracy,
    classification_report,
    concordance,
    macro_f1,
    paired_bootstrap,
    pearson,
    weighted_f1,
)
from lantern.models.batch import VAD_NAMES
from lantern.predictions import Prediction, read_predictions
from lantern.rundir import LLMSettings, LLMStats, RunDir, read_json, write_json

log = logging.getLogger(__name__)

VANILLA = "vanilla"
LANTERN = "attention"
N_RESAMPLES = 1000
CALIBRATION_BINS = 15
# The scores compared with vanilla by the paired bootstrap (the paper's two) ...
METRICS = ("accuracy", "weighted_f1")
# ... and every score summarised over seeds.
SCORES = (*METRICS, "macro_f1")
# eval/metrics.json's layout: a reader finding another one evaluates the run again.
EVAL_FORMAT = 2
# An answer whose top probability reaches this is "all mass on one class".
ONE_HOT = 0.99
# Answers are compared at the two decimals the prompt shows probabilities with.
ANSWER_DECIMALS = 2


def score_predictions(path: Path, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """The classification report (metrics.classification_report) of one predictions file's labelled
    utterances; ``classes`` names the label set (else the vanilla config beside the file, else
    indices). ``unlabelled`` counts the utterances without a gold label."""
    predictions = read_predictions(path)
    labelled = [p for p in predictions if p.label is not None]
    if not labelled:
        raise LanternError(f"{path}: no prediction carries a gold label; nothing to evaluate")
    n_classes = len(labelled[0].probs)
    if classes is None:
        classes = _class_names(path, n_classes)
    gold = [p.label for p in labelled]
    pred = [int(np.argmax(p.probs)) for p in labelled]
    report = classification_report(gold, pred, classes)
    report["source"] = str(path)
    report["unlabelled"] = len(predictions) - len(labelled)
    return report


def _class_names(predictions_file: Path, n_classes: int) -> list[str]:
    """Label names from the vanilla config beside a predictions file when there is one, else indices."""
    from lantern.training import read_vanilla_meta

    run = RunDir(predictions_file.parent.parent)
    if predictions_file.parent == run.vanilla.dir and run.vanilla.config.is_file():
        classes = list(read_vanilla_meta(run).labels.classes)
        if len(classes) == n_classes:
            return classes
    return [str(i) for i in range(n_classes)]


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


def _label_set(run: RunDir, n_classes: int) -> dict[str, Any]:
    """The run's label set as JSON (from the vanilla config; indices when there is none)."""
    from lantern.training import read_vanilla_meta

    if run.vanilla.config.exists():
        return read_vanilla_meta(run).labels.to_json()
    return {"name": "unnamed", "classes": [str(c) for c in range(n_classes)]}


def _method_order(names: set[str]) -> list[str]:
    known = [m for m in METHODS if m in names]
    return known + sorted(names - set(known))


def _aligned(vanilla: list[Prediction], other: list[Prediction], path: Path) -> np.ndarray:
    """The other system's probabilities ``(n, C)`` in vanilla's utterance order."""
    by_id = {p.id: p.probs for p in other}
    missing = [p.id for p in vanilla if p.id not in by_id]
    if missing:
        raise LanternError(
            f"{path}: no prediction for test utterance {missing[0]!r} ({len(missing)} missing)"
        )
    return np.array([by_id[p.id] for p in vanilla], dtype=np.float64)


def run_corpus(run: RunDir, why: str) -> Corpus | None:
    """The corpus recorded in the run's run.json, or None (with a warning naming ``why`` it was
    wanted) when the run records none or it is gone."""
    from lantern.corpus.native import CORPUS_JSON, load_corpus

    record = run.load().get("corpus") if run.run_json.exists() else None
    if not record:
        return None
    corpus_path = Path(record["path"])
    if not (corpus_path / CORPUS_JSON).is_file():
        log.warning("%s: the run's corpus %s is gone; %s not checked", run.root, corpus_path, why)
        return None
    return load_corpus(corpus_path)


def check_test_coverage(corpus: Corpus | None, path: Path, predictions: list[Prediction]) -> None:
    """Refuse test predictions that miss an utterance of the test split of the run's recorded corpus,
    or hold one that is not in it; skipped when the corpus is unknown."""
    if corpus is None:
        return
    expected = [u.id for d in corpus.split("test") for u in d.utterances]
    have = {p.id for p in predictions}
    missing = [uid for uid in expected if uid not in have]
    if missing:
        raise LanternError(
            f"{path}: no prediction for test utterance {missing[0]!r} of the run's corpus {corpus.name} "
            f"({len(missing)} of {len(expected)} missing); predict the test split again"
        )
    strangers = sorted(have - set(expected))
    if strangers:
        raise LanternError(
            f"{path}: utterance {strangers[0]!r} is not in the test split of the run's corpus {corpus.name} "
            f"({len(strangers)} such); predict the test split again"
        )


def vad_quality(corpus: Corpus | None, predictions: list[Prediction]) -> dict[str, Any] | None:
    """Pearson r and concordance (CCC) per dimension of the predicted VAD against the corpus's gold
    VAD, on the utterances that have both (the dev split: test stays for the final report); None
    when there are fewer than two such utterances."""
    if corpus is None:
        return None
    gold = {u.id: u.vad for d in corpus.dialogues for u in d.utterances if u.vad is not None}
    pairs = [(p.vad, gold[p.id]) for p in predictions if p.vad is not None and p.id in gold]
    if len(pairs) < 2:
        return None
    predicted, truth = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    return {
        "n": len(pairs),
        **{
            name: {
                "pearson": round(pearson(predicted[:, k], truth[:, k]), 4),
                "ccc": round(concordance(predicted[:, k], truth[:, k]), 4),
            }
            for k, name in enumerate(VAD_NAMES)
        },
    }


def guard_record(run: RunDir) -> dict[str, Any] | None:
    """The vanilla guard's decision for Lantern's method in a seed run (and the NLL it rests on)."""
    files = run.method(LANTERN)
    if not files.config.exists():
        return None
    return read_json(files.config).get("selection", {}).get("guard")


def answer_quality(
    predictions: Sequence[Prediction], answers: Sequence[FieldAnswer], classes: Sequence[str]
) -> dict[str, Any]:
    """What one split's LLM answers are worth on their own: a toy model's answers parse (no
    fallback) yet may say nothing, e.g. the same digits for every utterance.

    Shares are fractions of the answered (non-fallback) utterance answers unless said otherwise:
    ``agreement`` top class equal to vanilla's; ``one_hot`` all mass (≥ ONE_HOT) on one class;
    ``identical`` equal (to ANSWER_DECIMALS) to the split's most common answer, shown as
    ``most_common``; ``uniform_fields`` of the fields with two answered utterances or more, those
    that gave every utterance the same answer. ``llm_only`` scores (%) the mean of each labelled
    utterance's answers on the ``covered`` utterances that have one, ``vanilla`` the vanilla model
    on the same utterances, ``majority`` what always answering the most frequent gold class
    scores there. ``degenerate`` lists, in words, each sign that the answers carry no information.
    """
    by_id = {p.id: p for p in predictions}
    answered: dict[str, list[np.ndarray]] = {}
    rounded: list[tuple[float, ...]] = []
    agree = one_hot = fallbacks = total = 0
    uniform_fields = multi_fields = 0
    for field in answers:
        in_field = []
        for u in field.utterances:
            total += 1
            if u.status != OK or u.id not in by_id:
                fallbacks += u.status != OK
                continue
            probs = np.asarray(u.probs, dtype=np.float64)
            probs = probs / probs.sum() if probs.sum() > 0 else probs
            answered.setdefault(u.id, []).append(probs)
            key = tuple(np.round(probs, ANSWER_DECIMALS).tolist())
            rounded.append(key)
            in_field.append(key)
            agree += int(probs.argmax() == int(np.argmax(by_id[u.id].probs)))
            one_hot += int(probs.max() >= ONE_HOT)
        if len(in_field) >= 2:
            multi_fields += 1
            uniform_fields += len(set(in_field)) == 1
    n = len(rounded)
    common, common_count = max(Counter(rounded).items(), key=lambda kv: kv[1]) if n else ((), 0)
    covered = [by_id[uid] for uid in answered if by_id[uid].label is not None]
    gold = [p.label for p in covered]
    llm = [int(np.mean(answered[p.id], axis=0).argmax()) for p in covered]
    vanilla = [int(np.argmax(p.probs)) for p in covered]
    k = len(classes)
    majority = max(Counter(gold).values()) / len(gold) if gold else 0.0

    def scores(pred: list[int]) -> dict[str, float]:
        return {
            "accuracy": round(100 * accuracy(gold, pred), 2),
            "weighted_f1": round(100 * weighted_f1(gold, pred, k), 2),
            "macro_f1": round(100 * macro_f1(gold, pred, k), 2),
        }

    quality: dict[str, Any] = {
        "answers": total,
        "answered": n,
        "fallback_rate": round(fallbacks / total, 4) if total else 0.0,
        "covered": len(covered),
        "llm_only": scores(llm),
        "vanilla": scores(vanilla),
        "majority": round(100 * majority, 2),
        "agreement": round(agree / n, 4) if n else 0.0,
        "one_hot": round(one_hot / n, 4) if n else 0.0,
        "identical": round(common_count / n, 4) if n else 0.0,
        "most_common": list(common),
        "uniform_fields": round(uniform_fields / multi_fields, 4) if multi_fields else 0.0,
    }
    signs = []
    if n and quality["identical"] >= 0.5:
        signs.append(f"{quality['identical']:.0%} of the answers are one and the same distribution")
    if multi_fields and quality["uniform_fields"] >= 0.5:
        signs.append(
            f"{quality['uniform_fields']:.0%} of the fields give all their utterances the same answer"
        )
    if covered and quality["llm_only"]["accuracy"] <= quality["majority"]:
        signs.append("the LLM alone is no more accurate than always answering the most frequent class")
    if total and not n:
        signs.append("every answer fell back to vanilla")
    quality["degenerate"] = signs
    return quality


def llm_answer_quality(run: RunDir, classes: Sequence[str]) -> dict[str, Any]:
    """:func:`answer_quality` of every split the run's LLM answered (train: against the cross-fitted
    predictions it was prompted with)."""
    out = {}
    for split in ("train", "dev", "test"):
        source = run.prompted_predictions(split)
        if run.answers(split).exists() and source.exists():
            answers = read_field_answers(run.answers(split))
            out[split] = answer_quality(read_predictions(source), answers, classes)
    return out


def _llm_summary(per_seed: dict[str, tuple[LLMSettings, LLMStats] | None]) -> dict[str, Any]:
    found = [s for s in per_seed.values() if s]
    if not found:
        return {"available": False, "simulated": False}
    settings = [s for s, _ in found]
    stats = [s for _, s in found]
    models = sorted({s.model for s in settings})
    return {
        "available": True,
        "model": models[0] if len(models) == 1 else models,
        "simulated": any(s.simulated for s in settings),
        "fallback_rate": round(float(np.mean([s.fallback_rate for s in stats])), 4),
        "requests_sent": sum(s.requests_sent for s in stats),
        "cache_hits": sum(s.cache_hits for s in stats),
        "retries": sum(s.retries for s in stats),
        "prompt_tokens": sum(s.prompt_tokens for s in stats),
        "completion_tokens": sum(s.completion_tokens for s in stats),
        "cost_usd": round(sum(s.cost_usd for s in stats), 4),
        "wall_seconds": round(sum(s.wall_seconds for s in stats), 1),
        "t": settings[0].t,
        "stride": settings[0].stride,
        "answer_format": settings[0].answer_format,
        "template_version": settings[0].template_version,
    }


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": round(float(v.mean()), 2), "std": round(std, 2), "values": [float(x) for x in v]}


def evaluate_run(run_dir: str | Path, *, n_resamples: int = N_RESAMPLES, save: bool = True) -> dict[str, Any]:
    """Score every seed × method on test, summarise over seeds; write RUN_DIR/eval/metrics.json
    unless ``save`` is False (a report of someone else's run may not write into it)."""
    top = RunDir(run_dir)
    seeds = top.seed_runs()
    labels: dict[str, Any] | None = None
    per_seed: dict[str, Any] = {}
    pooled: dict[str, dict[str, list]] = {}
    llm_stats: dict[str, tuple[LLMSettings, LLMStats] | None] = {}
    for seed_name, run in seeds.items():
        test_path = run.predictions("test")
        if not test_path.exists():
            raise FileNotFoundError(f"{test_path}: missing (train the vanilla model first)")
        everything = read_predictions(test_path)
        corpus = run_corpus(run, "test coverage and dev VAD quality")
        check_test_coverage(corpus, test_path, everything)
        vanilla = [p for p in everything if p.label is not None]
        if not vanilla:
            raise LanternError(f"{test_path}: no test utterance has a gold label")
        n_classes = len(vanilla[0].probs)
        seed_labels = _label_set(run, n_classes)
        if labels is None:
            labels = seed_labels
        elif seed_labels["classes"] != labels["classes"]:
            raise LanternError(
                f"{run.vanilla.config}: label set differs from the other seeds' ({labels['classes']})"
            )
        classes = labels["classes"]
        gold = np.array([p.label for p in vanilla])
        dialogues = [p.dialogue for p in vanilla]
        systems = {VANILLA: np.array([p.probs for p in vanilla], dtype=np.float64)}
        for method in run.methods():
            if method.name != VANILLA:
                systems[method.name] = _aligned(
                    vanilla, read_predictions(method.predictions), method.predictions
                )
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
        dev_path = run.predictions("dev")
        per_seed[seed_name] = {
            "n_test": len(gold),
            "methods": reports,
            "bootstrap_vs_vanilla": bootstrap,
            "guard": guard_record(run),
            "dev_vad": vad_quality(corpus, read_predictions(dev_path)) if dev_path.exists() else None,
            "llm_answers": llm_answer_quality(run, classes),
        }
        for name in systems:
            entry = pooled.setdefault(name, {"gold": [], "pred": [], "vanilla": [], "groups": []})
            entry["gold"].append(gold)
            entry["pred"].append(predicted[name])
            entry["vanilla"].append(predicted[VANILLA])
            entry["groups"] += dialogues
        llm_stats[seed_name] = (
            (LLMSettings.read(run.llm.settings), LLMStats.read(run.llm.stats))
            if run.llm.settings.exists() and run.llm.stats.exists()
            else None
        )

    assert labels is not None
    methods = [VANILLA, *_method_order({m for s in per_seed.values() for m in s["methods"]} - {VANILLA})]
    summary = {
        m: {
            "n_seeds": sum(m in s["methods"] for s in per_seed.values()),
            **{
                k: _mean_std([s["methods"][m][k] for s in per_seed.values() if m in s["methods"]])
                for k in SCORES
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
    dev_vad = [s["dev_vad"] for s in per_seed.values() if s["dev_vad"]]
    metrics = {
        "format": EVAL_FORMAT,
        "labels": labels,
        "seeds": list(seeds),
        "methods": methods,
        "lantern_method": LANTERN,
        "simulated_llm": llm["simulated"],
        "summary": summary,
        "vs_vanilla": vs_vanilla,
        "per_seed": per_seed,
        "dev_vad": {
            name: {
                score: round(float(np.mean([v[name][score] for v in dev_vad])), 4)
                for score in ("pearson", "ccc")
            }
            for name in VAD_NAMES
        }
        if dev_vad
        else None,
        "guard": {name: s["guard"] for name, s in per_seed.items()},
        "llm": llm,
        "llm_per_seed": {
            name: None if found is None else {**found[0].to_json(), **found[1].to_json()}
            for name, found in llm_stats.items()
        },
        "bootstrap": {"n_resamples": n_resamples, "unit": "dialogue", "level": 0.95},
        "protocol": "fusion trained and tuned without test; test read once here",
    }
    if save:
        write_json(top.eval_metrics, metrics)
    return metrics


def _interval(entry: dict[str, Any]) -> str:
    return f"{entry['delta']:+.2f} [{entry['low']:+.2f}, {entry['high']:+.2f}]"


def results_table(metrics: dict[str, Any]) -> str:
    """A markdown table: method, accuracy, weighted and macro F1 (mean ± std over seeds), Δ vs
    vanilla (95% CI)."""
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
        "| method | accuracy | weighted F1 | macro F1 "
        "| Δ acc vs vanilla [95% CI] | Δ wF1 vs vanilla [95% CI] |"
    )
    lines.append("|---|---|---|---|---|---|")
    for m in metrics["methods"]:
        s = metrics["summary"][m]
        cells = [f"{s[k]['mean']:.2f} ± {s[k]['std']:.2f}" for k in SCORES]
        if m in metrics["vs_vanilla"]:
            cells += [_interval(metrics["vs_vanilla"][m][k]) for k in METRICS]
        else:
            cells += ["—", "—"]
        label = f"{m} (Lantern)" if m == metrics.get("lantern_method") else m
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += _notes(metrics)
    return "\n".join(lines) + "\n"


def _notes(metrics: dict[str, Any]) -> list[str]:
    """Lines under the table: the vanilla guard's decision per seed, and the dev VAD quality."""
    out = []
    guards = {name: g for name, g in (metrics.get("guard") or {}).items() if g}
    if guards:
        decisions = ", ".join(
            f"{name} {'kept the attention' if g['kept'] else 'fell back to vanilla'} (dev held-out NLL "
            f"vanilla {g['nll_vanilla']:.3f}, attention {g['nll_unguarded']:.3f}, gain "
            f"{g['nll_gain']:+.3f} vs one standard error {g['standard_error']:.3f})"
            for name, g in guards.items()
        )
        out += ["", f"Vanilla guard of {metrics.get('lantern_method')}: {decisions}"]
    vad = metrics.get("dev_vad")
    if vad:
        scores = ", ".join(f"{name} r {v['pearson']:.2f} / CCC {v['ccc']:.2f}" for name, v in vad.items())
        out += ["", f"Vanilla VAD on dev (mean over seeds): {scores}"]
    return out
