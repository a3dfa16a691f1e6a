"""The vanilla models by name, and their configurations derived from a corpus.

A checkpoint stores the model name and its config JSON; ``build_model`` turns the two back into a
module, so nothing else needs to know which classes exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from lantern.corpus.dialogue import MODALITIES, Corpus
from lantern.errors import LanternError
from lantern.models.corect import CORECT, CORECTConfig
from lantern.models.sdt import SDT, SDTConfig

MODELS: dict[str, tuple[type[nn.Module], type]] = {
    "corect": (CORECT, CORECTConfig),
    "sdt": (SDT, SDTConfig),
}


def _lookup(name: str) -> tuple[type[nn.Module], type]:
    try:
        return MODELS[name]
    except KeyError:
        raise LanternError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def build_model(name: str, config: dict | Any) -> nn.Module:
    """A fresh (untrained) model from its name and config (a config object or its JSON dict)."""
    model_cls, config_cls = _lookup(name)
    if isinstance(config, dict):
        config = config_cls.from_json(config)
    return model_cls(config)


def speaker_vocabulary(corpus: Corpus) -> dict[str, int]:
    """Speaker name → embedding row, from the training split only (sorted, so it is stable).

    Dev and test speakers the training split lacks take rows by order of appearance (see
    ``collate``); the model never gets a row it could not have learned.
    """
    names = sorted({u.speaker for d in corpus.split("train") for u in d.utterances})
    return {s: i for i, s in enumerate(names)}


def select_modalities(corpus: Corpus, modalities: Sequence[str] | None) -> dict[str, int]:
    """The corpus's modality widths restricted to ``modalities`` (all when None), in t, a, v order."""
    chosen = list(corpus.modalities) if modalities is None else list(modalities)
    missing = [m for m in chosen if m not in corpus.modalities]
    if missing or not chosen:
        raise LanternError(
            f"modalities {chosen} are not a non-empty subset of the corpus's {sorted(corpus.modalities)}"
        )
    return {m: corpus.modalities[m] for m in MODALITIES if m in chosen}


def config_for_corpus(
    name: str, corpus: Corpus, *, modalities: Sequence[str] | None = None, **overrides: Any
) -> Any:
    """The config of model ``name`` for ``corpus``: classes from its label set, widths from its
    (chosen) modalities, speakers from the training vocabulary; ``overrides`` set any other field."""
    _, config_cls = _lookup(name)
    return config_cls(
        n_classes=len(corpus.labels),
        n_speakers=max(len(speaker_vocabulary(corpus)), 1),
        widths=select_modalities(corpus, modalities),
        **overrides,
    )


def parameter_summary(model: nn.Module) -> dict[str, int]:
    """Parameter counts: everything, the published network (backbone), and Lantern's VAD head.

    Frozen parameters count (the published counts include SDT's frozen MELD gates).
    """
    total = sum(p.numel() for p in model.parameters())
    head = getattr(model, "vad_head", None)
    vad = sum(p.numel() for p in head.parameters()) if head is not None else 0
    return {"total_parameters": total, "backbone_parameters": total - vad, "vad_head_parameters": vad}
