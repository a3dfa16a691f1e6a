"""The response cache: one SQLite file that makes the LLM stage resumable and re-runs free.

An answer is keyed by what determines it — the endpoint's model name, the messages, the sampling
parameters and the prompt template version — and by nothing else: not the base URL (replicas of
one model answer alike) and never the API key, which must not reach the disk.

Only *valid* answers are stored (every utterance of the field parsed): a bad answer is retried
and, if it stays bad, its utterances fall back for this run; nothing is stored, so the next run
asks again. Stored raw text is re-validated on read by the caller, so a cache written by an older
parser cannot smuggle in an answer the current one rejects.

Each answer is committed on its own in WAL mode: a run killed with ``kill -9`` loses at most the
requests that were in flight, and re-running the same command re-sends only those.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    template TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    served_model TEXT,
    logprobs TEXT
)
"""


def cache_key(model: str, messages: list[dict], params: dict[str, Any], template_version: str) -> str:
    """sha256 over the canonical JSON of everything that determines an answer (no URL, no key)."""
    blob = json.dumps(
        {"model": model, "messages": messages, "params": params, "template": template_version},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    """A stored answer: the raw response text, the usage it cost when it was first asked, the
    model name the server reported (a simulation server says "simulated-llm"; runs must say so),
    and the per-token log-probabilities when the answer format reads them."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    served_model: str | None = None
    logprobs: list[dict] | None = None


class ResponseCache:
    """SQLite-backed answer store; one connection, used from one thread (the stage's event loop).

    ``refresh=True`` makes :meth:`get` miss every time while :meth:`put` still overwrites, so a
    refreshed run replaces old answers instead of reading them.
    """

    def __init__(self, path: str | Path, *, refresh: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.refresh = refresh
        # Autocommit: every put is its own transaction, durable once execute() returns.
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(answers)")}
        if "logprobs" not in columns:  # a cache written before answers carried log-probabilities
            self._db.execute("ALTER TABLE answers ADD COLUMN logprobs TEXT")

    def get(self, key: str) -> CachedAnswer | None:
        if self.refresh:
            return None
        row = self._db.execute(
            "SELECT text, prompt_tokens, completion_tokens, served_model, logprobs "
            "FROM answers WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        return CachedAnswer(
            text=row[0],
            prompt_tokens=row[1],
            completion_tokens=row[2],
            served_model=row[3],
            logprobs=None if row[4] is None else json.loads(row[4]),
        )

    def put(self, key: str, model: str, template_version: str, answer: CachedAnswer) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO answers "
            "(key, model, template, text, prompt_tokens, completion_tokens, served_model, logprobs) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                model,
                template_version,
                answer.text,
                answer.prompt_tokens,
                answer.completion_tokens,
                answer.served_model,
                None if answer.logprobs is None else json.dumps(answer.logprobs),
            ),
        )

    def delete(self, key: str) -> None:
        """Drop an answer that no longer validates, so it is asked again and replaced."""
        self._db.execute("DELETE FROM answers WHERE key = ?", (key,))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
