"""Dialogues and the files they come in: the native format, the public layouts, the example corpus."""

from lantern.corpus.dialogue import SPLITS, Corpus, CorpusError, Dialogue, Utterance

__all__ = ["SPLITS", "Corpus", "CorpusError", "Dialogue", "Utterance"]
