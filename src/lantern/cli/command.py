"""How every command presents itself: a description, worked examples, defaults, global options.

A new user learns the tool from ``--help``; so every command is added through :func:`add_command`,
which gives it an example section, a formatter that prints each option's default, and the global
options (``-v``) so they work after the command name as well as before it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

# Options every command accepts, before or after its name. SUPPRESS: a command line that does not
# repeat the flag after the command keeps what was given before it.
VERBOSE_HELP = "log progress details"
GLOBAL_OPTIONS = argparse.ArgumentParser(add_help=False)
GLOBAL_OPTIONS.add_argument(
    "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
)


class HelpFormatter(argparse.HelpFormatter):
    """Wraps a one-paragraph description to the terminal, keeps the line breaks of text laid out in
    lines (the examples), and appends an option's default where the help does not state it.
    Defaults of None (the setting's owner decides: the help says which) and flags that are off by
    default are left alone, since "(default: None)" tells a reader nothing."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text
            or action.default in (None, False, argparse.SUPPRESS)
            or text == argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)"


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    examples: Sequence[str],
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand with its one-line ``help`` (in the command list), a longer ``description`` (its
    own ``--help``; the one line when omitted) and ``examples``, each a full command line."""
    heading = "example" if len(examples) == 1 else "examples"
    return sub.add_parser(
        name,
        help=help,
        description=description or help[0].upper() + help[1:] + ".",
        epilog=f"{heading}:\n" + "\n".join(f"  {line}" for line in examples),
        formatter_class=HelpFormatter,
        parents=[GLOBAL_OPTIONS],
    )
