"""Cross-fit done right, end to end: every prompt shows exactly the p that fusion pairs its answer with."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lantern.corpus.native import load_corpus
from lantern.llm.prompt import dialogue_alias
from lantern.predictions import read_predictions
from lantern.recipes.pipeline import run_pipeline
from lantern.rundir import RunDir
from lantern.testing.prompt_reader import read_field
from lantern.testing.server import recent_requests, running_test_server

ROUNDING = 0.005 + 1e-9  # prompts show probabilities to 2 decimals


@pytest.fixture(scope="module")
def crossfit_run(tiny_corpus, tiny_config, tmp_path_factory):
    """A pipeline run whose fusion trains on cross-fitted train predictions, and every request the
    LLM received."""
    corpus_dir, gold = tiny_corpus
    root = tmp_path_factory.mktemp("crossfit")
    with running_test_server(simulate=[gold], accuracy=0.8, record=10_000) as url:
        config = tiny_config(corpus_dir, url, methods=("vanilla", "attention"))
        config.vanilla = replace(config.vanilla, crossfit=2)
        config.fusion = replace(config.fusion, train_split="crossfit")
        run_pipeline(config, root / "run", progress=False)
        requests = recent_requests(url)
    return RunDir(root / "run").seed(0), load_corpus(corpus_dir), requests


def shown_probs(requests: list[dict], corpus) -> dict[str, list[list[float]]]:
    """Utterance id → every probability vector a prompt showed for it."""
    by_alias = {dialogue_alias(d.id): d for d in corpus.dialogues}
    shown: dict[str, list[list[float]]] = {}
    for body in requests:
        field = read_field(body["messages"][-1]["content"])
        dialogue = by_alias[field.dialogue_id]
        for u in field.utterances:
            shown.setdefault(dialogue.utterances[u.index].id, []).append(u.probs)
    return shown


def test_every_prompt_shows_the_p_fusion_pairs_it_with(crossfit_run):
    run, corpus, requests = crossfit_run
    shown = shown_probs(requests, corpus)
    # What fusion pairs each split's answers with: dev and test predictions, and for the fusion
    # training split ("crossfit") the cross-fitted train predictions.
    paired = {
        "dev": read_predictions(run.predictions("dev")),
        "test": read_predictions(run.predictions("test")),
        "train": read_predictions(run.vanilla.crossfit_predictions),
    }
    for split, predictions in paired.items():
        assert predictions, split
        for p in predictions:
            assert p.id in shown, f"{split} utterance {p.id} was never prompted"
            for probs in shown[p.id]:
                assert max(abs(a - b) for a, b in zip(probs, p.probs, strict=True)) <= ROUNDING, (split, p.id)


def test_train_prompts_never_show_the_final_models_in_sample_predictions(crossfit_run):
    run, corpus, requests = crossfit_run
    shown = shown_probs(requests, corpus)
    in_sample = {p.id: p.probs for p in read_predictions(run.predictions("train"))}
    differing = [
        uid
        for uid, probs in in_sample.items()
        if any(max(abs(a - b) for a, b in zip(s, probs, strict=True)) > ROUNDING for s in shown[uid])
    ]
    # The in-sample predictions differ from the cross-fitted ones: the prompts must follow the latter.
    assert len(differing) > 0.5 * len(in_sample)
    attention = read_predictions(run.method("attention").predictions)
    assert len(attention) == len(read_predictions(run.predictions("test")))
