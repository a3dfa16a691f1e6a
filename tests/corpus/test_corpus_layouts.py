"""The public pickle layouts: COGMEN 9-tuple, CORECT dict, SDT IEMOCAP 12-tuple, SDT MELD 13-tuple."""

from __future__ import annotations

import numpy as np
import pytest

from lantern.corpus.cogmen import read_cogmen
from lantern.corpus.corect import read_corect
from lantern.corpus.dialogue import CorpusError
from lantern.corpus.sdt import read_sdt_iemocap, read_sdt_meld
from lantern.corpus.unpickle import RefusedGlobalError
from tests.corpus.corpus_fixtures import cogmen_tuple, corect_dict, dialogue_tables, dump_pickle, sdt_tuple


def test_cogmen_python2_file_reads_every_field(tmp_path):
    tables = dialogue_tables(n_train=10, n_test=3, py2=True)
    corpus = read_cogmen(dump_pickle(tmp_path / "IEMOCAP_features.pkl", cogmen_tuple(tables), py2=True))
    assert corpus.labels.name == "iemocap6"
    assert corpus.modalities == {"t": 100, "a": 100, "v": 512}
    # dev = the first int(0.1 * 10) = 1 train ids, in file order; then train; then test.
    assert [d.split for d in corpus.dialogues] == ["dev"] + ["train"] * 9 + ["test"] * 3
    assert [d.id for d in corpus.dialogues] == [t.decode() for t in tables["train_ids"] + tables["test_ids"]]
    first = corpus.dialogues[0]
    key = tables["train_ids"][0]
    assert [u.id for u in first.utterances] == [x.decode() for x in tables["ids"][key]]
    assert first.speakers == ["F", "M", "F"]
    assert first.labels == tables["labels"][key]
    assert first.utterances[0].text.startswith("caf\xe9 number 0")
    np.testing.assert_array_equal(first.features["t"], np.stack(tables["text"][key]))
    np.testing.assert_array_equal(first.features["v"], tables["visual"][key])
    assert first.features["a"].dtype == np.float32
    assert corpus.n_utterances == sum(len(v) for v in tables["ids"].values())


def test_cogmen_dev_fraction_and_iemocap4(tmp_path):
    tables = dialogue_tables(n_train=10, n_test=2, n_classes=4)
    path = dump_pickle(tmp_path / "IEMOCAP_features_4.pkl", cogmen_tuple(tables))
    corpus = read_cogmen(path, labels="iemocap4", dev_fraction=0.3)
    assert corpus.labels.classes == ("hap", "sad", "neu", "ang")
    assert [d.split for d in corpus.dialogues][:4] == ["dev", "dev", "dev", "train"]
    assert len(corpus.split("dev")) == 3 and len(corpus.split("test")) == 2


def test_cogmen_4way_file_read_as_6way_warns(tmp_path, caplog):
    path = dump_pickle(tmp_path / "f.pkl", cogmen_tuple(dialogue_tables(n_classes=4)))
    read_cogmen(path)
    assert "exc, fru" in caplog.text and "never occur" in caplog.text


def _bad(tmp_path, tables, **kwargs):
    path = dump_pickle(tmp_path / "bad.pkl", cogmen_tuple(tables))
    with pytest.raises(CorpusError) as info:
        read_cogmen(path, **kwargs)
    message = str(info.value)
    assert "bad.pkl" in message
    return message


def test_length_mismatch_names_dialogue_and_fields(tmp_path):
    tables = dialogue_tables()
    tables["labels"]["Ses01F_impro01"].pop()
    message = _bad(tmp_path, tables)
    assert "dialogue Ses01F_impro01" in message and "length mismatch" in message and "labels" in message


def test_label_outside_set_names_utterance(tmp_path):
    tables = dialogue_tables()
    tables["labels"]["Ses01F_impro01"][1] = 6
    message = _bad(tmp_path, tables)
    assert "utterance Ses01F_impro01_M001" in message and "label 6" in message
    tables = dialogue_tables(n_classes=6)
    tables["labels"]["Ses01F_impro01"] = [5, 4, 3, 2]
    assert "outside label set 'iemocap4'" in _bad(tmp_path, tables, labels="iemocap4")


def test_nan_feature_names_utterance(tmp_path):
    tables = dialogue_tables()
    tables["audio"]["Ses02F_impro02"][2][5] = np.nan
    message = _bad(tmp_path, tables)
    assert "utterance Ses02F_impro02_F002" in message and "NaN/inf" in message and "'a'" in message
    tables = dialogue_tables()
    tables["visual"]["Ses05M_script00"][0, 0] = np.inf
    assert "utterance Ses05M_script00_F000" in _bad(tmp_path, tables)


def test_empty_dialogue(tmp_path):
    tables = dialogue_tables()
    for role in ("ids", "speakers", "labels", "text", "audio", "sentences"):
        tables[role]["Ses01F_impro00"] = []
    tables["visual"]["Ses01F_impro00"] = np.zeros((0, 512), np.float32)
    message = _bad(tmp_path, tables)
    assert "dialogue Ses01F_impro00" in message and "empty dialogue" in message


def test_modality_missing_for_some_utterances(tmp_path):
    tables = dialogue_tables()
    tables["text"]["Ses01F_impro01"][2] = None
    message = _bad(tmp_path, tables)
    assert "utterance Ses01F_impro01_F002" in message and "modality 't' is missing" in message
    tables = dialogue_tables()
    del tables["visual"]["Ses02F_impro03"]
    message = _bad(tmp_path, tables)
    assert "dialogue Ses02F_impro03" in message and "visual" in message


def test_ragged_widths_inside_a_modality(tmp_path):
    tables = dialogue_tables()
    tables["audio"]["Ses01F_impro01"][1] = np.zeros(99, np.float32)
    message = _bad(tmp_path, tables)
    assert "utterance Ses01F_impro01_M001" in message and "width 99" in message
    tables = dialogue_tables()
    key = "Ses02F_impro02"
    tables["audio"][key] = [np.zeros(50, np.float32) for _ in tables["audio"][key]]
    message = _bad(tmp_path, tables)
    assert f"dialogue {key}" in message and "earlier dialogues have 100" in message


def test_duplicate_ids(tmp_path):
    tables = dialogue_tables()
    tables["ids"]["Ses01F_impro01"][1] = tables["ids"]["Ses01F_impro01"][0]
    message = _bad(tmp_path, tables)
    assert "duplicate utterance id" in message and "Ses01F_impro01_F000" in message
    tables = dialogue_tables()
    tables["test_ids"].append(tables["train_ids"][0])
    message = _bad(tmp_path, tables)
    assert "duplicate dialogue id" in message and "Ses01F_impro00" in message


def test_wrong_shape_and_truncated_file(tmp_path):
    path = dump_pickle(tmp_path / "eight.pkl", cogmen_tuple(dialogue_tables())[:8])
    with pytest.raises(CorpusError, match=r"9-tuple"):
        read_cogmen(path)
    data = (tmp_path / "eight.pkl").read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[:-40])
    with pytest.raises(CorpusError, match=r"cut\.pkl"):
        read_cogmen(tmp_path / "cut.pkl")


def test_reader_refuses_code_execution_pickle(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    with pytest.raises(RefusedGlobalError, match=r"posix\.system"):
        read_cogmen(path)


def test_corect_preprocessed_dict(tmp_path):
    tables = dialogue_tables(n_train=4, n_test=2, widths=(768, 100, 512))
    corpus = read_corect(dump_pickle(tmp_path / "data_iemocap.pkl", corect_dict(tables)))
    assert corpus.modalities == {"t": 768, "a": 100, "v": 512}
    assert [len(corpus.split(s)) for s in ("train", "dev", "test")] == [3, 1, 2]
    d = corpus.split("dev")[0]
    assert d.id == "Ses01F_impro00"
    assert [u.id for u in d.utterances] == ["Ses01F_impro00_000", "Ses01F_impro00_001", "Ses01F_impro00_002"]
    np.testing.assert_array_equal(d.features["t"], np.stack(tables["text"]["Ses01F_impro00"]))
    bad = corect_dict(tables)
    bad["test"][0]["labels"] = bad["test"][0]["labels"][:-1]
    with pytest.raises(CorpusError, match=r"length mismatch"):
        read_corect(dump_pickle(tmp_path / "bad.pkl", bad))
    bad = corect_dict(tables)
    del bad["train"][0]["visual"]
    with pytest.raises(CorpusError, match=r"lacks keys \['visual'\]"):
        read_corect(dump_pickle(tmp_path / "bad2.pkl", bad))


def test_sdt_iemocap_12_tuple_makes_a_dev_split(tmp_path):
    tables = dialogue_tables(n_train=20, n_test=3, widths=(1024, 1582, 342), py2=True)
    corpus = read_sdt_iemocap(
        dump_pickle(tmp_path / "iemocap_multimodal_features.pkl", sdt_tuple(tables), py2=True)
    )
    assert corpus.modalities == {"t": 1024, "a": 1582, "v": 342}
    assert [len(corpus.split(s)) for s in ("train", "dev", "test")] == [18, 2, 3]
    with pytest.raises(CorpusError, match=r"12-tuple"):
        read_sdt_iemocap(dump_pickle(tmp_path / "meld.pkl", sdt_tuple(tables, meld=True)))


def test_sdt_meld_one_hot_speakers_and_numeric_ids(tmp_path):
    tables = dialogue_tables(n_train=3, n_test=1, widths=(1024, 300, 342), n_classes=7)
    numeric: dict = {k: {} for k in tables if k not in ("train_ids", "test_ids")}
    for i, did in enumerate(tables["train_ids"] + tables["test_ids"]):
        for role in numeric:
            numeric[role][i] = tables[role][did]
        n = len(tables["ids"][did])
        numeric["ids"][i] = list(range(n))
        numeric["speakers"][i] = [np.eye(9)[(3 * j) % 9].tolist() for j in range(n)]
    numeric["train_ids"], numeric["test_ids"] = {0, 1, 2}, {3}
    corpus = read_sdt_meld(
        dump_pickle(tmp_path / "meld_multimodal_features.pkl", sdt_tuple(numeric, meld=True))
    )
    assert corpus.labels.name == "meld7"
    assert corpus.modalities["a"] == 300
    d = corpus.dialogues[1]
    assert d.id == "1" and d.utterances[0].id == "1_000"
    assert d.speakers[:3] == ["speaker0", "speaker3", "speaker6"]
    numeric["speakers"][0][0] = [0.0] * 9
    with pytest.raises(CorpusError, match=r"utterance 0_000.*one-hot"):
        read_sdt_meld(dump_pickle(tmp_path / "bad.pkl", sdt_tuple(numeric, meld=True)))
