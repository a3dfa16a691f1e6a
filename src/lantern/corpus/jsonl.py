"""Your own dialogues as JSON Lines: one dialogue per line, transcripts only.

    {"id": "call-017", "split": "test",
     "utterances": [{"speaker": "agent", "text": "How can I help?", "label": "neu",
                     "vad": [3.0, 2.5, 3.0], "id": "call-017_000"}, ...]}

- ``split`` (train/dev/test) may be left out; it then defaults to ``default_split`` ("test": a file
  to annotate with a trained model). A training corpus should state it; ``default_split=None``
  makes it required.
- ``label`` is a class *name*, optional per utterance. The label set is the built-in one named by
  ``labels=`` (every name must belong to it); without ``labels=``, the names met, in first-seen
  order and compared case-insensitively, make a custom set; a file with no labels at all is
  unlabelled (its label set is then iemocap6, the set the bundled models predict, and every label
  is ``None``).
- ``vad`` is optional ``[valence, arousal, dominance]`` on the 1-5 scale.
- A dialogue's ``id`` is optional; it defaults to ``line-<line number>``, so a transcript file
  written without ids still reads and every output row can be traced back to its line. An
  utterance's ``id`` is optional too; it defaults to ``<dialogue id>_<position:03d>``.
- The file is UTF-8; a leading byte-order mark (as Windows tools write) is accepted.

There are no feature vectors in the file, so the "t" modality is computed from the transcripts
(:mod:`lantern.corpus.text_features`) unless ``text_features=False``: by ``text_encoder`` when
given — to embed new dialogues the way a corpus was, pass
``lantern.corpus.text_features.text_encoder(corpus.feature_sources["t"])`` — else by the bundled
MiniLM.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lantern.corpus.dialogue import SPLITS, VAD_RANGE, Corpus, CorpusError, Dialogue, Utterance
from lantern.corpus.text_features import TextEncoder, add_text_features
from lantern.jsonio import json_lines
from lantern.labels import IEMOCAP6, LabelSet, custom_label_set, get_label_set


def _vad(
    value: Any, *, file: str, where: str, dialogue: str, utterance: str
) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 3:
        raise CorpusError(
            f"{where}: vad must be [valence, arousal, dominance]",
            file=file,
            dialogue=dialogue,
            utterance=utterance,
        )
    triple = []
    for x in value:
        if (
            isinstance(x, bool)
            or not isinstance(x, int | float)
            or not math.isfinite(x)
            or not VAD_RANGE[0] <= x <= VAD_RANGE[1]
        ):
            raise CorpusError(
                f"{where}: VAD value {x!r} is outside {VAD_RANGE[0]:g}-{VAD_RANGE[1]:g}",
                file=file,
                dialogue=dialogue,
                utterance=utterance,
            )
        triple.append(float(x))
    return (triple[0], triple[1], triple[2])


def _text_field(
    raw: dict, key: str, *, file: str, where: str, dialogue: str | None, utterance: str | None = None
) -> str:
    if key not in raw:
        raise CorpusError(f"{where}: missing {key!r}", file=file, dialogue=dialogue, utterance=utterance)
    value = raw[key]
    if not isinstance(value, str):
        raise CorpusError(
            f"{where}: {key!r} must be a string, got {value!r}",
            file=file,
            dialogue=dialogue,
            utterance=utterance,
        )
    return value


def _read_line(
    raw: Any, *, file: str, line: int, default_split: str | None
) -> tuple[str, str, list[tuple[Utterance, str | None]]]:
    where = f"line {line}"
    if not isinstance(raw, dict):
        raise CorpusError(
            f"{where}: expected a JSON object (one dialogue), got {type(raw).__name__}", file=file
        )
    did = _text_field(raw, "id", file=file, where=where, dialogue=None) if "id" in raw else f"line-{line}"
    split = raw.get("split", default_split)
    if split is None:
        raise CorpusError(f"{where}: missing 'split' (one of {', '.join(SPLITS)})", file=file, dialogue=did)
    if split not in SPLITS:
        raise CorpusError(
            f"{where}: split {split!r} is not one of {', '.join(SPLITS)}", file=file, dialogue=did
        )
    records = raw.get("utterances")
    if not isinstance(records, list):
        raise CorpusError(f"{where}: 'utterances' must be a list", file=file, dialogue=did)
    if not records:
        raise CorpusError(f"{where}: empty dialogue (no utterances)", file=file, dialogue=did)
    utterances: list[tuple[Utterance, str | None]] = []
    for i, u in enumerate(records):
        if not isinstance(u, dict):
            raise CorpusError(
                f"{where}: utterance must be a JSON object", file=file, dialogue=did, utterance=i
            )
        uid = u.get("id", f"{did}_{i:03d}")
        if not isinstance(uid, str):
            raise CorpusError(
                f"{where}: utterance id must be a string, got {uid!r}", file=file, dialogue=did, utterance=i
            )
        speaker = _text_field(u, "speaker", file=file, where=where, dialogue=did, utterance=uid)
        text = _text_field(u, "text", file=file, where=where, dialogue=did, utterance=uid)
        label = u.get("label")
        if label is not None and not isinstance(label, str):
            raise CorpusError(
                f"{where}: label must be a class name, got {label!r}", file=file, dialogue=did, utterance=uid
            )
        vad = _vad(u.get("vad"), file=file, where=where, dialogue=did, utterance=uid)
        utterances.append((Utterance(id=uid, speaker=speaker, text=text, vad=vad), label))
    return did, split, utterances


def read_jsonl(
    path: str | Path,
    *,
    labels: str | None = None,
    default_split: str | None = "test",
    text_features: bool = True,
    text_encoder: TextEncoder | None = None,
    progress: bool | None = None,
    name: str | None = None,
) -> Corpus:
    """Read a dialogues-per-line JSONL file into a validated Corpus (see the module docstring).

    ``progress`` is the embedding progress bar's setting (see ``TextEncoder.encode``).
    """
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    parsed: list[tuple[int, str, str, list[tuple[Utterance, str | None]]]] = []
    for line, raw in json_lines(path):
        parsed.append((line, *_read_line(raw, file=file, line=line, default_split=default_split)))
    if not parsed:
        raise CorpusError("no dialogues (the file is empty)", file=file)
    names = [label for *_, us in parsed for _, label in us if label is not None]
    label_set: LabelSet
    if labels is not None:
        label_set = get_label_set(labels)
    elif names:
        first_seen: dict[str, str] = {}
        for label in names:
            first_seen.setdefault(label.strip().lower(), label.strip())
        label_set = custom_label_set(list(first_seen.values()))
    else:
        label_set = IEMOCAP6
    dialogues = []
    for line, did, split, utterances in parsed:
        for u, label in utterances:
            if label is not None:
                try:
                    u.label = label_set.index(label)
                except ValueError as exc:
                    raise CorpusError(
                        f"line {line}: {exc}", file=file, dialogue=did, utterance=u.id
                    ) from None
        dialogues.append(Dialogue(id=did, split=split, utterances=[u for u, _ in utterances]))
    corpus = Corpus(name=name or path.stem, labels=label_set, dialogues=dialogues, modalities={})
    corpus.validate(file=file)
    if text_features:
        corpus = add_text_features(corpus, replace=False, encoder=text_encoder, progress=progress)
    return corpus
