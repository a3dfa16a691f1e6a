"""Fusion gain over vanilla under a SIMULATED LLM, swept over the simulated LLM's accuracy.

A synthetic run (vanilla model ≈ 65% accurate, IEMOCAP 6-way labels) is prompted through the
project's test server in simulation mode — answers built from gold labels at a set accuracy,
labelled "simulated-llm" — by the real LLM stage, then every fusion method is fitted on dev and
scored on test. Scenarios: a useless LLM (random answers), accuracy 0.5 / 0.7 / 0.9 at every
position, and accuracy rising with the offset in the window (0.3 → 0.95). The numbers describe
the machinery under a simulated LLM; they say nothing about real LLMs.

    python bench/fusion_gain.py --dialogues 60 --seed 0
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from lantern.corpus.dialogue import Corpus, Dialogue, Utterance
from lantern.corpus.native import corpus_fingerprint, save_corpus
from lantern.fusion import METHODS, fuse_run
from lantern.labels import IEMOCAP6
from lantern.llm.stage import LLMConfig, run_llm_stage
from lantern.llm.testserver import running_test_server
from lantern.predictions import Prediction, read_predictions, write_predictions
from lantern.rundir import RunDir, read_json, write_json

BANNER = "simulated LLM (answers built from gold labels by lantern.llm.testserver; not a real model)"
SCENARIOS: dict[str, dict] = {
    "useless (random)": {"random": True, "accuracy": 0.0},
    "accuracy 0.5": {"accuracy": 0.5},
    "accuracy 0.7": {"accuracy": 0.7},
    "accuracy 0.9": {"accuracy": 0.9},
    "accuracy 0.3 -> 0.95 by offset": {"accuracy": 0.3, "accuracy_last": 0.95},
}


def make_base(root: Path, *, dialogues: int, seed: int, vanilla_acc: float = 0.65) -> Path:
    """A corpus plus a run directory holding synthetic vanilla predictions for dev and test."""
    rng = np.random.default_rng(seed)
    n_classes = len(IEMOCAP6)
    ds, preds = [], {"dev": [], "test": []}
    for split in preds:
        for di in range(dialogues):
            dialogue = f"{split}_d{di:03d}"
            utterances = []
            for ui in range(int(rng.integers(6, 25))):
                uid, gold = f"{dialogue}_u{ui:03d}", int(rng.integers(n_classes))
                top = (
                    gold
                    if rng.random() < vanilla_acc
                    else int(rng.choice([c for c in range(n_classes) if c != gold]))
                )
                probs = rng.dirichlet(np.ones(n_classes)) * 0.5
                probs[top] += float(rng.uniform(0.2, 0.6))
                vad = [float(x) for x in rng.uniform(1, 5, 3)]
                utterances.append(Utterance(uid, "AB"[ui % 2], f"line {ui}", gold, vad))
                preds[split].append(
                    Prediction(uid, dialogue, "AB"[ui % 2], split, gold, (probs / probs.sum()).tolist(), vad)
                )
            n = len(utterances)
            ds.append(Dialogue(dialogue, split, utterances, {"t": np.zeros((n, 2), np.float32)}))
    corpus_path = save_corpus(Corpus("synthetic", IEMOCAP6, ds, {"t": 2}), root / "corpus")
    run = RunDir(root / "base")
    run.set_corpus(corpus_path, corpus_fingerprint(corpus_path))
    write_json(run.vanilla / "config.json", {"label_set": IEMOCAP6.to_json(), "seed": seed})
    for split, ps in preds.items():
        write_predictions(run.predictions(split), ps)
    return run.root


def run_scenario(base: Path, out: Path, simulation: dict, seed: int) -> dict:
    shutil.copytree(base, out)
    files = [str(out / "vanilla" / f"predictions-{s}.jsonl") for s in ("dev", "test")]
    started = time.perf_counter()
    with running_test_server(simulate=files, seed=seed, **simulation) as url:
        config = LLMConfig(base_urls=[url + "/v1"], model="simulated-llm", stride=4, t=3, concurrency=8)
        run_llm_stage(out, config, ["dev", "test"], progress=False)
    llm_seconds = time.perf_counter() - started
    started = time.perf_counter()
    summary = fuse_run(out, list(METHODS), seed=seed)
    fusion_seconds = time.perf_counter() - started
    accuracy = {}
    for m in METHODS:
        preds = read_predictions(out / "fusion" / m / "predictions-test.jsonl")
        accuracy[m] = round(100 * float(np.mean([int(np.argmax(p.probs)) == p.label for p in preds])), 2)
    return {
        "simulation": simulation,
        "test_accuracy": accuracy,
        "gain_vs_vanilla": {m: round(a - accuracy["vanilla"], 2) for m, a in accuracy.items()},
        "attention_weights": summary["attention"]["attention"],
        "attention_selected": summary["attention"]["selected"],
        "fallback_rate": read_json(out / "llm" / "stats.json").get("fallback_rate"),
        "n_test": summary["attention"]["n_test"],
        "n_dev": summary["attention"]["n_train"],
        "llm_seconds": round(llm_seconds, 1),
        "fusion_seconds": round(fusion_seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=60, help="dialogues per split (dev and test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fusion_gain.json"))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = make_base(Path(tmp), dialogues=args.dialogues, seed=args.seed)
        for i, (name, simulation) in enumerate(SCENARIOS.items()):
            results[name] = run_scenario(base, Path(tmp) / f"s{i}", simulation, args.seed)
    methods = list(METHODS)
    print(f"Fusion test accuracy (%) — {BANNER}")
    print(f"{'scenario':34s}" + "".join(f"{m:>15s}" for m in methods))
    for name, r in results.items():
        print(f"{name:34s}" + "".join(f"{r['test_accuracy'][m]:15.2f}" for m in methods))
    print(
        "gain of attention (Lantern) over vanilla, points: "
        + ", ".join(f"{name}: {r['gain_vs_vanilla']['attention']:+.2f}" for name, r in results.items())
    )
    record = {
        "llm": BANNER,
        "simulated_llm": True,
        "dialogues_per_split": args.dialogues,
        "seed": args.seed,
        "vanilla_accuracy_target": 0.65,
        "scenarios": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({BANNER})")


if __name__ == "__main__":
    main()
