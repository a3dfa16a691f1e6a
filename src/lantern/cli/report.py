"""`lantern report`: the HTML report of any run, whatever stages it has."""

from __future__ import annotations

import argparse
from pathlib import Path

from lantern.cli.command import add_command


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lantern report`` to the top-level parser."""
    p = add_command(
        sub,
        "report",
        help="write the HTML report of a run (single- or multi-seed; the stages it lacks are named)",
        description="Write one self-contained HTML page on a run: corpus, LLM, methods, results, per-class "
        "table, examples,\nplots, answer quality, cost and timings. The run is evaluated first when "
        "eval/metrics.json is missing\nor older than the files it was computed from.",
        examples=[
            "lantern report --run runs/r1",
            "lantern report --run /shared/runs/meld --out ~/meld-report.html",
        ],
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
