"""Threads from the cores free now: the load others make, without this process's own share."""

from __future__ import annotations

from lantern import cores
from lantern.cores import CoreBudget, runnable_others


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.cpu = 0.0

    def run(self, seconds: float, threads: float) -> None:
        """This process computes for ``seconds`` on ``threads`` cores."""
        self.now += seconds
        self.cpu += seconds * threads


def budget(clock: Clock, load: float, runnable: float | None = None, n: int = 2) -> CoreBudget:
    return CoreBudget(
        cores=lambda: n,
        load=lambda: load,
        runnable=lambda: runnable,
        cpu=lambda: clock.cpu,
        clock=lambda: clock.now,
    )


def test_an_idle_machine_gets_every_core():
    assert budget(Clock(), load=0.0).threads() == 2


def test_a_process_busy_beside_leaves_one_core_of_two():
    assert budget(Clock(), load=1.0).threads() == 1
    assert budget(Clock(), load=1.0, n=8).threads() == 7


def test_at_least_one_thread_however_busy():
    assert budget(Clock(), load=9.0).threads() == 1


def test_its_own_work_does_not_count_as_load():
    clock = Clock()
    b = budget(clock, load=2.0)  # the load average sees this process's own two threads
    for _ in range(20):
        clock.run(30.0, threads=2)
        b.threads()
    assert b.own_load > 1.9 and b.threads() == 2
    clock.run(600.0, threads=0)  # idle for ten minutes: its share has decayed
    assert b.others_load() > 1.9 and b.threads() == 1


def test_load_that_has_ended_does_not_hold_threads_back_where_the_kernel_says_so():
    # The training that ran before the LLM stage still weighs in the 1-minute average.
    assert budget(Clock(), load=1.5, runnable=0.0).threads() == 2
    assert budget(Clock(), load=0.0, runnable=1.0).threads() == 2  # the smaller of the two counts


def test_runnable_others_reads_the_kernels_count_less_the_reader(tmp_path, monkeypatch):
    fake = tmp_path / "loadavg"
    fake.write_text("0.50 0.40 0.30 3/100 1234\n")
    monkeypatch.setattr(cores, "PROC_LOADAVG", fake)
    assert runnable_others() == 2.0
    monkeypatch.setattr(cores, "PROC_LOADAVG", tmp_path / "absent")
    assert runnable_others() is None
