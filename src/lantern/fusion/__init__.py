"""Receptive-field-aware attention weighting: merging each utterance's t LLM answers (docs/method.md §4).

``inputs`` joins predictions and answers; ``scorers`` holds the math of each weighting module;
``methods`` the estimators; ``crossval`` trains them (many at once) and picks their
hyperparameters; ``stage`` runs them over a run directory.
"""

from lantern.fusion.crossval import SearchCV
from lantern.fusion.inputs import FusionInputs, build_inputs
from lantern.fusion.methods import DEFAULT_METHOD, METHODS, FusionMethod, TrainedFusion
from lantern.fusion.stage import fuse_run, make_method

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "FusionInputs",
    "FusionMethod",
    "SearchCV",
    "TrainedFusion",
    "build_inputs",
    "fuse_run",
    "make_method",
]
