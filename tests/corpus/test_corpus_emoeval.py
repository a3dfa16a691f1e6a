"""EmoEvaluation VAD: parsing the header lines and joining them onto a corpus."""

from __future__ import annotations

import pytest

from lantern.corpus.cogmen import read_cogmen
from lantern.corpus.dialogue import CorpusError
from lantern.corpus.emoeval import join_vad, read_emoeval
from tests.corpus.corpus_fixtures import cogmen_tuple, dialogue_tables, dump_pickle, write_emoeval


def test_read_emoeval_parses_headers_and_skips_evaluator_lines(tmp_path):
    root = write_emoeval(
        tmp_path / "IEMOCAP",
        {
            "Ses01F_impro01": [
                ("Ses01F_impro01_F000", "neu", 2.5, 2.5, 2.5),
                ("Ses01F_impro01_M000", "xxx", 1.0, 5.0, 3.5),
            ],
            "Ses02M_script01": [("Ses02M_script01_F001", "ang", 1.5, 4.0, 4.5)],
        },
    )
    vad = read_emoeval(root)
    assert vad == {
        "Ses01F_impro01_F000": (2.5, 2.5, 2.5),
        "Ses01F_impro01_M000": (1.0, 5.0, 3.5),
        "Ses02M_script01_F001": (1.5, 4.0, 4.5),
    }
    one = root / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    assert set(read_emoeval(one)) == {"Ses01F_impro01_F000", "Ses01F_impro01_M000"}


@pytest.mark.parametrize("value", [0.5, 5.5, float("nan")])
def test_vad_outside_range_names_file_and_utterance(tmp_path, value):
    root = write_emoeval(tmp_path, {"Ses01F_impro01": [("Ses01F_impro01_F000", "neu", 2.5, value, 2.5)]})
    with pytest.raises(CorpusError) as info:
        read_emoeval(root)
    message = str(info.value)
    assert (
        "Ses01F_impro01.txt" in message
        and "utterance Ses01F_impro01_F000" in message
        and "outside 1-5" in message
    )


def test_malformed_header_and_empty_directory(tmp_path):
    root = write_emoeval(tmp_path / "a", {"Ses01F_impro01": [("Ses01F_impro01_F000", "neu", 2.5, 2.5, 2.5)]})
    path = next(root.rglob("Ses01F_impro01.txt"))
    path.write_text(path.read_text() + "[1.0 - 2.0]\tSes01F_impro01_F009\tneu\t[2.5, 2.5]\n")
    with pytest.raises(CorpusError, match=r"Ses01F_impro01.txt.*line \d+: not an EmoEvaluation header"):
        read_emoeval(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"no EmoEvaluation header lines"):
        read_emoeval(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        read_emoeval(tmp_path / "absent")


def test_join_reports_matched_missing_and_unused(tmp_path):
    tables = dialogue_tables(n_train=2, n_test=1)
    corpus = read_cogmen(dump_pickle(tmp_path / "f.pkl", cogmen_tuple(tables)))
    ids = [u.id for d in corpus for u in d.utterances]
    vad = {uid: (2.0, 3.0, 4.0) for uid in ids[:-2]}
    vad["Ses09F_other_F000"] = (3.0, 3.0, 3.0)
    report = join_vad(corpus, vad)
    assert report.matched == len(ids) - 2
    assert report.missing == ids[-2:]
    assert report.unused == ["Ses09F_other_F000"]
    assert corpus.dialogues[0].utterances[0].vad == (2.0, 3.0, 4.0)
    assert corpus.dialogues[-1].utterances[-1].vad is None
    assert f"VAD {len(ids) - 2}/{len(ids)} utterances, 2 without VAD" in report.summary()
    assert corpus.summary()["vad_coverage"] == pytest.approx((len(ids) - 2) / len(ids))
