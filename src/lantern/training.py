"""Stage 1: train the multi-task vanilla model, select it on dev, save it, predict every split.

Loss = the model's own classification loss (SDT's includes self-distillation) + λ · masked VAD MSE
(docs/method.md §1). Model selection uses dev weighted F1 only; ``fit`` is handed the training and dev
dialogues and nothing else, so the test split cannot leak into training or selection.

Files written under RUN_DIR/vanilla/ (docs/run-directory.md): model.safetensors, config.json (everything that
rebuilds the model and reads new dialogues), metrics.json (per-epoch history, the chosen epoch),
predictions-{train,dev,test}.jsonl, and optionally crossfit/predictions-train.jsonl.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

from lantern import __version__
from lantern.cores import CoreBudget
from lantern.corpus.dialogue import SPLITS, Corpus, Dialogue
from lantern.errors import LanternError
from lantern.jsonio import read_json
from lantern.labels import IEMOCAP6, LabelSet
from lantern.metrics import classification_report
from lantern.models.batch import IGNORE_LABEL, collate, vad_from_unit
from lantern.models.heads import masked_vad_loss
from lantern.models.registry import build_model, config_for_corpus, parameter_summary, speaker_vocabulary
from lantern.predictions import Prediction, write_predictions
from lantern.progress import progress_bar
from lantern.rundir import RunDir, VanillaFiles, atomic_write_bytes, write_json
from lantern.train_config import CLASS_WEIGHT_POWERS, TrainConfig, default_preset, make_train_config

log = logging.getLogger(__name__)

# Published IEMOCAP 6-way training priors (docs/data.md); SDT weights its NLL by their inverses.
IEMOCAP6_PRIORS = (0.0867, 0.1444, 0.2279, 0.1606, 0.1277, 0.2527)


@contextmanager
def mixed_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Faster arithmetic for training on a GPU: "tf32" lets fp32 matrix products use TF32 tensor
    cores, "bf16" runs the forward pass under bfloat16 autocast. On the CPU (and for "fp32") this
    changes nothing, so CPU runs stay bit-reproducible. Global backend flags are restored on exit."""
    if device.type != "cuda" or precision == "fp32":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        if precision == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def resolve_device(device: str) -> torch.device:
    """ "auto" → cuda when available, else cpu; anything else as torch understands it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def class_weight_tensor(labels: LabelSet, train: Sequence[Dialogue], power: float = 1.0) -> torch.Tensor:
    """1/prior**power per class (power 1: ``inverse_prior``, 0.5: ``sqrt_inverse_prior``): the
    published priors for IEMOCAP 6-way, else the training split's own frequencies (a class absent
    from training gets weight 0, so it cannot divide by zero)."""
    if labels == IEMOCAP6:
        priors = np.asarray(IEMOCAP6_PRIORS)
    else:
        counts = np.bincount(
            [u.label for d in train for u in d.utterances if u.label is not None], minlength=len(labels)
        ).astype(float)
        priors = counts / max(counts.sum(), 1.0)
    weights = np.divide(1.0, priors**power, out=np.zeros_like(priors), where=priors > 0)
    return torch.tensor(weights, dtype=torch.float32)


def loss_class_weights(
    config: TrainConfig, labels: LabelSet, train: Sequence[Dialogue]
) -> torch.Tensor | None:
    """The class weights ``config.class_weights`` names (None for "none")."""
    power = CLASS_WEIGHT_POWERS[config.class_weights]
    return None if power is None else class_weight_tensor(labels, train, power)


def length_batches(
    dialogues: Sequence[Dialogue], batch_size: int, generator: torch.Generator, bucket_batches: int = 4
) -> list[list[Dialogue]]:
    """Batches of similar-length dialogues, in a random order.

    The dialogues are shuffled, cut into pools of ``batch_size · bucket_batches``, each pool is
    sorted by length (less padding) and cut into batches, and the batches are shuffled. Pools keep
    batch composition random from epoch to epoch; everything draws from ``generator``.
    """
    order = torch.randperm(len(dialogues), generator=generator).tolist()
    pool = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), pool):
        members = sorted(order[start : start + pool], key=lambda i: len(dialogues[i]))
        batches.extend(members[j : j + batch_size] for j in range(0, len(members), batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [[dialogues[i] for i in batches[b]] for b in shuffled]


class WeightAverage:
    """A moving average of a model's floating-point state over about ``horizon`` optimiser steps.

    Why: on MELD's small, skewed dev split the weighted F1 of consecutive epochs jumps by a point or
    two, so selecting the best epoch picks a lucky draw as much as a good model; an average of the
    recent weights moves smoothly (Polyak averaging) [ours] — on MELD dev it raised text-only
    CORECT's 3-seed mean from 55.68 to 56.44 and did nothing for SDT (bench/results/
    real_data_recipe_search.json). Until
    ``horizon`` steps have been taken it is the plain mean of every step so far (no pull toward the
    initial weights), then an exponential average with decay 1 - 1/horizon. Integer buffers (counts)
    are copied as they are. The training itself is unchanged: the average is only what is evaluated,
    selected and saved.
    """

    def __init__(self, model: nn.Module, horizon: float) -> None:
        if horizon < 1:
            raise LanternError(f"the averaging horizon must be at least one step, got {horizon}")
        self.horizon = horizon
        self.steps = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current state in, after an optimiser step."""
        self.steps += 1
        weight = max(1.0 / self.steps, 1.0 / self.horizon)
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                self.state[name].lerp_(value.detach(), weight)
            else:
                self.state[name].copy_(value)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its own weights again after."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(own)


@dataclass
class FitResult:
    """history: one record per epoch (train_loss, dev loss/accuracy/weighted_f1, lr);
    best_epoch: 1-based epoch whose weights the model holds after ``fit``; seconds: the wall time
    of the whole fit (kept out of the history, which a seed reproduces exactly)."""

    history: list[dict]
    best_epoch: int
    best_dev: dict
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "selection": "dev weighted_f1",
            "best_epoch": self.best_epoch,
            "best_dev": self.best_dev,
            "history": self.history,
            "seconds": self.seconds,
        }


def _loss(
    model: nn.Module,
    output,
    batch,
    class_weights: torch.Tensor | None,
    lambda_vad: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The training objective; the dev loss (which the plateau scheduler reads) keeps the plain
    NLL, ``label_smoothing`` 0, so that it measures the model rather than the regulariser."""
    loss = model.classification_loss(output, batch, class_weights, label_smoothing)
    if lambda_vad > 0 and output.vad is not None:
        loss = loss + lambda_vad * masked_vad_loss(output.vad, batch.vad, batch.vad_mask)
    return loss


def _batches(dialogues: Sequence[Dialogue], batch_size: int) -> Iterator[list[Dialogue]]:
    for start in range(0, len(dialogues), batch_size):
        yield list(dialogues[start : start + batch_size])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dialogues: Sequence[Dialogue],
    classes: Sequence[str],
    *,
    speaker_vocab: dict[str, int],
    modalities: Sequence[str],
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    class_weights: torch.Tensor | None = None,
    lambda_vad: float = 1.0,
) -> dict:
    """Mean loss per batch and the classification report (%, metrics.classification_report) of
    the model's argmax on the labelled utterances of ``dialogues``, in eval mode."""
    model.eval()
    gold: list[int] = []
    pred: list[int] = []
    losses: list[float] = []
    for chunk in _batches(dialogues, batch_size):
        batch = collate(chunk, speaker_vocab, modalities).to(device)
        output = model(batch)
        losses.append(float(_loss(model, output, batch, class_weights, lambda_vad)))
        labelled = batch.labels != IGNORE_LABEL
        gold.extend(batch.labels[labelled].tolist())
        pred.extend(output.log_probs.argmax(-1)[labelled].tolist())
    report = classification_report(gold, pred, classes)
    report["loss"] = float(np.mean(losses)) if losses else 0.0
    return report


def _first_non_finite(dialogues: Sequence[Dialogue]) -> str | None:
    """Where the first NaN/inf feature value of ``dialogues`` is, if any."""
    for d in dialogues:
        for m, x in d.features.items():
            bad = ~np.isfinite(x).all(axis=1)
            if bad.any():
                return f"dialogue {d.id}, utterance {d.utterances[int(np.argmax(bad))].id}, modality {m!r}"
    return None


def _stopped(epoch: int, what: str, dialogues: Sequence[Dialogue], lr: float) -> LanternError:
    """The error that ends a training whose ``what`` became NaN/inf: bad features if the dialogues
    involved have any (an in-memory corpus is not checked like a loaded one), else divergence."""
    where = _first_non_finite(dialogues)
    if where is not None:
        return LanternError(f"{where}: a NaN/inf feature value made the {what} non-finite at epoch {epoch}")
    return LanternError(
        f"training diverged at epoch {epoch}: the {what} became NaN/inf; lower the learning rate "
        f"(now {lr:g}) and train again (no model was written)"
    )


def _finite_weights(model: nn.Module) -> bool:
    checks = [torch.isfinite(p).all() for p in model.parameters() if p.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def fit(
    model: nn.Module,
    train: Sequence[Dialogue],
    dev: Sequence[Dialogue],
    config: TrainConfig,
    *,
    classes: Sequence[str],
    speaker_vocab: dict[str, int],
    modalities: Sequence[str],
    class_weights: torch.Tensor | None = None,
) -> FitResult:
    """Train ``model`` in place on ``train``; keep the weights of the epoch with the best dev
    weighted F1 (first best on ties). Deterministic on CPU for a given ``config.seed``. With
    ``config.patience`` > 0, stop after that many epochs without a new best. With
    ``config.average_epochs`` > 0 every dev figure, the selection and the weights kept are those of
    the :class:`WeightAverage`, not of the last step.

    A NaN/inf training loss, dev loss or weight stops training with a LanternError (naming the
    dialogue when a feature value is to blame), so that no caller ever saves a NaN model."""
    if not train:
        raise LanternError("the corpus has no training dialogues")
    if not dev:
        raise LanternError("the corpus has no dev dialogues: model selection needs a dev split")
    device = resolve_device(config.device)
    model.to(device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    # The fused kernel does the whole step in one pass over the parameters: 5x faster on CPU here.
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        weight_decay=config.weight_decay,
        fused=True,
    )
    scheduler = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer) if config.scheduler == "plateau" else None
    )
    history: list[dict] = []
    started = time.perf_counter()
    best_f1, best_epoch, best_dev, best_state = -1.0, 0, {}, None
    average: WeightAverage | None = None
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    budget = CoreBudget() if device.type == "cpu" and not config.threads else None
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        bar = progress_bar(range(1, config.epochs + 1), desc="train", unit="epoch", enabled=config.progress)
        for epoch in bar:
            if device.type == "cpu":
                torch.set_num_threads(config.threads or budget.threads())
            model.train()
            train_losses = []
            batches = length_batches(train, config.batch_size, generator, config.bucket_batches)
            if config.average_epochs and average is None:
                average = WeightAverage(model, max(1.0, config.average_epochs * len(batches)))
            for chunk in batches:
                batch = collate(chunk, speaker_vocab, modalities).to(device)
                with mixed_precision(config.precision, device):
                    loss = _loss(
                        model, model(batch), batch, class_weights, config.lambda_vad, config.label_smoothing
                    )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if average is not None:
                    average.update(model)
                train_losses.append(loss.item())
                if not math.isfinite(train_losses[-1]):
                    raise _stopped(epoch, "training loss", chunk, config.lr)
            if not _finite_weights(model):
                raise _stopped(epoch, "model's weights", train, config.lr)
            with average.applied(model) if average is not None else nullcontext():
                dev_report = evaluate(
                    model,
                    dev,
                    classes,
                    speaker_vocab=speaker_vocab,
                    modalities=modalities,
                    device=device,
                    batch_size=config.batch_size,
                    class_weights=class_weights,
                    lambda_vad=config.lambda_vad,
                )
                if dev_report["weighted_f1"] > best_f1:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if not math.isfinite(dev_report["loss"]):
                raise _stopped(epoch, "dev loss", dev, config.lr)
            if scheduler is not None:
                scheduler.step(dev_report["loss"])
            record = {
                "epoch": epoch,
                "train_loss": float(np.mean(train_losses)),
                "dev_loss": dev_report["loss"],
                "dev_accuracy": dev_report["accuracy"],
                "dev_weighted_f1": dev_report["weighted_f1"],
                "lr": optimizer.param_groups[0]["lr"],
            }
            if device.type == "cpu":
                # what the free-core budget chose, so that a rerun can pin it (TrainConfig.threads)
                record["threads"] = torch.get_num_threads()
            history.append(record)
            if dev_report["weighted_f1"] > best_f1:
                best_f1, best_epoch, best_dev = dev_report["weighted_f1"], epoch, dev_report
            bar.set_postfix(
                loss=f"{record['train_loss']:.3f}",
                dev_acc=record["dev_accuracy"],
                dev_wf1=record["dev_weighted_f1"],
            )
            log.info("epoch %d: %s", epoch, record)
            if config.patience and epoch - best_epoch >= config.patience:
                log.info(
                    "no better dev weighted F1 for %d epochs: stopped at epoch %d", config.patience, epoch
                )
                break
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        torch.set_num_threads(threads_before)
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(
        history=history,
        best_epoch=best_epoch,
        best_dev=best_dev,
        seconds=round(time.perf_counter() - started, 3),
    )


@dataclass
class CheckpointMeta:
    """What config.json holds beside the weights: enough to rebuild the model and read new dialogues.

    ``vad_trained`` is False when the VAD head received no loss (λ = 0 or a corpus without VAD
    labels); predictions then carry no VAD.
    """

    model: str
    model_config: dict
    labels: LabelSet
    modalities: dict[str, int]
    speaker_vocab: dict[str, int]
    vad_trained: bool
    seed: int
    training: dict = field(default_factory=dict)
    corpus_fingerprint: str | None = None
    parameters: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "lantern_version": __version__,
            "model": self.model,
            "model_config": self.model_config,
            "label_set": self.labels.to_json(),
            "modalities": self.modalities,
            "speaker_vocabulary": self.speaker_vocab,
            "vad_trained": self.vad_trained,
            "seed": self.seed,
            "training": self.training,
            "corpus_fingerprint": self.corpus_fingerprint,
            "parameters": self.parameters,
        }

    @classmethod
    def from_json(cls, data: Any) -> CheckpointMeta:
        """The inverse of ``to_json``; ValueError naming the first key that is missing or holds
        the wrong type (config.json is a file people can edit)."""
        if not isinstance(data, dict):
            raise LanternError(f"expected a JSON object, got {type(data).__name__}")

        def get(key: str, kind: type | tuple[type, ...], what: str, default: Any = ...) -> Any:
            if key not in data:
                if default is ...:
                    raise LanternError(f"missing key {key!r}")
                return default
            value = data[key]
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
                raise LanternError(f"{key!r} must be {what}, got a {type(value).__name__}")
            return value

        def counts(key: str) -> dict[str, int]:
            table = get(key, dict, "an object of names to integers")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in table.values()):
                raise LanternError(f"{key!r} must map names to integers")
            return dict(table)

        label_set = get("label_set", dict, "an object with 'name' and 'classes'")
        classes = label_set.get("classes")
        if not isinstance(label_set.get("name"), str) or not (
            isinstance(classes, list) and all(isinstance(c, str) for c in classes)
        ):
            raise LanternError("'label_set' must hold a 'name' and a list of class names 'classes'")
        return cls(
            model=get("model", str, "a model name"),
            model_config=get("model_config", dict, "an object"),
            labels=LabelSet.from_json(label_set),
            modalities=counts("modalities"),
            speaker_vocab=counts("speaker_vocabulary"),
            vad_trained=get("vad_trained", bool, "true or false"),
            seed=get("seed", int, "an integer"),
            training=get("training", dict, "an object", {}),
            corpus_fingerprint=get("corpus_fingerprint", (str, type(None)), "a string or null", None),
            parameters=get("parameters", dict, "an object", {}),
        )


def save_checkpoint(directory: str | Path, model: nn.Module, meta: CheckpointMeta) -> None:
    """model.safetensors (the state dict) + config.json, each written atomically."""
    files = VanillaFiles(Path(directory))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(files.model, safetensors.torch.save(state))
    write_json(files.config, meta.to_json())


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape from a safetensors header, without reading the tensors."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except (safetensors.SafetensorError, OSError) as exc:
        raise LanternError(
            f"file {path}: not a readable safetensors file (truncated or corrupt: {exc})"
        ) from None


def _check_tensors(path: Path, got: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    """Refuse weights whose tensor names or shapes differ from those of the model config.json builds."""
    missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = [name for name in expected if name in got and got[name] != expected[name]]
    if missing or extra or wrong:
        problem = (
            f"tensor {missing[0]!r} is missing"
            if missing
            else f"tensor {extra[0]!r} is not part of it"
            if extra
            else f"tensor {wrong[0]!r} is {list(got[wrong[0]])}, the model's is {list(expected[wrong[0]])}"
        )
        raise LanternError(
            f"file {path}: the weights are not those of the model config.json describes: {problem}"
        )


def load_checkpoint(directory: str | Path, device: str = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild a trained model from RUN_DIR/vanilla/ (no optimizer, no corpus); eval mode.

    Both files may have been damaged or edited, so each problem is a LanternError naming the file:
    config.json that is not JSON, lacks a key, holds a wrong type or describes another model;
    model.safetensors that is truncated, holds NaN/inf, or whose tensors do not fit config.json. The
    model is first built on the "meta" device (no memory), so an edited size cannot allocate more
    than the weights file holds.
    """
    files = VanillaFiles(Path(directory))
    config_path, model_path = files.config, files.model
    for path in (config_path, model_path):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no trained model here (run `lantern train` first)")
    data = read_json(config_path)
    try:
        meta = CheckpointMeta.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise LanternError(f"file {config_path}: not a Lantern model config: {exc}") from None
    try:
        with torch.device("meta"):
            skeleton = build_model(meta.model, meta.model_config)
    # Whatever an edited model_config makes the constructors raise is a fault of that file.
    except Exception as exc:
        raise LanternError(
            f"file {config_path}: 'model_config' does not build a {meta.model!r} model "
            f"({type(exc).__name__}: {exc})"
        ) from None
    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    _check_tensors(model_path, _tensor_shapes(model_path), expected)
    try:
        state = safetensors.torch.load_file(str(model_path))
    except (safetensors.SafetensorError, OSError) as exc:
        raise LanternError(f"file {model_path}: not a readable safetensors file ({exc})") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise LanternError(f"file {model_path}: tensor {name!r} holds NaN/inf values; train again")
    model = build_model(meta.model, meta.model_config)
    model.load_state_dict(state)
    model.to(resolve_device(device)).eval()
    return model, meta


def _check_features(meta: CheckpointMeta, dialogues: Sequence[Dialogue]) -> None:
    for d in dialogues:
        for m, width in meta.modalities.items():
            x = d.features.get(m)
            if x is None or x.ndim != 2 or x.shape[1] != width:
                got = None if x is None else tuple(x.shape)
                raise LanternError(
                    f"dialogue {d.id}: the model reads modality {m!r} of width {width}, got {got}"
                )


@torch.no_grad()
def predict(
    model: nn.Module,
    meta: CheckpointMeta,
    dialogues: Sequence[Dialogue],
    device: str = "auto",
    batch_size: int = 16,
) -> list[Prediction]:
    """One Prediction per utterance, in dialogue order: probabilities in label-set order summing
    to 1, VAD on the 1-5 scale (None when the VAD head was not trained), gold label or None."""
    _check_features(meta, dialogues)
    dev = resolve_device(device)
    model.to(dev).eval()
    modalities = list(meta.modalities)
    out: list[Prediction] = []
    for chunk in _batches(dialogues, batch_size):
        output = model(collate(chunk, meta.speaker_vocab, modalities).to(dev))
        probs = output.log_probs.double().exp().cpu().numpy()
        vad = vad_from_unit(output.vad.double().cpu().numpy()) if output.vad is not None else None
        for i, d in enumerate(chunk):
            for j, u in enumerate(d.utterances):
                p = probs[i, j] / probs[i, j].sum()
                out.append(
                    Prediction(
                        id=u.id,
                        dialogue=d.id,
                        speaker=u.speaker,
                        split=d.split,
                        label=u.label,
                        probs=[float(x) for x in p],
                        vad=[float(x) for x in vad[i, j]] if vad is not None and meta.vad_trained else None,
                    )
                )
    return out


def _has_vad(dialogues: Sequence[Dialogue]) -> bool:
    return any(u.vad is not None for d in dialogues for u in d.utterances)


def train_model(
    model_name: str,
    corpus: Corpus,
    train: Sequence[Dialogue],
    dev: Sequence[Dialogue],
    config: TrainConfig,
    corpus_fingerprint: str | None,
) -> tuple[nn.Module, CheckpointMeta, FitResult]:
    """Build a fresh model for ``corpus`` (seeded), fit it on ``train``, select on ``dev``."""
    model_config = config_for_corpus(
        model_name, corpus, modalities=config.modalities, **config.model_overrides
    )
    vocab = speaker_vocabulary(corpus)
    torch.manual_seed(config.seed)
    model = build_model(model_name, model_config)
    weights = loss_class_weights(config, corpus.labels, train)
    modalities = list(model_config.widths)
    result = fit(
        model,
        train,
        dev,
        config,
        classes=corpus.labels.classes,
        speaker_vocab=vocab,
        modalities=modalities,
        class_weights=weights,
    )
    meta = CheckpointMeta(
        model=model_name,
        model_config=model_config.to_json(),
        labels=corpus.labels,
        modalities=dict(model_config.widths),
        speaker_vocab=vocab,
        vad_trained=config.lambda_vad > 0
        and getattr(model, "vad_head", None) is not None
        and _has_vad(train),
        seed=config.seed,
        training=config.to_json(),
        corpus_fingerprint=corpus_fingerprint,
        parameters=parameter_summary(model),
    )
    return model, meta, result


def crossfit_folds(dialogues: Sequence[Dialogue], k: int, seed: int) -> list[list[Dialogue]]:
    """K disjoint folds covering ``dialogues`` (a seeded permutation dealt round-robin)."""
    if not 2 <= k <= len(dialogues):
        raise LanternError(f"cross-fitting needs 2 <= K <= {len(dialogues)} training dialogues, got K = {k}")
    order = torch.randperm(len(dialogues), generator=torch.Generator().manual_seed(seed)).tolist()
    return [[dialogues[i] for i in order[f::k]] for f in range(k)]


def crossfit_predictions(
    model_name: str, corpus: Corpus, config: TrainConfig, k: int = 5
) -> tuple[list[Prediction], dict]:
    """Training-split predictions where each fold comes from a model trained without it (dev still
    selects each model). Returns the predictions in corpus order and a record of the folds."""
    train, dev = corpus.split("train"), corpus.split("dev")
    folds = crossfit_folds(train, k, config.seed)
    by_id: dict[str, list[Prediction]] = {}
    record = {"k": k, "folds": []}
    for f, held_out in enumerate(folds):
        held = {d.id for d in held_out}
        rest = [d for d in train if d.id not in held]
        log.info("cross-fit fold %d/%d: %d training dialogues", f + 1, k, len(rest))
        model, meta, result = train_model(model_name, corpus, rest, dev, config, None)
        for p in predict(model, meta, held_out, config.device):
            by_id.setdefault(p.dialogue, []).append(p)
        record["folds"].append({"dialogues": sorted(held), "best_epoch": result.best_epoch})
    return [p for d in train for p in by_id[d.id]], record


def train_run(
    corpus: str | Path | Corpus,
    run_dir: str | Path,
    model_name: str,
    *,
    preset: str | None = None,
    crossfit: int = 0,
    **overrides: Any,
) -> dict:
    """Train a vanilla model and write RUN_DIR/vanilla/*: checkpoint, metrics, predictions for every
    split (and cross-fitted training predictions when ``crossfit`` ≥ 2). ``corpus`` is a native
    corpus directory (recorded with its fingerprint in run.json) or an in-memory Corpus.
    ``overrides``: TrainConfig fields (epochs, lr, batch_size, lambda_vad, seed, device, modalities...).
    Without ``preset``, ``default_preset`` picks it from the label set and modalities; config.json's
    "training" section records the preset and whether it was "given" or the "default".
    Returns a summary: recipe, chosen epoch, dev report, parameter counts, paths."""
    run = RunDir(run_dir)
    fingerprint = None
    if isinstance(corpus, Corpus):
        corpus.validate()
        data = corpus
    else:
        from lantern.corpus.native import corpus_fingerprint, load_corpus

        data = load_corpus(corpus)
        fingerprint = corpus_fingerprint(corpus)
        run.set_corpus(corpus, fingerprint)
    preset_source = "given" if preset else "default"
    if preset is None:
        modalities = overrides.get("modalities") or list(data.modalities)
        preset = default_preset(model_name, data.labels, modalities)
    config = make_train_config(preset, **overrides)
    if config.model is not None and config.model != model_name:
        raise LanternError(f"preset {config.preset!r} is the recipe of {config.model}, not {model_name}")
    model, meta, result = train_model(
        model_name, data, data.split("train"), data.split("dev"), config, fingerprint
    )
    meta.training["preset_source"] = preset_source
    save_checkpoint(run.vanilla.dir, model, meta)
    write_json(run.vanilla.metrics, result.to_json())
    for split in SPLITS:
        write_predictions(run.predictions(split), predict(model, meta, data.split(split), config.device))
    summary = {
        "model": model_name,
        "preset": config.preset,
        "preset_source": preset_source,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "dev": {k: result.best_dev[k] for k in ("accuracy", "weighted_f1")},
        "parameters": meta.parameters,
        "vanilla_dir": str(run.vanilla.dir),
    }
    if crossfit:
        predictions, record = crossfit_predictions(model_name, data, config, crossfit)
        write_predictions(run.vanilla.crossfit_predictions, predictions)
        write_json(run.vanilla.crossfit_folds, record)
        summary["crossfit"] = str(run.vanilla.crossfit_predictions.parent)
    return summary


def read_vanilla_meta(run: RunDir) -> CheckpointMeta:
    """The vanilla model's record (``config.json`` beside the weights) of a single-seed run."""
    path = run.vanilla.config
    if not path.exists():
        raise FileNotFoundError(f"{path}: no trained model here (run `lantern train` first)")
    return CheckpointMeta.from_json(read_json(path))
