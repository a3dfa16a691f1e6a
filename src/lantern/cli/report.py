"""`lantern report`: the HTML report of any run, whatever stages it has."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lantern report`` to the top-level parser."""
    p = sub.add_parser(
        "report",
        help="write the HTML report of a run (single- or multi-seed; the stages it lacks are named)",
        description="Write one self-contained HTML page on a run: corpus, LLM, methods, results, per-class "
        "table, examples, plots, answer quality, cost and timings. Evaluates the run first when "
        "eval/metrics.json is missing or older than the files it was computed from.",
    )
    p.add_argument("--run", required=True, type=Path, help="run directory (required)")
    p.add_argument(
        "--out",
        type=Path,
        help="HTML file to write instead (default: RUN/report/index.html with the PNGs beside it; with "
        "--out nothing is written into the run)",
    )
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from lantern.report import write_report

    print(f"report: {write_report(args.run, args.out).resolve()}")
    return 0
