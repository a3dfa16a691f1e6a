"""Fixtures shared across the suite: a tiny native corpus with its gold file for the simulation
server, and a pipeline config pointing at a server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lantern.fields import FieldSpec
from lantern.llm.config import Endpoint, LLMConfig
from lantern.recipes.config import CorpusSpec, FusionSpec, PipelineConfig, VanillaSpec
from lantern.rundir import SIMULATED_MODEL
from lantern.testing.runs import gold_file

TINY_WIDTHS = {"t": 16, "a": 16, "v": 16}


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(corpus directory, gold predictions file) of a 14-dialogue synthetic corpus (3 dev dialogues, so
    fusion can cross-validate over dev)."""
    from lantern.corpus.example import generate_example
    from lantern.corpus.native import save_corpus

    root = tmp_path_factory.mktemp("tiny")
    corpus = generate_example(14, seed=3, widths=TINY_WIDTHS, min_len=6, max_len=10, dev_fraction=0.3)
    corpus_dir = save_corpus(corpus, root / "corpus")
    return corpus_dir, gold_file(corpus, root / "gold.jsonl")


def make_tiny_config(
    corpus_dir: Path, url: str, *, seeds=(0,), methods=("vanilla", "uniform", "attention")
) -> PipelineConfig:
    return PipelineConfig(
        corpus=CorpusSpec(kind="native", path=str(corpus_dir)),
        vanilla=VanillaSpec(model="corect", preset="quick", seeds=list(seeds), epochs=2),
        llm=LLMConfig(
            fields=FieldSpec(stride=2, t=2),
            endpoint=Endpoint(base_urls=[url], model=SIMULATED_MODEL, concurrency=2, timeout=10.0),
        ),
        fusion=FusionSpec(methods=list(methods)),
    )


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., PipelineConfig]:
    """``tiny_config(corpus_dir, url, seeds=..., methods=...)``: a two-epoch CORECT run prompting ``url``."""
    return make_tiny_config
