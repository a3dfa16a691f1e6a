"""Readers for the SDT / MMGCN feature pickles: IEMOCAP (12-tuple) and MELD (13-tuple).

IEMOCAP (``iemocap_multimodal_features.pkl``)::

    (video_ids, video_speakers, video_labels, text_1024, roberta2, roberta3, roberta4,
     audio_1582, visual_342, video_sentence, train_vids, test_vids)

MELD (``meld_multimodal_features.pkl``) has the same 12 fields plus one unused item; its speakers
are one-hot vectors over 9 speaker slots (read as ``speaker0`` .. ``speaker8``), audio is 300-d and
the labels index meld7. The three extra RoBERTa layers are unused. SDT has no dev split (it reports
the best test epoch); Lantern makes one from the first ``dev_fraction`` of the train ids, in file
order, as CORECT does for IEMOCAP.
"""

from __future__ import annotations

from pathlib import Path

from lantern.corpus.dialogue import Corpus, CorpusError
from lantern.corpus.layouts import corpus_from_tables
from lantern.corpus.unpickle import load_pickle
from lantern.labels import get_label_set

FIELDS = (
    "ids",
    "speakers",
    "labels",
    "text",
    "roberta2",
    "roberta3",
    "roberta4",
    "audio",
    "visual",
    "sentences",
    "train_ids",
    "test_ids",
)
MODALITY_FIELDS = {"t": "text", "a": "audio", "v": "visual"}


def _read_sdt(path: Path, *, n_fields: int, labels: str, dev_fraction: float, layout: str) -> Corpus:
    file = str(path)
    label_set = get_label_set(labels)
    data = load_pickle(path)
    if not isinstance(data, tuple | list) or len(data) != n_fields:
        size = len(data) if isinstance(data, tuple | list) else type(data).__name__
        raise CorpusError(f"expected the SDT {layout} {n_fields}-tuple, got {size}", file=file)
    tables = dict(zip(FIELDS, data[: len(FIELDS)], strict=True))
    return corpus_from_tables(
        tables, modalities=MODALITY_FIELDS, labels=label_set, dev_fraction=dev_fraction, path=path
    )


def read_sdt_iemocap(path: str | Path, *, labels: str = "iemocap6", dev_fraction: float = 0.1) -> Corpus:
    """IEMOCAP in SDT's 12-tuple: "t" RoBERTa 1024-d, "a" openSMILE 1582-d, "v" DenseFace 342-d."""
    return _read_sdt(Path(path), n_fields=12, labels=labels, dev_fraction=dev_fraction, layout="IEMOCAP")


def read_sdt_meld(path: str | Path, *, labels: str = "meld7", dev_fraction: float = 0.1) -> Corpus:
    """MELD in SDT's 13-tuple; one-hot speakers become ``speaker<slot>``, labels index meld7."""
    return _read_sdt(Path(path), n_fields=13, labels=labels, dev_fraction=dev_fraction, layout="MELD")
