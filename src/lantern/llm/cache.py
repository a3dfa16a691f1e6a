"""The response cache: one SQLite file that makes the LLM stage resumable and re-runs free.

An answer is keyed by what determines it — the endpoint's model name, the messages, the sampling
parameters and the prompt template version — and by nothing else: not the base URL (replicas of
one model answer alike) and never the API key, which must not reach the disk.

Only *valid* answers are stored (every utterance of the field parsed): a bad answer is retried
and, if it stays bad, its utterances fall back for this run; nothing is stored, so the next run
asks again. Stored raw text is re-validated on read by the caller, so a cache written by an older
parser cannot smuggle in an answer the current one rejects. Of an answer's token log-probabilities
only what its reading used is stored (``ParsedAnswer.evidence``: every token's text and the
alternatives at each label), not the server's 20 alternatives with bytes for every token.

Each answer is committed on its own in WAL mode: a run killed with ``kill -9`` loses at most the
requests that were in flight, and re-running the same command re-sends only those.

A cache file that is damaged — not SQLite at all, garbage bytes, cut short — is found when it is
opened (SQLite's ``quick_check``) and moved aside, renamed ``cache.sqlite.corrupt-<UTC time>``
with its WAL files, with a warning; a fresh cache starts in its place, so the run re-asks what it
needs instead of stopping. ``refresh`` never opens the old cache at all: it is moved aside the same
way (``cache.sqlite.refreshed-<UTC time>``), kept rather than deleted because its answers were paid
for; delete those files when they are no longer wanted. An SQLite error while the stage runs (a
full disk, a file locked or damaged by another program) turns caching off for the rest of the run
with one warning: the stage still writes its answers, it just cannot resume from them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lantern.errors import LanternError

log = logging.getLogger(__name__)

# SQLite's answers for a file that is not a database or is damaged (anything else, such as a lock,
# is not the file's fault and is reported instead of moving the file).
DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
SIDE_FILES = ("-wal", "-shm", "-journal")

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


def cached_keys(path: str | Path) -> set[str]:
    """The keys stored in the cache at ``path``, read without writing anything (for a dry run): the
    file is opened immutable — no lock, no WAL files created, nothing moved aside — so answers still
    in a WAL file left by a killed run are not seen (an estimate errs high). Empty when there is no
    readable cache."""
    path = Path(path)
    if not path.is_file():
        return set()
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)
        try:
            return {row[0] for row in db.execute("SELECT key FROM answers")}
        finally:
            db.close()
    except sqlite3.Error:
        return set()


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


class _Damaged(Exception):
    """SQLite opened the file, but its integrity check found damage."""


class ResponseCache:
    """SQLite-backed answer store; one connection, used from one thread (the stage's event loop).

    ``refresh=True`` moves the existing cache aside unopened and starts an empty one, so a refreshed
    run asks everything again. ``moved_aside`` is where an old or damaged cache went (None if none).
    """

    def __init__(self, path: str | Path, *, refresh: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.moved_aside: Path | None = None
        if refresh and self.path.exists():
            self.moved_aside = self._move_aside("refreshed")
            log.info("%s: moved to %s (--refresh); starting a fresh cache", self.path, self.moved_aside.name)
        try:
            self._db: sqlite3.Connection | None = self._open()
        except (sqlite3.Error, _Damaged) as exc:
            if not isinstance(exc, _Damaged) and exc.sqlite_errorname not in DAMAGED:
                raise LanternError(f"{self.path}: cannot open the response cache ({exc})") from None
            self.moved_aside = self._move_aside("corrupt")
            log.warning(
                "%s: the response cache is damaged (%s); moved it to %s and started a fresh one",
                self.path,
                exc,
                self.moved_aside.name,
            )
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        if not self.path.exists():
            # SQLite would create the file 0644 & ~umask; made here it is 0666 & ~umask like every other
            # file of the run (SQLite gives its -wal and -shm files the database's permissions).
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o666))
        # Autocommit: every put is its own transaction, durable once execute() returns.
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(answers)")}
            if "logprobs" not in columns:  # a cache written before answers carried log-probabilities
                db.execute("ALTER TABLE answers ADD COLUMN logprobs TEXT")
            problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise _Damaged(f"quick_check: {problems[0]}")
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, why: str) -> Path:
        """Rename the cache file (and its WAL files, which belong to it) to ``<name>.<why>-<time>``."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.{why}-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.{why}-{stamp}-{n}")
        for suffix in ("", *SIDE_FILES):
            source = self.path.with_name(self.path.name + suffix)
            if source.exists():
                source.rename(target.with_name(target.name + suffix))
        return target

    def _failed(self, exc: sqlite3.Error) -> None:
        """An SQLite error mid-run: warn once, and cache nothing more in this run."""
        log.warning(
            "%s: the response cache failed (%s); answers of this run are no longer cached "
            "(the stage goes on; a damaged cache is moved aside when it is next opened)",
            self.path,
            exc,
        )
        if self._db is not None:
            self._db.close()
            self._db = None

    def get(self, key: str) -> CachedAnswer | None:
        if self._db is None:
            return None
        try:
            row = self._db.execute(
                "SELECT text, prompt_tokens, completion_tokens, served_model, logprobs "
                "FROM answers WHERE key = ?",
                (key,),
            ).fetchone()
        except sqlite3.Error as exc:
            self._failed(exc)
            return None
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
        self._write(
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
        self._write("DELETE FROM answers WHERE key = ?", (key,))

    def _write(self, sql: str, values: tuple) -> None:
        if self._db is None:
            return
        try:
            self._db.execute(sql, values)
        except sqlite3.Error as exc:
            self._failed(exc)

    def __len__(self) -> int:
        if self._db is None:
            return 0
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
