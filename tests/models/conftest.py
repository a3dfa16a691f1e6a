"""A small synthetic corpus that a model can clearly learn: class-dependent features and VAD.

Each class has a fixed random prototype per modality; an utterance's features are its class's
prototype plus Gaussian noise, and its VAD is its class's mean plus noise. Classes are imbalanced
(the majority class is about 40%), so "above the majority baseline" is a real test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lantern.corpus.dialogue import Corpus, Dialogue, Utterance
from lantern.labels import IEMOCAP4

WIDTHS = {"t": 12, "a": 8, "v": 6}
PRIORS = (0.25, 0.15, 0.42, 0.18)  # hap, sad, neu, ang
VAD_MEANS = ((4.0, 3.5, 3.2), (1.8, 2.0, 2.2), (3.0, 2.5, 3.0), (1.8, 4.2, 4.0))

# Small networks keep the tests fast; the published sizes are tested by parameter count only.
SMALL_SDT = {"hidden": 32, "heads": 4, "feedforward": 32, "dropout": 0.1}
SMALL_CORECT = {"hidden": 16, "text_ff": 32, "text_layers": 1, "wp": 4, "wf": 2, "dropout": 0.1}


def make_corpus(
    seed: int = 0,
    n_dialogues: tuple[int, int, int] = (40, 10, 10),
    noise: float = 1.2,
    with_vad: bool = True,
    widths: dict[str, int] | None = None,
    lengths: tuple[int, int] = (4, 12),
) -> Corpus:
    """(train, dev, test) dialogue counts; ``lengths``: utterances per dialogue (inclusive range);
    speakers A/B alternate."""
    widths = dict(widths or WIDTHS)
    rng = np.random.default_rng(seed)
    prototypes = {m: rng.normal(0, 1, size=(len(PRIORS), w)).astype(np.float32) for m, w in widths.items()}
    dialogues = []
    for split, count in zip(("train", "dev", "test"), n_dialogues, strict=True):
        for k in range(count):
            n = int(rng.integers(lengths[0], lengths[1] + 1))
            labels = rng.choice(len(PRIORS), size=n, p=PRIORS)
            did = f"{split}{k:03d}"
            utterances = []
            for i, y in enumerate(labels):
                vad = None
                if with_vad:
                    v = np.clip(np.asarray(VAD_MEANS[y]) + rng.normal(0, 0.3, 3), 1.0, 5.0)
                    vad = tuple(float(x) for x in v)
                utterances.append(Utterance(f"{did}_{i:02d}", "AB"[i % 2], f"line {i}", int(y), vad))
            features = {
                m: (prototypes[m][labels] + rng.normal(0, noise, size=(n, w))).astype(np.float32)
                for m, w in widths.items()
            }
            dialogues.append(Dialogue(did, split, utterances, features))
    return Corpus("synthetic", IEMOCAP4, dialogues, widths)


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
