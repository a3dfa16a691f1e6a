"""Small MELD / EmoryNLP CSV files in the published layouts, written by the tests (invented lines)."""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

import numpy as np

MELD_HEADER = [
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
]
EMORYNLP_HEADER = [
    "Utterance",
    "Speaker",
    "Emotion",
    "Scene_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "Start_Time",
    "End_Time",
]
MELD_FILES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
EMORYNLP_FILES = {
    "train": "emorynlp_train_final.csv",
    "dev": "emorynlp_dev_final.csv",
    "test": "emorynlp_test_final.csv",
}


def render(rows: list[list[str]]) -> str:
    """Rows as the releases write them: minimal quoting, CRLF line ends."""
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    return buf.getvalue()


def write_csv(path: Path, header: list[str], rows: list[list[str]], *, bom: bool = False) -> list[int]:
    """Write a CSV file; returns the line (as an editor counts) on which each row starts."""
    lines, line = [], 2
    for row in rows:
        lines.append(line)
        line += render([row]).count("\n")
    data = render([header, *rows]).encode("utf-8")
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + data)
    return lines


def meld_row(
    dia: int, utt: int, text: str, speaker: str, emotion: str = "neutral", sentiment: str = "neutral"
):
    """A MELD row without its ``Sr No.`` (numbered on writing); times hold commas, as in the release."""
    start = f"00:{dia % 60:02d}:{utt:02d},125"
    return [
        text,
        speaker,
        emotion,
        sentiment,
        str(dia),
        str(utt),
        "3",
        "7",
        start,
        start.replace("125", "917"),
    ]


def meld_splits() -> dict[str, list[list[str]]]:
    """Three splits: a gap (0, 1, 3) and out-of-order rows, quoted commas, quotes and a line break,
    typographic punctuation, three speakers in a dialogue, ids restarting per split, a dialogue
    that starts at Utterance_ID 1, dialogues out of numeric order (12 before 2)."""
    return {
        "train": [
            meld_row(0, 0, "Well, hello there.", "Ann", "joy", "positive"),
            meld_row(0, 3, "First line\nsecond line, then more", "Cy", "sadness", "negative"),
            meld_row(0, 1, 'She said "fine" and left.', "Bob", "anger", "negative"),
            meld_row(2, 0, "It’s “great”… isn’t it?", "The Neighbour", "surprise", "positive"),
            meld_row(2, 1, "Mm-hmm — sure.", "Ann"),
        ],
        "dev": [meld_row(0, 0, "Who's there?", "Bob", "fear", "negative"), meld_row(0, 1, "Me.", "Ann")],
        "test": [
            meld_row(12, 1, "Ugh, gross.", "Dee", "disgust", "negative"),
            meld_row(12, 3, "Sorry!", "Ann", "sadness", "negative"),
            meld_row(2, 0, "Okay.", "Ann"),
        ],
    }


def write_meld(root: Path, splits: dict[str, list[list[str]]] | None = None, *, bom: str | None = None):
    """The three MELD files under ``root``; ``bom`` names a split whose file starts with a BOM.
    Returns {split: [line of each row]}."""
    root.mkdir(parents=True, exist_ok=True)
    lines = {}
    for split, rows in (splits or meld_splits()).items():
        numbered = [[str(i + 1), *row] for i, row in enumerate(rows)]
        lines[split] = write_csv(root / MELD_FILES[split], MELD_HEADER, numbered, bom=bom == split)
    return lines


def emory_row(season: int, episode: int, scene: int, utt: int, text: str, speakers, emotion: str = "Neutral"):
    """An EmoryNLP row; ``speakers`` is a list (written as its Python literal) or a raw field."""
    field = repr(speakers) if isinstance(speakers, list | tuple) else speakers
    return [text, field, emotion, str(scene), str(utt), str(season), str(episode), "00:00:01.5", "00:00:03.2"]


def emorynlp_splits() -> dict[str, list[list[str]]]:
    """Two scenes of one episode interleaved in train, several speakers, a name with an apostrophe."""
    return {
        "train": [
            emory_row(1, 2, 3, 1, "Coffee, please.", ["Monica Geller"], "Peaceful"),
            emory_row(1, 2, 4, 1, "Not again.", ["Ross Geller"], "Sad"),
            emory_row(1, 2, 3, 2, "Surprise!", ["Rachel Green", "Monica Geller"], "Joyful"),
            emory_row(1, 2, 3, 4, "Hey.", ["Chandler's Dad"], "Powerful"),
            emory_row(1, 2, 4, 2, "Boo.", ["Joey Tribbiani", "Joey Tribbiani"], "Scared"),
        ],
        "dev": [emory_row(2, 1, 1, 1, "What?", ("Phoebe Buffay",), "Mad")],
        "test": [emory_row(1, 2, 3, 1, "Nobody.", [], "Neutral")],
    }


def write_emorynlp(
    root: Path,
    splits: dict[str, list[list[str]]] | None = None,
    *,
    header: list[str] | None = None,
    bom: str | None = None,
):
    """The three EmoryNLP files; ``header`` reorders or extends the columns (rows follow it by name)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = {}
    for split, rows in (splits or emorynlp_splits()).items():
        if header is not None:
            rows = [
                [dict(zip(EMORYNLP_HEADER, row, strict=True)).get(c, "extra") for c in header] for row in rows
            ]
        lines[split] = write_csv(
            root / EMORYNLP_FILES[split], header or EMORYNLP_HEADER, rows, bom=bom == split
        )
    return lines


class FakeSentenceModel:
    """Stands in for a SentenceTransformer: row i is (len(text), code of first char, 1, ...), ``width`` wide.

    Records every batch it is asked to encode."""

    def __init__(self, width: int = 6):
        self.width = width
        self.batches: list[list[str]] = []

    def get_embedding_dimension(self) -> int:
        return self.width

    def encode(self, texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False):
        self.batches.append(list(texts))
        rows = np.ones((len(texts), self.width), dtype=np.float32)
        for i, t in enumerate(texts):
            rows[i, 0] = len(t)
            rows[i, 1] = ord(t[0]) if t else 0
        return rows


def fake_models(monkeypatch, width: int = 6) -> dict[str, FakeSentenceModel]:
    """Replace model loading by fakes, one per source string; returns them by source."""
    import lantern.corpus.text_features as text_features

    models: dict[str, FakeSentenceModel] = {}

    def load(source):
        return models.setdefault(source, FakeSentenceModel(width))

    monkeypatch.setattr(text_features, "_load", load)
    return models
