"""Reader for IEMOCAP in the COGMEN/CORECT "raw" 9-tuple (``IEMOCAP_features.pkl``, ``..._4.pkl``).

The file (written by Python 2) is a 9-tuple::

    (video_ids, video_speakers, video_labels, video_text, video_audio,
     video_visual, video_sentence, train_vids, test_vids)

where every field but the last two is a dict keyed by dialogue id holding one list per dialogue,
aligned by position. Modalities: "t" = the file's 100-d text features (CORECT embeds the
transcripts instead: use :func:`lantern.corpus.text_features.add_text_features`), "a" 100-d,
"v" 512-d. CORECT's dev split is the first ``int(0.1 * len(train_vids))`` train ids in file order.
"""

from __future__ import annotations

from pathlib import Path

from lantern.corpus.dialogue import Corpus, CorpusError
from lantern.corpus.layouts import corpus_from_tables
from lantern.corpus.unpickle import load_pickle
from lantern.labels import get_label_set

FIELDS = ("ids", "speakers", "labels", "text", "audio", "visual", "sentences", "train_ids", "test_ids")
MODALITY_FIELDS = {"t": "text", "a": "audio", "v": "visual"}


def read_cogmen(path: str | Path, *, labels: str = "iemocap6", dev_fraction: float = 0.1) -> Corpus:
    """Read a COGMEN/CORECT 9-tuple pickle into a validated Corpus.

    ``labels`` names the label set the file's integer labels index: ``"iemocap6"`` (hap, sad, neu,
    ang, exc, fru) or ``"iemocap4"`` for the 4-way file (0..3). A label outside the set is an error
    naming the file, dialogue and utterance. Dialogues are ordered train (first ``dev_fraction``
    of them marked dev), then test, as the file lists them.
    """
    path = Path(path)
    file = str(path)
    label_set = get_label_set(labels)
    data = load_pickle(path)
    if not isinstance(data, tuple | list) or len(data) != len(FIELDS):
        size = len(data) if isinstance(data, tuple | list) else type(data).__name__
        raise CorpusError(f"expected the COGMEN/CORECT 9-tuple {FIELDS}, got {size}", file=file)
    tables = dict(zip(FIELDS, data, strict=True))
    return corpus_from_tables(
        tables, modalities=MODALITY_FIELDS, labels=label_set, dev_fraction=dev_fraction, path=path
    )
