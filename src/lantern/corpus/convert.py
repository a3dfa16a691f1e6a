"""One entry point from any supported input layout to a Corpus: what ``lantern data convert`` runs.

Formats: ``cogmen`` (COGMEN/CORECT 9-tuple), ``corect`` (CORECT preprocessed dict), ``sdt`` (SDT
IEMOCAP 12-tuple), ``meld`` (SDT MELD 13-tuple), ``jsonl`` (your own dialogues; here every dialogue
must state its split, since the corpus is for training). Optionally joins
IEMOCAP EmoEvaluation VAD and replaces the text features with MiniLM sentence embeddings.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lantern.corpus.cogmen import read_cogmen
from lantern.corpus.corect import read_corect
from lantern.corpus.dialogue import Corpus, CorpusError
from lantern.corpus.emoeval import VadJoinReport, join_vad, read_emoeval
from lantern.corpus.jsonl import read_jsonl
from lantern.corpus.sdt import read_sdt_iemocap, read_sdt_meld
from lantern.corpus.text_features import add_text_features
from lantern.errors import LanternError

log = logging.getLogger(__name__)

FORMATS = ("cogmen", "corect", "sdt", "meld", "jsonl")
DEFAULT_LABELS = {
    "cogmen": "iemocap6",
    "corect": "iemocap6",
    "sdt": "iemocap6",
    "meld": "meld7",
    "jsonl": None,
}
# Layouts whose split is given by the file; the others make dev from the first train ids.
OWN_DEV_SPLIT = ("corect", "jsonl")
DEFAULT_DEV_FRACTION = 0.1


def read_layout(
    src: str | Path, format: str, *, labels: str | None = None, dev_fraction: float | None = None
) -> Corpus:
    """Read ``src`` in one of :data:`FORMATS` with the file's own features (JSONL: none)."""
    if format not in FORMATS:
        raise LanternError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
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
) -> tuple[Corpus, VadJoinReport | None]:
    """Read ``src``, join VAD from ``emoeval`` (a directory of EmoEvaluation files), set text features.

    ``text_features``: ``"file"`` keeps the file's "t" vectors (the default for the pickled
    layouts), ``"minilm"`` replaces them with MiniLM embeddings of the transcripts (the default, and
    the only choice, for JSONL, which carries no vectors). Returns the validated corpus and the VAD
    join report (None without ``emoeval``); a join that matches no utterance at all is an error.
    """
    if text_features is None:
        text_features = "minilm" if format == "jsonl" else "file"
    if text_features not in ("file", "minilm"):
        raise LanternError(f"text_features must be 'file' or 'minilm', got {text_features!r}")
    if format == "jsonl" and text_features == "file":
        raise LanternError("a JSONL corpus carries no text feature vectors; use text_features='minilm'")
    corpus = read_layout(src, format, labels=labels, dev_fraction=dev_fraction)
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
    if text_features == "minilm":
        corpus = add_text_features(corpus, replace=True)
    corpus.validate(file=str(src))
    return corpus, report
