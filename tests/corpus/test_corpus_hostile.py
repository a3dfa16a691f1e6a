"""Text files nobody on the team wrote: stray bytes, huge numbers, deep nesting and byte-order marks in
every JSON / JSONL reader, each refused (or accepted) with the file and line named."""

from __future__ import annotations

import json

import pytest

from lantern.cli import main
from lantern.corpus import CorpusError, load_corpus, save_corpus
from lantern.corpus.emoeval import read_emoeval
from lantern.corpus.jsonl import read_jsonl
from lantern.predictions import Prediction, read_predictions, write_predictions
from tests.corpus.corpus_fixtures import emoeval_turn, small_corpus

DIALOGUE = {
    "id": "call-1",
    "split": "test",
    "utterances": [{"speaker": "A", "text": "hello", "label": "neu"}],
}
DEEP = b"[" * 100_000 + b"]" * 100_000
# Deep enough to be refused, shallow enough that json.loads itself parses it without a RecursionError.
DEEPISH = b"[" * 500 + b"]" * 500
HUGE_NUMBER = b"1" * 5000
BOM = b"\xef\xbb\xbf"


def _line(record: dict) -> bytes:
    return json.dumps(record).encode() + b"\n"


def _dialogue_with(vad: bytes) -> bytes:
    return _line(DIALOGUE).replace(b'"label": "neu"', b'"label": "neu", "vad": ' + vad)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_line(DIALOGUE).replace(b"hello", b"h\xe9llo"), r"line 2, column \d+: not UTF-8 text \(byte 0xe9\)"),
        (_dialogue_with(HUGE_NUMBER), r"line 2: a number has more than \d+ digits"),
        (_dialogue_with(DEEP), r"line 2: JSON nested more than 100 levels deep"),
        (_dialogue_with(DEEPISH), r"line 2: JSON nested more than 100 levels deep"),
    ],
    ids=["latin1 byte", "5000 digits", "100k deep", "500 deep"],
)
def test_jsonl_dialogues_bad_line_is_located(tmp_path, bad, message):
    path = tmp_path / "calls.jsonl"
    path.write_bytes(_line({**DIALOGUE, "id": "call-0"}) + bad + _line({**DIALOGUE, "id": "call-2"}))
    with pytest.raises(CorpusError, match=rf"file {path}: {message}"):
        read_jsonl(path, text_features=False)


def test_jsonl_dialogues_with_byte_order_mark_are_read(tmp_path):
    path = tmp_path / "calls.jsonl"
    path.write_bytes(BOM + _line(DIALOGUE) + _line({**DIALOGUE, "id": "call-2"}))
    corpus = read_jsonl(path, text_features=False)
    assert [d.id for d in corpus.dialogues] == ["call-1", "call-2"]


def _predictions(path) -> bytes:
    write_predictions(path, [Prediction(f"u{i}", "d", "A", "test", 0, [0.5, 0.5]) for i in range(3)])
    return path.read_bytes()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda line: line.replace(b'"A"', b'"\xff"'), r"line 2, column \d+: not UTF-8 text \(byte 0xff\)"),
        (lambda line: line.replace(b'"label":0', b'"label":' + DEEP), r"line 2: JSON nested more than 100"),
        (lambda line: line.replace(b'"label":0', b'"label":' + HUGE_NUMBER), r"line 2: a number has more"),
    ],
    ids=["non-UTF-8 byte", "deep nesting", "5000 digits"],
)
def test_predictions_bad_line_is_located(tmp_path, edit, message):
    path = tmp_path / "predictions-test.jsonl"
    first, second, third = _predictions(path).splitlines(keepends=True)
    path.write_bytes(first + edit(second) + third)
    with pytest.raises(CorpusError, match=rf"file {path}: {message}"):
        read_predictions(path)


def test_predictions_with_byte_order_mark_are_read(tmp_path):
    path = tmp_path / "predictions-test.jsonl"
    path.write_bytes(BOM + _predictions(path))
    assert [p.id for p in read_predictions(path)] == ["u0", "u1", "u2"]


def test_native_dialogues_with_bad_bytes_are_located(tmp_path):
    out = save_corpus(small_corpus(), tmp_path / "c")
    path = out / "dialogues.jsonl"
    first, second = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(first + second.replace(b"line 0", b"line \xe9"))
    with pytest.raises(CorpusError, match=rf"file {path}: line 2, column \d+: not UTF-8 text"):
        load_corpus(out)
    path.write_bytes(first + second.replace(b'"offset": 3', b'"offset": ' + HUGE_NUMBER))
    with pytest.raises(CorpusError, match=rf"file {path}: line 2: a number has more than \d+ digits"):
        load_corpus(out)
    path.write_bytes(first + second.replace(b'"offset": 3', b'"offset": ' + DEEP))
    with pytest.raises(CorpusError, match=rf"file {path}: line 2: JSON nested more than 100"):
        load_corpus(out)


def test_native_files_with_byte_order_marks_are_read(tmp_path):
    out = save_corpus(small_corpus(), tmp_path / "c")
    for name in ("corpus.json", "dialogues.jsonl"):
        (out / name).write_bytes(BOM + (out / name).read_bytes())
    assert [d.id for d in load_corpus(out).dialogues] == ["dia0", "dia1"]


def test_native_header_faults_are_located(tmp_path):
    out = save_corpus(small_corpus(), tmp_path / "c")
    header = out / "corpus.json"
    text = header.read_bytes()
    header.write_bytes(text.replace(b'"small"', b'"sm\xe4ll"'))
    with pytest.raises(CorpusError, match=rf"file {header}: line 4, column 14: not UTF-8 text"):
        load_corpus(out)
    header.write_bytes(text.replace(b'"small"', DEEP))
    with pytest.raises(CorpusError, match=rf"file {header}: JSON nested more than 100"):
        load_corpus(out)


def test_emoeval_file_with_byte_order_mark_keeps_its_first_turn(tmp_path):
    path = tmp_path / "Ses01F_impro01.txt"
    turns = emoeval_turn("Ses01F_impro01_F000", "neu", 2.5, 3.0, 3.5) + emoeval_turn(
        "Ses01F_impro01_M001", "ang", 1.5, 4.0, 4.0
    )
    path.write_bytes(BOM + turns.encode())
    assert read_emoeval(path) == {
        "Ses01F_impro01_F000": (2.5, 3.0, 3.5),
        "Ses01F_impro01_M001": (1.5, 4.0, 4.0),
    }


def test_cli_reports_a_hostile_jsonl_in_one_line(tmp_path, capsys):
    path = tmp_path / "calls.jsonl"
    path.write_bytes(_dialogue_with(DEEP))
    code = main(["data", "convert", str(path), "--format", "jsonl", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"file {path}: line 1: JSON nested" in err
