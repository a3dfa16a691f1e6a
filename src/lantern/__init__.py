"""Lantern: multimodal emotion recognition in conversation, pushed further by prompting an LLM over
receptive fields of the dialogue and merging its answers with a trained attention weighting."""

__version__ = "0.1.0"
