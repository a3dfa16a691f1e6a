"""Receptive-field-aware attention weighting: merging the t LLM answers of each utterance.

Each utterance i lies in t receptive fields, so the LLM stage gives it t distributions q_ik, one
per receptive-field position b_ik ∈ {0..t-1} (METHOD.md §4). Every method here is a mixture

    ŷ_i = Σ_k w_ik q_ik + w_i,vanilla p_i          (weights ≥ 0, summing to 1)

and differs only in how the weights are found:

- ``vanilla``: w = 1 on p (the vanilla model alone);
- ``uniform``: the mean of the t LLM answers;
- ``single``: the one answer at position b = t−1 (the window with the most past context). This
  only approximates the t = 1 ablation: the ablation proper reruns the LLM stage with t = 1, whose
  windows do not overlap;
- ``position``: learned per-position weights softmax(θ_b), the same for every utterance;
- ``gated``: β_i p_i + (1−β_i) Σ_k α_ik q_ik, α the attention below over the LLM answers and
  β_i = sigmoid(uᵀ[p_i; d_i] + u₀) a learned gate;
- ``attention`` (Lantern's default): additive attention over the candidates
  z_ik = [q_ik; E_pos(b_ik); (E_off(r_ik)); p_i; d_i], e_ik = vᵀ tanh(W z_ik + c), α = softmax_k e,
  where the vanilla distribution p_i is one more candidate with its own position embedding, so a
  useless LLM can be ignored;
- ``attention-llm``: the paper-literal variant, attention over the t LLM answers only.

The trained methods (vanilla model and LLM frozen) minimise the cross-entropy of the mixture on
held-out utterances — the dev split by default, or cross-fitted training predictions — with
full-batch Adam; their hyperparameters (hidden size, epochs, weight decay) are chosen by K-fold
cross-validation over dialogues *inside* that training set, never on test.

Estimators follow scikit-learn's shape: hyperparameters in ``__init__``, ``fit(inputs)``,
``predict_proba(inputs)``, and ``save(dir)`` / ``load(dir)`` (config.json + model.safetensors).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import safetensors.torch
import torch
from torch import nn

from lantern.llm.answers import OK, WindowAnswer, read_window_answers
from lantern.predictions import Prediction, read_predictions, write_predictions
from lantern.rundir import RunDir, atomic_write_bytes, read_json, write_json

log = logging.getLogger(__name__)

VANILLA_KEY = "vanilla"
_EPS = 1e-8


# --------------------------------------------------------------------------------------------
# Inputs


@dataclass
class FusionInputs:
    """Everything fusion sees for n utterances with t LLM answers each and C classes.

    p: ``(n, C)`` vanilla probabilities; d: ``(n, 3)`` vanilla VAD rescaled from 1-5 to [0, 1]
    (zeros when the vanilla model has no VAD output, ``has_vad`` False); q: ``(n, t, C)`` the LLM
    answers ordered by receptive-field position; b: ``(n, t)`` positions (column k holds b = k);
    r: ``(n, t)`` offsets inside the windows; ok: ``(n, t)`` True where the LLM answered (a
    fallback answer carries p); labels: ``(n,)`` gold index or −1; ids, dialogues: ``n`` strings.
    """

    p: np.ndarray
    d: np.ndarray
    q: np.ndarray
    b: np.ndarray
    r: np.ndarray
    ok: np.ndarray
    labels: np.ndarray
    ids: list[str]
    dialogues: list[str]
    has_vad: bool = False

    @property
    def n(self) -> int:
        return int(self.p.shape[0])

    @property
    def t(self) -> int:
        return int(self.q.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.p.shape[1])

    def candidates(self) -> np.ndarray:
        """``(n, t + 1, C)``: the t LLM answers then the vanilla distribution."""
        return np.concatenate([self.q, self.p[:, None, :]], axis=1)

    def subset(self, index: np.ndarray | Sequence[int]) -> FusionInputs:
        idx = np.asarray(index, dtype=np.int64)
        return FusionInputs(
            p=self.p[idx],
            d=self.d[idx],
            q=self.q[idx],
            b=self.b[idx],
            r=self.r[idx],
            ok=self.ok[idx],
            labels=self.labels[idx],
            ids=[self.ids[i] for i in idx],
            dialogues=[self.dialogues[i] for i in idx],
            has_vad=self.has_vad,
        )

    def labelled(self) -> FusionInputs:
        """The utterances with a gold label (the only ones a loss can use)."""
        return self.subset(np.flatnonzero(self.labels >= 0))


def _normalised(probs: Sequence[float], what: str) -> np.ndarray:
    x = np.asarray(probs, dtype=np.float64)
    total = x.sum()
    if not np.all(np.isfinite(x)) or np.any(x < 0) or total <= 0:
        raise ValueError(f"{what}: probabilities must be finite, >= 0 and not all zero")
    return x / total


def build_inputs(predictions: Sequence[Prediction], windows: Sequence[WindowAnswer], t: int) -> FusionInputs:
    """Join vanilla predictions with the LLM's window answers, one row per prediction (same order).

    Every utterance must have exactly t answers, one at each receptive-field position 0..t-1;
    otherwise a ValueError names the utterance and its dialogue.
    """
    if t < 1:
        raise ValueError(f"t must be >= 1, got {t}")
    if not predictions:
        raise ValueError("no vanilla predictions to fuse")
    n_classes = len(predictions[0].probs)
    by_id: dict[str, list[tuple[int, int, np.ndarray, bool]]] = {p.id: [] for p in predictions}
    for w in windows:
        for u in w.utterances:
            where = f"utterance {u.id!r} (dialogue {w.dialogue!r}, window [{w.start}, {w.stop}))"
            if u.id not in by_id:
                raise ValueError(f"LLM answer for {where} has no vanilla prediction")
            if len(u.probs) != n_classes:
                raise ValueError(f"LLM answer for {where} has {len(u.probs)} classes, expected {n_classes}")
            by_id[u.id].append(
                (int(u.b), int(u.r), _normalised(u.probs, f"LLM answer for {where}"), u.status == OK)
            )

    n = len(predictions)
    p = np.zeros((n, n_classes))
    d = np.zeros((n, 3))
    q = np.zeros((n, t, n_classes))
    b = np.tile(np.arange(t), (n, 1))
    r = np.zeros((n, t), dtype=np.int64)
    ok = np.zeros((n, t), dtype=bool)
    labels = np.full(n, -1, dtype=np.int64)
    has_vad = all(pred.vad is not None for pred in predictions)
    for i, pred in enumerate(predictions):
        where = f"utterance {pred.id!r} (dialogue {pred.dialogue!r})"
        if len(pred.probs) != n_classes:
            raise ValueError(
                f"vanilla prediction for {where} has {len(pred.probs)} classes, expected {n_classes}"
            )
        p[i] = _normalised(pred.probs, f"vanilla prediction for {where}")
        if has_vad:
            d[i] = np.clip((np.asarray(pred.vad, dtype=np.float64) - 1.0) / 4.0, 0.0, 1.0)
        if pred.label is not None:
            if not 0 <= pred.label < n_classes:
                raise ValueError(f"{where}: label {pred.label} outside 0..{n_classes - 1}")
            labels[i] = pred.label
        answers = sorted(by_id[pred.id], key=lambda a: a[0])
        positions = [a[0] for a in answers]
        if positions != list(range(t)):
            raise ValueError(
                f"{where} has {len(answers)} LLM answers at positions {positions}; expected exactly "
                f"t={t}, one at each receptive-field position 0..{t - 1}"
            )
        for k, (_, offset, probs, answered) in enumerate(answers):
            r[i, k] = offset
            ok[i, k] = answered
            # A fallback answer stands for "no LLM opinion": it is the vanilla distribution.
            q[i, k] = probs if answered else p[i]
    return FusionInputs(
        p=p,
        d=d,
        q=q,
        b=b,
        r=r,
        ok=ok,
        labels=labels,
        ids=[x.id for x in predictions],
        dialogues=[x.dialogue for x in predictions],
        has_vad=has_vad,
    )


# --------------------------------------------------------------------------------------------
# Weighting modules (torch). Each holds R independent replicas of its parameters (leading dim R),
# so cross-validation trains every fold × weight-decay pair in one full-batch run; a fitted model
# has R = 1. Each maps the inputs to mixture weights (R, n, t + 1), vanilla last.


def _tensors(inputs: FusionInputs, n_offsets: int) -> dict[str, torch.Tensor]:
    return {
        "q": torch.as_tensor(inputs.q, dtype=torch.float32),
        "p": torch.as_tensor(inputs.p, dtype=torch.float32),
        "d": torch.as_tensor(inputs.d, dtype=torch.float32),
        "b": torch.as_tensor(inputs.b, dtype=torch.long),
        "r": torch.as_tensor(np.minimum(inputs.r, max(n_offsets, 1) - 1), dtype=torch.long),
        "labels": torch.as_tensor(inputs.labels, dtype=torch.long),
    }


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread for the block, then restore the previous setting.

    These full-batch problems are tiny (a few thousand utterances × t + 1 candidates); their cost
    is per-operation overhead, which a thread pool only increases (5-10× on a busy 2-core machine).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _normal(shape: tuple[int, ...], scale: float, generator: torch.Generator) -> torch.Tensor:
    return scale * torch.randn(shape, generator=generator)


class PositionScorer(nn.Module):
    """weights = softmax(θ_b) over the t positions, the same for every utterance. θ: ``(R, t)``."""

    def __init__(self, t: int, replicas: int = 1) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(replicas, t))

    def reset_parameters(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            self.theta.zero_()

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        n = x["q"].shape[0]
        alpha = torch.softmax(self.theta, dim=1)[:, None, :].expand(-1, n, -1)
        return torch.cat([alpha, alpha.new_zeros(*alpha.shape[:2], 1)], dim=2)


class AttentionScorer(nn.Module):
    """Additive attention over candidates z = [q; E_pos(b); (E_off(r)); p; d]:

        e = vᵀ tanh(W z + c) + a_b,        α = softmax over the candidates.

    W z is computed block by block (W_q q + W_pos E_pos(b) + W_off E_off(r) + W_ctx [p; d]) so the
    per-utterance part [p; d] is projected once, not once per candidate. **[ours]** a_b is a scalar
    bias per position outside the tanh, so "fixed weights per position, e.g. nearly all on the
    vanilla candidate" is cheap to express (a few small numbers instead of a saturated tanh layer):
    a useless LLM can be switched off without a large weight norm.

    With ``include_vanilla`` the vanilla distribution is candidate t, with position row t (and
    offset row ``n_offsets``). Returns weights ``(R, n, t + 1)``; the last column is 0 without it.
    Parameters: E_pos ``(R, t + 1, P)``, E_off ``(R, n_offsets + 1, P)``, W_* ``(R, H, ·)``,
    c and v ``(R, H)``, a ``(R, t + 1)``. v starts at 0, so training starts from uniform weights.
    """

    def __init__(
        self,
        n_classes: int,
        t: int,
        hidden: int,
        position_dim: int,
        *,
        include_vanilla: bool,
        n_offsets: int = 0,
        replicas: int = 1,
    ) -> None:
        super().__init__()
        self.t = t
        self.include_vanilla = include_vanilla
        self.n_offsets = n_offsets
        self.position = nn.Parameter(torch.zeros(replicas, t + 1, position_dim))
        self.offset = nn.Parameter(torch.zeros(replicas, n_offsets + 1, position_dim)) if n_offsets else None
        self.W_q = nn.Parameter(torch.zeros(replicas, hidden, n_classes))
        self.W_pos = nn.Parameter(torch.zeros(replicas, hidden, position_dim))
        self.W_off = nn.Parameter(torch.zeros(replicas, hidden, position_dim)) if n_offsets else None
        self.W_ctx = nn.Parameter(torch.zeros(replicas, hidden, n_classes + 3))
        self.c = nn.Parameter(torch.zeros(replicas, hidden))
        self.v = nn.Parameter(torch.zeros(replicas, hidden))
        self.position_bias = nn.Parameter(torch.zeros(replicas, t + 1))

    def reset_parameters(self, generator: torch.Generator) -> None:
        z_dim = sum(w.shape[2] for w in (self.W_q, self.W_pos, self.W_off, self.W_ctx) if w is not None)
        with torch.no_grad():
            for emb in (self.position, self.offset):
                if emb is not None:
                    emb.copy_(_normal(emb.shape, 1.0, generator))
            for w in (self.W_q, self.W_pos, self.W_off, self.W_ctx):
                if w is not None:
                    w.copy_(_normal(w.shape, z_dim**-0.5, generator))
            for zero in (self.c, self.v, self.position_bias):
                zero.zero_()

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        q, p, d, b, r = x["q"], x["p"], x["d"], x["b"], x["r"]
        n, replicas = q.shape[0], self.v.shape[0]
        if self.include_vanilla:
            q = torch.cat([q, p[:, None, :]], dim=1)
            b = torch.cat([b, b.new_full((n, 1), self.t)], dim=1)
            r = torch.cat([r, r.new_full((n, 1), self.n_offsets)], dim=1)
        pre = torch.einsum("nkc,rhc->rnkh", q, self.W_q)  # (R, n, k, H)
        by_position = torch.einsum("rbp,rhp->rbh", self.position, self.W_pos)  # (R, t + 1, H)
        pre = pre + by_position[:, b]
        if self.offset is not None and self.W_off is not None:
            by_offset = torch.einsum("rop,rhp->roh", self.offset, self.W_off)
            pre = pre + by_offset[:, r]
        context = torch.einsum("nf,rhf->rnh", torch.cat([p, d], dim=1), self.W_ctx) + self.c[:, None, :]
        h = torch.tanh(pre + context[:, :, None, :])
        e = torch.einsum("rnkh,rh->rnk", h, self.v) + self.position_bias[:, b]
        alpha = torch.softmax(e, dim=2)
        if not self.include_vanilla:
            alpha = torch.cat([alpha, alpha.new_zeros(replicas, n, 1)], dim=2)
        return alpha


class GatedScorer(nn.Module):
    """β p + (1 − β) Σ α q: attention over the LLM answers, and a gate β = sigmoid(uᵀ[p; d] + u₀).

    Gate parameters: u ``(R, C + 3)``, u₀ ``(R,)``.
    """

    def __init__(
        self, n_classes: int, t: int, hidden: int, position_dim: int, *, n_offsets: int = 0, replicas: int = 1
    ) -> None:
        super().__init__()
        self.attention = AttentionScorer(
            n_classes, t, hidden, position_dim, include_vanilla=False, n_offsets=n_offsets, replicas=replicas
        )
        self.gate_weight = nn.Parameter(torch.zeros(replicas, n_classes + 3))
        self.gate_bias = nn.Parameter(torch.zeros(replicas))

    def reset_parameters(self, generator: torch.Generator) -> None:
        self.attention.reset_parameters(generator)
        with torch.no_grad():
            self.gate_weight.copy_(_normal(self.gate_weight.shape, 0.1, generator))
            self.gate_bias.zero_()

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        alpha = self.attention(x)[:, :, :-1]
        context = torch.cat([x["p"], x["d"]], dim=1)  # (n, C + 3)
        beta = torch.sigmoid(torch.einsum("nf,rf->rn", context, self.gate_weight) + self.gate_bias[:, None])
        return torch.cat([(1 - beta[:, :, None]) * alpha, beta[:, :, None]], dim=2)


def _mixture(weights: torch.Tensor, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ_k w_k · candidate_k: ``(R, n, C)`` from weights ``(R, n, t + 1)``."""
    candidates = torch.cat([x["q"], x["p"][:, None, :]], dim=1)  # (n, t + 1, C)
    return torch.einsum("rnk,nkc->rnc", weights, candidates)


def _nll(weights: torch.Tensor, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-utterance cross-entropy ``(R, n)`` of the mixtures Σ_k w_k · candidate_k (log clamped)."""
    mixture = _mixture(weights, x)
    picked = mixture.gather(2, x["labels"][None, :, None].expand(weights.shape[0], -1, 1)).squeeze(2)
    return -torch.log(picked.clamp_min(_EPS))


# --------------------------------------------------------------------------------------------
# Estimators


class FusionMethod(ABC):
    """Common shape of every method: a mixture of the t LLM answers and the vanilla distribution."""

    name: ClassVar[str] = ""
    trained: ClassVar[bool] = False

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed
        self.t_: int | None = None
        self.n_classes_: int | None = None

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters given to ``__init__`` (JSON-able)."""
        return {"seed": self.seed}

    def fit(self, inputs: FusionInputs) -> FusionMethod:
        self.t_, self.n_classes_ = inputs.t, inputs.n_classes
        return self

    @abstractmethod
    def weights(self, inputs: FusionInputs) -> np.ndarray:
        """Mixture weights ``(n, t + 1)``: column k for the answer at position b = k, last for p."""

    def predict_proba(self, inputs: FusionInputs) -> np.ndarray:
        """Fused distributions ``(n, C)``."""
        self._check(inputs)
        y = np.einsum("nk,nkc->nc", self.weights(inputs), inputs.candidates())
        return y / y.sum(axis=1, keepdims=True)

    def predict(self, inputs: FusionInputs) -> np.ndarray:
        return self.predict_proba(inputs).argmax(axis=1)

    def attention_by_position(self, inputs: FusionInputs) -> dict[str, float]:
        """Mean weight of each receptive-field position ("0".."t-1") and of the vanilla candidate."""
        self._check(inputs)
        mean = self.weights(inputs).mean(axis=0)
        out = {str(k): round(float(mean[k]), 6) for k in range(inputs.t)}
        out[VANILLA_KEY] = round(float(mean[-1]), 6)
        return out

    def _check(self, inputs: FusionInputs) -> None:
        if self.t_ is None:
            raise ValueError(f"fusion method {self.name!r} is not fitted")
        if inputs.t != self.t_ or inputs.n_classes != self.n_classes_:
            raise ValueError(
                f"fusion method {self.name!r} was fitted for t={self.t_}, C={self.n_classes_}; "
                f"got t={inputs.t}, C={inputs.n_classes}"
            )

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "params": self.get_params(), "t": self.t_, "n_classes": self.n_classes_}

    def save(self, directory: str | Path) -> None:
        """config.json (enough to rebuild) and, for trained methods, model.safetensors."""
        write_json(Path(directory) / "config.json", self.config())

    @classmethod
    def load(cls, directory: str | Path) -> FusionMethod:
        """Rebuild a saved method; called on ``FusionMethod`` it dispatches on config["method"]."""
        config = read_json(Path(directory) / "config.json")
        method_cls = METHODS.get(config.get("method", ""))
        if method_cls is None or not issubclass(method_cls, cls):
            raise ValueError(
                f"{directory}: config.json holds no {cls.__name__} (method {config.get('method')!r})"
            )
        model = method_cls(**config["params"])
        model.t_, model.n_classes_ = config["t"], config["n_classes"]
        if isinstance(model, TrainedFusion):
            model._load_state(Path(directory), config)
        return model


def _vanilla_weights(inputs: FusionInputs) -> np.ndarray:
    w = np.zeros((inputs.n, inputs.t + 1))
    w[:, -1] = 1.0
    return w


class VanillaOnly(FusionMethod):
    """The vanilla model alone: the reference every fused method is compared against."""

    name = "vanilla"

    def weights(self, inputs: FusionInputs) -> np.ndarray:
        return _vanilla_weights(inputs)


class UniformAverage(FusionMethod):
    """The plain mean of the t LLM answers."""

    name = "uniform"

    def weights(self, inputs: FusionInputs) -> np.ndarray:
        w = np.full((inputs.n, inputs.t + 1), 1.0 / inputs.t)
        w[:, -1] = 0.0
        return w


class SingleWindow(FusionMethod):
    """The one answer at position b = t−1 (most past context); see the module docstring on t = 1."""

    name = "single"

    def weights(self, inputs: FusionInputs) -> np.ndarray:
        w = np.zeros((inputs.n, inputs.t + 1))
        w[:, inputs.t - 1] = 1.0
        return w


class TrainedFusion(FusionMethod):
    """A weighting module trained by cross-entropy of the mixture, hyperparameters chosen by K-fold CV.

    Grids: ``hidden_sizes`` (attention width), ``weight_decays`` (L2 penalty on every parameter,
    pulling the weights toward uniform), ``epoch_grid`` (full-batch Adam steps at learning rate
    ``lr``). For each hidden size, all (weight decay, fold) pairs train together as replicas for
    max(epoch_grid) steps and are scored at each grid epoch by held-out negative log-likelihood;
    the best triple (first in grid order on ties) is refitted on the whole fusion training set.
    Folds split dialogues, so a dialogue never sits on both sides. Test data never enter ``fit``.

    **[ours]** Vanilla guard (Lantern's ``attention``): the mixture cross-entropy rewards hedging,
    so against a useless LLM the optimum still mixes a little of it into p, which flips a few
    close calls. If the selected grid point's cross-validated accuracy does not beat the vanilla
    model's accuracy on the same utterances, the fitted weighting puts all weight on the vanilla
    candidate (``selected_["vanilla_only"]``): a useless LLM then leaves Lantern exactly vanilla.
    """

    trained = True
    uses_hidden: ClassVar[bool] = True
    vanilla_guard: ClassVar[bool] = False

    def __init__(
        self,
        *,
        hidden_sizes: Sequence[int] = (8, 32),
        weight_decays: Sequence[float] = (1e-3, 1e-2, 1e-1),
        epoch_grid: Sequence[int] = (100, 300),
        folds: int = 5,
        lr: float = 0.03,
        position_dim: int = 8,
        use_offset: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.weight_decays = tuple(float(x) for x in weight_decays)
        self.epoch_grid = tuple(sorted(int(e) for e in epoch_grid))
        if not self.hidden_sizes or not self.weight_decays or not self.epoch_grid:
            raise ValueError("hyperparameter grids must not be empty")
        if min(self.epoch_grid) < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epoch_grid}")
        self.folds = int(folds)
        self.lr = float(lr)
        self.position_dim = int(position_dim)
        self.use_offset = bool(use_offset)
        self.module_: nn.Module | None = None
        self.n_offsets_ = 0
        self.selected_: dict[str, Any] = {}
        self.cv_: list[dict[str, Any]] = []

    def get_params(self) -> dict[str, Any]:
        return {
            "hidden_sizes": list(self.hidden_sizes),
            "weight_decays": list(self.weight_decays),
            "epoch_grid": list(self.epoch_grid),
            "folds": self.folds,
            "lr": self.lr,
            "position_dim": self.position_dim,
            "use_offset": self.use_offset,
            "seed": self.seed,
        }

    @abstractmethod
    def _build(self, hidden: int, t: int, n_classes: int, replicas: int = 1) -> nn.Module:
        """A fresh weighting module mapping the inputs to weights ``(replicas, n, t + 1)``."""

    def _train(
        self,
        inputs: FusionInputs,
        hidden: int,
        weight_decays: Sequence[float],
        epochs: int,
        *,
        seed: int,
        train_mask: np.ndarray | None = None,
        score_at: Sequence[int] = (),
    ) -> tuple[nn.Module, dict[int, tuple[np.ndarray, np.ndarray]]]:
        """Train R = len(weight_decays) independent replicas by full-batch Adam on labelled ``inputs``.

        ``train_mask`` ``(R, n)`` says which utterances each replica learns from (all by default);
        the others are its held-out set, scored at each epoch of ``score_at`` by (summed NLL, number
        correct), each ``(R,)``. Returns the module and those scores.
        """
        replicas = len(weight_decays)
        mask = torch.ones(replicas, inputs.n) if train_mask is None else torch.as_tensor(train_mask).float()
        decay = torch.as_tensor(weight_decays, dtype=torch.float32)
        generator = torch.Generator().manual_seed(seed)
        module = self._build(hidden, inputs.t, inputs.n_classes, replicas)
        module.reset_parameters(generator)
        x = _tensors(inputs, self.n_offsets_)
        optimiser = torch.optim.Adam(module.parameters(), lr=self.lr)
        scores: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        wanted = set(score_at)
        for epoch in range(1, epochs + 1):
            optimiser.zero_grad()
            nll = _nll(module(x), x)  # (R, n)
            fit = (nll * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)
            penalty = sum((w.reshape(replicas, -1) ** 2).sum(dim=1) for w in module.parameters())
            (fit + decay * penalty).sum().backward()
            optimiser.step()
            if epoch in wanted:
                with torch.no_grad():
                    weights = module(x)
                    held = 1 - mask
                    correct = (_mixture(weights, x).argmax(dim=2) == x["labels"]).float()
                    scores[epoch] = (
                        (_nll(weights, x) * held).sum(dim=1).numpy(),
                        (correct * held).sum(dim=1).numpy(),
                    )
        module.eval()
        return module, scores

    def fit(self, inputs: FusionInputs) -> TrainedFusion:
        with _single_thread():
            return self._fit(inputs)

    def _fit(self, inputs: FusionInputs) -> TrainedFusion:
        super().fit(inputs)
        train = inputs.labelled()
        if train.n == 0:
            raise ValueError(f"fusion method {self.name!r}: no labelled utterances to train on")
        self.n_offsets_ = int(train.r.max()) + 1 if self.use_offset else 0
        self.cv_ = self._cross_validate(train)
        if self.cv_:
            best = min(self.cv_, key=lambda row: row["nll"])
            self.selected_ = {k: best[k] for k in ("hidden", "weight_decay", "epochs")}
            if self.vanilla_guard:
                vanilla = float((train.p.argmax(axis=1) == train.labels).mean())
                self.selected_["vanilla_only"] = best["accuracy"] <= vanilla
                self.selected_["cv_accuracy_vanilla"] = round(vanilla, 6)
        else:
            self.selected_ = {
                "hidden": self.hidden_sizes[0],
                "weight_decay": self.weight_decays[0],
                "epochs": self.epoch_grid[-1],
            }
        self.module_, _ = self._train(
            train,
            self.selected_["hidden"],
            [self.selected_["weight_decay"]],
            self.selected_["epochs"],
            seed=self.seed,
        )
        log.info("%s: selected %s by cross-validation", self.name, self.selected_)
        return self

    def _cross_validate(self, train: FusionInputs) -> list[dict[str, Any]]:
        """Mean held-out NLL of every grid point, K folds over dialogues (all folds × weight decays of
        one hidden size train together as replicas)."""
        dialogues = np.array(sorted(set(train.dialogues)))
        k = min(self.folds, len(dialogues))
        if k < 2:
            log.warning("%s: fewer than 2 dialogues, hyperparameters not cross-validated", self.name)
            return []
        rng = np.random.default_rng(self.seed)
        parts = np.array_split(rng.permutation(dialogues), k)
        fold_of = {dlg: f for f, part in enumerate(parts) for dlg in part}
        fold = np.array([fold_of[dlg] for dlg in train.dialogues])
        # Replica (w, f): weight decay w, trained on every fold but f.
        grid = [(wd, f) for wd in self.weight_decays for f in range(k)]
        train_mask = np.stack([fold != f for _, f in grid])
        rows = []
        for hidden in self.hidden_sizes if self.uses_hidden else self.hidden_sizes[:1]:
            _, scores = self._train(
                train,
                hidden,
                [wd for wd, _ in grid],
                self.epoch_grid[-1],
                seed=self.seed + 1,
                train_mask=train_mask,
                score_at=self.epoch_grid,
            )
            for wd in self.weight_decays:
                in_wd = np.array([g == wd for g, _ in grid])
                rows += [
                    {
                        "hidden": hidden,
                        "weight_decay": wd,
                        "epochs": e,
                        "nll": round(float(scores[e][0][in_wd].sum()) / train.n, 6),
                        "accuracy": round(float(scores[e][1][in_wd].sum()) / train.n, 6),
                    }
                    for e in self.epoch_grid
                ]
        return rows

    def weights(self, inputs: FusionInputs) -> np.ndarray:
        if self.module_ is None:
            raise ValueError(f"fusion method {self.name!r} is not fitted")
        if self.selected_.get("vanilla_only"):
            return _vanilla_weights(inputs)
        with torch.no_grad(), _single_thread():
            return self.module_(_tensors(inputs, self.n_offsets_))[0].double().numpy()

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n_offsets": self.n_offsets_, "selected": self.selected_, "cv": self.cv_}

    def save(self, directory: str | Path) -> None:
        if self.module_ is None:
            raise ValueError(f"fusion method {self.name!r} is not fitted")
        state = {k: v.detach().contiguous() for k, v in self.module_.state_dict().items()}
        atomic_write_bytes(Path(directory) / "model.safetensors", safetensors.torch.save(state))
        super().save(directory)

    def _load_state(self, directory: Path, config: dict[str, Any]) -> None:
        self.n_offsets_ = int(config["n_offsets"])
        self.selected_ = dict(config["selected"])
        self.cv_ = list(config["cv"])
        module = self._build(int(self.selected_["hidden"]), int(config["t"]), int(config["n_classes"]))
        module.load_state_dict(safetensors.torch.load((directory / "model.safetensors").read_bytes()))
        module.eval()
        self.module_ = module


class PositionWeighting(TrainedFusion):
    """Per-position weights softmax(θ_b), shared by all utterances (no hidden layer)."""

    name = "position"
    uses_hidden = False

    def _build(self, hidden: int, t: int, n_classes: int, replicas: int = 1) -> nn.Module:
        return PositionScorer(t, replicas)


class AttentionWeighting(TrainedFusion):
    """Lantern: additive attention over the t LLM answers and the vanilla distribution."""

    name = "attention"
    include_vanilla: ClassVar[bool] = True
    vanilla_guard = True

    def _build(self, hidden: int, t: int, n_classes: int, replicas: int = 1) -> nn.Module:
        return AttentionScorer(
            n_classes,
            t,
            hidden,
            self.position_dim,
            include_vanilla=self.include_vanilla,
            n_offsets=self.n_offsets_,
            replicas=replicas,
        )


class LLMOnlyAttentionWeighting(AttentionWeighting):
    """The paper-literal merge: attention over the t LLM answers only."""

    name = "attention-llm"
    include_vanilla = False
    vanilla_guard = False


class GatedAttentionWeighting(TrainedFusion):
    """β p + (1 − β) Σ α q with a learned per-utterance gate β."""

    name = "gated"

    def _build(self, hidden: int, t: int, n_classes: int, replicas: int = 1) -> nn.Module:
        return GatedScorer(
            n_classes, t, hidden, self.position_dim, n_offsets=self.n_offsets_, replicas=replicas
        )


METHODS: dict[str, type[FusionMethod]] = {
    m.name: m
    for m in (
        VanillaOnly,
        UniformAverage,
        SingleWindow,
        PositionWeighting,
        GatedAttentionWeighting,
        AttentionWeighting,
        LLMOnlyAttentionWeighting,
    )
}
DEFAULT_METHOD = AttentionWeighting.name


# --------------------------------------------------------------------------------------------
# The fusion stage over a run directory


def _infer_t(run: RunDir, answers: Sequence[Sequence[WindowAnswer]]) -> int:
    stats = run.llm / "stats.json"
    if stats.exists():
        t = read_json(stats).get("t")
        if t is not None:
            return int(t)
    positions = [u.b for windows in answers for w in windows for u in w.utterances]
    if not positions:
        raise ValueError(f"{run.llm}: no LLM answers to fuse")
    return max(positions) + 1


def _training_files(run: RunDir, train_split: str) -> tuple[Path, Path]:
    if train_split == "crossfit":
        return run.vanilla / "crossfit" / "predictions-train.jsonl", run.answers("train")
    if train_split == "test":
        raise ValueError("fusion must not be trained on the test split")
    return run.predictions(train_split), run.answers(train_split)


def fuse_run(
    run_dir: str | Path,
    methods: Sequence[str] | None = None,
    *,
    train_split: str = "dev",
    seed: int = 0,
    params: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Fit every fusion method on the held-out split and write its test predictions.

    Reads RUN_DIR/vanilla/predictions-{train_split,test}.jsonl and RUN_DIR/llm/answers-*.jsonl
    (``train_split="crossfit"``: RUN_DIR/vanilla/crossfit/predictions-train.jsonl with
    answers-train.jsonl); t comes from llm/stats.json or the answers. Writes
    RUN_DIR/fusion/<method>/{config.json, model.safetensors (trained methods),
    predictions-test.jsonl, attention.json}. ``params`` overrides a method's hyperparameters
    (e.g. ``{"attention": {"use_offset": True}}``). Returns a summary per method.
    """
    run = RunDir(run_dir)
    names = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown fusion method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    train_predictions_path, train_answers_path = _training_files(run, train_split)
    for path in (train_predictions_path, train_answers_path, run.predictions("test"), run.answers("test")):
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (fusion needs the vanilla and LLM stages' outputs)")
    train_answers = read_window_answers(train_answers_path)
    test_answers = read_window_answers(run.answers("test"))
    t = _infer_t(run, [train_answers, test_answers])
    train_inputs = build_inputs(read_predictions(train_predictions_path), train_answers, t)
    test_predictions = read_predictions(run.predictions("test"))
    test_inputs = build_inputs(test_predictions, test_answers, t)

    summary: dict[str, Any] = {}
    for name in names:
        started = time.perf_counter()
        model = METHODS[name](seed=seed, **(params or {}).get(name, {}))
        model.fit(train_inputs)
        fused = model.predict_proba(test_inputs)
        out_dir = run.fusion / name
        model.save(out_dir)
        write_predictions(
            out_dir / "predictions-test.jsonl",
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
        }
        write_json(out_dir / "attention.json", attention)
        summary[name] = {
            "trained": model.trained,
            "train_split": train_split,
            "n_train": int((train_inputs.labels >= 0).sum()),
            "n_test": test_inputs.n,
            "t": t,
            "selected": getattr(model, "selected_", {}),
            "attention": attention["test"],
            "seconds": round(time.perf_counter() - started, 3),
        }
        log.info("fusion %s done in %.1fs", name, summary[name]["seconds"])
    return summary
