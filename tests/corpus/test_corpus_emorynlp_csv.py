"""EmoryNLP's CSV release: scenes as dialogues, speaker lists read as data (never run), bad input."""

from __future__ import annotations

import pytest

from lantern.corpus.dialogue import CorpusError
from lantern.corpus.emorynlp_csv import UNKNOWN_SPEAKER, parse_speakers, read_emorynlp_csv, speaker_name
from tests.corpus.csv_fixtures import EMORYNLP_HEADER, emory_row, emorynlp_splits, write_emorynlp


def test_published_layout_read_exactly(tmp_path):
    write_emorynlp(tmp_path, bom="train")
    corpus = read_emorynlp_csv(tmp_path)
    assert corpus.name == "emorynlp" and corpus.labels.name == "emorynlp7"
    assert corpus.labels.classes == ("joyful", "mad", "neutral", "peaceful", "powerful", "sad", "scared")
    assert [d.id for d in corpus] == [
        "train_s01_e02_c03",
        "train_s01_e02_c04",
        "dev_s02_e01_c01",
        "test_s01_e02_c03",
    ]
    scene = corpus.dialogues[0]
    assert [u.id for u in scene.utterances] == [
        "train_s01_e02_c03_u001",
        "train_s01_e02_c03_u002",
        "train_s01_e02_c03_u004",
    ]
    assert [u.text for u in scene.utterances] == ["Coffee, please.", "Surprise!", "Hey."]
    assert scene.speakers == ["Monica Geller", "Monica Geller & Rachel Green", "Chandler's Dad"]
    assert [corpus.labels.classes[x] for x in scene.labels] == ["peaceful", "joyful", "powerful"]
    assert corpus.dialogues[1].speakers == ["Ross Geller", "Joey Tribbiani"]  # repeated name: one speaker
    assert corpus.dialogues[2].speakers == ["Phoebe Buffay"]  # a tuple literal
    assert corpus.dialogues[3].speakers == [UNKNOWN_SPEAKER]  # []
    assert corpus.summary()["split_utterances"] == {"train": 5, "dev": 1, "test": 1}


def test_columns_in_any_order_extra_columns_ignored(tmp_path):
    header = ["Season", "Extra", "Utterance_ID", "Speaker", "Episode", "Utterance", "Scene_ID", "Emotion"]
    write_emorynlp(tmp_path, header=header)
    corpus = read_emorynlp_csv(tmp_path)
    assert [u.id for u in corpus.dialogues[0].utterances][-1] == "train_s01_e02_c03_u004"
    assert corpus.dialogues[0].speakers[1] == "Monica Geller & Rachel Green"
    write_emorynlp(tmp_path, header=[c for c in EMORYNLP_HEADER if c != "Scene_ID"])
    with pytest.raises(CorpusError, match=r"emorynlp_train_final\.csv: line 1: missing column 'Scene_ID'"):
        read_emorynlp_csv(tmp_path)


def test_speaker_lists_are_parsed_as_data():
    assert parse_speakers("['Monica Geller']") == ["Monica Geller"]
    assert parse_speakers(" ['Ross Geller', \"Chandler's Dad\"] ") == ["Ross Geller", "Chandler's Dad"]
    assert parse_speakers("('Joey Tribbiani',)") == ["Joey Tribbiani"]
    assert parse_speakers("[]") == [] and parse_speakers("['  ']") == []
    assert speaker_name(["Rachel Green", "Monica Geller", "Rachel Green"]) == "Monica Geller & Rachel Green"
    assert speaker_name([]) == UNKNOWN_SPEAKER


@pytest.mark.parametrize(
    "field",
    [
        "Monica Geller",  # not a literal
        "'Monica Geller'",  # a string, not a list
        "{'Monica Geller'}",  # a set
        "[1]",
        "['Monica'] + ['Ross']",
        "[print('x')]",
        "[f'{1}']",
        "[" * 5000 + "]" * 5000,  # too long for a list of names, and deep
        "[" * 400 + "]" * 400,  # deep nesting, short enough to parse
        "['a\x00']",
    ],
)
def test_anything_but_a_list_of_strings_is_refused(field):
    with pytest.raises(ValueError):
        parse_speakers(field)


def test_hostile_speaker_literal_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    hostile = f"__import__('os').system('touch {marker}')"
    splits = emorynlp_splits()
    splits["train"].append(emory_row(1, 2, 5, 1, "Hi.", hostile))
    lines = write_emorynlp(tmp_path / "data", splits)
    with pytest.raises(CorpusError) as err:
        read_emorynlp_csv(tmp_path / "data")
    message = str(err.value)
    assert f"line {lines['train'][-1]}: Speaker" in message and "utterance train_s01_e02_c05_u001" in message
    assert "is not a list of names" in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("row", "parts"),
    [
        (
            emory_row(1, 2, 5, 1, "Yay.", ["Ann"], "Happy"),
            ["utterance train_s01_e02_c05_u001", "'Happy'", "emorynlp7"],
        ),
        (
            emory_row(1, 2, 3, 2, "Again.", ["Ann"]),
            ["Utterance_ID 2 repeats in this dialogue (first at line 4)"],
        ),
        (
            [*emory_row(1, 2, 5, 1, "x", ["Ann"])[:5], "S1", "2", "a", "b"],
            ["Season must be a whole number, got 'S1'"],
        ),
        (emory_row(1, 2, 5, 1, "x", "[Ann]"), ["Speaker '[Ann]' holds something other than quoted names"]),
        (emory_row(1, 2, 5, 1, "x", ["Ann"])[:-1], ["8 fields where the header has 9"]),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, row, parts):
    splits = emorynlp_splits()
    splits["train"].append(row)
    lines = write_emorynlp(tmp_path, splits)
    with pytest.raises(CorpusError) as err:
        read_emorynlp_csv(tmp_path)
    message = str(err.value)
    assert message.startswith(f"file {tmp_path / 'emorynlp_train_final.csv'}")
    assert f"line {lines['train'][-1]}: " in message and "\n" not in message
    for part in parts:
        assert part in message


def test_missing_file_and_non_utf8(tmp_path):
    write_emorynlp(tmp_path)
    (tmp_path / "emorynlp_test_final.csv").unlink()
    with pytest.raises(CorpusError, match=r"emorynlp_test_final\.csv: missing \(emorynlp-csv needs"):
        read_emorynlp_csv(tmp_path)
    write_emorynlp(tmp_path)
    path = tmp_path / "emorynlp_dev_final.csv"
    path.write_bytes(path.read_bytes().replace(b"What?", b"Qu\xe9?"))
    with pytest.raises(CorpusError, match=r"emorynlp_dev_final\.csv: line 2: not UTF-8 \(byte 0xe9\)"):
        read_emorynlp_csv(tmp_path)
