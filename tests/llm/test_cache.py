"""The response cache: keys, durability, refresh."""

from __future__ import annotations

import sqlite3

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


def test_refresh_misses_but_overwrites(tmp_path):
    path = tmp_path / "cache.sqlite"
    key = cache_key("m", MESSAGES, PARAMS, "v")
    with ResponseCache(path) as cache:
        cache.put(key, "m", "v", CachedAnswer("old", 1, 1))
    with ResponseCache(path, refresh=True) as cache:
        assert cache.get(key) is None
        cache.put(key, "m", "v", CachedAnswer("new", 2, 2))
        assert len(cache) == 1
    with ResponseCache(path) as cache:
        assert cache.get(key) == CachedAnswer("new", 2, 2)


def test_delete_drops_an_answer(tmp_path):
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        cache.put("k", "m", "v", CachedAnswer("x", 0, 0))
        cache.delete("k")
        assert cache.get("k") is None and len(cache) == 0
