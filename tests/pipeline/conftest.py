"""Shared set-up for whole-pipeline tests: a tiny native corpus, its gold file for the simulated
LLM, and a pipeline config that points at a simulation server."""

from __future__ import annotations

from pathlib import Path

import pytest

from lantern.llm.config import LLMConfig
from lantern.pipeline import CorpusSpec, FusionSpec, PipelineConfig, VanillaSpec
from lantern.predictions import Prediction, write_predictions

TINY_WIDTHS = {"t": 16, "a": 16, "v": 16}


def gold_file(corpus, path: Path) -> Path:
    """Every utterance's gold label in dialogue order: what the simulation server answers from."""
    n = len(corpus.labels)
    write_predictions(
        path,
        [
            Prediction(
                id=u.id, dialogue=d.id, speaker=u.speaker, split=d.split, label=u.label, probs=[1.0 / n] * n
            )
            for d in corpus.dialogues
            for u in d.utterances
        ],
    )
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """(corpus directory, gold predictions file) of a 14-dialogue synthetic corpus."""
    from lantern.corpus.example import generate_example
    from lantern.corpus.native import save_corpus

    root = tmp_path_factory.mktemp("tiny")
    corpus = generate_example(14, seed=3, widths=TINY_WIDTHS, min_len=6, max_len=10)
    corpus_dir = save_corpus(corpus, root / "corpus")
    return corpus_dir, gold_file(corpus, root / "gold.jsonl")


def tiny_config(corpus_dir: Path, url: str, *, seeds=(0,), methods=("vanilla", "uniform", "attention")):
    return PipelineConfig(
        corpus=CorpusSpec(kind="native", path=str(corpus_dir)),
        vanilla=VanillaSpec(model="corect", preset="quick", seeds=list(seeds), epochs=2),
        llm=LLMConfig(base_urls=[url], model="sim", stride=2, t=2, concurrency=2, timeout=10.0),
        fusion=FusionSpec(methods=list(methods)),
    )
