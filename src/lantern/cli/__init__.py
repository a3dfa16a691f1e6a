"""Lantern: emotions in conversation from a multimodal model, an LLM over receptive fields, and fusion.

Each command group lives in its own module with a ``register(subparsers)`` function; handlers parse
nothing themselves, call the API, print, and return an exit code. Exit codes: 0 complete; 2 a user
error (bad input, a missing file, a refused operation: one line ``lantern: error: ...``, never a
traceback); 3 incomplete on purpose (a budget, unanswered fields: run the same command again to
continue); 130 interrupted; 1 a bug in Lantern, with its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from lantern import __version__
from lantern.errors import LanternError, StageIncomplete
from lantern.llm.redact import RedactingFilter, scrub

USER_ERRORS = (LanternError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError)
EXIT_USER_ERROR = 2
EXIT_INCOMPLETE = 3


def build_parser() -> argparse.ArgumentParser:
    from lantern.cli import data, llm, models, pipeline, report

    parser = argparse.ArgumentParser(prog="lantern", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lantern {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (data, models, llm, pipeline, report):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        # HTTP libraries log every request's full URL: credentials in a base URL must not reach stderr.
        handler.addFilter(RedactingFilter())
    try:
        return int(args.handler(args) or 0)
    except USER_ERRORS as exc:
        print(f"lantern: error: {scrub(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except StageIncomplete as exc:
        print(f"lantern: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        print("lantern: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
