"""Fixtures of the model tests: one torch thread, and the learnable synthetic corpus."""

from __future__ import annotations

import pytest
import torch

from lantern.corpus.dialogue import Corpus
from tests.models.synthetic import make_corpus


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models on a shared machine: one thread avoids oversubscription (several times faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_corpus() -> Corpus:
    return make_corpus()


@pytest.fixture
def make_synthetic_corpus():
    return make_corpus
