"""MiniLM text features: offline model, JSONL text-only import, the corpus-directory cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lantern.corpus.text_features as text_features
from lantern.corpus import load_corpus, save_corpus
from lantern.corpus.example import generate_example
from lantern.corpus.jsonl import read_jsonl
from lantern.corpus.text_features import MODEL_NAME, add_text_features, embed_texts
from tests.corpus.corpus_fixtures import small_corpus


def test_minilm_offline_for_jsonl_and_example(tmp_path, monkeypatch):
    # Any attempt to reach a hub would fail loudly instead of silently downloading.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    path = tmp_path / "chat.jsonl"
    lines = [
        {"id": "a", "utterances": [{"speaker": "x", "text": "I am furious with you!", "label": "ang"},
                                   {"speaker": "y", "text": "The form is in the drawer.", "label": "neu"}]},
        {"id": "b", "utterances": [{"speaker": "x", "text": "I'm so angry at you!", "label": "ang"}]},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    corpus = read_jsonl(path, labels="iemocap6")
    assert corpus.modalities == {"t": 384} and corpus.feature_sources == {"t": MODEL_NAME}
    furious, drawer = corpus.dialogues[0].features["t"]
    angry = corpus.dialogues[1].features["t"][0]
    assert furious.dtype == np.float32 and np.linalg.norm(furious) == pytest.approx(1.0, abs=1e-4)
    assert furious @ angry > furious @ drawer + 0.2  # the embedding carries the emotion words
    np.testing.assert_allclose(embed_texts(["I am furious with you!"])[0], furious, atol=1e-5)
    assert embed_texts([]).shape == (0, 384)

    example = generate_example(3, seed=1, text_features="minilm", min_len=4, max_len=6)
    assert example.modalities["t"] == 384 and example.feature_sources["t"] == MODEL_NAME
    d = example.dialogues[0]
    np.testing.assert_allclose(d.features["t"], embed_texts([u.text for u in d.utterances]), atol=1e-5)


def _fake_embed(calls):
    def embed(texts, batch_size=64):
        calls.append(list(texts))
        return np.stack([np.full(384, (len(t) % 7) / 10, dtype=np.float32) for t in texts])

    return embed


def test_cache_in_corpus_directory_avoids_recomputing(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(text_features, "embed_texts", _fake_embed(calls))
    corpus = add_text_features(small_corpus(), replace=True)
    assert len(calls) == 1 and corpus.modalities["t"] == 384
    out = save_corpus(corpus, tmp_path / "c")
    meta = json.loads((out / "features" / "t.json").read_text())
    assert meta["source"] == MODEL_NAME and len(meta["texts_sha256"]) == 64

    again = add_text_features(load_corpus(out), replace=True, cache_dir=out)
    assert len(calls) == 1  # reused, not recomputed
    np.testing.assert_array_equal(again.dialogues[1].features["t"], corpus.dialogues[1].features["t"])

    changed = load_corpus(out)
    changed.dialogues[0].utterances[0].text = "different words"
    add_text_features(changed, replace=True, cache_dir=out)
    assert len(calls) == 2  # texts changed: the cache does not apply


def test_file_text_features_are_not_a_cache_hit(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(text_features, "embed_texts", _fake_embed(calls))
    out = save_corpus(small_corpus(), tmp_path / "c")  # "t" from the file, 7-d
    assert json.loads((out / "features" / "t.json").read_text())["source"] == "file"
    add_text_features(load_corpus(out), replace=True, cache_dir=out)
    assert len(calls) == 1


def test_replace_false_refuses_existing_text_features():
    corpus = small_corpus()
    with pytest.raises(ValueError, match=r"already has text features"):
        add_text_features(corpus, replace=False)
    assert corpus.modalities["t"] == 7  # input untouched
