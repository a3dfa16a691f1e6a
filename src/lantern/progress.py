"""Progress bars for long work: a total and an ETA on a terminal, plain lines in a log.

tqdm redraws its bar with carriage returns, which is right on a terminal and wrong everywhere else:
captured by CI, ``nohup`` or ``tee``, a training run or an LLM stage leaves thousands of partial lines
in the log. When the stream is not a terminal (and not a notebook, where tqdm draws a widget),
Lantern writes one complete line at most every :data:`LOG_INTERVAL` seconds and a last one when the
work ends. Work that resumes passes what was already done as ``initial``: the bar starts there and
its rate, hence its ETA, counts only what this session does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm as terminal_tqdm
from tqdm.autonotebook import tqdm as auto_tqdm

# Seconds between two progress lines in a log: often enough to see a stalled run, rarely enough that
# an hour-long stage writes a hundred lines rather than a hundred thousand.
LOG_INTERVAL = 30.0


class LineProgress(terminal_tqdm):
    """tqdm that writes each refresh as a whole line (no carriage return, no clearing)."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm's "clear the bar": a log has nothing to clear
            return False
        self.fp.write(f"{self if msg is None else msg}\n")
        self.fp.flush()
        return True

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        """Figures shown with the next line, not a line of their own each time they change."""
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def close(self) -> None:
        if not self.disable and getattr(self, "last_print_n", None) != self.n:
            self.display()  # the final count, unless the last line already showed it
        # tqdm's own close would add a newline after the (already complete) line.
        self.leave = False
        super().close()


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    unit: str,
    total: float | None = None,
    initial: float = 0,
    enabled: bool = True,
    file: IO[str] | None = None,
) -> terminal_tqdm:
    """A progress bar over ``iterable`` or of ``total`` units, ``initial`` of them already done.

    ``enabled=False`` (``--quiet``) makes a bar that shows nothing.
    """
    stream = sys.stderr if file is None else file
    common = dict(desc=desc, unit=unit, total=total, initial=initial, disable=not enabled, file=stream)
    if _is_terminal(stream):
        return terminal_tqdm(iterable, dynamic_ncols=True, **common)
    if auto_tqdm is not terminal_tqdm and file is None:
        return auto_tqdm(iterable, **common)  # in a notebook: tqdm's widget
    return LineProgress(iterable, mininterval=LOG_INTERVAL, ascii=True, **common)
