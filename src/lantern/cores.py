"""How many threads a compute loop should use now: the cores it may run on, less those others keep busy.

A CPU model that starts one thread per core on a machine where another process already keeps a
core busy does not get that core: its threads wait for each other at every synchronisation point
while the scheduler shares the core, and each step takes many times longer than with one thread
fewer (the embedded LLM server measured 45-130 s instead of 6 s per request beside a training run).
Asking again before each unit of work (a request, an epoch) keeps the count right as other work
comes and goes.

The load others put on the machine is read from the 1-minute load average, which counts this
process too; its own share is estimated from its CPU time with the same one-minute exponential
decay the kernel applies, and taken off. Threads waiting for a core count in the load average but
not in CPU time, so under contention the estimate of the others' load errs high and the thread
count low — the safe side. The average also remembers load that has ended (the training that
Lantern ran just before its LLM stage) for a minute or two, so where the kernel tells how many
threads are runnable right now (Linux's ``/proc/loadavg``), the smaller of the two counts.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

LOAD_WINDOW = 60.0  # seconds: the time constant of the kernel's 1-minute load average
PROC_LOADAVG = Path("/proc/loadavg")
RUNNABLE_SAMPLES = 5  # reads of the runnable count, 2 ms apart: one read is a coin toss


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def own_cpu_seconds() -> float:
    """CPU time of this process, all threads, user and system."""
    times = os.times()
    return times.user + times.system


def runnable_others() -> float | None:
    """Threads of other processes runnable right now (Linux; None elsewhere): the kernel's count of
    runnable threads, averaged over a few reads, less the one reading it."""
    counts = []
    for n in range(RUNNABLE_SAMPLES):
        if n:
            time.sleep(0.002)
        try:
            running = PROC_LOADAVG.read_text().split()[3].split("/")[0]
        except (OSError, IndexError):
            return None
        counts.append(int(running) - 1)
    return max(0.0, sum(counts) / len(counts))


class CoreBudget:
    """Threads to use now: ``usable_cores()`` less the load others put on the machine, at least 1.

    Create it early (before loading a model) so the CPU time spent from then on is known to be this
    process's own. Every source defaults to the machine's; tests pass their own.
    """

    def __init__(
        self,
        cores: Callable[[], int] = usable_cores,
        load: Callable[[], float] | None = None,
        runnable: Callable[[], float | None] = runnable_others,
        cpu: Callable[[], float] = own_cpu_seconds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cores = cores
        self._load = load or (lambda: os.getloadavg()[0])
        self._runnable = runnable
        self._cpu = cpu
        self._clock = clock
        self._last_time = clock()
        self._last_cpu = cpu()
        self.own_load = 0.0

    def others_load(self) -> float:
        """The 1-minute load average less this process's estimated share of it (>= 0), or the
        threads of others runnable now where that is known and smaller."""
        now, cpu = self._clock(), self._cpu()
        elapsed = now - self._last_time
        if elapsed > 0:
            rate = max(0.0, cpu - self._last_cpu) / elapsed
            decay = math.exp(-elapsed / LOAD_WINDOW)
            self.own_load = self.own_load * decay + rate * (1.0 - decay)
            self._last_time, self._last_cpu = now, cpu
        averaged = max(0.0, self._load() - self.own_load)
        now_runnable = self._runnable()
        return averaged if now_runnable is None else min(averaged, now_runnable)

    def threads(self) -> int:
        """The thread count for the next unit of work."""
        cores = self._cores()
        return max(1, min(cores, round(cores - self.others_load())))
