"""Every file and directory Lantern writes honours the user's umask, as ``open(path, "w")`` would,
atomic writes included: a run shared on a server is readable by the colleagues the umask allows."""

from __future__ import annotations

import os
import stat

import pytest
from torch import nn

from lantern.fusion import fuse_run
from lantern.llm.cache import CachedAnswer, ResponseCache
from lantern.report import write_report
from lantern.rundir import atomic_write_bytes
from lantern.testing.runs import dialogue_sizes, make_corpus, make_run, write_answers
from lantern.training import CheckpointMeta, save_checkpoint

FAST = {"hidden_sizes": [4], "weight_decays": [1e-2], "epoch_grid": [10], "folds": 2}


@pytest.fixture
def umask():
    """``umask(mask)`` sets the process umask for the test; the old one comes back afterwards."""
    before = os.umask(0o022)
    os.umask(before)
    yield os.umask
    os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_run_files_and_directories_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    corpus = make_corpus(dialogue_sizes({"dev": 3, "test": 3}, (6, 10)))
    run = make_run(tmp_path, corpus)
    write_answers(run)
    fuse_run(run.root, ["attention"], params={"attention": FAST})
    meta = CheckpointMeta(model="corect", model_config={}, labels=corpus.labels, modalities={"t": 2},
                          speaker_vocab={"A": 0, "B": 1}, vad_trained=False, seed=0)  # fmt: skip
    save_checkpoint(run.vanilla.dir, nn.Linear(2, 2), meta)
    index = write_report(run.root)
    files = [
        index,
        run.report_dir / "results.png",
        run.predictions("test"),
        run.answers("test"),
        run.vanilla.model,
        run.method("attention").model,
        run.eval_metrics,
        run.run_json,
        tmp_path / "corpus" / "corpus.json",
        tmp_path / "corpus" / "dialogues.jsonl",
        tmp_path / "corpus" / "features" / "t.npy",
    ]
    assert {f.name: _mode(f) for f in files} == {f.name: file_mode for f in files}
    directories = [run.report_dir, run.vanilla.dir, run.method("attention").dir, tmp_path / "corpus"]
    assert {str(d): _mode(d) for d in directories} == {str(d): dir_mode for d in directories}


def test_an_atomic_write_never_changes_the_umask(tmp_path, umask, monkeypatch):
    # Reading the umask means setting it; another thread creating a file meanwhile would get the
    # wrong mode. The kernel applies it to the temporary file instead.
    umask(0o027)

    def refuse(_mask: int) -> int:
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", refuse)
    atomic_write_bytes(tmp_path / "a" / "file.bin", b"data")
    assert _mode(tmp_path / "a" / "file.bin") == 0o640
    assert (tmp_path / "a" / "file.bin").read_bytes() == b"data"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["file.bin"]  # no temporary file left


@pytest.mark.parametrize(("mask", "file_mode"), [(0o002, 0o664), (0o077, 0o600)])
def test_the_response_cache_follows_the_umask_like_every_other_file(tmp_path, umask, mask, file_mode):
    """SQLite creates its database 0644 & ~umask: under umask 002 a group could not share the cache."""
    umask(mask)
    cache = ResponseCache(tmp_path / "llm" / "cache.sqlite")
    cache.put("k", "m", "v", CachedAnswer("{}", 1, 1, "m", None))
    for path in (tmp_path / "llm").iterdir():
        assert _mode(path) == file_mode, path.name
    cache.close()
