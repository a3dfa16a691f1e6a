"""JSONL import of your own dialogues (text features off here; MiniLM is tested in text_features)."""

from __future__ import annotations

import json

import pytest

from lantern.corpus.dialogue import CorpusError
from lantern.corpus.jsonl import read_jsonl


def write_jsonl(path, dialogues, *, raw_lines=()):
    lines = [json.dumps(d) for d in dialogues] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _dialogue(did, labels, *, split=None, ids=None, vad=None):
    utterances = []
    for i, label in enumerate(labels):
        u = {"speaker": "A" if i % 2 == 0 else "B", "text": f"utterance {i} of {did}"}
        if label is not None:
            u["label"] = label
        if ids is not None:
            u["id"] = ids[i]
        if vad is not None and vad[i] is not None:
            u["vad"] = vad[i]
        utterances.append(u)
    d = {"id": did, "utterances": utterances}
    if split is not None:
        d["split"] = split
    return d


def test_builtin_label_set_defaults_and_vad(tmp_path):
    path = write_jsonl(
        tmp_path / "mine.jsonl",
        [
            _dialogue("call-1", ["neu", "ANG", None], split="train", vad=[[3, 2.5, 3.0], None, None]),
            _dialogue("call-2", ["hap"], ids=["c2-first"]),
        ],
        raw_lines=[""],
    )
    corpus = read_jsonl(path, labels="iemocap6", text_features=False)
    assert corpus.name == "mine" and corpus.labels.name == "iemocap6"
    first, second = corpus.dialogues
    assert [u.id for u in first.utterances] == ["call-1_000", "call-1_001", "call-1_002"]
    assert first.labels == [2, 3, None]
    assert first.utterances[0].vad == (3.0, 2.5, 3.0)
    assert first.split == "train" and second.split == "test"  # split defaults to "test"
    assert second.utterances[0].id == "c2-first"
    assert corpus.modalities == {}


def test_custom_label_set_in_first_seen_order(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl", [_dialogue("a", ["calm", "Angry"]), _dialogue("b", ["angry", "joy"])]
    )
    corpus = read_jsonl(path, text_features=False)
    assert corpus.labels.classes == ("calm", "Angry", "joy")
    assert [d.labels for d in corpus.dialogues] == [[0, 1], [1, 2]]


def test_unlabelled_file(tmp_path):
    corpus = read_jsonl(
        write_jsonl(tmp_path / "u.jsonl", [_dialogue("a", [None, None])]), text_features=False
    )
    assert corpus.dialogues[0].labels == [None, None]
    assert corpus.summary()["unlabelled"] == 2


def _error(tmp_path, dialogues, raw_lines=(), **kwargs) -> str:
    path = write_jsonl(tmp_path / "bad.jsonl", dialogues, raw_lines=raw_lines)
    with pytest.raises(CorpusError) as info:
        read_jsonl(path, text_features=False, **kwargs)
    assert "bad.jsonl" in str(info.value)
    return str(info.value)


def test_label_outside_builtin_set(tmp_path):
    message = _error(tmp_path, [_dialogue("a", ["neu"]), _dialogue("b", ["neu", "bored"])], labels="iemocap6")
    assert (
        "line 2" in message
        and "dialogue b" in message
        and "utterance b_001" in message
        and "'bored'" in message
    )


def test_bad_lines_are_located(tmp_path):
    assert "line 2: invalid JSON" in _error(tmp_path, [_dialogue("a", ["neu"])], raw_lines=["{oops"])
    message = _error(tmp_path, [_dialogue("a", ["neu"]), {"id": "empty", "utterances": []}])
    assert "line 2" in message and "dialogue empty" in message and "empty dialogue" in message
    message = _error(tmp_path, [{"id": "a", "utterances": [{"text": "hi"}]}])
    assert "dialogue a" in message and "utterance a_000" in message and "'speaker'" in message
    message = _error(tmp_path, [_dialogue("a", [3])])
    assert "label must be a class name" in message
    message = _error(tmp_path, [_dialogue("a", ["neu"], split="validation")])
    assert "split 'validation'" in message
    message = _error(tmp_path, [_dialogue("a", ["neu"])], default_split=None)
    assert "missing 'split'" in message


def test_vad_outside_range(tmp_path):
    message = _error(tmp_path, [_dialogue("a", ["neu", "neu"], vad=[None, [3.0, 5.5, 3.0]])])
    assert "utterance a_001" in message and "outside 1-5" in message
    message = _error(tmp_path, [_dialogue("a", ["neu"], vad=[[3.0, 3.0]])])
    assert "vad must be [valence, arousal, dominance]" in message


def test_duplicate_ids(tmp_path):
    message = _error(tmp_path, [_dialogue("a", ["neu"]), _dialogue("a", ["sad"])])
    assert "duplicate dialogue id" in message and "dialogue a" in message
    message = _error(tmp_path, [_dialogue("a", ["neu", "neu"], ids=["x", "x"])])
    assert "duplicate utterance id" in message and "utterance x" in message


def test_empty_file(tmp_path):
    (tmp_path / "bad.jsonl").write_text("\n")
    with pytest.raises(CorpusError, match=r"no dialogues"):
        read_jsonl(tmp_path / "bad.jsonl", text_features=False)


def test_dialogue_id_is_optional_and_names_its_line(tmp_path):
    """The README calls a dialogue's id optional: a transcript file without ids reads, and each
    dialogue is named after its line so output rows trace back to the input."""
    no_id = _dialogue("ignored", ["neu", None])
    del no_id["id"]
    path = write_jsonl(tmp_path / "t.jsonl", [_dialogue("call-1", ["hap"]), no_id])
    corpus = read_jsonl(path, labels="iemocap6", text_features=False)
    assert [d.id for d in corpus.dialogues] == ["call-1", "line-2"]
    assert [u.id for u in corpus.dialogues[1].utterances] == ["line-2_000", "line-2_001"]


def test_a_given_id_that_collides_with_a_line_name_is_a_duplicate(tmp_path):
    no_id = _dialogue("ignored", ["neu"])
    del no_id["id"]
    path = write_jsonl(tmp_path / "t.jsonl", [_dialogue("line-2", ["hap"]), no_id])
    with pytest.raises(CorpusError, match="line-2"):
        read_jsonl(path, labels="iemocap6", text_features=False)
