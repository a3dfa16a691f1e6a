"""The multi-task addition to a vanilla model: a valence/arousal/dominance regression head.

It reads the same final utterance representation as the classifier (docs/method.md §1), so the two
tasks share everything below it; the output is on [0, 1] (targets are the 1-5 scale rescaled).
"""

from __future__ import annotations

import torch
from torch import nn


class VADHead(nn.Module):
    """``(..., in_features)`` → ``(..., 3)`` valence, arousal, dominance on [0, 1]."""

    def __init__(self, in_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(h))


def masked_vad_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over utterances that have VAD targets; zero (with gradient) if none do.

    pred, target: ``(B, N, 3)`` on [0, 1]; mask: ``(B, N)`` bool.
    """
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return ((pred - target) ** 2)[mask].mean()
