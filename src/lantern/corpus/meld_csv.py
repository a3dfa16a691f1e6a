"""MELD's public text release: ``train_sent_emo.csv``, ``dev_sent_emo.csv``, ``test_sent_emo.csv``.

Columns ``Sr No., Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID, Season,
Episode, StartTime, EndTime``; this reader needs ``Utterance``, ``Speaker``, ``Dialogue_ID``,
``Utterance_ID`` and the target's column (``Emotion`` or ``Sentiment``), in any order.

- The split is the file's; ``Dialogue_ID`` restarts in every file, so a dialogue is
  ``<split>_dia<Dialogue_ID>`` and an utterance ``<split>_dia<Dialogue_ID>_utt<Utterance_ID>`` —
  the names of MELD's own video clips (``dia12_utt3.mp4``), prefixed by the split, so media can be
  joined later. Utterances are in ``Utterance_ID`` order; the ids are kept as given, gaps included.
- Labels: ``target="emotion"`` reads ``Emotion`` into ``meld7``; ``target="sentiment"`` reads
  ``Sentiment`` into ``meld-sentiment`` (negative, neutral, positive).
- Speakers are the names as written ("Chandler", "The Interviewer"), any number per dialogue.
- There are no feature vectors: the "t" modality is computed from the transcripts afterwards.
"""

from __future__ import annotations

from pathlib import Path

from lantern.corpus.csv_dialogues import Record, Row, label_index, read_split_tables, whole_number
from lantern.corpus.dialogue import Corpus, CorpusError, Utterance
from lantern.errors import LanternError
from lantern.labels import MELD7, MELD_SENTIMENT, LabelSet

FILES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
TARGETS: dict[str, tuple[str, LabelSet]] = {
    "emotion": ("Emotion", MELD7),
    "sentiment": ("Sentiment", MELD_SENTIMENT),
}


def _row_parser(column: str, labels: LabelSet):
    def parse(split: str, record: Record, file: str) -> Row:
        dia = whole_number(record, "Dialogue_ID", file=file)
        did = f"{split}_dia{dia}"
        number = whole_number(record, "Utterance_ID", file=file, dialogue=did)
        uid = f"{did}_utt{number}"
        speaker = record.values["Speaker"].strip()
        if not speaker:
            raise CorpusError(f"line {record.line}: empty Speaker", file=file, dialogue=did, utterance=uid)
        label = label_index(record, column, labels, file=file, dialogue=did, utterance=uid)
        utterance = Utterance(id=uid, speaker=speaker, text=record.values["Utterance"], label=label)
        return Row(line=record.line, dialogue_key=(dia,), dialogue_id=did, number=number, utterance=utterance)

    return parse


def read_meld_csv(src: str | Path, *, target: str = "emotion") -> Corpus:
    """The three MELD split files in the directory ``src`` as a validated corpus without features."""
    if target not in TARGETS:
        raise LanternError(f"MELD target must be one of {', '.join(TARGETS)}, got {target!r}")
    column, labels = TARGETS[target]
    return read_split_tables(
        src,
        FILES,
        ("Utterance", "Speaker", column, "Dialogue_ID", "Utterance_ID"),
        _row_parser(column, labels),
        name="meld",
        labels=labels,
        layout="meld-csv",
        number_column="Utterance_ID",
    )
