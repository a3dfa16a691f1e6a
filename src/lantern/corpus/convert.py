"""One entry point from any supported input layout to a Corpus: what ``lantern data convert`` runs.

Formats: ``cogmen`` (COGMEN/CORECT 9-tuple), ``corect`` (CORECT preprocessed dict), ``sdt`` (SDT
IEMOCAP 12-tuple), ``meld`` (SDT MELD 13-tuple), ``jsonl`` (your own dialogues; here every dialogue
must state its split, since the corpus is for training), ``meld-csv`` and ``emorynlp-csv`` (the
public text releases: a directory holding the three split files). Optionally joins IEMOCAP
EmoEvaluation VAD and computes the text features with a sentence encoder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lantern.corpus.cogmen import read_cogmen
from lantern.corpus.corect import read_corect
from lantern.corpus.dialogue import Corpus, CorpusError
from lantern.corpus.emoeval import VadJoinReport, join_vad, read_emoeval
from lantern.corpus.emorynlp_csv import read_emorynlp_csv
from lantern.corpus.jsonl import read_jsonl
from lantern.corpus.meld_csv import TARGETS as MELD_TARGETS
from lantern.corpus.meld_csv import read_meld_csv
from lantern.corpus.sdt import read_sdt_iemocap, read_sdt_meld
from lantern.corpus.text_features import MINILM, add_text_features, text_encoder
from lantern.errors import LanternError

log = logging.getLogger(__name__)

FORMATS = ("cogmen", "corect", "sdt", "meld", "jsonl", "meld-csv", "emorynlp-csv")
DEFAULT_LABELS = {
    "cogmen": "iemocap6",
    "corect": "iemocap6",
    "sdt": "iemocap6",
    "meld": "meld7",
    "jsonl": None,
    "meld-csv": "meld7",
    "emorynlp-csv": "emorynlp7",
}
# Layouts whose split is given by the file; the others make dev from the first train ids.
OWN_DEV_SPLIT = ("corect", "jsonl", "meld-csv", "emorynlp-csv")
# Layouts without text vectors: their "t" modality is always computed.
TEXT_ONLY = ("jsonl", "meld-csv", "emorynlp-csv")
DEFAULT_DEV_FRACTION = 0.1
TARGETS = tuple(MELD_TARGETS)


def _check_csv_labels(format: str, labels: str | None, target: str) -> None:
    """The CSV releases fix their label set (MELD: by ``target``); ``labels`` may only repeat it."""
    implied = MELD_TARGETS[target][1].name if format == "meld-csv" else DEFAULT_LABELS[format]
    if labels is not None and labels != implied:
        raise LanternError(
            f"format {format} reads its own label set ({implied} here; meld-csv: meld7 for target "
            f"emotion, meld-sentiment for target sentiment), got labels={labels!r}"
        )


def read_layout(
    src: str | Path,
    format: str,
    *,
    labels: str | None = None,
    dev_fraction: float | None = None,
    target: str = "emotion",
) -> Corpus:
    """Read ``src`` in one of :data:`FORMATS` with the file's own features (JSONL, CSV: none).

    ``target`` chooses MELD's label column for ``meld-csv``: "emotion" (meld7) or "sentiment"
    (meld-sentiment); the other formats have emotions only.
    """
    if format not in FORMATS:
        raise LanternError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    if target not in TARGETS:
        raise LanternError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if target != "emotion" and format != "meld-csv":
        raise LanternError(f"target {target!r} applies to format meld-csv only, not {format}")
    if format in ("meld-csv", "emorynlp-csv"):
        _check_csv_labels(format, labels, target)
    labels = labels or DEFAULT_LABELS[format]
    fraction = DEFAULT_DEV_FRACTION if dev_fraction is None else dev_fraction
    if format in OWN_DEV_SPLIT and dev_fraction not in (None, DEFAULT_DEV_FRACTION):
        log.warning(
            "%s: format %s states its own splits; dev_fraction=%s is ignored", src, format, dev_fraction
        )
    if format == "cogmen":
        return read_cogmen(src, labels=labels, dev_fraction=fraction)
    if format == "corect":
        return read_corect(src, labels=labels)
    if format == "sdt":
        return read_sdt_iemocap(src, labels=labels, dev_fraction=fraction)
    if format == "meld":
        return read_sdt_meld(src, labels=labels, dev_fraction=fraction)
    if format == "meld-csv":
        return read_meld_csv(src, target=target)
    if format == "emorynlp-csv":
        return read_emorynlp_csv(src)
    # A corpus made for training must say which dialogues train and which test.
    return read_jsonl(src, labels=labels, default_split=None, text_features=False)


def convert_corpus(
    src: str | Path,
    format: str,
    *,
    emoeval: str | Path | None = None,
    labels: str | None = None,
    text_features: str | None = None,
    dev_fraction: float | None = None,
    target: str = "emotion",
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
) -> tuple[Corpus, VadJoinReport | None]:
    """Read ``src``, join VAD from ``emoeval`` (a directory of EmoEvaluation files), set text features.

    ``src`` is a file, or for ``meld-csv`` / ``emorynlp-csv`` the directory holding the split files.
    ``text_features``: ``"file"`` keeps the file's "t" vectors (the default for the pickled
    layouts); ``"minilm"`` (the default, and the way, for JSONL and the CSV releases, which carry
    no vectors) or ``"st:PATH_OR_NAME"`` embeds the transcripts with that sentence encoder (see
    :func:`lantern.corpus.text_features.text_encoder`). With ``cache_dir`` (a corpus directory, say
    the one being replaced), its rows are reused when the encoder and the texts are the same.
    ``progress``: the embedding progress bar, as in ``TextEncoder.encode``. Returns the validated
    corpus and the VAD join report (None without ``emoeval``); a join that matches no utterance at
    all is an error.
    """
    if text_features is None:
        text_features = MINILM if format in TEXT_ONLY else "file"
    if text_features == "file":
        if format in TEXT_ONLY:
            raise LanternError(
                f"format {format} carries no text feature vectors; use text_features='minilm' "
                "or 'st:PATH_OR_NAME'"
            )
        encoder = None
    else:
        encoder = text_encoder(text_features)
    corpus = read_layout(src, format, labels=labels, dev_fraction=dev_fraction, target=target)
    report = None
    if emoeval is not None:
        vad = read_emoeval(emoeval)
        report = join_vad(corpus, vad)
        if report.matched == 0:
            raise CorpusError(
                f"none of the corpus's {report.total} utterance ids occurs among the {len(vad)} ids of "
                f"{emoeval} (e.g. {report.missing[0]!r} vs {next(iter(vad))!r})",
                file=str(src),
            )
    if encoder is not None:
        corpus = add_text_features(
            corpus, replace=True, encoder=encoder, cache_dir=cache_dir, progress=progress
        )
    corpus.validate(file=str(src))
    return corpus, report
