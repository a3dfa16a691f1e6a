"""Training weighting modules, many at once, and choosing their hyperparameters by K-fold CV.

A weighting problem is tiny (a few thousand utterances × t + 1 candidates), so its cost is
per-operation overhead. Cross-validation therefore trains every (fold, weight decay) pair of one
hidden size together: R copies of the scorer have their parameters stacked along a leading
"replica" dimension and run through ``torch.func.vmap`` in one full-batch Adam loop, each replica
with its own training mask (the other folds) and its own L2 penalty. Adam is elementwise, so the
replicas stay independent. A final fit is the same loop with R = 1.

Folds split dialogues, so a dialogue never sits on both sides; the scores are held-out negative
log-likelihood and accuracy. Test data never enter this module.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from lantern.errors import LanternError
from lantern.fusion.inputs import FusionInputs
from lantern.fusion.scorers import mixture, mixture_nll

if TYPE_CHECKING:
    from lantern.fusion.methods import TrainedFusion

log = logging.getLogger(__name__)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread for the block, then restore the previous setting.

    These full-batch problems are tiny; a thread pool only adds overhead (5-10× on a busy 2-core
    machine).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class Scores:
    """Held-out scores of R replicas at one epoch: summed NLL and number correct, each ``(R,)``, and
    every replica's mixture ``(R, n, C)`` (a replica's held-out rows are the ones it did not learn)."""

    nll: np.ndarray
    correct: np.ndarray
    mixture: np.ndarray


def train_replicas(
    build: Callable[[], nn.Module],
    x: dict[str, torch.Tensor],
    weight_decays: Sequence[float],
    epochs: int,
    *,
    lr: float,
    seed: int,
    train_mask: np.ndarray | None = None,
    score_at: Sequence[int] = (),
) -> tuple[list[nn.Module], dict[int, Scores]]:
    """Train R = len(weight_decays) independent copies of ``build()`` by full-batch Adam.

    ``train_mask`` ``(R, n)`` says which utterances each replica learns from (all by default); the
    others are its held-out set, scored at each epoch of ``score_at``. The loss of a replica is the
    mean mixture cross-entropy on its training utterances plus weight decay × the squared norm of
    all its parameters (pulling the weights toward uniform). Returns the trained modules (eval
    mode) and the scores.
    """
    replicas = len(weight_decays)
    n = x["labels"].shape[0]
    mask = torch.ones(replicas, n) if train_mask is None else torch.as_tensor(train_mask).float()
    decay = torch.as_tensor(weight_decays, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    modules = []
    for _ in range(replicas):
        module = build()
        module.reset_parameters(generator)
        modules.append(module)
    params, buffers = stack_module_state(modules)
    template = copy.deepcopy(modules[0]).to("meta")

    def weights_of(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(template, (p, b), (x,))

    batched = vmap(weights_of)
    optimiser = torch.optim.Adam(list(params.values()), lr=lr)
    scores: dict[int, Scores] = {}
    wanted = set(score_at)
    for epoch in range(1, epochs + 1):
        optimiser.zero_grad()
        nll = mixture_nll(batched(params, buffers), x)  # (R, n)
        fit = (nll * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)
        penalty = sum((p.reshape(replicas, -1) ** 2).sum(dim=1) for p in params.values())
        (fit + decay * penalty).sum().backward()
        optimiser.step()
        if epoch in wanted:
            with torch.no_grad():
                weights = batched(params, buffers)
                held = 1 - mask
                mixed = mixture(weights, x)
                correct = (mixed.argmax(dim=2) == x["labels"]).float()
                scores[epoch] = Scores(
                    nll=(mixture_nll(weights, x) * held).sum(dim=1).numpy(),
                    correct=(correct * held).sum(dim=1).numpy(),
                    mixture=mixed.double().numpy(),
                )
    with torch.no_grad():
        for r, module in enumerate(modules):
            module.load_state_dict({k: v[r].detach().clone() for k, v in params.items()})
            module.eval()
    return modules, scores


def dialogue_folds(dialogues: Sequence[str], k: int, seed: int) -> np.ndarray | None:
    """Fold index per utterance, K folds over the distinct dialogues (seeded); None if < 2 dialogues."""
    distinct = np.array(sorted(set(dialogues)))
    k = min(k, len(distinct))
    if k < 2:
        return None
    rng = np.random.default_rng(seed)
    parts = np.array_split(rng.permutation(distinct), k)
    fold_of = {dlg: f for f, part in enumerate(parts) for dlg in part}
    return np.array([fold_of[dlg] for dlg in dialogues])


@dataclass
class CrossValidation:
    """Every grid point's mean held-out NLL and accuracy (``rows``), and its held-out mixtures
    ``(n, C)``: each utterance fused by the replica that did not see its fold (``held_out``, keyed by
    (hidden, weight decay, epochs))."""

    rows: list[dict]
    held_out: dict[tuple[int, float, int], np.ndarray]


def cross_validate(
    build: Callable[[int], nn.Module],
    x: dict[str, torch.Tensor],
    dialogues: Sequence[str],
    *,
    hidden_sizes: Sequence[int],
    weight_decays: Sequence[float],
    epoch_grid: Sequence[int],
    folds: int,
    lr: float,
    seed: int,
) -> CrossValidation:
    """Cross-validate every (hidden, weight decay, epochs) grid point over K dialogue folds;
    ``build(hidden)`` makes a fresh scorer. Empty when there are under 2 dialogues."""
    fold = dialogue_folds(dialogues, folds, seed)
    if fold is None:
        log.warning("fewer than 2 dialogues: hyperparameters not cross-validated")
        return CrossValidation([], {})
    k = int(fold.max()) + 1
    n = len(dialogues)
    # Replica (w, f): weight decay w, trained on every fold but f.
    grid = [(wd, f) for wd in weight_decays for f in range(k)]
    train_mask = np.stack([fold != f for _, f in grid])
    epochs = sorted(epoch_grid)
    result = CrossValidation([], {})
    for hidden in hidden_sizes:
        _, scores = train_replicas(
            lambda hidden=hidden: build(hidden),
            x,
            [wd for wd, _ in grid],
            epochs[-1],
            lr=lr,
            seed=seed + 1,
            train_mask=train_mask,
            score_at=epochs,
        )
        for wd in weight_decays:
            in_wd = np.array([g == wd for g, _ in grid])
            for e in epochs:
                result.rows.append(
                    {
                        "hidden": hidden,
                        "weight_decay": wd,
                        "epochs": e,
                        "nll": round(float(scores[e].nll[in_wd].sum()) / n, 6),
                        "accuracy": round(float(scores[e].correct[in_wd].sum()) / n, 6),
                    }
                )
                held = np.zeros(scores[e].mixture.shape[1:])
                for r, (g, f) in enumerate(grid):
                    if g == wd:
                        held[fold == f] = scores[e].mixture[r][fold == f]
                result.held_out[(hidden, wd, e)] = held
    return result


class SearchCV:
    """Choose a trained method's hidden size, weight decay and epochs by K-fold CV, then refit.

    Grids: ``hidden_sizes`` (ignored by methods without a hidden layer), ``weight_decays``,
    ``epoch_grid``; every grid point is scored by mean held-out NLL over ``folds`` dialogue folds of
    the fusion training set, the best (first in grid order on ties) is refitted on all of it. With
    fewer than two dialogues nothing is cross-validated and the first grid values are used.

    **[ours]** Vanilla guard (``guard=True``, Lantern's ``attention``): the mixture cross-entropy
    rewards hedging, so against a useless LLM the optimum still mixes a little of it into p, which
    flips a few close calls. The guard keeps the fitted weighting only when its held-out NLL over the
    same dialogue folds beats vanilla's by a one-standard-error margin (:func:`vanilla_guard`;
    ``shrink_`` and ``smooth_`` on the fitted method).

    ``fit(inputs)`` returns the refitted estimator, its ``selection_`` holding the CV table, the
    chosen point and the guard's decision.
    """

    def __init__(
        self,
        estimator: TrainedFusion,
        *,
        hidden_sizes: Sequence[int] = (8, 32),
        weight_decays: Sequence[float] = (1e-3, 1e-2, 1e-1),
        epoch_grid: Sequence[int] = (100, 300),
        folds: int = 5,
        guard: bool = False,
    ) -> None:
        self.estimator = estimator
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.weight_decays = tuple(float(x) for x in weight_decays)
        self.epoch_grid = tuple(sorted(int(e) for e in epoch_grid))
        self.folds = int(folds)
        self.guard = guard
        if not self.hidden_sizes or not self.weight_decays or not self.epoch_grid:
            raise LanternError("fusion hyperparameter grids must not be empty")
        if min(self.epoch_grid) < 1:
            raise LanternError(f"fusion epochs must be >= 1, got {self.epoch_grid}")

    def fit(self, inputs: FusionInputs) -> TrainedFusion:
        est = self.estimator
        train = inputs.labelled()
        if train.n == 0:
            raise LanternError(f"fusion method {est.name!r}: no labelled utterances to train on")
        with single_thread():
            x = est.prepare(train)
            cv = cross_validate(
                lambda hidden: est.build(hidden, train.t, train.n_classes),
                x,
                train.dialogues,
                hidden_sizes=self.hidden_sizes if est.uses_hidden else self.hidden_sizes[:1],
                weight_decays=self.weight_decays,
                epoch_grid=self.epoch_grid,
                folds=self.folds,
                lr=est.lr,
                seed=est.seed,
            )
        if cv.rows:
            best = min(cv.rows, key=lambda row: row["nll"])
            chosen = {k: best[k] for k in ("hidden", "weight_decay", "epochs")}
        else:
            chosen = {
                "hidden": self.hidden_sizes[0],
                "weight_decay": self.weight_decays[0],
                "epochs": self.epoch_grid[-1],
            }
        fitted = type(est)(**{**est.get_params(), **chosen}).fit(inputs)
        selection: dict[str, Any] = {"selected": chosen, "cv": cv.rows}
        if self.guard and cv.rows:
            held = cv.held_out[(chosen["hidden"], chosen["weight_decay"], chosen["epochs"])]
            fitted.shrink_, fitted.smooth_, selection["guard"] = vanilla_guard(
                held, train.p, train.labels, train.dialogues
            )
        fitted.selection_ = selection
        log.info("%s: selected %s by cross-validation", est.name, chosen)
        return fitted


SMOOTH_GRID = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)


def vanilla_guard(
    held_out: np.ndarray, p: np.ndarray, labels: np.ndarray, dialogues: Sequence[str]
) -> tuple[float, float, dict[str, Any]]:
    """The vanilla guard: keep the learned weighting only when its held-out likelihood beats the
    vanilla model's by more than one standard error.

    ``held_out`` ``(n, C)`` holds each utterance fused by a model that did not learn its dialogue;
    the vanilla side may hedge toward uniform by the ε with its lowest held-out NLL (it never changes
    vanilla's argmax: an over-confident vanilla model would otherwise make any mixture, even with a
    useless LLM, look better, because mixing hedges). The margin is the dialogue-clustered standard
    error of the per-utterance NLL difference: a useless LLM's small, noisy advantage stays within
    it, so Lantern stays vanilla; a real gain sits many standard errors away, so it is kept whole.
    The choice is all or nothing on purpose: mixing some vanilla back into a better fused model
    flips its close calls toward vanilla, which costs accuracy for a flat likelihood.

    Returns (weight kept on the learned mixture: 1 or 0, ε for the vanilla share, the record).
    """
    rows = np.arange(len(labels))
    n_classes = p.shape[1]
    fused, vanilla = held_out[rows, labels], p[rows, labels]

    def vanilla_nll(eps: float) -> np.ndarray:
        return -np.log(np.maximum((1.0 - eps) * vanilla + eps / n_classes, 1e-8))

    eps = min(SMOOTH_GRID, key=lambda e: float(vanilla_nll(e).mean()))
    base, learned = vanilla_nll(eps), -np.log(np.maximum(fused, 1e-8))
    gain = float(base.mean() - learned.mean())
    per_dialogue = np.bincount(
        np.unique(np.asarray(dialogues), return_inverse=True)[1], weights=base - learned
    )
    n_groups = len(per_dialogue)
    standard_error = (
        float(np.sqrt(n_groups) * per_dialogue.std(ddof=1) / len(labels)) if n_groups > 1 else np.inf
    )
    keep = gain > standard_error
    record = {
        "rule": "keep the learned weighting iff its held-out NLL beats the vanilla model's (smoothed by "
        "epsilon) by more than one dialogue-clustered standard error, over dialogue folds",
        "kept": bool(keep),
        "lambda": 1.0 if keep else 0.0,
        "epsilon": eps,
        "nll_vanilla": round(float(base.mean()), 6),
        "nll_unguarded": round(float(learned.mean()), 6),
        "nll_gain": round(gain, 6),
        "standard_error": round(standard_error, 6),
        "nll_guarded": round(float(learned.mean() if keep else base.mean()), 6),
        "accuracy_vanilla": round(float((p.argmax(axis=1) == labels).mean()), 6),
        "accuracy_unguarded": round(float((held_out.argmax(axis=1) == labels).mean()), 6),
        "dialogues": n_groups,
    }
    return (1.0 if keep else 0.0), (0.0 if keep else eps), record
