"""The native corpus directory: exact round trip, lazy memory maps, atomic writes, fingerprints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lantern.corpus import CorpusError, corpus_fingerprint, load_corpus, save_corpus
from tests.corpus.corpus_fixtures import small_corpus


def _assert_same(a, b):
    assert (a.name, a.labels, a.modalities, a.feature_sources) == (
        b.name,
        b.labels,
        b.modalities,
        b.feature_sources,
    )
    assert len(a.dialogues) == len(b.dialogues)
    for x, y in zip(a.dialogues, b.dialogues, strict=True):
        assert (x.id, x.split) == (y.id, y.split)
        assert x.utterances == y.utterances  # id, speaker, text, label, vad: exact
        assert set(x.features) == set(y.features)
        for m in x.features:
            assert y.features[m].dtype == np.float32
            np.testing.assert_array_equal(x.features[m], y.features[m])


def test_round_trip_is_exact(tmp_path):
    corpus = small_corpus()
    corpus.feature_sources = {"t": "sentence-transformers/all-MiniLM-L6-v2"}
    out = save_corpus(corpus, tmp_path / "c")
    assert sorted(p.name for p in out.iterdir()) == ["corpus.json", "dialogues.jsonl", "features"]
    loaded = load_corpus(out)
    _assert_same(corpus, loaded)
    assert loaded.dialogues[1].utterances[2].label is None
    assert loaded.dialogues[0].utterances[1].vad is None
    header = json.loads((out / "corpus.json").read_text())
    assert header["counts"] == {"dialogues": 2, "utterances": 7, "splits": {"train": 1, "dev": 0, "test": 1}}
    assert header["fingerprint"] == corpus_fingerprint(out)
    # A second save of the loaded corpus writes the same bytes.
    _assert_same(loaded, load_corpus(save_corpus(loaded, tmp_path / "again")))
    assert corpus_fingerprint(tmp_path / "again") == corpus_fingerprint(out)


def test_features_are_views_into_memory_maps(tmp_path):
    loaded = load_corpus(save_corpus(small_corpus(), tmp_path / "c"))
    x0, x1 = loaded.dialogues[0].features["t"], loaded.dialogues[1].features["t"]
    assert isinstance(x0.base, np.memmap) or isinstance(x0, np.memmap)
    assert np.shares_memory(x0, np.asarray(x0.base))
    assert x0.base is x1.base  # one map per modality, each dialogue a slice of it
    assert not x0.flags.writeable
    rows = np.load(tmp_path / "c" / "features" / "t.npy")
    np.testing.assert_array_equal(rows[3:7], x1)


def test_refuses_to_overwrite_unless_asked(tmp_path):
    out = save_corpus(small_corpus(), tmp_path / "c")
    with pytest.raises(FileExistsError, match=r"already exists"):
        save_corpus(small_corpus(), out)
    changed = small_corpus()
    changed.dialogues[0].utterances[0].text = "changed"
    save_corpus(changed, out, overwrite=True)
    assert load_corpus(out).dialogues[0].utterances[0].text == "changed"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not a Lantern corpus"):
        save_corpus(small_corpus(), other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "notes"]  # no temporary leftovers


def test_invalid_corpus_leaves_no_directory(tmp_path):
    corpus = small_corpus()
    corpus.dialogues[1].features["a"][1, 2] = np.nan
    with pytest.raises(CorpusError, match=r"utterance d1_001"):
        save_corpus(corpus, tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_write_leaves_no_directory(tmp_path, monkeypatch):
    import lantern.corpus.native as native

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(native, "_fingerprint", explode)
    with pytest.raises(OSError, match=r"disk full"):
        save_corpus(small_corpus(), tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_fingerprint_changes_with_content(tmp_path):
    a = corpus_fingerprint(save_corpus(small_corpus(), tmp_path / "a"))
    changed = small_corpus()
    changed.dialogues[0].features["t"][0, 0] += 1.0
    b = corpus_fingerprint(save_corpus(changed, tmp_path / "b"))
    relabelled = small_corpus()
    relabelled.dialogues[0].utterances[0].label = 5
    c = corpus_fingerprint(save_corpus(relabelled, tmp_path / "c"))
    assert len({a, b, c}) == 3
    assert corpus_fingerprint(save_corpus(small_corpus(), tmp_path / "d")) == a


def test_corrupt_directories_are_located(tmp_path):
    out = save_corpus(small_corpus(), tmp_path / "c")
    t = out / "features" / "t.npy"
    t.write_bytes(t.read_bytes()[:-10])
    with pytest.raises(CorpusError, match=r"t\.npy"):
        load_corpus(out)

    out = save_corpus(small_corpus(), tmp_path / "d")
    lines = (out / "dialogues.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record["utterances"][0]["label"] = "bored"
    (out / "dialogues.jsonl").write_text("\n".join([lines[0], json.dumps(record)]) + "\n")
    with pytest.raises(CorpusError, match=r"dialogues\.jsonl.*dialogue dia1.*utterance d1_000.*'bored'"):
        load_corpus(out)

    out = save_corpus(small_corpus(), tmp_path / "e")
    (out / "dialogues.jsonl").write_text("{not json\n")
    with pytest.raises(CorpusError, match=r"line 1"):
        load_corpus(out)

    out = save_corpus(small_corpus(), tmp_path / "f")
    lines = (out / "dialogues.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record["utterances"][0]["vad"] = [3.0, 7.0, 3.0]
    (out / "dialogues.jsonl").write_text("\n".join([lines[0], json.dumps(record)]) + "\n")
    with pytest.raises(CorpusError, match=r"utterance d1_000.*outside 1-5"):
        load_corpus(out)

    with pytest.raises(CorpusError, match=r"no corpus\.json"):
        load_corpus(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_corpus(tmp_path / "absent")


def _set_feature(out, modality, row, column, value):
    rows = np.load(out / "features" / f"{modality}.npy", mmap_mode="r+")
    rows[row, column] = value
    rows.flush()
    del rows


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_feature_is_refused_naming_file_row_and_utterance(tmp_path, value):
    out = save_corpus(small_corpus(), tmp_path / "c")
    _set_feature(out, "a", 4, 1, value)  # row 4: dia1 starts at row 3, so its second utterance
    where = rf"file {out}/features/a\.npy, dialogue dia1, utterance d1_001"
    with pytest.raises(CorpusError, match=rf"{where}: modality 'a' has a NaN/inf value \(row 4\)"):
        load_corpus(out)


def test_edited_files_are_refused_naming_the_file(tmp_path):
    out = save_corpus(small_corpus(), tmp_path / "a")
    path = out / "dialogues.jsonl"
    path.write_bytes(path.read_bytes().replace(b"line 0", b"line O"))  # still a valid corpus
    with pytest.raises(CorpusError, match=rf"file {path}: its content changed after Lantern wrote"):
        load_corpus(out)

    out = save_corpus(small_corpus(), tmp_path / "b")
    _set_feature(out, "t", 0, 0, 0.5)
    with pytest.raises(CorpusError, match=rf"file {out}/features/t\.npy: its content changed"):
        load_corpus(out)

    out = save_corpus(small_corpus(), tmp_path / "c")
    header = json.loads((out / "corpus.json").read_text())
    header["labels"]["name"] = "mine"
    (out / "corpus.json").write_text(json.dumps(header))
    with pytest.raises(CorpusError, match=rf"file {out}/corpus\.json: its label set or modality widths"):
        load_corpus(out)


def test_corpus_from_before_checksums_is_checked_by_its_fingerprint(tmp_path, caplog):
    out = save_corpus(small_corpus(), tmp_path / "c")
    header = json.loads((out / "corpus.json").read_text())
    del header["checksums"]  # what Lantern wrote before it recorded one checksum per file
    (out / "corpus.json").write_text(json.dumps(header))
    load_corpus(out)

    _set_feature(out, "a", 0, 0, 0.5)
    with pytest.raises(
        CorpusError, match=rf"file {out}/corpus\.json: the corpus does not match the fingerprint"
    ):
        load_corpus(out)

    del header["fingerprint"]  # not written by Lantern at all: nothing to verify against
    (out / "corpus.json").write_text(json.dumps(header))
    with caplog.at_level("WARNING", logger="lantern.corpus.native"):
        assert load_corpus(out).n_utterances == 7
    assert "cannot be verified" in caplog.text


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        ("dialogues.jsonl", b'"offset": 3', b'"offset": 1e400', r"line 2: bad dialogue record"),
        ("dialogues.jsonl", b'"label": "hap"', b'"label": 3', r"utterance d\w+: .*'3'"),
        ("dialogues.jsonl", b'"utterances": [', b'"utterances": "x", "u": [', r"'utterances' must be a list"),
        ("dialogues.jsonl", b'"utterances": [', b'"utterances": [7, ', r"an utterance must be a JSON object"),
        ("corpus.json", b'"modalities": {', b'"modalities": ["t", "a"], "m": {', r"'modalities' must map"),
    ],
    ids=["infinite offset", "numeric label", "utterances not a list", "utterance not an object", "widths"],
)
def test_malformed_records_are_located(tmp_path, file, old, new, message):
    out = save_corpus(small_corpus(), tmp_path / "c")
    text = (out / file).read_bytes()
    assert old in text
    (out / file).write_bytes(text.replace(old, new, 1))
    with pytest.raises(CorpusError, match=rf"file {out}/{file}.*{message}"):
        load_corpus(out)
