"""How dialogues reach a model: padded tensors with masks, and what a model gives back.

Every vanilla model takes a ``Batch`` and returns a ``ModelOutput``; the trainer, the predictor and
the benchmark never look inside a model beyond this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from lantern.corpus.dialogue import Dialogue

IGNORE_LABEL = -100
VAD_NAMES = ("valence", "arousal", "dominance")
VAD_DIMS = len(VAD_NAMES)


@dataclass
class Batch:
    """A padded batch of B dialogues, N = the longest.

    features: modality → ``(B, N, width)`` float32; speakers: ``(B, N)`` long (index into the
    model's speaker vocabulary); mask: ``(B, N)`` bool, True on real utterances; lengths: ``(B,)``;
    labels: ``(B, N)`` long, IGNORE_LABEL where unknown or padding; vad: ``(B, N, 3)`` on [0, 1];
    vad_mask: ``(B, N)`` bool, True where a VAD target exists.
    """

    features: dict[str, torch.Tensor]
    speakers: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    vad: torch.Tensor
    vad_mask: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            features={m: x.to(device, non_blocking=True) for m, x in self.features.items()},
            speakers=self.speakers.to(device, non_blocking=True),
            mask=self.mask.to(device, non_blocking=True),
            lengths=self.lengths.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            vad=self.vad.to(device, non_blocking=True),
            vad_mask=self.vad_mask.to(device, non_blocking=True),
        )


@dataclass
class ModelOutput:
    """log_probs: ``(B, N, C)`` log-softmax class scores of the final classifier; vad: ``(B, N, 3)``
    on [0, 1] (None without a VAD head); aux_log_probs: extra heads a model's own loss uses (SDT's
    per-modality heads), each ``(B, N, C)``."""

    log_probs: torch.Tensor
    vad: torch.Tensor | None = None
    aux_log_probs: dict[str, torch.Tensor] = field(default_factory=dict)


def vad_to_unit(vad: Sequence[float]) -> list[float]:
    """1-5 scale → [0, 1] (the regression target)."""
    return [(v - 1.0) / 4.0 for v in vad]


def vad_from_unit(vad: np.ndarray) -> np.ndarray:
    """[0, 1] → 1-5 scale (what predictions report)."""
    return 1.0 + 4.0 * np.asarray(vad)


def collate(dialogues: Sequence[Dialogue], speaker_vocab: dict[str, int], modalities: Sequence[str]) -> Batch:
    """Pad dialogues into one Batch.

    ``speaker_vocab`` comes from the training corpus. A speaker it lacks (the practitioner's own
    dialogues name people the model never saw) takes a row by order of first appearance in its
    dialogue, modulo the vocabulary size, so that distinct speakers of one dialogue stay distinct
    where the vocabulary allows it, without growing the embedding table.
    """
    b = len(dialogues)
    n = max(len(d) for d in dialogues)
    lengths = torch.tensor([len(d) for d in dialogues], dtype=torch.long)
    mask = torch.arange(n)[None, :] < lengths[:, None]
    features = {}
    for m in modalities:
        width = dialogues[0].features[m].shape[1]
        x = np.zeros((b, n, width), dtype=np.float32)
        for i, d in enumerate(dialogues):
            x[i, : len(d)] = d.features[m]
        features[m] = torch.from_numpy(x)
    speakers = torch.zeros((b, n), dtype=torch.long)
    labels = torch.full((b, n), IGNORE_LABEL, dtype=torch.long)
    vad = torch.zeros((b, n, 3), dtype=torch.float32)
    vad_mask = torch.zeros((b, n), dtype=torch.bool)
    n_vocab = max(len(speaker_vocab), 1)
    for i, d in enumerate(dialogues):
        unknown: dict[str, int] = {}
        for j, u in enumerate(d.utterances):
            if u.speaker in speaker_vocab:
                speakers[i, j] = speaker_vocab[u.speaker]
            else:
                speakers[i, j] = unknown.setdefault(u.speaker, len(unknown) % n_vocab)
            if u.label is not None:
                labels[i, j] = u.label
            if u.vad is not None:
                vad[i, j] = torch.tensor(vad_to_unit(u.vad))
                vad_mask[i, j] = True
    return Batch(
        features=features,
        speakers=speakers,
        mask=mask,
        lengths=lengths,
        labels=labels,
        vad=vad,
        vad_mask=vad_mask,
    )


def labelled_nll(
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean (class-weighted) NLL of ``log_probs`` ``(..., C)`` over the labelled utterances; zero
    with gradient when none is labelled. ``smoothing`` ε > 0 takes the cross-entropy against the
    label smoothed towards uniform, (1 − ε)·one-hot + ε/C, as PyTorch's ``label_smoothing`` does
    (log-probabilities are their own log-softmax) [ours]: a regulariser against over-confident fits
    of noisy labels, offered for corpora where it helps — on MELD's dev split it did not (text-only
    CORECT, bench/results/real_data_recipe_search.json). ε = 0 is the plain NLL, computed as before."""
    if not bool((labels != IGNORE_LABEL).any()):
        return log_probs.sum() * 0.0
    weight = class_weights.to(log_probs.device, log_probs.dtype) if class_weights is not None else None
    flat, targets = log_probs.reshape(-1, log_probs.shape[-1]), labels.reshape(-1)
    if smoothing == 0:
        return F.nll_loss(flat, targets, weight=weight, ignore_index=IGNORE_LABEL)
    return F.cross_entropy(flat, targets, weight=weight, ignore_index=IGNORE_LABEL, label_smoothing=smoothing)
