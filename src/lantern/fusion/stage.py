"""The fusion stage over a run directory: fit every method on the held-out split, predict test.

Reads the vanilla predictions and the LLM answers of the fusion training split (dev by default, or
the cross-fitted training predictions) and of test, after checking that each answers file was
prompted with exactly those predictions and the run's current LLM settings
(:meth:`lantern.rundir.LLMSettings.check`); writes per method its config, weights, test predictions
and mean attention by position.

Answers that are mostly vanilla are refused (:func:`check_coverage`): a split whose share of
fallen-back utterance answers is above the ``max_fallback_rate`` recorded with it (the default
limit for runs that recorded none) would teach the fusion that "the LLM" says what vanilla says,
unless ``allow_fallbacks``; answers of a slice (``lantern prompt --limit-dialogues``) are refused
whatever the flag, since fusion needs an answer for every utterance it fuses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lantern.answers import FALLBACK, FieldAnswer, read_field_answers
from lantern.errors import LanternError
from lantern.fusion.crossval import SearchCV
from lantern.fusion.inputs import FusionInputs, build_inputs
from lantern.fusion.methods import (
    GUARDED,
    METHODS,
    AttentionWeighting,
    FusionMethod,
    TrainedFusion,
    UnguardedAttentionWeighting,
)
from lantern.predictions import Prediction, read_predictions, write_predictions
from lantern.rundir import DEFAULT_MAX_FALLBACK_RATE, LLMSettings, RunDir, write_json

log = logging.getLogger(__name__)

TRAIN_SPLITS = ("dev", "crossfit")
# Keys of a method's ``params`` that configure its model selection rather than the method itself.
SEARCH_KEYS = ("hidden_sizes", "weight_decays", "epoch_grid", "folds")


def make_method(name: str, *, seed: int, params: dict[str, Any] | None = None) -> FusionMethod | SearchCV:
    """The estimator for ``name``: trained methods wrapped in their hyperparameter search (and the
    vanilla guard for Lantern's), others as they are; ``params`` may hold both kinds of keys."""
    if name not in METHODS:
        raise LanternError(f"unknown fusion method {name!r}; known: {', '.join(METHODS)}")
    params = dict(params or {})
    search = {k: params.pop(k) for k in SEARCH_KEYS if k in params}
    try:
        method = METHODS[name](seed=seed, **params)
    except TypeError as exc:
        raise LanternError(f"fusion method {name!r}: bad parameters {sorted(params)} ({exc})") from None
    if isinstance(method, TrainedFusion):
        return SearchCV(method, guard=name in GUARDED, **search)
    if search:
        raise LanternError(f"fusion method {name!r} is not trained; it takes no {', '.join(search)}")
    return method


def _same_search(a: FusionMethod | SearchCV, b: FusionMethod | SearchCV | None) -> bool:
    """Whether two searches differ only in the guard (so the guarded fit serves the unguarded one)."""
    if not isinstance(a, SearchCV) or not isinstance(b, SearchCV):
        return False
    grid = ("hidden_sizes", "weight_decays", "epoch_grid", "folds")
    return all(getattr(a, k) == getattr(b, k) for k in grid) and (
        a.estimator.get_params() == b.estimator.get_params()
    )


def check_coverage(
    settings: LLMSettings, split: str, answers: list[FieldAnswer], path: Path, *, allow_fallbacks: bool
) -> None:
    """Refuse a split's answers that cover part of it, or that fell back above their limit (unless
    ``allow_fallbacks``); one line naming the file, the rate and the way out."""
    entry = settings.splits.get(split, {})
    if entry.get("limit_dialogues") is not None:
        raise LanternError(
            f"{path}: the {split} answers cover {entry.get('dialogues')} of {entry.get('dialogues_total')} "
            f"dialogues (lantern prompt --limit-dialogues {entry['limit_dialogues']}); prompt the whole "
            "split before fusing (the slice's answers are cached)"
        )
    limit = entry.get("max_fallback_rate", DEFAULT_MAX_FALLBACK_RATE)
    if allow_fallbacks or limit is None:
        return
    statuses = [u.status for a in answers for u in a.utterances]
    rate = sum(s == FALLBACK for s in statuses) / len(statuses) if statuses else 0.0
    if rate > limit:
        raise LanternError(
            f"{path}: {rate:.1%} of the {split} utterance answers fell back to vanilla, above the "
            f"{limit:.0%} allowed; prompt again (lantern prompt continues from the cache) or fuse them "
            "anyway with --allow-fallbacks"
        )


def _load(
    run: RunDir, settings: LLMSettings, split: str, allow_fallbacks: bool
) -> tuple[list[Prediction], FusionInputs]:
    """Predictions and inputs of one split (``crossfit``: the cross-fitted train predictions with the
    train answers), after checking that the answers were prompted with those predictions and are
    answers enough (:func:`check_coverage`)."""
    predictions_path = run.vanilla.crossfit_predictions if split == "crossfit" else run.predictions(split)
    answers_split = "train" if split == "crossfit" else split
    answers_path = run.answers(answers_split)
    for path in (predictions_path, answers_path):
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (fusion needs the vanilla and LLM stages' outputs)")
    settings.check(answers_split, predictions_path, answers_path)
    answers = read_field_answers(answers_path)
    check_coverage(settings, answers_split, answers, answers_path, allow_fallbacks=allow_fallbacks)
    predictions = read_predictions(predictions_path)
    return predictions, build_inputs(predictions, answers, settings.t)


def fuse_run(
    run_dir: str | Path,
    methods: Sequence[str] | None = None,
    *,
    train_split: str = "dev",
    seed: int = 0,
    params: dict[str, dict[str, Any]] | None = None,
    allow_fallbacks: bool = False,
) -> dict[str, Any]:
    """Fit every fusion method on ``train_split`` ("dev" or "crossfit") and write its test predictions.

    ``params`` overrides a method's hyperparameters or its search grid (e.g.
    ``{"attention": {"use_offset": True, "epoch_grid": [200]}}``). ``allow_fallbacks`` fuses answers
    whose fallback rate is above the limit recorded with them. Returns a summary per method.
    """
    run = RunDir(run_dir)
    if train_split not in TRAIN_SPLITS:
        raise LanternError(f"fusion trains on one of {', '.join(TRAIN_SPLITS)}, not {train_split!r}")
    names = list(METHODS) if methods is None else list(methods)
    estimators = {name: make_method(name, seed=seed, params=(params or {}).get(name)) for name in names}
    settings = LLMSettings.read(run.llm.settings)
    _, train_inputs = _load(run, settings, train_split, allow_fallbacks)
    test_predictions, test_inputs = _load(run, settings, "test", allow_fallbacks)

    summary: dict[str, Any] = {}
    fitted: dict[str, FusionMethod] = {}
    for name, estimator in estimators.items():
        started = time.perf_counter()
        guarded = fitted.get(AttentionWeighting.name)
        if name == UnguardedAttentionWeighting.name and _same_search(
            estimator, estimators.get(AttentionWeighting.name)
        ):
            assert isinstance(guarded, AttentionWeighting)
            model = UnguardedAttentionWeighting.from_guarded(guarded)
        else:
            model = estimator.fit(train_inputs)
        fitted[name] = model
        fused = model.predict_proba(test_inputs)
        files = run.method(name)
        model.save(files.dir)
        write_predictions(
            files.predictions,
            [
                Prediction(
                    id=pred.id,
                    dialogue=pred.dialogue,
                    speaker=pred.speaker,
                    split=pred.split,
                    label=pred.label,
                    probs=[round(float(x), 6) for x in row],
                    vad=pred.vad,
                )
                for pred, row in zip(test_predictions, fused, strict=True)
            ],
        )
        attention = {
            "train_split": train_split,
            "fit": model.attention_by_position(train_inputs),
            "test": model.attention_by_position(test_inputs),
            # Fit, predict and save, for the report's timings (the only record of fusion time).
            "seconds": round(time.perf_counter() - started, 3),
        }
        write_json(files.attention, attention)
        summary[name] = {
            "trained": model.trained,
            "train_split": train_split,
            "n_train": int((train_inputs.labels >= 0).sum()),
            "n_test": test_inputs.n,
            "t": settings.t,
            "selection": getattr(model, "selection_", {}),
            "attention": attention["test"],
            "seconds": attention["seconds"],
        }
        log.info("fusion %s done in %.1fs", name, summary[name]["seconds"])
    return summary
