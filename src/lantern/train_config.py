"""How a vanilla model is trained: the training settings and the named recipes (presets).

Kept apart from :mod:`lantern.training` (the loop, which needs torch) so that the command line can
show every recipe's defaults in its help without importing torch, and so the defaults are written
once, here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lantern.errors import LanternError
from lantern.labels import LabelSet

PRECISIONS = ("fp32", "tf32", "bf16")

# How the classification loss weighs each class: not at all, by 1/prior, or by 1/√prior (a milder
# correction for skewed corpora such as MELD, where 1/prior trades much neutral recall for rare
# classes): the power of 1/prior, by name.
CLASS_WEIGHT_POWERS: dict[str, float | None] = {"none": None, "inverse_prior": 1.0, "sqrt_inverse_prior": 0.5}
CLASS_WEIGHTS = tuple(CLASS_WEIGHT_POWERS)


@dataclass
class TrainConfig:
    """How a vanilla model is trained. ``class_weights``: one of ``CLASS_WEIGHTS`` (see
    ``class_weight_tensor``); ``scheduler``: "none" or "plateau" (ReduceLROnPlateau on dev loss,
    PyTorch defaults); ``patience``: stop once this many epochs in a row have not improved the best
    dev weighted F1 (0: always run every epoch); ``threads``: torch CPU threads, 0 for the cores
    other processes leave free, asked again before every epoch (``lantern.cores``: beside one busy
    process, two threads made a demo epoch 30x slower); ``bucket_batches``: batches per
    length-sorted pool (see ``length_batches``); ``model_overrides``: model config fields the
    recipe sets (SDT's MELD temperature, a dropout); ``average_epochs``: evaluate, select and save
    a moving average of the weights over about this many epochs of steps instead of the weights as
    last stepped (0: off; see ``lantern.training.WeightAverage``) [ours]; ``label_smoothing``: train
    against labels smoothed towards uniform by this much (0: off; see
    ``lantern.models.batch.labelled_nll``) [ours]."""

    preset: str = "quick"
    model: str | None = None
    epochs: int = 8
    patience: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 8
    scheduler: str = "none"
    class_weights: str = "none"
    lambda_vad: float = 1.0
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    modalities: list[str] | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    bucket_batches: int = 4
    progress: bool = True
    precision: str = "fp32"
    average_epochs: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "bucket_batches"):
            if getattr(self, name) < 1:
                raise LanternError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise LanternError(f"threads must be >= 0 (0: the free cores), got {self.threads}")
        if self.patience < 0:
            raise LanternError(f"patience must be >= 0 (0: no early stopping), got {self.patience}")
        if self.lr <= 0:
            raise LanternError(f"lr must be > 0, got {self.lr}")
        if not self.average_epochs >= 0:
            raise LanternError(f"average_epochs must be >= 0 (0: no averaging), got {self.average_epochs}")
        if not 0 <= self.label_smoothing < 1:
            raise LanternError(f"label_smoothing must be in [0, 1) (0: off), got {self.label_smoothing}")
        if self.lambda_vad < 0:
            raise LanternError(f"lambda_vad must be >= 0, got {self.lambda_vad}")
        if self.scheduler not in ("none", "plateau"):
            raise LanternError(f"scheduler must be 'none' or 'plateau', got {self.scheduler!r}")
        if self.precision not in PRECISIONS:
            raise LanternError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.class_weights not in CLASS_WEIGHTS:
            raise LanternError(f"class_weights must be one of {CLASS_WEIGHTS}, got {self.class_weights!r}")

    def to_json(self) -> dict:
        return asdict(self)


# The published recipes (docs/models.md), the text-only recipes for the Friends corpora (chosen on
# MELD's dev split by bench/real_data_recipe_search.py; bench/results/real_data_recipe_search.json
# holds every candidate and its dev figures), and a short one for tests and demos.
PRESETS: dict[str, dict[str, Any]] = {
    "corect": dict(
        model="corect", epochs=50, lr=2.5e-4, weight_decay=1e-8, batch_size=10, scheduler="plateau", seed=24
    ),
    "sdt-iemocap": dict(
        model="sdt", epochs=150, lr=1e-4, weight_decay=1e-5, batch_size=16, class_weights="inverse_prior"
    ),
    "sdt-meld": dict(
        model="sdt",
        epochs=50,
        lr=5e-6,
        weight_decay=1e-5,
        batch_size=8,
        model_overrides={"temperature": 8.0, "gates_frozen": True},
    ),
    "corect-meld-text": dict(
        model="corect",
        epochs=20,
        patience=6,
        lr=2.5e-4,
        weight_decay=1e-8,
        batch_size=10,
        scheduler="plateau",
        class_weights="sqrt_inverse_prior",
        average_epochs=10.0,
    ),
    "sdt-meld-text": dict(
        model="sdt",
        epochs=20,
        patience=6,
        lr=5e-5,
        weight_decay=1e-5,
        batch_size=32,
        class_weights="sqrt_inverse_prior",
        model_overrides={"temperature": 8.0, "gates_frozen": True, "input_norm": True},
    ),
    "quick": dict(model=None, epochs=8, lr=1e-3, batch_size=8),
}

# One line per preset: what it is and where it comes from (``lantern train`` prints it).
PRESET_NOTES: dict[str, str] = {
    "corect": "the published CORECT recipe (IEMOCAP, three modalities)",
    "sdt-iemocap": "the published SDT recipe for IEMOCAP",
    "sdt-meld": "the published SDT recipe for MELD (three modalities)",
    "corect-meld-text": "text-only CORECT, chosen on MELD's dev split (7 emotions, MiniLM; weights "
    "averaged over about 10 epochs); used as is for MELD sentiment and EmoryNLP, which were not tuned on",
    "sdt-meld-text": "text-only SDT, chosen on MELD's dev split (7 emotions, MiniLM); used as is for "
    "MELD sentiment and EmoryNLP, which were not tuned on",
    "quick": "a short run for tests and demos",
}

# Label sets of the Friends corpora, which take the text-only MELD recipes when trained on text
# alone. Only MELD's 7-emotion dev split chose those recipes: no EmoryNLP files were at hand to tune
# on, and the sentiment target was not searched on its own.
TEXT_RECIPE_LABEL_SETS = ("meld7", "meld-sentiment", "emorynlp7")


def default_preset(model_name: str, labels: LabelSet, modalities: Sequence[str]) -> str:
    """The recipe a model trains with when none is named. A text-only model of a MELD or EmoryNLP
    corpus (``modalities`` == ["t"]) takes the text recipe chosen on MELD's dev split, since the
    published ones were made for three modalities of other features; otherwise the published recipe
    (SDT: the MELD one for meld7)."""
    if list(modalities) == ["t"] and labels.name in TEXT_RECIPE_LABEL_SETS:
        return f"{model_name}-meld-text"
    if model_name == "corect":
        return "corect"
    return "sdt-meld" if labels.name == "meld7" else "sdt-iemocap"


def make_train_config(preset: str, **overrides: Any) -> TrainConfig:
    """A preset with overrides applied; overrides that are None leave the preset's value."""
    if preset not in PRESETS:
        raise LanternError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise LanternError(f"unknown training options {unknown}")
    values = {**PRESETS[preset], "preset": preset}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**copy.deepcopy(values))
