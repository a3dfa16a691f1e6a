"""Lantern's own corpus format: a directory of JSON and ``.npy`` files, no pickle.

    CORPUS_DIR/
      corpus.json           format version, name, label set, modalities and widths, feature sources,
                            counts, fingerprint, checksums (sha256 of every file below, and of the
                            label set and widths)
      dialogues.jsonl       one dialogue per line: id, split, offset (its first row in the feature
                            arrays), utterances [{id, speaker, text, label (class name or null),
                            vad ([v, a, d] or null)}]
      features/<m>.npy      float32 ``(utterances, width)``: every utterance of the corpus, in corpus
                            order, for modality m ("t", "a", "v")
      features/t.json       what made the text rows (the encoder's source string, or "file"), their
                            width and a hash of the texts, so computed sentence embeddings are
                            reused rather than recomputed

Anyone can read it with ``json`` and ``numpy``, and nothing in it can run code. Feature arrays are
memory-mapped on load, and each dialogue's features are views into those maps. Loading still reads
every byte once: to refuse NaN/inf feature values (they would train a NaN model) and content that
no longer matches its checksums (a hand-edited file: run directories identify a corpus by content).
A directory is written under a temporary sibling name and renamed when complete, so a failure
never leaves a half-written corpus behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lantern.corpus.dialogue import SPLITS, Corpus, CorpusError, Dialogue, Utterance
from lantern.corpus.text_features import corpus_texts, texts_hash
from lantern.jsonio import BOM, json_lines, read_json
from lantern.labels import LabelSet

log = logging.getLogger(__name__)

FORMAT = "lantern-corpus"
VERSION = 1
CORPUS_JSON = "corpus.json"
DIALOGUES_JSONL = "dialogues.jsonl"
FEATURES = "features"
# Rows checked for NaN/inf at a time: the scan's extra memory stays small whatever the corpus size.
SCAN_BYTES = 1 << 24


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


def _content_files(header: dict) -> list[str]:
    """The data files of a corpus, relative to its directory, in fingerprint order."""
    return [DIALOGUES_JSONL] + [f"{FEATURES}/{m}.npy" for m in sorted(header["modalities"])]


def _header_bytes(header: dict) -> bytes:
    fields = {"labels": header["labels"], "modalities": header["modalities"]}
    return json.dumps(fields, sort_keys=True).encode()


def _hash_file(h: Any, path: Path) -> None:
    """Feed a file to ``h``. A leading byte-order mark is not content (nothing Lantern reads
    changes with it), so an editor or copy tool that adds one does not make the corpus "edited"."""
    with path.open("rb") as f:
        h.update(f.read(1 << 20).removeprefix(BOM))
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def _fingerprint(root: Path, header: dict) -> str:
    """sha256 over the label set, widths, dialogues.jsonl and every feature array, in a fixed order."""
    h = hashlib.sha256()
    h.update(_header_bytes(header))
    for name in _content_files(header):
        h.update(Path(name).name.encode())
        _hash_file(h, root / name)
    return h.hexdigest()[:16]


def _checksums(root: Path, header: dict) -> dict[str, str]:
    """sha256 of the label set and widths (under corpus.json's name) and of each data file: what
    a loader verifies, one file at a time, so that a mismatch names the file that changed."""
    sums = {CORPUS_JSON: hashlib.sha256(_header_bytes(header)).hexdigest()}
    for name in _content_files(header):
        h = hashlib.sha256()
        _hash_file(h, root / name)
        sums[name] = h.hexdigest()
    return sums


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
    header["checksums"] = _checksums(root, header)
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


def _read_header(root: Path) -> tuple[dict, LabelSet, dict[str, int]]:
    """corpus.json, checked: the header dict, its label set and its modality widths."""
    path = root / CORPUS_JSON
    if not path.is_file():
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such corpus directory")
        raise CorpusError(f"not a Lantern corpus directory (no {CORPUS_JSON})", file=str(root))
    header = read_json(path)
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
    modalities = header["modalities"]
    if not isinstance(modalities, dict) or not all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in modalities.values()
    ):
        raise CorpusError("'modalities' must map names to widths (integers > 0)", file=str(path))
    try:
        labels = LabelSet.from_json(header["labels"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorpusError(f"bad label set: {exc!r}", file=str(path)) from None
    sources = header.get("feature_sources", {})
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise CorpusError("'feature_sources' must map modalities to names", file=str(path))
    return header, labels, dict(modalities)


def _read_utterance(raw: object, labels: LabelSet, file: str, line: int, dialogue: str) -> Utterance:
    if not isinstance(raw, dict):
        raise CorpusError(f"line {line}: an utterance must be a JSON object", file=file, dialogue=dialogue)
    uid = raw.get("id")
    try:
        label = raw.get("label")
        vad = raw.get("vad")
        return Utterance(
            id=str(uid),
            speaker=str(raw["speaker"]),
            text=str(raw["text"]),
            label=None if label is None else labels.index(str(label)),
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
    for line, raw in json_lines(path):
        try:
            did, split, offset = str(raw["id"]), raw["split"], int(raw["offset"])
            records = raw["utterances"]
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CorpusError(f"line {line}: bad dialogue record: {exc!r}", file=file) from None
        if not isinstance(records, list):
            raise CorpusError(f"line {line}: 'utterances' must be a list", file=file, dialogue=did)
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


def _check_finite(root: Path, arrays: dict[str, np.ndarray], records: list[tuple[Dialogue, int]]) -> None:
    """Refuse the first NaN/inf feature value, naming its array, row, dialogue and utterance.

    The memory maps are scanned SCAN_BYTES at a time, so the check needs no copy of an array.
    """
    starts = np.asarray([offset for _, offset in records])
    for m, rows in arrays.items():
        step = max(1, SCAN_BYTES // max(rows.shape[1] * rows.itemsize, 1))
        for start in range(0, len(rows), step):
            finite = np.isfinite(rows[start : start + step]).all(axis=1)
            if finite.all():
                continue
            row = start + int(np.argmin(finite))
            k = int(np.searchsorted(starts, row, side="right")) - 1
            dialogue, offset = records[k]
            raise CorpusError(
                f"modality {m!r} has a NaN/inf value (row {row})",
                file=str(root / FEATURES / f"{m}.npy"),
                dialogue=dialogue.id,
                utterance=dialogue.utterances[row - offset].id,
            )


def _verify_content(root: Path, header: dict) -> None:
    """Refuse a corpus whose files no longer match the checksums Lantern recorded when writing it.

    Corpora written before per-file checksums carry only the fingerprint, which covers every file at
    once; one without either (not written by Lantern) is read with a warning.
    """
    again = "write the corpus again (lantern data convert) rather than editing its files"
    recorded = header.get("checksums")
    if isinstance(recorded, dict):
        for name, digest in _checksums(root, header).items():
            if recorded.get(name) != digest:
                what = "its label set or modality widths" if name == CORPUS_JSON else "its content"
                raise CorpusError(
                    f"{what} changed after Lantern wrote the corpus (the checksum recorded in "
                    f"{CORPUS_JSON} does not match); {again}",
                    file=str(root / name),
                )
    elif "fingerprint" in header:
        if header["fingerprint"] != _fingerprint(root, header):
            raise CorpusError(
                f"the corpus does not match the fingerprint recorded here: its label set, widths, "
                f"{DIALOGUES_JSONL} or a feature array changed after Lantern wrote it; {again}",
                file=str(root / CORPUS_JSON),
            )
    else:
        log.warning("%s: no checksums or fingerprint; its content cannot be verified", root / CORPUS_JSON)


def load_corpus(path: str | Path) -> Corpus:
    """Read a native corpus directory; feature arrays are memory-mapped.

    Ids, splits, labels, VAD ranges, offsets and array shapes are checked, every feature value is
    checked finite, and the files must match the checksums recorded in corpus.json; each refusal is
    a CorpusError naming the file (and the dialogue, utterance or line).
    """
    root = Path(path)
    header, labels, modalities = _read_header(root)
    file = str(root / DIALOGUES_JSONL)
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
    # Everything but the feature values, which the chunked scan below checks without a full copy.
    shallow = [replace(d, features={}) for d in corpus.dialogues]
    replace(corpus, dialogues=shallow, modalities={}).validate(file=file)
    _check_finite(root, arrays, records)
    _verify_content(root, header)
    return corpus


def corpus_fingerprint(path: str | Path) -> str:
    """A hash of a corpus directory's content (labels, widths, dialogues, features), from its files.

    Equal corpora give equal fingerprints; run directories record it to notice a changed corpus.
    """
    root = Path(path)
    header, _, _ = _read_header(root)
    try:
        return _fingerprint(root, header)
    except FileNotFoundError as exc:
        raise CorpusError(f"incomplete corpus directory: {exc.filename} is missing", file=str(root)) from None
