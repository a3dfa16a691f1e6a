"""Training: learning, VAD, determinism, dev-only selection, checkpoints, predictions, cross-fitting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import torch

from lantern import training
from lantern.errors import LanternError
from lantern.labels import IEMOCAP4, IEMOCAP6
from lantern.models.registry import build_model, config_for_corpus, speaker_vocabulary
from lantern.predictions import read_predictions
from lantern.rundir import RunDir
from lantern.train_config import PRESETS, make_train_config
from lantern.training import (
    class_weight_tensor,
    crossfit_folds,
    length_batches,
    load_checkpoint,
    predict,
    train_run,
)
from tests.models.synthetic import SMALL_CORECT, SMALL_SDT, make_corpus

SMALL = {"sdt": SMALL_SDT, "corect": SMALL_CORECT}


@pytest.fixture(scope="module", params=["sdt", "corect"])
def trained(request, synthetic_corpus, tmp_path_factory):
    """One short training run per model, shared by the tests that only read its outputs."""
    name = request.param
    run_dir = tmp_path_factory.mktemp(f"run-{name}")
    summary = train_run(
        synthetic_corpus, run_dir, name, preset="quick", epochs=8, model_overrides=SMALL[name], progress=False
    )
    return name, run_dir, summary


def test_models_learn_above_chance_and_majority(trained, synthetic_corpus):
    _, run_dir, _ = trained
    preds = read_predictions(RunDir(run_dir).predictions("test"))
    gold = np.array([p.label for p in preds])
    accuracy = float((np.argmax([p.probs for p in preds], axis=1) == gold).mean())
    train_labels = [u.label for d in synthetic_corpus.split("train") for u in d.utterances]
    majority = np.bincount(train_labels).argmax()
    majority_accuracy = float((gold == majority).mean())
    assert majority_accuracy > 0.3  # the baseline is not trivially low
    assert accuracy > majority_accuracy + 0.3
    assert accuracy > 1 / len(IEMOCAP4) + 0.4


def test_vad_predictions_correlate_with_targets(trained, synthetic_corpus):
    _, run_dir, _ = trained
    preds = {p.id: p for p in read_predictions(RunDir(run_dir).predictions("test"))}
    targets = np.array([u.vad for d in synthetic_corpus.split("test") for u in d.utterances])
    predicted = np.array([preds[u.id].vad for d in synthetic_corpus.split("test") for u in d.utterances])
    assert predicted.min() >= 1.0 and predicted.max() <= 5.0
    for dim in range(3):
        r = np.corrcoef(predicted[:, dim], targets[:, dim])[0, 1]
        assert r > 0.6, f"dimension {dim}: Pearson r = {r:.2f}"


def test_run_directory_files(trained, synthetic_corpus):
    name, run_dir, summary = trained
    run = RunDir(run_dir)
    for f in ("model.safetensors", "config.json", "metrics.json"):
        assert (run.vanilla.dir / f).exists()
    config = json.loads((run.vanilla.dir / "config.json").read_text())
    assert config["model"] == name
    assert config["label_set"]["classes"] == list(IEMOCAP4.classes)
    assert config["modalities"] == {"t": 12, "a": 8, "v": 6}
    assert config["speaker_vocabulary"] == {"A": 0, "B": 1}
    assert config["training"]["seed"] == 0 and config["seed"] == 0
    metrics = json.loads((run.vanilla.dir / "metrics.json").read_text())
    assert len(metrics["history"]) == 8
    f1 = [h["dev_weighted_f1"] for h in metrics["history"]]
    assert metrics["best_epoch"] == int(np.argmax(f1)) + 1 == summary["best_epoch"]
    assert metrics["seconds"] > 0  # the training time the report shows
    for split in ("train", "dev", "test"):
        preds = read_predictions(run.predictions(split))
        assert [p.id for p in preds] == [u.id for d in synthetic_corpus.split(split) for u in d.utterances]
        assert all(p.split == split and len(p.probs) == 4 for p in preds)
        assert np.allclose([sum(p.probs) for p in preds], 1.0, atol=1e-9)
        assert all(p.label is not None for p in preds)


def test_checkpoint_reload_gives_identical_predictions(trained, synthetic_corpus):
    _, run_dir, _ = trained
    model, meta = load_checkpoint(RunDir(run_dir).vanilla.dir)
    # The device the run predicted on (CPU and GPU kernels differ in the last bits).
    again = predict(model, meta, synthetic_corpus.split("test"), device=meta.training["device"])
    saved = read_predictions(RunDir(run_dir).predictions("test"))
    assert [p.probs for p in again] == [p.probs for p in saved]
    assert [p.vad for p in again] == [p.vad for p in saved]


def test_load_checkpoint_without_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="lantern train"):
        load_checkpoint(tmp_path)


def test_predict_rejects_features_of_another_width(trained):
    _, run_dir, _ = trained
    model, meta = load_checkpoint(RunDir(run_dir).vanilla.dir)
    other = make_corpus(n_dialogues=(0, 0, 2), widths={"t": 5, "a": 8, "v": 6})
    with pytest.raises(ValueError, match="modality 't' of width 12"):
        predict(model, meta, other.dialogues, device="cpu")


def small_fit_kwargs(name: str = "sdt") -> dict:
    return dict(preset="quick", epochs=2, model_overrides=SMALL[name], progress=False)


def test_same_seed_gives_identical_runs_and_another_seed_differs(tmp_path):
    corpus = make_corpus(n_dialogues=(12, 4, 2))
    # a pinned thread count: the free cores' choice, recorded per epoch, may differ between runs
    a = train_run(corpus, tmp_path / "a", "sdt", seed=3, threads=1, **small_fit_kwargs())
    b = train_run(corpus, tmp_path / "b", "sdt", seed=3, threads=1, **small_fit_kwargs())
    c = train_run(corpus, tmp_path / "c", "sdt", seed=4, threads=1, **small_fit_kwargs())
    history = [json.loads((tmp_path / x / "vanilla/metrics.json").read_text())["history"] for x in "abc"]
    assert history[0] == history[1]
    assert history[0] != history[2]
    assert a == {**b, "vanilla_dir": a["vanilla_dir"]}
    assert c["parameters"] == a["parameters"]
    pa = read_predictions(tmp_path / "a/vanilla/predictions-test.jsonl")
    pb = read_predictions(tmp_path / "b/vanilla/predictions-test.jsonl")
    assert [p.probs for p in pa] == [p.probs for p in pb]


def test_fit_never_collates_a_test_dialogue(tmp_path, monkeypatch):
    corpus = make_corpus(n_dialogues=(8, 3, 3))
    seen: list[str] = []
    fitting = {"on": False}
    real_collate, real_fit = training.collate, training.fit

    def spy_collate(dialogues, *args, **kwargs):
        if fitting["on"]:
            seen.extend(d.id for d in dialogues)
        return real_collate(dialogues, *args, **kwargs)

    def spy_fit(*args, **kwargs):
        fitting["on"] = True
        try:
            return real_fit(*args, **kwargs)
        finally:
            fitting["on"] = False

    monkeypatch.setattr(training, "collate", spy_collate)
    monkeypatch.setattr(training, "fit", spy_fit)
    train_run(corpus, tmp_path, "sdt", **small_fit_kwargs())
    splits = {d.id: d.split for d in corpus.dialogues}
    assert {splits[i] for i in seen} == {"train", "dev"}
    assert (tmp_path / "vanilla/predictions-test.jsonl").exists()


def test_without_dev_split_training_refuses(tmp_path):
    corpus = make_corpus(n_dialogues=(6, 0, 2))
    with pytest.raises(ValueError, match="dev"):
        train_run(corpus, tmp_path, "sdt", **small_fit_kwargs())


@pytest.mark.parametrize("case", ["lambda_zero", "no_vad_in_corpus"])
def test_untrained_vad_head_gives_no_vad(tmp_path, case):
    corpus = make_corpus(n_dialogues=(6, 2, 2), with_vad=case != "no_vad_in_corpus")
    lam = 0.0 if case == "lambda_zero" else 1.0
    summary = train_run(corpus, tmp_path, "sdt", lambda_vad=lam, **small_fit_kwargs())
    assert summary["parameters"]["vad_head_parameters"] > 0  # the head stays; it just gets no loss
    assert all(p.vad is None for p in read_predictions(RunDir(tmp_path).predictions("dev")))
    assert json.loads((tmp_path / "vanilla/config.json").read_text())["vad_trained"] is False


def test_lambda_vad_changes_training_loss(tmp_path):
    corpus = make_corpus(n_dialogues=(6, 2, 2))
    for lam in (0.0, 5.0):
        train_run(corpus, tmp_path / str(lam), "sdt", lambda_vad=lam, **small_fit_kwargs())
    loss = [json.loads((tmp_path / f"{lam}/vanilla/metrics.json").read_text()) for lam in (0.0, 5.0)]
    assert loss[0]["history"][0]["train_loss"] < loss[1]["history"][0]["train_loss"]


def test_modalities_option_restricts_the_model(tmp_path):
    corpus = make_corpus(n_dialogues=(6, 2, 2))
    train_run(corpus, tmp_path, "sdt", modalities=["t", "v"], **small_fit_kwargs())
    model, meta = load_checkpoint(tmp_path / "vanilla")
    assert meta.modalities == {"t": 12, "v": 6}
    assert sorted(model.projections) == ["t", "v"]


def test_crossfit_predicts_each_training_fold_with_a_model_that_did_not_see_it(tmp_path, monkeypatch):
    corpus = make_corpus(n_dialogues=(8, 2, 2))
    trained_on: list[set[str]] = []
    real_fit = training.fit

    def spy_fit(model, train, dev, config, **kwargs):
        trained_on.append({d.id for d in train})
        return real_fit(model, train, dev, config, **kwargs)

    monkeypatch.setattr(training, "fit", spy_fit)
    summary = train_run(corpus, tmp_path, "sdt", crossfit=2, **small_fit_kwargs())
    crossfit_dir = tmp_path / "vanilla/crossfit"
    assert summary["crossfit"] == str(crossfit_dir)
    preds = read_predictions(crossfit_dir / "predictions-train.jsonl")
    assert [p.id for p in preds] == [u.id for d in corpus.split("train") for u in d.utterances]
    folds = json.loads((crossfit_dir / "folds.json").read_text())["folds"]
    assert len(folds) == 2 and len(trained_on) == 3  # the main model + one per fold
    for fold, seen in zip(folds, trained_on[1:], strict=True):
        assert not set(fold["dialogues"]) & seen
        assert set(fold["dialogues"]) | seen == {d.id for d in corpus.split("train")}


def test_crossfit_folds_partition_and_bounds():
    dialogues = make_corpus(n_dialogues=(7, 0, 0)).dialogues
    folds = crossfit_folds(dialogues, 3, seed=1)
    ids = [d.id for f in folds for d in f]
    assert sorted(ids) == sorted(d.id for d in dialogues) and len(set(ids)) == 7
    assert crossfit_folds(dialogues, 3, seed=1) == folds
    with pytest.raises(ValueError, match="K"):
        crossfit_folds(dialogues, 8, seed=1)


def test_length_batches_cover_every_dialogue_once_with_less_padding():
    dialogues = make_corpus(n_dialogues=(64, 0, 0)).dialogues
    batches = length_batches(dialogues, 8, torch.Generator().manual_seed(0), bucket_batches=4)
    assert sorted(d.id for b in batches for d in b) == sorted(d.id for d in dialogues)
    assert all(1 <= len(b) <= 8 for b in batches)
    again = length_batches(dialogues, 8, torch.Generator().manual_seed(0), bucket_batches=4)
    assert [[d.id for d in b] for b in again] == [[d.id for d in b] for b in batches]

    def padding(bs):
        return sum(max(len(d) for d in b) * len(b) - sum(len(d) for d in b) for b in bs)

    unsorted = length_batches(dialogues, 8, torch.Generator().manual_seed(0), bucket_batches=1)
    assert padding(batches) < padding(unsorted)


def test_presets_follow_the_published_recipes():
    corect = make_train_config("corect")
    assert (corect.lr, corect.weight_decay, corect.batch_size, corect.epochs, corect.scheduler) == (
        2.5e-4,
        1e-8,
        10,
        50,
        "plateau",
    )
    assert corect.class_weights == "none"
    sdt = make_train_config("sdt-iemocap")
    assert (sdt.lr, sdt.weight_decay, sdt.batch_size, sdt.epochs, sdt.class_weights) == (
        1e-4,
        1e-5,
        16,
        150,
        "inverse_prior",
    )
    meld = make_train_config("sdt-meld")
    assert (meld.lr, meld.batch_size, meld.epochs, meld.model_overrides["temperature"]) == (5e-6, 8, 50, 8.0)
    assert set(PRESETS) >= {"corect", "sdt-iemocap", "sdt-meld", "quick"}
    over = make_train_config("corect", epochs=3, lr=None)
    assert (over.epochs, over.lr) == (3, 2.5e-4)
    with pytest.raises(ValueError, match="unknown preset"):
        make_train_config("nope")
    with pytest.raises(ValueError, match="unknown training options"):
        make_train_config("quick", epoch=3)


def test_preset_of_another_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="recipe of corect"):
        train_run(make_corpus(n_dialogues=(2, 1, 1)), tmp_path, "sdt", preset="corect")


def test_class_weights_are_inverse_priors():
    w = class_weight_tensor(IEMOCAP6, [])
    assert torch.allclose(w, 1 / torch.tensor([0.0867, 0.1444, 0.2279, 0.1606, 0.1277, 0.2527]))
    corpus = make_corpus(n_dialogues=(20, 0, 0))
    labels = np.array([u.label for d in corpus.dialogues for u in d.utterances])
    expected = len(labels) / np.bincount(labels, minlength=4)
    assert torch.allclose(class_weight_tensor(IEMOCAP4, corpus.dialogues), torch.tensor(expected).float())


def test_auto_device_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training.resolve_device("auto") == torch.device("cpu")
    assert training.resolve_device("cpu") == torch.device("cpu")


def test_fit_stops_on_a_nan_feature_and_names_it():
    corpus = make_corpus(n_dialogues=(4, 2, 0))
    bad = corpus.split("train")[2]
    bad.features["a"][1, 3] = np.nan
    config = make_train_config("quick", epochs=2, progress=False)
    model = build_model("sdt", config_for_corpus("sdt", corpus, **SMALL_SDT))
    with pytest.raises(
        LanternError, match=rf"dialogue {bad.id}, utterance {bad.utterances[1].id}, modality 'a'"
    ):
        training.fit(
            model,
            corpus.split("train"),
            corpus.split("dev"),
            config,
            classes=corpus.labels.classes,
            speaker_vocab=speaker_vocabulary(corpus),
            modalities=list(corpus.modalities),
        )


def test_diverging_training_stops_and_writes_no_model(tmp_path):
    corpus = make_corpus(n_dialogues=(6, 2, 2))
    with pytest.raises(LanternError, match=r"diverged at epoch \d+.*lower the learning rate \(now 1e\+08\)"):
        train_run(corpus, tmp_path, "sdt", lr=1e8, **small_fit_kwargs())
    assert not (tmp_path / "vanilla" / "model.safetensors").exists()


def _edit_config(vanilla, edit) -> None:
    config = json.loads((vanilla / "config.json").read_text())
    edit(config)
    (vanilla / "config.json").write_text(json.dumps(config))


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _nan_weight(path) -> None:
    state = safetensors.torch.load_file(str(path))
    next(iter(state.values()))[...] = float("nan")
    safetensors.torch.save_file(state, str(path))


DAMAGE = {
    "truncated weights": (
        lambda v: _truncate(v / "model.safetensors"),
        r"model\.safetensors: not a readable safetensors file \(truncated",
    ),
    "NaN weights": (lambda v: _nan_weight(v / "model.safetensors"), r"model\.safetensors: tensor .* NaN/inf"),
    "not JSON": (
        lambda v: (v / "config.json").write_text("{model: sdt"),
        r"config\.json: line 1: invalid JSON",
    ),
    "missing key": (
        lambda v: _edit_config(v, lambda c: c.pop("speaker_vocabulary")),
        r"config\.json: .*missing key 'speaker_vocabulary'",
    ),
    "wrong type": (
        lambda v: _edit_config(v, lambda c: c.update(seed="3")),
        r"config\.json: .*'seed' must be an integer",
    ),
    "unknown model field": (
        lambda v: _edit_config(v, lambda c: c["model_config"].update(layers_x=2)),
        r"config\.json: 'model_config' does not build a 'sdt' model",
    ),
    "another size": (
        lambda v: _edit_config(v, lambda c: c["model_config"].update(hidden=64)),
        r"model\.safetensors: the weights are not those of the model config\.json describes: tensor '.*' is",
    ),
    "absurd size": (
        lambda v: _edit_config(v, lambda c: c["model_config"].update(hidden=10**12)),
        r"config\.json|model\.safetensors",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_one_located_error(tmp_path, damage):
    corpus = make_corpus(n_dialogues=(2, 1, 1))
    model = build_model("sdt", config_for_corpus("sdt", corpus, **SMALL_SDT))
    meta = training.CheckpointMeta(
        model="sdt",
        model_config=config_for_corpus("sdt", corpus, **SMALL_SDT).to_json(),
        labels=corpus.labels,
        modalities=dict(corpus.modalities),
        speaker_vocab=speaker_vocabulary(corpus),
        vad_trained=True,
        seed=0,
    )
    training.save_checkpoint(tmp_path, model, meta)
    load_checkpoint(tmp_path)  # intact, it loads
    apply, message = DAMAGE[damage]
    apply(tmp_path)
    with pytest.raises(LanternError, match=message):
        load_checkpoint(tmp_path)


class _Budget:
    """A CoreBudget stand-in: the free cores it reports, one figure per epoch."""

    def __init__(self, counts: list[int]) -> None:
        self.counts = iter(counts)

    def threads(self) -> int:
        return next(self.counts)


def test_training_threads_follow_the_free_cores_each_epoch_and_are_restored(tmp_path, monkeypatch):
    # Beside one busy process, a demo epoch on two threads took 10.4 s instead of 0.33 s: each
    # epoch asks again how many cores are free.
    corpus = make_corpus(n_dialogues=(8, 3, 3))
    monkeypatch.setattr(training, "CoreBudget", lambda: _Budget([1, 2, 1]))
    used: list[int] = []
    real_collate = training.collate

    def spy_collate(*args, **kwargs):
        used.append(torch.get_num_threads())
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(training, "collate", spy_collate)
    before = torch.get_num_threads()
    train_run(corpus, tmp_path, "corect", **{**small_fit_kwargs("corect"), "epochs": 3})
    assert {1, 2} <= set(used) and torch.get_num_threads() == before


def test_fixed_training_threads_are_kept(tmp_path, monkeypatch):
    corpus = make_corpus(n_dialogues=(8, 3, 3))
    monkeypatch.setattr(training, "CoreBudget", lambda: pytest.fail("a fixed count asks no budget"))
    used: list[int] = []
    real_collate = training.collate
    monkeypatch.setattr(
        training, "collate", lambda *a, **k: used.append(torch.get_num_threads()) or real_collate(*a, **k)
    )
    train_run(corpus, tmp_path, "corect", **{**small_fit_kwargs("corect"), "threads": 1})
    assert set(used) == {1}
    with pytest.raises(LanternError, match="threads"):
        make_train_config("quick", threads=-1)


def test_the_weight_average_is_the_running_mean_then_exponential():
    model = torch.nn.BatchNorm1d(1)  # one float weight and an integer buffer (num_batches_tracked)
    average = training.WeightAverage(model, horizon=3)
    expected = model.weight.detach().clone()
    for step, value in enumerate([3.0, 6.0, 9.0, 12.0, 15.0], start=1):
        with torch.no_grad():
            model.weight.fill_(value)
            model.num_batches_tracked.fill_(step)
        average.update(model)
        share = max(1 / step, 1 / 3)
        expected = expected + share * (value - expected)
        assert average.state["weight"].item() == pytest.approx(expected.item())
        assert average.state["num_batches_tracked"].item() == step
    # the mean of the first three steps, then two exponential steps with decay 2/3
    assert average.state["weight"].item() == pytest.approx(((6.0 * 2 / 3 + 12 / 3) * 2 / 3) + 15 / 3)
    with average.applied(model):
        assert model.weight.item() == pytest.approx(expected.item())
    assert model.weight.item() == 15.0


def _saved_model_on_dev(vanilla_dir, corpus):
    """The saved model of ``vanilla_dir`` evaluated on the dev split (plain NLL), and its metadata."""
    model, meta = load_checkpoint(vanilla_dir)
    report = training.evaluate(
        model,
        corpus.split("dev"),
        corpus.labels.classes,
        speaker_vocab=meta.speaker_vocab,
        modalities=list(meta.modalities),
        device=torch.device("cpu"),
        batch_size=8,
    )
    return report, meta


def test_averaged_training_keeps_the_trajectory_and_evaluates_selects_and_saves_the_average(tmp_path):
    corpus = make_corpus(n_dialogues=(12, 4, 2))
    kwargs = {**small_fit_kwargs(), "epochs": 4, "patience": 0}
    train_run(corpus, tmp_path / "plain", "sdt", **kwargs)
    train_run(corpus, tmp_path / "avg", "sdt", average_epochs=2, **kwargs)
    plain, avg = (json.loads((tmp_path / x / "vanilla/metrics.json").read_text()) for x in ("plain", "avg"))
    # the same steps are taken: averaging only changes what is evaluated and kept
    assert [h["train_loss"] for h in plain["history"]] == [h["train_loss"] for h in avg["history"]]
    assert [h["dev_loss"] for h in plain["history"]] != [h["dev_loss"] for h in avg["history"]]
    report, meta = _saved_model_on_dev(tmp_path / "avg/vanilla", corpus)
    assert meta.training["average_epochs"] == 2
    best = avg["history"][avg["best_epoch"] - 1]
    assert report["weighted_f1"] == pytest.approx(best["dev_weighted_f1"])
    assert report["accuracy"] == pytest.approx(best["dev_accuracy"])


def test_label_smoothing_changes_the_training_steps_but_the_dev_loss_stays_the_plain_nll(tmp_path):
    corpus = make_corpus(n_dialogues=(12, 4, 2))
    kwargs = {**small_fit_kwargs("corect"), "epochs": 3, "patience": 0}
    train_run(corpus, tmp_path / "plain", "corect", **kwargs)
    train_run(corpus, tmp_path / "smooth", "corect", label_smoothing=0.3, **kwargs)
    plain, smooth = (
        json.loads((tmp_path / x / "vanilla/metrics.json").read_text()) for x in ("plain", "smooth")
    )
    assert plain["history"][0]["train_loss"] != smooth["history"][0]["train_loss"]
    report, meta = _saved_model_on_dev(tmp_path / "smooth/vanilla", corpus)
    assert meta.training["label_smoothing"] == 0.3
    best = smooth["history"][smooth["best_epoch"] - 1]
    assert report["loss"] == pytest.approx(best["dev_loss"])


@pytest.mark.parametrize("eps", [-0.1, 1.0])
def test_label_smoothing_outside_zero_to_one_is_refused(eps):
    with pytest.raises(LanternError, match="label_smoothing must be in"):
        make_train_config("quick", label_smoothing=eps)


def test_a_negative_averaging_horizon_is_refused():
    with pytest.raises(LanternError, match="average_epochs must be >= 0"):
        make_train_config("quick", average_epochs=-1)
