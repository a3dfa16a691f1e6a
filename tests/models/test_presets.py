"""Recipes: which preset a corpus trains with by default, early stopping, class-weighting options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lantern import train_config, training
from lantern.cli import main
from lantern.corpus.native import save_corpus
from lantern.errors import LanternError
from lantern.labels import EMORYNLP7, IEMOCAP4, IEMOCAP6, MELD7, MELD_SENTIMENT, LabelSet
from lantern.models.registry import build_model, config_for_corpus
from lantern.testing.runs import dialogue_sizes
from lantern.testing.runs import make_corpus as make_labelled_corpus
from lantern.train_config import PRESET_NOTES, PRESETS, default_preset, make_train_config
from lantern.training import class_weight_tensor, loss_class_weights, train_run
from tests.models.synthetic import SMALL_CORECT, SMALL_SDT, make_corpus

SMALL = {"sdt": SMALL_SDT, "corect": SMALL_CORECT}


def friends_corpus(labels: LabelSet, widths: dict[str, int]):
    """A tiny learnable corpus with a Friends label set (MELD or EmoryNLP) and the given modalities."""
    sizes = dialogue_sizes({"train": 6, "dev": 2, "test": 2}, (3, 6), seed=0)
    return make_labelled_corpus(sizes, labels=labels, widths=widths, noise=1.0, seed=0)


@pytest.mark.parametrize("labels", [MELD7, MELD_SENTIMENT, EMORYNLP7])
@pytest.mark.parametrize("model", ["corect", "sdt"])
def test_text_only_friends_corpora_train_with_the_meld_text_recipe(model, labels, tmp_path):
    summary = train_run(
        friends_corpus(labels, {"t": 8}),
        tmp_path,
        model,
        epochs=1,
        model_overrides=SMALL[model],
        progress=False,
    )
    assert (summary["preset"], summary["preset_source"]) == (f"{model}-meld-text", "default")
    recorded = json.loads((tmp_path / "vanilla" / "config.json").read_text())["training"]
    assert (recorded["preset"], recorded["preset_source"]) == (f"{model}-meld-text", "default")
    assert recorded["lr"] == PRESETS[f"{model}-meld-text"]["lr"]


def test_choosing_text_only_from_a_multimodal_friends_corpus_takes_the_text_recipe(tmp_path):
    corpus = friends_corpus(MELD7, {"t": 8, "a": 4})
    summary = train_run(
        corpus, tmp_path, "corect", epochs=1, modalities=["t"], model_overrides=SMALL_CORECT, progress=False
    )
    assert summary["preset"] == "corect-meld-text"


@pytest.mark.parametrize(
    ("model", "labels", "modalities", "expected"),
    [
        ("corect", MELD7, ["t", "a", "v"], "corect"),
        ("sdt", MELD7, ["t", "a"], "sdt-meld"),
        ("sdt", IEMOCAP6, ["t"], "sdt-iemocap"),
        ("corect", IEMOCAP4, ["t"], "corect"),
        ("sdt", EMORYNLP7, ["t"], "sdt-meld-text"),
    ],
)
def test_other_corpora_keep_the_published_recipes(model, labels, modalities, expected):
    assert default_preset(model, labels, modalities) == expected


def test_a_given_preset_is_used_and_recorded_as_given(tmp_path):
    summary = train_run(
        friends_corpus(MELD7, {"t": 8}), tmp_path, "sdt", preset="quick", epochs=1, model_overrides=SMALL_SDT
    )
    assert (summary["preset"], summary["preset_source"]) == ("quick", "given")


def test_every_preset_is_described_and_the_text_recipes_belong_to_their_model():
    assert set(PRESET_NOTES) == set(PRESETS)
    for model in ("corect", "sdt"):
        assert make_train_config(f"{model}-meld-text").model == model


def test_train_cli_says_which_recipe_it_used(tmp_path, capsys):
    corpus_dir = save_corpus(friends_corpus(EMORYNLP7, {"t": 8}), tmp_path / "corpus")
    with pytest.MonkeyPatch.context() as mp:
        recipe = {**PRESETS["corect-meld-text"], "epochs": 1, "model_overrides": SMALL_CORECT}
        mp.setitem(train_config.PRESETS, "corect-meld-text", recipe)
        argv = ["train", "--corpus", str(corpus_dir), "--model", "corect", "--out", str(tmp_path / "run")]
        assert main([*argv, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "recipe corect-meld-text (the default for this corpus): text-only CORECT" in out


def test_train_cli_passes_class_weights_and_patience(tmp_path):
    corpus_dir = save_corpus(friends_corpus(MELD7, {"t": 8}), tmp_path / "corpus")
    argv = ["train", "--corpus", str(corpus_dir), "--model", "sdt", "--out", str(tmp_path / "run")]
    argv += ["--preset", "quick", "--epochs", "1", "--class-weights", "sqrt_inverse_prior", "--patience", "3"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(train_config.PRESETS, "quick", {**PRESETS["quick"], "model_overrides": SMALL_SDT})
        assert main(argv) == 0
    recorded = json.loads((tmp_path / "run" / "vanilla" / "config.json").read_text())["training"]
    assert (recorded["class_weights"], recorded["patience"]) == ("sqrt_inverse_prior", 3)


def test_patience_stops_after_that_many_epochs_without_a_better_dev_f1(monkeypatch):
    corpus = make_corpus(n_dialogues=(4, 2, 0))
    flat = {"loss": 1.0, "accuracy": 50.0, "weighted_f1": 40.0}
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: dict(flat))
    model = build_model("sdt", config_for_corpus("sdt", corpus, **SMALL_SDT))
    config = make_train_config("quick", epochs=20, patience=3, progress=False)
    result = training.fit(
        model,
        corpus.split("train"),
        corpus.split("dev"),
        config,
        classes=corpus.labels.classes,
        speaker_vocab={"A": 0, "B": 1},
        modalities=["t", "a", "v"],
    )
    assert (result.best_epoch, len(result.history)) == (1, 4)


def test_bad_patience_or_class_weighting_is_refused():
    with pytest.raises(LanternError, match="patience"):
        make_train_config("quick", patience=-1)
    with pytest.raises(LanternError, match="class_weights must be one of"):
        make_train_config("quick", class_weights="inverse")


def test_sqrt_inverse_prior_weights_are_one_over_the_root_of_the_training_priors():
    corpus = make_corpus(n_dialogues=(20, 0, 0))
    labels = np.array([u.label for d in corpus.dialogues for u in d.utterances])
    priors = np.bincount(labels, minlength=4) / len(labels)
    config = make_train_config("quick", class_weights="sqrt_inverse_prior")
    weights = loss_class_weights(config, IEMOCAP4, corpus.dialogues)
    assert torch.allclose(weights, torch.tensor(priors**-0.5).float())
    assert torch.allclose(
        loss_class_weights(
            make_train_config("quick", class_weights="inverse_prior"), IEMOCAP4, corpus.dialogues
        ),
        class_weight_tensor(IEMOCAP4, corpus.dialogues),
    )
    assert loss_class_weights(make_train_config("quick"), IEMOCAP4, corpus.dialogues) is None
