"""Fusion properties end to end with the simulated LLM (real test server process + LLM stage).

A synthetic run (vanilla model ≈ 65% accurate, a few hundred dev/test utterances) is prompted
through ``lantern.llm.testserver`` in simulation mode — answers built from gold labels at a set
accuracy, labelled "simulated-llm" — and fused. These are properties of the machinery under a
simulated LLM, not results about real LLMs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fusion_synth import make_predictions

from lantern.corpus.dialogue import Corpus, Dialogue, Utterance
from lantern.corpus.native import corpus_fingerprint, save_corpus
from lantern.fusion import METHODS, fuse_run
from lantern.labels import IEMOCAP6
from lantern.llm.stage import LLMConfig, run_llm_stage
from lantern.llm.testserver import running_test_server
from lantern.predictions import read_predictions, write_predictions
from lantern.rundir import RunDir, read_json, write_json

GRID = {"hidden_sizes": [8], "weight_decays": [1e-2, 1e-1], "epoch_grid": [100, 300], "folds": 4}
FUSED = ["uniform", "attention"]


def make_base(root: Path, *, seed: int = 0, n_dev: int = 24, n_test: int = 24) -> Path:
    """A corpus and a run directory holding only the vanilla stage's outputs."""
    rng = np.random.default_rng(seed)
    dialogues, predictions = [], {}
    for split, n in (("dev", n_dev), ("test", n_test)):
        preds = make_predictions(rng, split, n_dialogues=n, length=(6, 16))
        predictions[split] = preds
        by_dialogue: dict[str, list] = {}
        for p in preds:
            by_dialogue.setdefault(p.dialogue, []).append(p)
        for dialogue, ps in by_dialogue.items():
            utterances = [Utterance(p.id, p.speaker, f"line {i}", p.label, p.vad) for i, p in enumerate(ps)]
            dialogues.append(Dialogue(dialogue, split, utterances, {"t": np.zeros((len(ps), 2), np.float32)}))
    corpus_path = save_corpus(Corpus("synthetic", IEMOCAP6, dialogues, {"t": 2}), root / "corpus")
    run = RunDir(root / "base")
    run.set_corpus(corpus_path, corpus_fingerprint(corpus_path))
    write_json(run.vanilla / "config.json", {"label_set": IEMOCAP6.to_json(), "seed": seed})
    for split, preds in predictions.items():
        write_predictions(run.predictions(split), preds)
    return run.root


def simulate(base: Path, out: Path, *, grid: dict | None = None, **simulation) -> dict[str, float]:
    """Copy the base run, prompt the simulated LLM over dev and test, fuse; test accuracy per method (%)."""
    shutil.copytree(base, out)
    files = [str(out / "vanilla" / f"predictions-{s}.jsonl") for s in ("dev", "test")]
    with running_test_server(simulate=files, seed=7, **simulation) as url:
        config = LLMConfig(base_urls=[url + "/v1"], model="simulated-llm", stride=4, t=3, timeout=10.0)
        run_llm_stage(out, config, ["dev", "test"], progress=False)
    assert read_json(out / "llm" / "stats.json")["model"] == "simulated-llm"
    methods = ["vanilla", *FUSED]
    fuse_run(out, methods, params={m: grid or GRID for m in methods if METHODS[m].trained})
    scores = {}
    for m in methods:
        preds = read_predictions(out / "fusion" / m / "predictions-test.jsonl")
        scores[m] = 100 * float(np.mean([int(np.argmax(p.probs)) == p.label for p in preds]))
    return scores


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("sim"))


def test_useless_llm_does_not_hurt_lantern(base, tmp_path):
    scores = simulate(base, tmp_path / "useless", random=True, accuracy=0.0)
    assert scores["uniform"] < scores["vanilla"] - 20  # the LLM really is useless
    assert scores["attention"] >= scores["vanilla"] - 0.3


def test_gain_grows_with_llm_accuracy(base, tmp_path):
    gains = [
        (s := simulate(base, tmp_path / f"acc{a}", accuracy=a))["attention"] - s["vanilla"]
        for a in (0.5, 0.7, 0.9)
    ]
    assert gains[0] < gains[1] < gains[2]
    assert gains[2] > 10


def test_attention_beats_uniform_when_reliability_depends_on_position(base, tmp_path):
    scores = simulate(base, tmp_path / "position", accuracy=0.3, accuracy_last=0.95)
    assert scores["attention"] > scores["uniform"] + 2
