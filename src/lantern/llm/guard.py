"""A command that cannot outlive Lantern: ``python -m lantern.llm.guard --parent PID -- COMMAND...``.

The embedded llama.cpp server is a program Lantern does not control, so :class:`LocalServer
<lantern.llm.local.LocalServer>` starts it through this small wrapper, which runs ``COMMAND`` as
its child in its own process group and stops that group (SIGTERM, then SIGKILL after
``GRACE`` seconds) when

- the Lantern process ``PID`` dies, however it dies: on Linux the kernel signals the wrapper at once
  (``prctl(PR_SET_PDEATHSIG)``; the signal comes when the *thread* that started the wrapper ends,
  so start the server from the main thread), and on every platform a watchdog checks every
  ``--poll`` seconds whether ``PID`` is gone or the wrapper was handed to another parent;
- the wrapper itself receives SIGTERM, SIGINT or SIGHUP (what a dropped SSH session sends).

Should the wrapper itself be killed with ``kill -9``, the kernel kills ``COMMAND`` too (its own
parent-death signal, Linux). When ``COMMAND`` exits on its own, the wrapper exits with its code.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import types

PR_SET_PDEATHSIG = 1
POLL = 0.5
GRACE = 5.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def set_parent_death_signal(sig: int) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class _Stop(Exception):
    """A stop signal arrived."""


def _raise_stop(signum: int, frame: types.FrameType | None) -> None:
    raise _Stop


def _die_with_wrapper() -> None:
    """In the child, before exec: killed by the kernel if the wrapper dies (even by SIGKILL)."""
    set_parent_death_signal(signal.SIGKILL)


def _stop_group(child: subprocess.Popen) -> None:
    """SIGTERM to the whole group (the wrapper ignores its own), SIGKILL if the child lingers."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(0, signal.SIGTERM)
    try:
        child.wait(timeout=GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(0, signal.SIGKILL)  # this ends the wrapper as well


def watch(parent: int, command: list[str], poll: float = POLL) -> int:
    """Run ``command`` until it exits (its code) or ``parent`` dies or a stop signal comes (0)."""
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)  # a group of its own, so stopping it never reaches the caller's group
    set_parent_death_signal(signal.SIGTERM)
    first_parent = os.getppid()
    # preexec_fn is safe here: the wrapper has one thread.
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_wrapper)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stop)
    try:
        while True:
            try:
                code = child.wait(timeout=poll)
            except subprocess.TimeoutExpired:
                if not pid_alive(parent) or os.getppid() != first_parent:
                    _stop_group(child)
                    return 0
                continue
            return code if code >= 0 else 128 - code
    except _Stop:
        _stop_group(child)
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lantern.llm.guard", description=__doc__.splitlines()[0])
    p.add_argument("--parent", type=int, required=True, help="stop when this process is gone")
    p.add_argument("--poll", type=float, default=POLL, help=f"watchdog period in seconds (default {POLL})")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("no command given")
    if args.poll <= 0:
        p.error("--poll must be > 0")
    return watch(args.parent, command, args.poll)


if __name__ == "__main__":
    sys.exit(main())
