"""Both models train under bfloat16 autocast (the GPU "bf16" precision), checked with CPU autocast."""

from __future__ import annotations

import pytest
import torch

from lantern.corpus.example import generate_example
from lantern.models.batch import collate
from lantern.models.corect import CORECT, CORECTConfig
from lantern.models.heads import masked_vad_loss
from lantern.models.sdt import SDT, SDTConfig
from lantern.train_config import TrainConfig
from lantern.training import mixed_precision

WIDTHS = {"t": 16, "a": 16, "v": 16}


@pytest.mark.parametrize(
    "model",
    [
        lambda: CORECT(CORECTConfig(n_classes=6, n_speakers=2, widths=WIDTHS)),
        lambda: SDT(SDTConfig(n_classes=6, n_speakers=2, widths=WIDTHS, hidden=64, heads=4, feedforward=64)),
    ],
    ids=["corect", "sdt"],
)
def test_forward_and_backward_under_bf16_autocast(model):
    net = model()
    corpus = generate_example(3, seed=1, widths=WIDTHS, min_len=5, max_len=8)
    batch = collate(corpus.dialogues, {"F": 0, "M": 1}, list(WIDTHS))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(batch)
        loss = net.classification_loss(out, batch) + masked_vad_loss(out.vad, batch.vad, batch.vad_mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_precision_is_checked_and_changes_nothing_on_cpu():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    before = torch.backends.cuda.matmul.allow_tf32
    with mixed_precision("bf16", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    assert torch.backends.cuda.matmul.allow_tf32 == before
