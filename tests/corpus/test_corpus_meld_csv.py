"""MELD's public CSV release: layout, ids, order, targets, and every bad input located to its line."""

from __future__ import annotations

import logging

import pytest

from lantern.corpus.dialogue import CorpusError
from lantern.corpus.meld_csv import read_meld_csv
from tests.corpus.csv_fixtures import MELD_FILES, MELD_HEADER, meld_row, meld_splits, write_csv, write_meld


def test_published_layout_read_exactly(tmp_path, caplog):
    write_meld(tmp_path, bom="dev")
    with caplog.at_level(logging.INFO, logger="lantern.corpus.csv_dialogues"):
        corpus = read_meld_csv(tmp_path)
    assert corpus.name == "meld" and corpus.labels.name == "meld7" and corpus.modalities == {}
    # Dialogues in Dialogue_ID order within each split (the test file lists 12 before 2).
    assert [d.id for d in corpus] == ["train_dia0", "train_dia2", "dev_dia0", "test_dia2", "test_dia12"]
    assert "train_sent_emo.csv: 1 of 2 dialogues skip utterance numbers (kept as given)" in caplog.text
    assert [d.split for d in corpus] == ["train", "train", "dev", "test", "test"]
    first = corpus.dialogues[0]
    # Utterance_ID order (the file had 0, 3, 1), the gap kept, the source ids inside the ids.
    assert [u.id for u in first.utterances] == ["train_dia0_utt0", "train_dia0_utt1", "train_dia0_utt3"]
    assert [u.text for u in first.utterances] == [
        "Well, hello there.",
        'She said "fine" and left.',
        "First line\nsecond line, then more",
    ]
    assert first.speakers == ["Ann", "Bob", "Cy"]
    assert [corpus.labels.classes[x] for x in first.labels] == ["joy", "anger", "sadness"]
    assert corpus.dialogues[1].utterances[0].text == "It’s “great”… isn’t it?"
    assert corpus.dialogues[1].utterances[0].speaker == "The Neighbour"
    assert [u.id for u in corpus.dialogues[4].utterances] == ["test_dia12_utt1", "test_dia12_utt3"]
    summary = corpus.summary()
    assert summary["split_utterances"] == {"train": 5, "dev": 2, "test": 3}
    assert summary["speakers"] == 5 and summary["unlabelled"] == 0


def test_sentiment_target(tmp_path):
    write_meld(tmp_path)
    corpus = read_meld_csv(tmp_path, target="sentiment")
    assert corpus.labels.name == "meld-sentiment"
    assert corpus.labels.classes == ("negative", "neutral", "positive")
    assert [corpus.labels.classes[x] for x in corpus.dialogues[0].labels] == [
        "positive",
        "negative",
        "negative",
    ]
    with pytest.raises(ValueError, match="target must be one of emotion, sentiment"):
        read_meld_csv(tmp_path, target="valence")


def test_only_the_needed_columns_in_any_order(tmp_path):
    header = ["Dialogue_ID", "Emotion", "Utterance_ID", "Speaker", "Utterance", "Notes"]
    for split in MELD_FILES:
        write_csv(tmp_path / MELD_FILES[split], header, [["4", "Joy", "0", "Ann", "Hi, you.", "x"]])
    corpus = read_meld_csv(tmp_path)
    u = corpus.dialogues[0].utterances[0]
    assert (u.id, u.speaker, u.text, u.label) == ("train_dia4_utt0", "Ann", "Hi, you.", 4)
    with pytest.raises(CorpusError, match=r"line 1: missing column 'Sentiment'"):
        read_meld_csv(tmp_path, target="sentiment")


def _bad_rows(rows):
    """Train rows after the 2-line record (so line != record number), each case appends its fault."""
    return {**meld_splits(), "train": meld_splits()["train"] + rows}


# (rows appended to train, expected message parts); the faulty row is the last one, at line 8.
ROW_CASES = {
    "unknown emotion": (
        [meld_row(5, 0, "Yay!", "Ann", "happy")],
        ["utterance train_dia5_utt0", "'happy'", "meld7"],
    ),
    "duplicate utterance": (
        [meld_row(2, 1, "Again?", "Bob")],
        ["dialogue train_dia2", "Utterance_ID 1 repeats in this dialogue (first at line 7)"],
    ),
    "non-integer Utterance_ID": (
        [[*meld_row(2, 0, "x", "Ann")[:5], "2.0", *meld_row(2, 0, "x", "Ann")[6:]]],
        ["dialogue train_dia2", "Utterance_ID must be a whole number, got '2.0'"],
    ),
    "negative Dialogue_ID": (
        [[*meld_row(2, 0, "x", "Ann")[:4], "-1", *meld_row(2, 0, "x", "Ann")[5:]]],
        ["Dialogue_ID must be a whole number, got '-1'"],
    ),
    "empty speaker": ([meld_row(5, 0, "Who?", "  ")], ["utterance train_dia5_utt0", "empty Speaker"]),
    "short row": ([meld_row(5, 0, "Cut", "Ann")[:-1]], ["10 fields where the header has 11"]),
    "long row": ([[*meld_row(5, 0, "Too", "Ann"), "more"]], ["12 fields where the header has 11"]),
}


@pytest.mark.parametrize("case", ROW_CASES)
def test_bad_rows_are_one_line_errors_at_the_editor_line(tmp_path, case):
    rows, parts = ROW_CASES[case]
    lines = write_meld(tmp_path, _bad_rows(rows))
    assert lines["train"][-1] == 8  # the 2-line record shifts it
    with pytest.raises(CorpusError) as err:
        read_meld_csv(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"file {tmp_path / 'train_sent_emo.csv'}")
    assert "line 8: " in message
    for part in parts:
        assert part in message


def _replace_in_file(path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new))


def test_non_utf8_byte_names_its_line(tmp_path):
    write_meld(tmp_path, _bad_rows([meld_row(5, 0, "Un café?", "Ann")]))
    _replace_in_file(tmp_path / "train_sent_emo.csv", "café".encode(), b"caf\xe9")
    with pytest.raises(CorpusError, match=r"train_sent_emo\.csv: line 8: not UTF-8 \(byte 0xe9\)"):
        read_meld_csv(tmp_path)


def test_malformed_quoting_names_the_line_where_the_record_starts(tmp_path):
    write_meld(tmp_path, _bad_rows([meld_row(5, 0, "MARK", "Ann")]))
    _replace_in_file(tmp_path / "train_sent_emo.csv", b"MARK", b'He said "no" twice')
    # A quote inside an unquoted field is text; a quoted field must end at its closing quote.
    assert read_meld_csv(tmp_path).dialogues[2].utterances[0].text == 'He said "no" twice'
    _replace_in_file(tmp_path / "train_sent_emo.csv", b'He said "no" twice', b'"He said "no" twice"')
    with pytest.raises(CorpusError, match=r"line 8: malformed CSV record \(.*expected after"):
        read_meld_csv(tmp_path)
    # An unclosed quote runs on through the lines below: the error names the line it started on.
    path = tmp_path / "train_sent_emo.csv"
    path.write_bytes(path.read_bytes().replace(b'"He said "no" twice"', b"x") + b'9,"Never closed\r\n\r\n')
    with pytest.raises(CorpusError, match=r"line 9: malformed CSV record \(unexpected end of data\)"):
        read_meld_csv(tmp_path)


def test_missing_files_columns_and_rows(tmp_path):
    with pytest.raises(CorpusError, match=r"no such directory; meld-csv reads the folder that holds"):
        read_meld_csv(tmp_path / "nowhere")
    write_meld(tmp_path)
    with pytest.raises(CorpusError, match=r"not a directory"):
        read_meld_csv(tmp_path / "train_sent_emo.csv")
    (tmp_path / "dev_sent_emo.csv").unlink()
    with pytest.raises(
        CorpusError, match=r"file .*dev_sent_emo\.csv: missing \(meld-csv needs train_sent_emo"
    ):
        read_meld_csv(tmp_path)

    header = [c for c in MELD_HEADER if c != "Speaker"]
    write_csv(
        tmp_path / "dev_sent_emo.csv",
        header,
        [["1", "Hi.", "neutral", "neutral", "0", "0", "1", "1", "a", "b"]],
    )
    with pytest.raises(
        CorpusError, match=r"dev_sent_emo\.csv: line 1: missing column 'Speaker' \(the header has"
    ):
        read_meld_csv(tmp_path)
    write_csv(tmp_path / "dev_sent_emo.csv", [*MELD_HEADER, "Speaker"], [])
    with pytest.raises(CorpusError, match=r"line 1: column 'Speaker' appears 2 times"):
        read_meld_csv(tmp_path)
    write_csv(tmp_path / "dev_sent_emo.csv", MELD_HEADER, [])
    with pytest.raises(CorpusError, match=r"dev_sent_emo\.csv: no rows after the header"):
        read_meld_csv(tmp_path)
    (tmp_path / "dev_sent_emo.csv").write_bytes(b"\r\n")
    with pytest.raises(CorpusError, match=r"dev_sent_emo\.csv: empty file \(no header line\)"):
        read_meld_csv(tmp_path)


def test_blank_lines_and_lf_endings_are_accepted(tmp_path):
    write_meld(tmp_path)
    path = tmp_path / "test_sent_emo.csv"
    path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n") + b"\n  \n")
    corpus = read_meld_csv(tmp_path)
    assert [u.id for u in corpus.dialogues[-1].utterances] == ["test_dia12_utt1", "test_dia12_utt3"]
