"""Fixture writers for the corpus tests: small files in every public layout, built by the tests."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np

from lantern.corpus.dialogue import Corpus, Dialogue, Utterance
from lantern.labels import IEMOCAP6


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote: byte strings as (SHORT_)BINSTRING, ``__builtin__`` and
    ``numpy.core`` module names, so the reader's latin1 path is exercised without Python 2."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        module = "__builtin__" if module == "builtins" else module
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def dump_pickle(path: Path, obj, *, py2: bool = False, protocol: int = 4) -> Path:
    if py2:
        buf = io.BytesIO()
        Py2Pickler(buf, protocol=2).dump(obj)
        path.write_bytes(buf.getvalue())
    else:
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def dialogue_tables(
    n_train: int = 5,
    n_test: int = 2,
    *,
    widths=(100, 100, 512),
    n_classes: int = 6,
    seed: int = 0,
    py2: bool = False,
) -> dict:
    """Per-dialogue dict fields of the IEMOCAP layouts, keyed by role; ids as bytes when ``py2``."""
    rng = np.random.default_rng(seed)
    s = (lambda x: x.encode("latin1")) if py2 else (lambda x: x)
    tables: dict = {k: {} for k in ("ids", "speakers", "labels", "text", "audio", "visual", "sentences")}
    names = [f"Ses0{1 + i // 2}F_impro0{i}" for i in range(n_train)] + [
        f"Ses05M_script0{i}" for i in range(n_test)
    ]
    for k, did in enumerate(names):
        n = 3 + k % 3
        key = s(did)
        speakers = ["F" if i % 2 == 0 else "M" for i in range(n)]
        tables["ids"][key] = [s(f"{did}_{sp}{i:03d}") for i, sp in enumerate(speakers)]
        tables["speakers"][key] = [s(sp) for sp in speakers]
        tables["labels"][key] = [int(x) for x in rng.integers(0, n_classes, size=n)]
        tables["text"][key] = [rng.standard_normal(widths[0]).astype(np.float32) for _ in range(n)]
        tables["audio"][key] = [rng.standard_normal(widths[1]).astype(np.float32) for _ in range(n)]
        tables["visual"][key] = rng.standard_normal((n, widths[2])).astype(np.float32)
        tables["sentences"][key] = [f"caf\xe9 number {i} of {did}" for i in range(n)]
    tables["train_ids"] = [s(d) for d in names[:n_train]]
    tables["test_ids"] = [s(d) for d in names[n_train:]]
    return tables


HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def emoeval_turn(uid: str, label: str, v: float, a: float, d: float) -> str:
    return (
        f"[6.2901 - 8.2357]\t{uid}\t{label}\t[{v:.4f}, {a:.4f}, {d:.4f}]\n"
        "C-E2:\tNeutral;\t()\nC-E3:\tNeutral;\t()\nA-E3:\tval 3; act 2; dom  3;\t()\n\n"
    )


def write_emoeval(root, turns: dict[str, list[tuple]]):
    for name, rows in turns.items():
        folder = root / f"Session{name[4]}" / "dialog" / "EmoEvaluation"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.txt").write_text(HEADER + "".join(emoeval_turn(*row) for row in rows))
        # The Categorical/Attribute sub-folders hold other formats that must be ignored.
        (folder / "Attribute").mkdir(exist_ok=True)
        (folder / "Attribute" / f"{name}_e2_atr.txt").write_text(f"{rows[0][0]} :act 2; val 3; dom  3;  ()\n")
    return root


COGMEN_ORDER = ("ids", "speakers", "labels", "text", "audio", "visual", "sentences", "train_ids", "test_ids")


def cogmen_tuple(tables: dict) -> tuple:
    return tuple(tables[k] for k in COGMEN_ORDER)


def sdt_tuple(tables: dict, *, meld: bool = False) -> tuple:
    unused = {k: [np.zeros(4, np.float32)] * len(v) for k, v in tables["ids"].items()}
    items = (
        tables["ids"], tables["speakers"], tables["labels"], tables["text"], unused, unused, unused,
        tables["audio"], tables["visual"], tables["sentences"], tables["train_ids"], tables["test_ids"],
    )  # fmt: skip
    return (*items, None) if meld else items


def corect_dict(tables: dict) -> dict:
    out: dict = {"train": [], "dev": [], "test": []}
    order = list(tables["train_ids"]) + list(tables["test_ids"])
    for i, did in enumerate(order):
        split = "test" if did in tables["test_ids"] else ("dev" if i == 0 else "train")
        out[split].append(
            {
                "vid": did,
                "speakers": tables["speakers"][did],
                "labels": tables["labels"][did],
                "audio": tables["audio"][did],
                "visual": tables["visual"][did],
                "text": np.stack(tables["text"][did]),
                "sentence": tables["sentences"][did],
            }
        )
    return out


def small_corpus(*, with_vad: bool = True) -> Corpus:
    """A two-dialogue corpus with every field set (for round trips)."""
    rng = np.random.default_rng(1)
    dialogues = []
    for k, split in enumerate(("train", "test")):
        n = 3 + k
        utterances = [
            Utterance(
                id=f"d{k}_{i:03d}",
                speaker="A" if i % 2 else "B",
                text=f"line {i} with unicode \u00e9\u4e2d and\nnewline",
                label=None if (k, i) == (1, 2) else i % 6,
                vad=(1.0 + i * 0.1234567890123, 3.3333333333333335, 5.0) if with_vad and i != 1 else None,
            )
            for i in range(n)
        ]
        features = {
            "t": rng.standard_normal((n, 7)).astype(np.float32),
            "a": rng.standard_normal((n, 3)).astype(np.float32),
        }
        dialogues.append(Dialogue(id=f"dia{k}", split=split, utterances=utterances, features=features))
    return Corpus(name="small", labels=IEMOCAP6, dialogues=dialogues, modalities={"t": 7, "a": 3})
