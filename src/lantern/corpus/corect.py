"""Reader for CORECT's preprocessed IEMOCAP file (``data_iemocap.pkl``).

The file is ``{"train": [...], "dev": [...], "test": [...]}``, each a list of dialogue dicts with
keys ``vid``, ``speakers``, ``labels``, ``audio``, ``visual``, ``text`` (an ``(n, 768)`` array of
sentence embeddings) and ``sentence``. It carries no utterance ids, so utterances are numbered
``<vid>_000``, ``<vid>_001``, ...; joining EmoEvaluation VAD needs the 9-tuple file's real ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lantern.corpus.dialogue import SPLITS, Corpus, CorpusError
from lantern.corpus.layouts import (
    as_list,
    as_text,
    check_unique_dialogues,
    read_dialogue_tables,
    warn_unused_label_slots,
)
from lantern.corpus.unpickle import load_pickle
from lantern.labels import get_label_set

KEYS = ("vid", "speakers", "labels", "audio", "visual", "text", "sentence")
MODALITY_FIELDS = {"t": "text", "a": "audio", "v": "visual"}


def read_corect(path: str | Path, *, labels: str = "iemocap6") -> Corpus:
    """Read CORECT's preprocessed ``{"train", "dev", "test"}`` pickle into a validated Corpus."""
    path = Path(path)
    file = str(path)
    label_set = get_label_set(labels)
    data = load_pickle(path)
    if not isinstance(data, Mapping) or set(data) != set(SPLITS):
        keys = sorted(map(str, data)) if isinstance(data, Mapping) else type(data).__name__
        raise CorpusError(f"expected a dict with keys train, dev, test; got {keys}", file=file)
    tables: dict[str, dict] = {
        "ids": {},
        "speakers": {},
        "labels": {},
        "sentences": {},
        **{f: {} for f in ("text", "audio", "visual")},
    }
    splits: list[tuple[str, str]] = []
    for split in SPLITS:
        for position, entry in enumerate(as_list(data[split], field=split, file=file, dialogue=None)):
            if not isinstance(entry, Mapping):
                raise CorpusError(
                    f"{split}[{position}] is a {type(entry).__name__}, expected a dialogue dict", file=file
                )
            missing = [k for k in KEYS if k not in entry]
            if missing:
                raise CorpusError(f"{split}[{position}] lacks keys {missing}", file=file)
            did = as_text(entry["vid"])
            n = len(as_list(entry["labels"], field="labels", file=file, dialogue=did))
            tables["ids"][did] = [f"{did}_{i:03d}" for i in range(n)]
            tables["sentences"][did] = entry["sentence"]
            for key in ("speakers", "labels", "text", "audio", "visual"):
                tables[key][did] = entry[key]
            splits.append((did, split))
    check_unique_dialogues([d for d, _ in splits], file=file)
    dialogues, widths = read_dialogue_tables(
        tables, modalities=MODALITY_FIELDS, splits=splits, labels=label_set, file=file
    )
    warn_unused_label_slots(dialogues, label_set, file)
    corpus = Corpus(name=path.stem, labels=label_set, dialogues=dialogues, modalities=widths)
    corpus.validate(file=file)
    return corpus
