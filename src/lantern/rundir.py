"""The run directory: stages hand over through files in it (see the README's "Run directory").

Resuming is safe because every file is written under a temporary name and renamed when complete,
and a stage records the hash of the configuration it ran with once all its outputs exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lantern import __version__

RUN_JSON = "run.json"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Pretty JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def config_hash(config: Any) -> str:
    """A stable hash of a JSON-able configuration (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


class RunDir:
    """Paths and stage bookkeeping of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def vanilla(self) -> Path:
        return self.root / "vanilla"

    @property
    def llm(self) -> Path:
        return self.root / "llm"

    @property
    def fusion(self) -> Path:
        return self.root / "fusion"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def predictions(self, split: str) -> Path:
        return self.vanilla / f"predictions-{split}.jsonl"

    def answers(self, split: str) -> Path:
        return self.llm / f"answers-{split}.jsonl"

    def load(self) -> dict:
        """run.json, or an empty record for a new run."""
        path = self.root / RUN_JSON
        if path.exists():
            return read_json(path)
        return {"lantern_version": __version__, "created": _now(), "stages": {}}

    def save(self, record: dict) -> None:
        write_json(self.root / RUN_JSON, record)

    def set_corpus(self, path: str | Path, fingerprint: str) -> None:
        """Record the corpus a run was trained on, so later stages find transcripts unaided."""
        record = self.load()
        record["corpus"] = {"path": str(Path(path).resolve()), "fingerprint": fingerprint}
        self.save(record)

    def corpus_path(self) -> Path:
        record = self.load()
        if "corpus" not in record:
            raise FileNotFoundError(
                f"{self.root / RUN_JSON}: the run records no corpus (run `lantern train` first)"
            )
        return Path(record["corpus"]["path"])

    def stage_done(self, stage: str, config: Any, outputs: list[Path]) -> bool:
        """True when ``stage`` last finished with this exact config and all its outputs exist."""
        entry = self.load().get("stages", {}).get(stage)
        return (
            bool(entry)
            and entry.get("config_hash") == config_hash(config)
            and all(p.exists() for p in outputs)
        )

    def mark_done(self, stage: str, config: Any) -> None:
        record = self.load()
        record.setdefault("stages", {})[stage] = {"config_hash": config_hash(config), "finished": _now()}
        self.save(record)

    def forget(self, stage: str) -> None:
        """Drop a stage's record so that it runs again (``--from STAGE``)."""
        record = self.load()
        record.get("stages", {}).pop(stage, None)
        self.save(record)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
