"""The fusion methods: estimators that merge each utterance's t LLM answers (and its vanilla p).

Every method is a mixture ``ŷ_i = Σ_k w_ik q_ik + w_i,vanilla p_i`` and differs only in how the
weights are found (docs/method.md §4):

- ``vanilla``: w = 1 on p (the vanilla model alone);
- ``uniform``: the mean of the t LLM answers;
- ``single``: the one answer at position b = t−1 (the field with the most past context). This only
  approximates the t = 1 ablation: the ablation proper reruns the LLM stage with t = 1, whose fields
  do not overlap;
- ``position``: learned per-position weights softmax(θ_b), the same for every utterance;
- ``gated``: β_i p_i + (1−β_i) Σ_k α_ik q_ik, α the attention below over the LLM answers and
  β_i = sigmoid(uᵀ[p_i; d_i] + u₀) a learned gate;
- ``attention`` (Lantern's default): additive attention over the candidates, the vanilla
  distribution p_i being one more candidate with its own position embedding, so a useless LLM can
  be ignored (:class:`lantern.fusion.scorers.AttentionScorer`), then the vanilla guard: the learned
  weighting is kept only if its held-out likelihood beats vanilla's by a margin (:class:`SearchCV`);
- ``attention-unguarded``: the same attention without the guard, reported beside it;
- ``attention-llm``: the paper-literal variant, attention over the t LLM answers only.

Estimators follow scikit-learn's shape: hyperparameters in ``__init__`` (stored, not validated
there), ``fit(inputs)`` returns self, learned state ends in ``_``, ``predict_proba(inputs)``, and
``save(dir)`` / :meth:`FusionMethod.load`. The trained methods minimise the cross-entropy of the
mixture on held-out utterances by full-batch Adam with the hyperparameters they are given; choosing
those (and the guard) is :class:`lantern.fusion.crossval.SearchCV`'s job, never the estimator's.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import safetensors.torch
import torch
from torch import nn

from lantern.errors import LanternError
from lantern.fusion.crossval import single_thread, train_replicas
from lantern.fusion.inputs import FusionInputs
from lantern.fusion.scorers import AttentionScorer, GatedScorer, PositionScorer, tensors
from lantern.rundir import MethodFiles, atomic_write_bytes, read_json, write_json

log = logging.getLogger(__name__)

VANILLA_KEY = "vanilla"


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
            raise LanternError(f"fusion method {self.name!r} is not fitted")
        if inputs.t != self.t_ or inputs.n_classes != self.n_classes_:
            raise LanternError(
                f"fusion method {self.name!r} was fitted for t={self.t_}, C={self.n_classes_}; "
                f"got t={inputs.t}, C={inputs.n_classes}"
            )

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "params": self.get_params(), "t": self.t_, "n_classes": self.n_classes_}

    def save(self, directory: str | Path) -> None:
        """config.json (enough to rebuild) and, for trained methods, model.safetensors."""
        write_json(MethodFiles(Path(directory)).config, self.config())

    @classmethod
    def load(cls, directory: str | Path) -> FusionMethod:
        """Rebuild a saved method; called on ``FusionMethod`` it dispatches on config["method"]."""
        files = MethodFiles(Path(directory))
        config = read_json(files.config)
        method_cls = METHODS.get(config.get("method", ""))
        if method_cls is None or not issubclass(method_cls, cls):
            raise LanternError(f"{files.config}: holds no {cls.__name__} (method {config.get('method')!r})")
        model = method_cls(**config["params"])
        model.t_, model.n_classes_ = config["t"], config["n_classes"]
        if isinstance(model, TrainedFusion):
            model._load_state(files, config)
        return model


def vanilla_weights(inputs: FusionInputs) -> np.ndarray:
    """All weight on the vanilla candidate ``(n, t + 1)``."""
    w = np.zeros((inputs.n, inputs.t + 1))
    w[:, -1] = 1.0
    return w


class VanillaOnly(FusionMethod):
    """The vanilla model alone: the reference every fused method is compared against."""

    name = "vanilla"

    def weights(self, inputs: FusionInputs) -> np.ndarray:
        return vanilla_weights(inputs)


class UniformAverage(FusionMethod):
    """The plain mean of the t LLM answers."""

    name = "uniform"

    def weights(self, inputs: FusionInputs) -> np.ndarray:
        w = np.full((inputs.n, inputs.t + 1), 1.0 / inputs.t)
        w[:, -1] = 0.0
        return w


class SingleField(FusionMethod):
    """The one answer at position b = t−1 (most past context); see the module docstring on t = 1."""

    name = "single"

    def weights(self, inputs: FusionInputs) -> np.ndarray:
        w = np.zeros((inputs.n, inputs.t + 1))
        w[:, inputs.t - 1] = 1.0
        return w


class TrainedFusion(FusionMethod):
    """A weighting module trained by cross-entropy of the mixture on labelled held-out utterances.

    ``hidden`` (attention width), ``weight_decay`` (L2 penalty on every parameter, pulling the
    weights toward uniform), ``epochs`` (full-batch Adam steps at ``lr``), ``position_dim`` (width of
    the position embeddings), ``use_context`` (embed the utterance's true past and future context
    in each field, not only its position b).

    ``shrink_`` and ``smooth_`` are set by model selection's vanilla guard (:class:`SearchCV`): the
    fitted weights are ``shrink_ · w + (1 − shrink_) · vanilla`` (the guard sets 1, the learned
    weights as they are, or 0, vanilla alone), and the vanilla share is smoothed toward uniform by
    ``smooth_`` (calibration only: it never changes which class vanilla ranks first).
    """

    trained = True
    uses_hidden: ClassVar[bool] = True

    def __init__(
        self,
        *,
        hidden: int = 8,
        weight_decay: float = 1e-2,
        epochs: int = 300,
        lr: float = 0.03,
        position_dim: int = 8,
        use_context: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        self.hidden = hidden
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.lr = lr
        self.position_dim = position_dim
        self.use_context = use_context
        self.module_: nn.Module | None = None
        self.n_context_ = 0
        self.shrink_ = 1.0
        self.smooth_ = 0.0
        self.selection_: dict[str, Any] = {}

    def get_params(self) -> dict[str, Any]:
        return {
            "hidden": self.hidden,
            "weight_decay": self.weight_decay,
            "epochs": self.epochs,
            "lr": self.lr,
            "position_dim": self.position_dim,
            "use_context": self.use_context,
            "seed": self.seed,
        }

    @abstractmethod
    def build(self, hidden: int, t: int, n_classes: int) -> nn.Module:
        """A fresh weighting module mapping the inputs to weights ``(n, t + 1)``."""

    def prepare(self, inputs: FusionInputs) -> dict[str, torch.Tensor]:
        """Fix the input-dependent shapes (context table) from the training inputs; their tensors."""
        self.t_, self.n_classes_ = inputs.t, inputs.n_classes
        self.n_context_ = int(max(inputs.r.max(), inputs.future.max())) + 1 if self.use_context else 0
        return tensors(inputs, self.n_context_)

    def fit(self, inputs: FusionInputs) -> TrainedFusion:
        train = inputs.labelled()
        if train.n == 0:
            raise LanternError(f"fusion method {self.name!r}: no labelled utterances to train on")
        with single_thread():
            x = self.prepare(train)
            (self.module_,), _ = train_replicas(
                lambda: self.build(self.hidden, train.t, train.n_classes),
                x,
                [self.weight_decay],
                self.epochs,
                lr=self.lr,
                seed=self.seed,
            )
        return self

    def predict_proba(self, inputs: FusionInputs) -> np.ndarray:
        y = super().predict_proba(inputs)
        if self.smooth_ == 0.0:
            return y
        vanilla_share = self.weights(inputs)[:, -1:]
        return y + vanilla_share * self.smooth_ * (1.0 / inputs.n_classes - inputs.p)

    def weights(self, inputs: FusionInputs) -> np.ndarray:
        if self.module_ is None:
            raise LanternError(f"fusion method {self.name!r} is not fitted")
        with torch.no_grad(), single_thread():
            learned = self.module_(tensors(inputs, self.n_context_)).double().numpy()
        return self.shrink_ * learned + (1.0 - self.shrink_) * vanilla_weights(inputs)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "n_context": self.n_context_,
            "shrink": self.shrink_,
            "smooth": self.smooth_,
            "selection": self.selection_,
        }

    def save(self, directory: str | Path) -> None:
        if self.module_ is None:
            raise LanternError(f"fusion method {self.name!r} is not fitted")
        state = {k: v.detach().contiguous() for k, v in self.module_.state_dict().items()}
        atomic_write_bytes(MethodFiles(Path(directory)).model, safetensors.torch.save(state))
        super().save(directory)

    def _load_state(self, files: MethodFiles, config: dict[str, Any]) -> None:
        self.n_context_ = int(config["n_context"])
        self.shrink_ = float(config.get("shrink", 1.0))
        self.smooth_ = float(config.get("smooth", 0.0))
        self.selection_ = dict(config.get("selection", {}))
        module = self.build(self.hidden, int(config["t"]), int(config["n_classes"]))
        module.load_state_dict(safetensors.torch.load(files.model.read_bytes()))
        module.eval()
        self.module_ = module


class PositionWeighting(TrainedFusion):
    """Per-position weights softmax(θ_b), shared by all utterances (no hidden layer)."""

    name = "position"
    uses_hidden = False

    def build(self, hidden: int, t: int, n_classes: int) -> nn.Module:
        return PositionScorer(t)


class AttentionWeighting(TrainedFusion):
    """Lantern: additive attention over the t LLM answers and the vanilla distribution."""

    name = "attention"
    include_vanilla: ClassVar[bool] = True

    def build(self, hidden: int, t: int, n_classes: int) -> nn.Module:
        return AttentionScorer(
            n_classes,
            t,
            hidden,
            self.position_dim,
            include_vanilla=self.include_vanilla,
            n_context=self.n_context_,
        )


class UnguardedAttentionWeighting(AttentionWeighting):
    """Lantern's attention without the vanilla guard: reported beside the guarded one."""

    name = "attention-unguarded"

    @classmethod
    def from_guarded(cls, guarded: AttentionWeighting) -> UnguardedAttentionWeighting:
        """The same fitted attention with the guard undone: the guard is applied after fitting, so
        the two differ only in ``shrink_`` and ``smooth_`` and one fit serves both."""
        model = cls(**guarded.get_params())
        model.t_, model.n_classes_ = guarded.t_, guarded.n_classes_
        model.module_, model.n_context_ = guarded.module_, guarded.n_context_
        model.selection_ = {k: v for k, v in guarded.selection_.items() if k != "guard"}
        return model


class LLMOnlyAttentionWeighting(AttentionWeighting):
    """The paper-literal merge: attention over the t LLM answers only."""

    name = "attention-llm"
    include_vanilla = False


class GatedAttentionWeighting(TrainedFusion):
    """β p + (1 − β) Σ α q with a learned per-utterance gate β."""

    name = "gated"

    def build(self, hidden: int, t: int, n_classes: int) -> nn.Module:
        return GatedScorer(n_classes, t, hidden, self.position_dim, n_context=self.n_context_)


METHODS: dict[str, type[FusionMethod]] = {
    m.name: m
    for m in (
        VanillaOnly,
        UniformAverage,
        SingleField,
        PositionWeighting,
        GatedAttentionWeighting,
        AttentionWeighting,
        UnguardedAttentionWeighting,
        LLMOnlyAttentionWeighting,
    )
}
DEFAULT_METHOD = AttentionWeighting.name
# Methods whose selection ends with the vanilla guard (Lantern's own).
GUARDED = (AttentionWeighting.name,)
