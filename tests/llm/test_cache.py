"""The response cache: keys, durability, refresh, and damaged files."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest

from lantern.llm.cache import CachedAnswer, ResponseCache, cache_key

MESSAGES = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
PARAMS = {"temperature": 0, "max_tokens": 40}


def test_key_depends_on_model_messages_params_and_template_only():
    base = cache_key("m", MESSAGES, PARAMS, "erc-v1@abc")
    assert base == cache_key("m", [dict(m) for m in MESSAGES], dict(reversed(PARAMS.items())), "erc-v1@abc")
    assert base != cache_key("m2", MESSAGES, PARAMS, "erc-v1@abc")
    assert base != cache_key("m", [*MESSAGES[:1], {"role": "user", "content": "v"}], PARAMS, "erc-v1@abc")
    assert base != cache_key("m", MESSAGES, {**PARAMS, "max_tokens": 41}, "erc-v1@abc")
    assert base != cache_key("m", MESSAGES, PARAMS, "erc-v2@abc")


def test_put_is_durable_at_once_and_survives_reopening(tmp_path):
    path = tmp_path / "cache.sqlite"
    cache = ResponseCache(path)
    key = cache_key("m", MESSAGES, PARAMS, "v")
    cache.put(key, "m", "v", CachedAnswer('{"0": "100000"}', 12, 7))
    # Another connection sees the row before the writer closes: it was committed by put().
    other = sqlite3.connect(path)
    assert other.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 1
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()
    cache.close()
    with ResponseCache(path) as again:
        assert again.get(key) == CachedAnswer('{"0": "100000"}', 12, 7)
        assert again.get(cache_key("m", MESSAGES, PARAMS, "w")) is None


def test_refresh_starts_a_fresh_cache_and_keeps_the_old_one_aside(tmp_path):
    path = tmp_path / "cache.sqlite"
    key = cache_key("m", MESSAGES, PARAMS, "v")
    with ResponseCache(path) as cache:
        cache.put(key, "m", "v", CachedAnswer("old", 1, 1))
        cache.put("other", "m", "v", CachedAnswer("kept aside", 1, 1))
    with ResponseCache(path, refresh=True) as cache:
        assert cache.get(key) is None and len(cache) == 0
        cache.put(key, "m", "v", CachedAnswer("new", 2, 2))
        moved = cache.moved_aside
    assert moved is not None and moved.name.startswith("cache.sqlite.refreshed-")
    with ResponseCache(path) as cache:
        assert cache.get(key) == CachedAnswer("new", 2, 2) and cache.get("other") is None
    with ResponseCache(moved) as old:
        assert old.get("other") == CachedAnswer("kept aside", 1, 1)


def filled_cache(path: Path, rows: int = 300) -> Path:
    with ResponseCache(path) as cache:
        for i in range(rows):
            cache.put(f"k{i}", "m", "v", CachedAnswer("answer " * 40, 10, 5))
    return path


def spoil(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "not sqlite":
        path.write_text("key,text\nk0,hello\n")
    elif how == "damaged pages":  # a valid header, garbage after it
        path.write_bytes(data[:4096] + os.urandom(len(data) - 4096))


@pytest.mark.parametrize("how", ["garbage", "truncated", "not sqlite", "damaged pages"])
def test_a_damaged_cache_is_moved_aside_and_a_fresh_one_started(tmp_path, caplog, how):
    path = filled_cache(tmp_path / "cache.sqlite")
    spoil(path, how)
    damaged = path.read_bytes()
    with caplog.at_level(logging.WARNING), ResponseCache(path) as cache:
        assert len(cache) == 0 and cache.get("k1") is None
        cache.put("k1", "m", "v", CachedAnswer("fresh", 1, 1))
        assert cache.get("k1") == CachedAnswer("fresh", 1, 1)
        moved = cache.moved_aside
    assert moved is not None and moved.name.startswith("cache.sqlite.corrupt-")
    assert moved.read_bytes() == damaged
    assert "damaged" in caplog.text and moved.name in caplog.text


def test_refresh_never_opens_the_old_cache(tmp_path, caplog):
    path = filled_cache(tmp_path / "cache.sqlite")
    spoil(path, "garbage")
    with caplog.at_level(logging.INFO), ResponseCache(path, refresh=True) as cache:
        assert len(cache) == 0 and cache.moved_aside.name.startswith("cache.sqlite.refreshed-")
    assert "damaged" not in caplog.text  # it was moved unread


def test_an_sqlite_error_mid_run_turns_caching_off_with_a_warning(tmp_path, caplog):
    path = filled_cache(tmp_path / "cache.sqlite", rows=3)
    cache = ResponseCache(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another program keeps the file locked (SQLite waits 5 s)
    try:
        with caplog.at_level(logging.WARNING):
            cache.put("k9", "m", "v", CachedAnswer("x", 1, 1))
        assert "no longer cached" in caplog.text
        assert cache.get("k1") is None  # caching is off for the rest of the run
        cache.put("k10", "m", "v", CachedAnswer("x", 1, 1))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        cache.close()


def test_delete_drops_an_answer(tmp_path):
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        cache.put("k", "m", "v", CachedAnswer("x", 0, 0))
        cache.delete("k")
        assert cache.get("k") is None and len(cache) == 0
