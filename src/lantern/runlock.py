"""One Lantern process per run directory: an advisory lock held while a command works there.

``lantern prompt`` holds ``<run>/llm/.lock`` (:attr:`RunDir.llm.lock`) for the whole LLM stage and
``lantern run`` holds ``<run>/.lock`` (:attr:`RunDir.lock`) for the whole pipeline. A second process
that asks for a lock already held is refused at once with :class:`RunLocked` — a LanternError, so
``lantern`` prints one line naming the holder's pid and exits 2. It does not wait: two processes on
one run directory are nearly always a mistake (a second terminal, a job launched twice), both would
spend money on the same fields, and a silent wait would look like a hang.

The lock is ``fcntl.flock`` on the file, which the kernel releases when its holder exits in any
way, ``kill -9`` included: a lock file left behind is harmless and never blocks anyone (it is not
deleted on release, since deleting races with the next process opening it). POSIX only, like the
rest of Lantern's process handling.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lantern.errors import LanternError


class RunLocked(LanternError):
    """Another process holds the run directory's lock."""


@contextmanager
def run_lock(path: Path, doing: str) -> Iterator[None]:
    """Hold the lock file ``path`` for the block, or raise RunLocked naming the holder's pid.

    ``doing`` says what the holder does there, for the message ("prompting the LLM").
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise RunLocked(
                f"{path.parent}: another Lantern process ({who}) is {doing} here; "
                "wait for it to finish or stop it, then run this again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)
