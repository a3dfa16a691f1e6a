"""EmoryNLP's emotion release: ``emorynlp_{train,dev,test}_final.csv``.

Columns ``Utterance, Speaker, Emotion, Scene_ID, Utterance_ID, Season, Episode, Start_Time,
End_Time``; this reader needs all but the two times, in any order, and ignores extra columns.

- A dialogue is one scene: (``Season``, ``Episode``, ``Scene_ID``) within its split file, named
  ``<split>_s<Season>_e<Episode>_c<Scene_ID>`` after EmoryNLP's own ids (``s01_e02_c03``, numbers
  zero-padded to 2 digits, utterances ``_u<Utterance_ID>`` to 3). Utterances are in
  ``Utterance_ID`` order, ids kept as given.
- ``Emotion`` is one of Joyful, Mad, Neutral, Peaceful, Powerful, Sad, Scared (``emorynlp7``).
- ``Speaker`` is a list of names written as a Python list literal (``['Monica Geller']``). It is
  read as data — parsed, never evaluated — and only a list or tuple of string constants is
  accepted, so a hostile field such as ``__import__('os').system(...)`` is refused without running.
  Several names (people speaking together) become one speaker named by the distinct names, sorted
  and joined with `` & `` (``Monica Geller & Rachel Green``): the group is then the same speaker
  however the annotators ordered it. An empty list becomes :data:`UNKNOWN_SPEAKER`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from lantern.corpus.csv_dialogues import Record, Row, label_index, read_split_tables, whole_number
from lantern.corpus.dialogue import Corpus, CorpusError, Utterance
from lantern.errors import LanternError
from lantern.labels import EMORYNLP7

FILES = {
    "train": "emorynlp_train_final.csv",
    "dev": "emorynlp_dev_final.csv",
    "test": "emorynlp_test_final.csv",
}
COLUMNS = ("Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode")
UNKNOWN_SPEAKER = "(unknown)"
SPEAKER_SEPARATOR = " & "
# Far above any real list of names; bounds the work the parser does on a corrupt field.
MAX_SPEAKER_FIELD = 2000


def parse_speakers(value: str) -> list[str]:
    """The names in a Python list literal such as ``['Monica Geller', 'Rachel Green']``.

    The field is parsed with :func:`ast.parse` and its syntax tree inspected: anything but a list or
    tuple of string constants raises ValueError, and nothing in the field is ever evaluated.
    Names are stripped; empty ones are dropped.
    """
    if len(value) > MAX_SPEAKER_FIELD:
        raise LanternError(f"is {len(value)} characters long, more than a list of names needs")
    try:
        tree = ast.parse(value.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise LanternError(f"{value!r} is not a list of names such as ['Monica Geller']") from None
    if not isinstance(tree.body, ast.List | ast.Tuple):
        raise LanternError(f"{value!r} is not a list of names such as ['Monica Geller']")
    names = []
    for element in tree.body.elts:
        if not (isinstance(element, ast.Constant) and isinstance(element.value, str)):
            raise LanternError(f"{value!r} holds something other than quoted names")
        if element.value.strip():
            names.append(element.value.strip())
    return names


def speaker_name(names: list[str]) -> str:
    """One speaker for an utterance: the name, or the distinct names sorted and joined with `` & ``."""
    if not names:
        return UNKNOWN_SPEAKER
    return SPEAKER_SEPARATOR.join(sorted(set(names)))


def _parse(split: str, record: Record, file: str) -> Row:
    season = whole_number(record, "Season", file=file)
    episode = whole_number(record, "Episode", file=file)
    scene = whole_number(record, "Scene_ID", file=file)
    did = f"{split}_s{season:02d}_e{episode:02d}_c{scene:02d}"
    number = whole_number(record, "Utterance_ID", file=file, dialogue=did)
    uid = f"{did}_u{number:03d}"
    try:
        speaker = speaker_name(parse_speakers(record.values["Speaker"]))
    except ValueError as exc:
        raise CorpusError(
            f"line {record.line}: Speaker {exc}", file=file, dialogue=did, utterance=uid
        ) from None
    label = label_index(record, "Emotion", EMORYNLP7, file=file, dialogue=did, utterance=uid)
    utterance = Utterance(id=uid, speaker=speaker, text=record.values["Utterance"], label=label)
    return Row(
        line=record.line,
        dialogue_key=(season, episode, scene),
        dialogue_id=did,
        number=number,
        utterance=utterance,
    )


def read_emorynlp_csv(src: str | Path) -> Corpus:
    """The three EmoryNLP split files in the directory ``src`` as a validated corpus without features."""
    return read_split_tables(
        src,
        FILES,
        COLUMNS,
        _parse,
        name="emorynlp",
        labels=EMORYNLP7,
        layout="emorynlp-csv",
        number_column="Utterance_ID",
    )
