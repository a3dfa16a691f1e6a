"""Fusion properties end to end with the simulated LLM (real test server process + LLM stage).

A synthetic run (vanilla model ≈ 65% accurate, a few hundred dev/test utterances) is prompted
through ``lantern.testing.server`` in simulation mode — answers built from gold labels at a set
accuracy, labelled "simulated-llm" — and fused. These are properties of the machinery under a
simulated LLM, not results about real LLMs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lantern.fields import FieldSpec
from lantern.fusion import METHODS, fuse_run
from lantern.llm.config import Endpoint, LLMConfig
from lantern.llm.stage import run_llm_stage
from lantern.predictions import read_predictions
from lantern.rundir import LLMSettings, RunDir
from lantern.testing.runs import dialogue_sizes, make_corpus, make_run
from lantern.testing.server import running_test_server

GRID = {"hidden_sizes": [8], "weight_decays": [1e-2, 1e-1], "epoch_grid": [100, 300], "folds": 4}
FUSED = ["uniform", "attention"]


def make_base(root: Path, *, seed: int = 0, n_dev: int = 24, n_test: int = 24) -> Path:
    """A corpus and a run directory holding only the vanilla stage's outputs."""
    corpus = make_corpus(dialogue_sizes({"dev": n_dev, "test": n_test}, (6, 16), seed=seed), seed=seed)
    return make_run(root, corpus, seed=seed).root


def simulate(base: Path, out: Path, *, grid: dict | None = None, **simulation) -> dict[str, float]:
    """Copy the base run, prompt the simulated LLM over dev and test, fuse; test accuracy per method (%)."""
    shutil.copytree(base, out)
    run = RunDir(out)
    files = [str(run.predictions(s)) for s in ("dev", "test")]
    with running_test_server(simulate=files, seed=7, **simulation) as url:
        endpoint = Endpoint(base_urls=[url + "/v1"], model="simulated-llm", timeout=10.0)
        run_llm_stage(
            out, LLMConfig(fields=FieldSpec(4, 3), endpoint=endpoint), ["dev", "test"], progress=False
        )
    assert LLMSettings.read(run.llm.settings).simulated
    methods = ["vanilla", *FUSED]
    fuse_run(out, methods, params={m: grid or GRID for m in methods if METHODS[m].trained})
    scores = {}
    for m in methods:
        preds = read_predictions(run.method(m).predictions)
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


def test_attention_beats_uniform_when_reliability_depends_on_context(base, tmp_path):
    # A realistic simulated LLM whose judgement improves with the past context the field shows.
    scores = simulate(base, tmp_path / "context", accuracy=0.5, context_weight=0.9, context="past")
    assert scores["attention"] > scores["uniform"] + 1


def test_independent_errors_kept_as_a_comparison_mode(base, tmp_path):
    scores = simulate(base, tmp_path / "position", mode="independent", accuracy=0.3, accuracy_last=0.95)
    assert scores["attention"] > scores["uniform"] + 2
