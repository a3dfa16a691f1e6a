"""Dialogues and the files they come in: the native format, the public layouts, the example corpus."""

from lantern.corpus.dialogue import SPLITS, Corpus, CorpusError, Dialogue, Utterance
from lantern.corpus.native import corpus_fingerprint, load_corpus, save_corpus

__all__ = [
    "SPLITS",
    "Corpus",
    "CorpusError",
    "Dialogue",
    "Utterance",
    "corpus_fingerprint",
    "load_corpus",
    "save_corpus",
]
