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

from lantern.fields import FieldSpec
from lantern.fusion import METHODS, fuse_run
from lantern.llm.config import Endpoint, LLMConfig
from lantern.llm.stage import run_llm_stage
from lantern.predictions import read_predictions
from lantern.rundir import RunDir
from lantern.testing.runs import dialogue_sizes, make_corpus, make_run
from lantern.testing.server import running_test_server

BANNER = "simulated LLM (answers built from gold labels by lantern.testing.server; not a real model)"
SCENARIOS: dict[str, dict] = {
    "useless (random)": {"random": True, "accuracy": 0.0},
    "accuracy 0.5": {"accuracy": 0.5},
    "accuracy 0.7": {"accuracy": 0.7},
    "accuracy 0.9": {"accuracy": 0.9},
    "accuracy 0.3 -> 0.95 by offset": {"accuracy": 0.3, "accuracy_last": 0.95},
}


def make_base(root: Path, *, dialogues: int, seed: int, vanilla_acc: float = 0.65) -> Path:
    """A corpus plus a run directory holding synthetic vanilla predictions for dev and test."""
    corpus = make_corpus(dialogue_sizes({"dev": dialogues, "test": dialogues}, (6, 24), seed=seed), seed=seed)
    return make_run(root, corpus, accuracy=vanilla_acc, seed=seed).root


def run_scenario(base: Path, out: Path, simulation: dict, seed: int) -> dict:
    shutil.copytree(base, out)
    run = RunDir(out)
    files = [str(run.predictions(s)) for s in ("dev", "test")]
    started = time.perf_counter()
    with running_test_server(simulate=files, seed=seed, **simulation) as url:
        endpoint = Endpoint(base_urls=[url + "/v1"], model="simulated-llm", concurrency=8)
        stats = run_llm_stage(
            out, LLMConfig(fields=FieldSpec(4, 3), endpoint=endpoint), ["dev", "test"], progress=False
        )
    llm_seconds = time.perf_counter() - started
    started = time.perf_counter()
    summary = fuse_run(out, list(METHODS), seed=seed)
    fusion_seconds = time.perf_counter() - started
    accuracy = {}
    for m in METHODS:
        preds = read_predictions(run.method(m).predictions)
        accuracy[m] = round(100 * float(np.mean([int(np.argmax(p.probs)) == p.label for p in preds])), 2)
    return {
        "simulation": simulation,
        "test_accuracy": accuracy,
        "gain_vs_vanilla": {m: round(a - accuracy["vanilla"], 2) for m, a in accuracy.items()},
        "attention_weights": summary["attention"]["attention"],
        "attention_selection": summary["attention"]["selection"],
        "fallback_rate": stats.fallback_rate,
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
