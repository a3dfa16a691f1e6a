"""The weighting modules: the math of one fusion model, mapping inputs to mixture weights.

Every method is a mixture ``ŷ_i = Σ_k w_ik q_ik + w_i,vanilla p_i`` (weights ≥ 0, summing to 1);
a scorer maps the inputs to those weights ``(n, t + 1)``, column k for the answer at position b = k,
the last for the vanilla distribution. Inputs come as tensors (:func:`tensors`): q ``(n, t, C)``,
p ``(n, C)``, d ``(n, 3)``, b ``(n, t)``, past and future ``(n, t)`` (the utterance's context in each
field, clamped to the learned table), labels ``(n,)``.

These are plain single-model modules; cross-validation trains many copies at once by stacking
their parameters (:mod:`lantern.fusion.crossval`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lantern.fusion.inputs import FusionInputs
from lantern.models.batch import VAD_DIMS

EPS = 1e-8


def tensors(inputs: FusionInputs, n_context: int) -> dict[str, torch.Tensor]:
    """The inputs as float32/long tensors; context lengths beyond the learned table share its last row."""
    top = max(n_context, 1) - 1
    return {
        "q": torch.as_tensor(inputs.q, dtype=torch.float32),
        "p": torch.as_tensor(inputs.p, dtype=torch.float32),
        "d": torch.as_tensor(inputs.d, dtype=torch.float32),
        "b": torch.as_tensor(inputs.b, dtype=torch.long),
        "past": torch.as_tensor(np.minimum(inputs.r, top), dtype=torch.long),
        "future": torch.as_tensor(np.minimum(inputs.future, top), dtype=torch.long),
        "labels": torch.as_tensor(inputs.labels, dtype=torch.long),
    }


def mixture(weights: torch.Tensor, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ_k w_k · candidate_k: ``(..., n, C)`` from weights ``(..., n, t + 1)``."""
    candidates = torch.cat([x["q"], x["p"][:, None, :]], dim=1)  # (n, t + 1, C)
    return torch.einsum("...nk,nkc->...nc", weights, candidates)


def mixture_nll(weights: torch.Tensor, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-utterance cross-entropy ``(..., n)`` of the mixtures (log clamped at EPS)."""
    mixed = mixture(weights, x)
    labels = x["labels"].expand(mixed.shape[:-1])
    picked = mixed.gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
    return -torch.log(picked.clamp_min(EPS))


def _normal_(tensor: torch.Tensor, scale: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        tensor.copy_(scale * torch.randn(tensor.shape, generator=generator))


class PositionScorer(nn.Module):
    """weights = softmax(θ_b) over the t positions, the same for every utterance. θ: ``(t,)``."""

    def __init__(self, t: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(t))

    def reset_parameters(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            self.theta.zero_()

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        n = x["q"].shape[0]
        alpha = torch.softmax(self.theta, dim=0).expand(n, -1)
        return torch.cat([alpha, alpha.new_zeros(n, 1)], dim=1)


class AttentionScorer(nn.Module):
    """Additive attention over candidates z = [q; E_pos(b); E_past(past); E_future(future); p; d]:

        e = vᵀ tanh(W z + c) + a_b,        α = softmax over the candidates.

    W z is computed block by block (W_q q + W_pos E_pos(b) + W_ctx [E_past; E_future] + W_pd [p; d])
    so the per-utterance part [p; d] is projected once, not once per candidate. The context
    embeddings (``n_context`` > 0) give the utterance's true past and future context in the field:
    at the edges b alone is nominal (for i < s the field at b = t−1 has no past context at all).
    **[ours]** a_b is a scalar bias per position outside the tanh, so "fixed weights per position,
    e.g. nearly all on the vanilla candidate" is cheap to express (a few small numbers instead of a
    saturated tanh layer): a useless LLM can be switched off without a large weight norm.

    With ``include_vanilla`` the vanilla distribution is candidate t, with position row t (and
    context rows ``n_context``). Returns weights ``(n, t + 1)``; the last column is 0 without it.
    Parameters: E_pos ``(t + 1, P)``, E_past and E_future ``(n_context + 1, P)``, W_* ``(H, ·)``,
    c and v ``(H,)``, a ``(t + 1,)``. v starts at 0, so training starts from uniform weights.
    """

    def __init__(
        self,
        n_classes: int,
        t: int,
        hidden: int,
        position_dim: int,
        *,
        include_vanilla: bool,
        n_context: int = 0,
    ) -> None:
        super().__init__()
        self.t = t
        self.include_vanilla = include_vanilla
        self.n_context = n_context
        self.position = nn.Parameter(torch.zeros(t + 1, position_dim))
        self.past = nn.Parameter(torch.zeros(n_context + 1, position_dim)) if n_context else None
        self.future = nn.Parameter(torch.zeros(n_context + 1, position_dim)) if n_context else None
        self.W_q = nn.Parameter(torch.zeros(hidden, n_classes))
        self.W_pos = nn.Parameter(torch.zeros(hidden, position_dim))
        self.W_ctx = nn.Parameter(torch.zeros(hidden, 2 * position_dim)) if n_context else None
        self.W_pd = nn.Parameter(torch.zeros(hidden, n_classes + VAD_DIMS))
        self.c = nn.Parameter(torch.zeros(hidden))
        self.v = nn.Parameter(torch.zeros(hidden))
        self.position_bias = nn.Parameter(torch.zeros(t + 1))

    def reset_parameters(self, generator: torch.Generator) -> None:
        projections = [w for w in (self.W_q, self.W_pos, self.W_ctx, self.W_pd) if w is not None]
        z_dim = sum(w.shape[1] for w in projections)
        for emb in (self.position, self.past, self.future):
            if emb is not None:
                _normal_(emb, 1.0, generator)
        for w in projections:
            _normal_(w, z_dim**-0.5, generator)
        with torch.no_grad():
            for zero in (self.c, self.v, self.position_bias):
                zero.zero_()

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        q, p, d, b = x["q"], x["p"], x["d"], x["b"]
        past, future = x["past"], x["future"]
        n = q.shape[0]
        if self.include_vanilla:
            q = torch.cat([q, p[:, None, :]], dim=1)
            b = torch.cat([b, b.new_full((n, 1), self.t)], dim=1)
            past = torch.cat([past, past.new_full((n, 1), self.n_context)], dim=1)
            future = torch.cat([future, future.new_full((n, 1), self.n_context)], dim=1)
        pre = q @ self.W_q.T  # (n, k, H)
        pre = pre + (self.position @ self.W_pos.T)[b]
        if self.past is not None and self.future is not None and self.W_ctx is not None:
            width = self.position.shape[1]
            pre = (
                pre
                + (self.past @ self.W_ctx[:, :width].T)[past]
                + (self.future @ self.W_ctx[:, width:].T)[future]
            )
        context = torch.cat([p, d], dim=1) @ self.W_pd.T + self.c  # (n, H)
        h = torch.tanh(pre + context[:, None, :])
        e = h @ self.v + self.position_bias[b]  # (n, k)
        alpha = torch.softmax(e, dim=1)
        if not self.include_vanilla:
            alpha = torch.cat([alpha, alpha.new_zeros(n, 1)], dim=1)
        return alpha


class GatedScorer(nn.Module):
    """β p + (1 − β) Σ α q: attention over the LLM answers, and a gate β = sigmoid(uᵀ[p; d] + u₀).

    Gate parameters: u ``(C + 3,)``, u₀ ``()``.
    """

    def __init__(self, n_classes: int, t: int, hidden: int, position_dim: int, *, n_context: int = 0) -> None:
        super().__init__()
        self.attention = AttentionScorer(
            n_classes, t, hidden, position_dim, include_vanilla=False, n_context=n_context
        )
        self.gate_weight = nn.Parameter(torch.zeros(n_classes + VAD_DIMS))
        self.gate_bias = nn.Parameter(torch.zeros(()))

    def reset_parameters(self, generator: torch.Generator) -> None:
        self.attention.reset_parameters(generator)
        _normal_(self.gate_weight, 0.1, generator)
        with torch.no_grad():
            self.gate_bias.zero_()

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        alpha = self.attention(x)[:, :-1]
        beta = torch.sigmoid(torch.cat([x["p"], x["d"]], dim=1) @ self.gate_weight + self.gate_bias)
        return torch.cat([(1 - beta[:, None]) * alpha, beta[:, None]], dim=1)
