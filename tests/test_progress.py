"""Progress output: whole lines in a log, a total and a resumed start everywhere."""

from __future__ import annotations

import io

from lantern.progress import LineProgress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_without_carriage_returns():
    log = io.StringIO()
    bar = progress_bar(desc="llm test", unit="req", total=5, file=log)
    assert isinstance(bar, LineProgress)
    for _ in range(5):
        bar.update(1)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines and all(line.startswith("llm test") for line in lines)
    assert "5/5" in lines[-1]
    assert text.endswith("\n") and "\n\n" not in text


def test_a_log_is_written_at_most_every_interval_plus_the_end():
    log = io.StringIO()
    bar = progress_bar(desc="train", unit="epoch", total=1000, file=log)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) <= 3  # the first, possibly none in between (fast), the last
    assert "1000/1000" in lines[-1]


def test_a_resumed_bar_starts_at_what_was_done_with_its_total():
    log = io.StringIO()
    bar = progress_bar(desc="llm dev", unit="req", total=10, initial=7, file=log)
    assert bar.n == 7
    bar.update(3)
    bar.close()
    assert "10/10" in log.getvalue().splitlines()[-1]


def test_a_terminal_gets_the_redrawn_bar():
    term = _Terminal()
    bar = progress_bar(desc="x", unit="it", total=2, file=term)
    assert not isinstance(bar, LineProgress)
    bar.update(2)
    bar.close()
    assert "\r" in term.getvalue()


def test_quiet_writes_nothing():
    log = io.StringIO()
    bar = progress_bar(desc="x", unit="it", total=4, enabled=False, file=log)
    bar.update(4)
    bar.close()
    assert log.getvalue() == ""
