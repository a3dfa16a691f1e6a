"""Vanilla multimodal ERC models (CORECT, SDT) with the VAD head, and their registry."""
