"""The project's error types: what the command line shows as one line, and what it shows as a bug.

A :class:`LanternError` is raised where input is checked (a file, a flag, a run directory, a server's
answer) and names what is wrong and where; ``lantern`` prints it as ``lantern: error: ...`` and exits
with code 2. Anything else that escapes (``KeyError``, ``TypeError``, ...) is a bug in Lantern and
keeps its traceback. Both subclass ``ValueError`` so that library callers catching that still work.
"""

from __future__ import annotations


class LanternError(ValueError):
    """Bad input or a refused operation, located; the message is complete on its own."""


class StageIncomplete(RuntimeError):
    """A stage stopped short on purpose (a cost budget, an endpoint that gave up, windows left
    unanswered): its partial work is kept, and running the same command again continues it.
    ``lantern`` exits with code 3."""
