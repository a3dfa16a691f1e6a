"""The project's error types: what the command line shows as one line, and what it shows as a bug.

A :class:`LanternError` is raised where input is checked (a file, a flag, a run directory, a server's
answer) and names what is wrong and where; ``lantern`` prints it as ``lantern: error: ...`` and exits
with code 2. Anything else that escapes (``KeyError``, ``TypeError``, ...) is a bug in Lantern and
keeps its traceback. Both subclass ``ValueError`` so that library callers catching that still work.
"""

from __future__ import annotations


class LanternError(ValueError):
    """Bad input or a refused operation, located; the message is complete on its own."""


class CorpusError(LanternError):
    """Bad input, located: the message names the file, dialogue and utterance where they apply."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        dialogue: str | None = None,
        utterance: str | int | None = None,
    ) -> None:
        where = []
        if file is not None:
            where.append(f"file {file}")
        if dialogue is not None:
            where.append(f"dialogue {dialogue}")
        if utterance is not None:
            where.append(f"utterance {utterance}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.file, self.dialogue, self.utterance = file, dialogue, utterance


class StageIncomplete(RuntimeError):
    """A stage stopped short on purpose (a cost budget, an endpoint that gave up, fields left
    unanswered): its partial work is kept, and running the same command again continues it.
    ``lantern`` exits with code 3."""
