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

# The order a user meets the commands in: try it, run it whole, then stage by stage, then your own
# dialogues and the studies, then utilities. `lantern --help` lists them so.
WORKFLOW = (
    "demo", "run", "data", "train", "predict", "prompt", "fuse", "evaluate", "report", "annotate",
    "ablate", "models", "llm",
)  # fmt: skip

_OVERVIEW = """\
Start with `lantern demo` (the whole pipeline on a small synthetic corpus with the embedded LLM), or
`lantern run --config FILE` (every stage from one TOML file). Stage by stage:
  lantern data convert MELD.Raw/ --format meld-csv --out corpora/meld7
  lantern train --corpus corpora/meld7 --model sdt --modalities t --out runs/r1
  lantern prompt --run runs/r1 --base-url https://api.openai.com/v1 --llm-model gpt-4o --max-cost 5
  lantern fuse --run runs/r1
  lantern evaluate --run runs/r1
  lantern report --run runs/r1
  lantern annotate --run runs/r1 --input new_dialogues.jsonl --out emotions.jsonl
`lantern COMMAND --help` shows a command's options, their defaults and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    from lantern.cli import data, llm, models, pipeline, report
    from lantern.cli.command import VERBOSE_HELP, HelpFormatter

    parser = argparse.ArgumentParser(
        prog="lantern",
        description=__doc__.splitlines()[0],
        epilog=_OVERVIEW,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lantern {__version__}")
    # Its own flag, not GLOBAL_OPTIONS': that action object is shared by every command, whose
    # default must stay SUPPRESS so that `-v` before the command survives the command's parsing.
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (data, models, llm, pipeline, report):
        module.register(sub)
    # argparse lists subcommands in the order they were added, which is the modules' order; the
    # listing (its one private list) is put in workflow order instead.
    sub._choices_actions.sort(key=lambda action: WORKFLOW.index(action.dest))
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
