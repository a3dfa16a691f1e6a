"""`lantern run`, `demo`, `fuse`, `annotate`, `ablate`: the whole pipeline and its recipes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lantern.pipeline import STAGES


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's commands to the top-level parser."""
    p = sub.add_parser("run", help="run (or resume) every stage of a pipeline config into one run directory")
    p.add_argument("--config", required=True, type=Path, help="pipeline TOML file")
    p.add_argument("--out", type=Path, help="run directory (default: [run] dir in the config)")
    p.add_argument(
        "--from", dest="from_stage", choices=STAGES, help="force this stage and later ones to re-run"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run)

    p = sub.add_parser(
        "demo", help="the whole pipeline on a small synthetic corpus with the embedded local LLM"
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default runs/demo)")
    p.add_argument("--dialogues", type=int, default=30, help="dialogues in the synthetic corpus (default 30)")
    p.add_argument("--epochs", type=int, default=40, help="vanilla training epochs (default 40)")
    _endpoint_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_demo)

    p = sub.add_parser("fuse", help="fit fusion methods on a run's held-out split and predict test")
    p.add_argument("--run", required=True, type=Path, help="a single-seed run directory")
    p.add_argument("--method", action="append", help="fusion method (repeatable; default: all)")
    p.add_argument("--train-split", default="dev", choices=["dev", "crossfit"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_fuse)

    p = sub.add_parser("annotate", help="emotions for your own dialogues through a trained run")
    p.add_argument("--run", required=True, type=Path, help="a trained run directory")
    p.add_argument("--input", required=True, type=Path, help="dialogues JSONL (speaker + text per utterance)")
    p.add_argument("--out", required=True, type=Path, help="output JSONL, one object per utterance")
    p.add_argument("--method", default="attention", help="fusion method to apply (default attention)")
    _endpoint_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_annotate)

    p = sub.add_parser("ablate", help="sweep t, stride, prompt contents and fusion methods; one table")
    p.add_argument("--run", required=True, type=Path, help="a run directory with vanilla predictions")
    p.add_argument("--t", dest="t_values", default="1,2,3,4", help="receptive-field counts (default 1,2,3,4)")
    p.add_argument("--strides", default="2,4", help="strides (default 2,4)")
    _endpoint_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_ablate)


def _endpoint_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", action="append", default=[], help="OpenAI-compatible endpoint (repeatable)")
    p.add_argument("--model", help="model name at the endpoint")
    p.add_argument("--server-kind", help="openai, vllm, llamacpp, ollama, other (structured-output mode)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--max-cost", type=float, default=None, help="stop sending before this many USD")


def _llm_override(args: argparse.Namespace):
    """An LLMConfig for an endpoint named on the command line, or None (keep the run's / the local one)."""
    if not args.base_url:
        return None
    from lantern.llm.config import LLMConfig

    config = LLMConfig(
        base_urls=list(args.base_url),
        model=args.model,
        server_kind=args.server_kind,
        api_key_env=args.api_key_env,
        max_cost=args.max_cost,
    )
    if args.concurrency:
        config.concurrency = args.concurrency
    return config


def _notify(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _print_results(result: dict) -> None:
    from lantern.evaluation import results_table

    print(results_table(result["metrics"]))
    print(f"\nreport: {Path(result['report']).resolve()}")


def _run(args: argparse.Namespace) -> int:
    from lantern.pipeline import run_pipeline

    result = run_pipeline(
        args.config, args.out, from_stage=args.from_stage, notify=_notify, progress=not args.quiet
    )
    _print_results(result)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lantern.pipeline import demo

    result = demo(
        args.out,
        dialogues=args.dialogues,
        epochs=args.epochs,
        llm=_llm_override(args),
        notify=_notify,
        progress=not args.quiet,
    )
    _print_results(result)
    return 0


def _fuse(args: argparse.Namespace) -> int:
    from lantern.fusion import fuse_run

    summary = fuse_run(args.run, args.method, train_split=args.train_split, seed=args.seed)
    for name, info in summary.items():
        print(
            f"{name:15s} trained={info['trained']!s:5s} train utterances={info['n_train']:5d} "
            f"test utterances={info['n_test']:5d}  → {args.run / 'fusion' / name}"
        )
    return 0


def _annotate(args: argparse.Namespace) -> int:
    from lantern.annotate import annotate

    summary = annotate(
        args.run,
        args.input,
        args.out,
        method=args.method,
        llm=_llm_override(args),
        notify=_notify,
        progress=not args.quiet,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from lantern.ablation import ablate

    t_values = [int(x) for x in args.t_values.split(",") if x]
    strides = [int(x) for x in args.strides.split(",") if x]
    result = ablate(
        args.run,
        t_values=t_values,
        strides=strides,
        llm=_llm_override(args),
        notify=_notify,
        progress=not args.quiet,
    )
    print(result["markdown"])
    print(f"\ntable: {result['markdown_path']}\n       {result['csv_path']}")
    return 0
