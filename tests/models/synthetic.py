"""A small synthetic corpus that a model can clearly learn: class-dependent features and VAD.

Each class has a fixed random prototype per modality; an utterance's features are its class's
prototype plus Gaussian noise, and its VAD is its class's mean plus noise
(:func:`lantern.testing.runs.make_corpus`). Classes are imbalanced (the majority class is about
40%), so "above the majority baseline" is a real test.
"""

from __future__ import annotations

from lantern.corpus.dialogue import Corpus
from lantern.labels import IEMOCAP4
from lantern.testing.runs import dialogue_sizes
from lantern.testing.runs import make_corpus as synthetic_corpus_of

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
    """(train, dev, test) dialogue counts; ``lengths``: utterances per dialogue (inclusive range)."""
    counts = dict(zip(("train", "dev", "test"), n_dialogues, strict=True))
    return synthetic_corpus_of(
        dialogue_sizes(counts, lengths, seed=seed),
        labels=IEMOCAP4,
        priors=PRIORS,
        widths=dict(widths or WIDTHS),
        noise=noise,
        vad_means=VAD_MEANS if with_vad else None,
        seed=seed,
    )
