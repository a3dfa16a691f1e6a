"""Lantern's own corpus format: a directory of JSON and ``.npy`` files, no pickle.

    CORPUS_DIR/
      corpus.json           format version, name, label set, modalities and widths, feature sources,
                            counts, fingerprint
      dialogues.jsonl       one dialogue per line: id, split, offset (its first row in the feature
                            arrays), utterances [{id, speaker, text, label (class name or null),
                            vad ([v, a, d] or null)}]
      features/<m>.npy      float32 ``(utterances, width)``: every utterance of the corpus, in corpus
                            order, for modality m ("t", "a", "v")
      features/t.json       what made the text rows (the encoder's source string, or "file"), their
                            width and a hash of the texts, so computed sentence embeddings are
                            reused rather than recomputed

Anyone can read it with ``json`` and ``numpy``, and nothing in it can run code. Feature arrays are
memory-mapped on load (read lazily), and each dialogue's features are views into those maps.
A directory is written under a temporary sibling name and renamed when complete, so a failure
never leaves a half-written corpus behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from lantern.corpus.dialogue import SPLITS, Corpus, CorpusError, Dialogue, Utterance
from lantern.corpus.text_features import corpus_texts, texts_hash
from lantern.labels import LabelSet

FORMAT = "lantern-corpus"
VERSION = 1
CORPUS_JSON = "corpus.json"
DIALOGUES_JSONL = "dialogues.jsonl"
FEATURES = "features"


def _dialogue_record(d: Dialogue, labels: LabelSet, offset: int) -> dict:
    return {
        "id": d.id,
        "split": d.split,
        "offset": offset,
        "utterances": [
            {
                "id": u.id,
                "speaker": u.speaker,
                "text": u.text,
                "label": None if u.label is None else labels.classes[u.label],
                "vad": None if u.vad is None else [float(x) for x in u.vad],
            }
            for u in d.utterances
        ],
    }


def _fingerprint(root: Path, header: dict) -> str:
    """sha256 over the label set, widths, dialogues.jsonl and every feature array, in a fixed order."""
    h = hashlib.sha256()
    h.update(
        json.dumps({"labels": header["labels"], "modalities": header["modalities"]}, sort_keys=True).encode()
    )
    paths = [root / DIALOGUES_JSONL] + [root / FEATURES / f"{m}.npy" for m in sorted(header["modalities"])]
    for path in paths:
        h.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _write(corpus: Corpus, root: Path) -> None:
    (root / FEATURES).mkdir(parents=True)
    offsets = np.cumsum([0] + [len(d) for d in corpus.dialogues])
    with (root / DIALOGUES_JSONL).open("w", encoding="utf-8") as f:
        for d, offset in zip(corpus.dialogues, offsets, strict=False):
            f.write(json.dumps(_dialogue_record(d, corpus.labels, int(offset)), ensure_ascii=False) + "\n")
    total = int(offsets[-1])
    for m, width in corpus.modalities.items():
        rows = np.lib.format.open_memmap(
            root / FEATURES / f"{m}.npy", mode="w+", dtype=np.float32, shape=(total, width)
        )
        for d, offset in zip(corpus.dialogues, offsets, strict=False):
            rows[offset : offset + len(d)] = d.features[m]
        rows.flush()
        del rows
    if "t" in corpus.modalities:
        texts = corpus_texts(corpus)
        t_record = {
            "source": corpus.feature_sources.get("t", "file"),
            "texts_sha256": texts_hash(texts),
            "rows": total,
            "width": corpus.modalities["t"],
        }
        (root / FEATURES / "t.json").write_text(json.dumps(t_record, indent=2) + "\n", encoding="utf-8")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "name": corpus.name,
        "labels": corpus.labels.to_json(),
        "modalities": dict(corpus.modalities),
        "feature_sources": dict(corpus.feature_sources),
        "counts": {
            "dialogues": len(corpus.dialogues),
            "utterances": total,
            "splits": {s: len(corpus.split(s)) for s in SPLITS},
        },
    }
    header["fingerprint"] = _fingerprint(root, header)
    (root / CORPUS_JSON).write_text(json.dumps(header, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_corpus(corpus: Corpus, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Validate ``corpus`` and write it as a native corpus directory; returns the directory.

    An existing directory is replaced only with ``overwrite=True`` and only if it is a Lantern
    corpus (or empty), so a typo cannot delete unrelated files. The data is written into a
    temporary sibling directory that is renamed into place at the end.
    """
    corpus.validate()
    out = Path(out_dir)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out}: already exists (pass overwrite=True / --overwrite to replace it)")
        if not out.is_dir() or not ((out / CORPUS_JSON).is_file() or not any(out.iterdir())):
            raise FileExistsError(
                f"{out}: exists and is not a Lantern corpus directory; refusing to replace it"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: that makes the directory private, and a corpus directory is not.
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    try:
        _write(corpus, tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _read_header(root: Path) -> dict:
    path = root / CORPUS_JSON
    if not path.is_file():
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such corpus directory")
        raise CorpusError(f"not a Lantern corpus directory (no {CORPUS_JSON})", file=str(root))
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorpusError(f"corrupt JSON: {exc}", file=str(path)) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CorpusError(f"not a {FORMAT} header", file=str(path))
    if header.get("version") != VERSION:
        raise CorpusError(
            f"format version {header.get('version')} is not supported (this Lantern reads {VERSION})",
            file=str(path),
        )
    for key in ("name", "labels", "modalities"):
        if key not in header:
            raise CorpusError(f"missing key {key!r}", file=str(path))
    return header


def _read_utterance(raw: dict, labels: LabelSet, file: str, line: int, dialogue: str) -> Utterance:
    uid = raw.get("id")
    try:
        label = None if raw.get("label") is None else labels.index(raw["label"])
        vad = raw.get("vad")
        return Utterance(
            id=str(uid),
            speaker=str(raw["speaker"]),
            text=str(raw["text"]),
            label=label,
            vad=None if vad is None else (float(vad[0]), float(vad[1]), float(vad[2])),
        )
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise CorpusError(
            f"line {line}: bad utterance record: {exc}", file=file, dialogue=dialogue, utterance=uid
        ) from None


def _read_dialogues(root: Path, labels: LabelSet) -> list[tuple[Dialogue, int]]:
    path = root / DIALOGUES_JSONL
    file = str(path)
    if not path.is_file():
        raise CorpusError("missing", file=file)
    out: list[tuple[Dialogue, int]] = []
    with path.open(encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                raw = json.loads(text)
                did, split, offset = str(raw["id"]), raw["split"], int(raw["offset"])
                records = raw["utterances"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise CorpusError(f"line {line}: bad dialogue record: {exc}", file=file) from None
            utterances = [_read_utterance(u, labels, file, line, did) for u in records]
            out.append((Dialogue(id=did, split=split, utterances=utterances), offset))
    return out


def _open_features(root: Path, modalities: dict[str, int], total: int) -> dict[str, np.ndarray]:
    arrays = {}
    for m, width in modalities.items():
        path = root / FEATURES / f"{m}.npy"
        try:
            rows = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise CorpusError(
                f"modality {m!r} is listed in {CORPUS_JSON} but its array is missing", file=str(path)
            ) from None
        except (ValueError, OSError) as exc:
            raise CorpusError(f"corrupt or truncated feature array: {exc}", file=str(path)) from None
        if rows.dtype != np.float32 or rows.shape != (total, width):
            raise CorpusError(
                f"feature array is {rows.dtype} {rows.shape}, expected float32 ({total}, {width})",
                file=str(path),
            )
        arrays[m] = rows
    return arrays


def load_corpus(path: str | Path) -> Corpus:
    """Read a native corpus directory; feature arrays are memory-mapped and read lazily.

    Ids, splits, labels, VAD ranges, offsets and array shapes are checked on load; feature values were
    checked (finite) when the corpus was saved and are not scanned again here.
    """
    root = Path(path)
    header = _read_header(root)
    file = str(root / DIALOGUES_JSONL)
    try:
        labels = LabelSet.from_json(header["labels"])
        modalities = {str(m): int(w) for m, w in header["modalities"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise CorpusError(f"bad label set or modalities: {exc}", file=str(root / CORPUS_JSON)) from None
    records = _read_dialogues(root, labels)
    total = sum(len(d) for d, _ in records)
    arrays = _open_features(root, modalities, total)
    expected = 0
    for d, offset in records:
        if offset != expected:
            raise CorpusError(f"row offset {offset}, expected {expected}", file=file, dialogue=d.id)
        d.features = {m: rows[offset : offset + len(d)] for m, rows in arrays.items()}
        expected += len(d)
    corpus = Corpus(
        name=str(header["name"]),
        labels=labels,
        dialogues=[d for d, _ in records],
        modalities=modalities,
        feature_sources=dict(header.get("feature_sources", {})),
    )
    # Everything but the feature values (a full scan would defeat the memory map).
    shallow = [replace(d, features={}) for d in corpus.dialogues]
    replace(corpus, dialogues=shallow, modalities={}).validate(file=file)
    return corpus


def corpus_fingerprint(path: str | Path) -> str:
    """A hash of a corpus directory's content (labels, widths, dialogues, features), from its files.

    Equal corpora give equal fingerprints; run directories record it to notice a changed corpus.
    """
    root = Path(path)
    header = _read_header(root)
    try:
        return _fingerprint(root, header)
    except FileNotFoundError as exc:
        raise CorpusError(f"incomplete corpus directory: {exc.filename} is missing", file=str(root)) from None
