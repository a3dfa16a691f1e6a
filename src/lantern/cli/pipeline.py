"""`lantern run`, `demo`, `fuse`, `annotate`, `ablate`: the whole pipeline and its recipes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lantern.cli.command import add_command
from lantern.cli.options import add_endpoint_arguments, add_fallback_arguments, positive_int

# The stage names of lantern.recipes.pipeline.STAGES, spelled out so that building the parser
# does not import the pipeline (and torch through it).
STAGE_NAMES = ("corpus", "vanilla", "llm", "fusion", "eval", "report")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's commands to the top-level parser."""
    p = add_command(
        sub,
        "run",
        help="run (or resume) every stage of a pipeline config into one run directory",
        description="Run every stage of a pipeline TOML file (corpus, vanilla model per seed, LLM, fusion, "
        "evaluation, report) into one run directory. The config is checked whole before anything runs; "
        "a stage whose config and outputs are unchanged is skipped, so the same command resumes.",
        examples=["lantern run --config examples/meld-text.toml", "lantern run --config my.toml --from llm"],
    )
    p.add_argument("--config", required=True, type=Path, help="pipeline TOML file")
    p.add_argument("--out", type=Path, help="run directory (default: [run] dir in the config)")
    p.add_argument(
        "--from", dest="from_stage", choices=STAGE_NAMES, help="force this stage and later ones to re-run"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run)

    p = add_command(
        sub,
        "demo",
        help="the whole pipeline on a small synthetic corpus with the embedded local LLM",
        description="The whole pipeline on a small built-in synthetic corpus (not real data) with the "
        "embedded SmolLM2-135M (a toy, there so that every stage runs without a key): a results table "
        "and an HTML report. --base-url and --llm-model swap in a real LLM.",
        examples=[
            "lantern demo",
            "lantern demo --base-url http://gpu-box:8000/v1 --llm-model meta-llama/Llama-3.1-8B-Instruct "
            "--server-kind vllm",
        ],
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default runs/demo)")
    p.add_argument("--dialogues", type=positive_int, help="dialogues in the synthetic corpus")
    p.add_argument("--epochs", type=positive_int, help="vanilla training epochs")
    add_endpoint_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_demo)

    p = add_command(
        sub,
        "fuse",
        help="fit fusion methods on a run's held-out split and predict test",
        examples=[
            "lantern fuse --run runs/r1",
            "lantern fuse --run runs/r1 --method attention --method uniform",
        ],
    )
    p.add_argument("--run", required=True, type=Path, help="a single-seed run directory")
    p.add_argument("--method", action="append", help="fusion method (repeatable; default: all)")
    p.add_argument(
        "--train-split",
        default="dev",
        choices=["dev", "crossfit"],
        help="what fusion is fitted on: dev, or the cross-fitted train predictions (default dev)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fusion fits (default 0)")
    p.add_argument(
        "--allow-fallbacks",
        action="store_true",
        help="fuse answers whose fallback rate is above the limit recorded with them (default: refuse "
        "them)",
    )
    p.set_defaults(handler=_fuse)

    p = add_command(
        sub,
        "annotate",
        help="emotions for your own dialogues through a trained run",
        description="Emotions for new dialogues (JSONL: speaker and text per utterance) through a trained, "
        "prompted and fused run: the run's text encoder, vanilla model, LLM (the endpoint and model the "
        "run was prompted with; the key again from its environment variable) and fusion method.",
        examples=["lantern annotate --run runs/r1 --input new_dialogues.jsonl --out emotions.jsonl"],
    )
    p.add_argument("--run", required=True, type=Path, help="a trained run directory")
    p.add_argument("--input", required=True, type=Path, help="dialogues JSONL (speaker + text per utterance)")
    p.add_argument("--out", required=True, type=Path, help="output JSONL, one object per utterance")
    p.add_argument("--method", default="attention", help="fusion method to apply (default attention)")
    add_endpoint_arguments(p)
    add_fallback_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_annotate)

    p = add_command(
        sub,
        "ablate",
        help="sweep fields, prompt contents, answer formats, dimensions and fusion methods; one table",
        description="Sweep receptive fields (t, stride), prompt contents, answer formats, the VAD head "
        "and the fusion methods on one run; one table, variants chosen on dev with --select-on dev. The "
        "LLM is the one the run was prompted with unless --base-url/--local name another; answers are "
        "shared with the run through its cache.",
        examples=[
            "lantern ablate --run runs/r1 --select-on dev",
            "lantern ablate --run runs/r1 --t 1,3 --strides 4 --answer-formats logprobs --skip-dimensions",
        ],
    )
    p.add_argument("--run", required=True, type=Path, help="a run directory with vanilla predictions")
    p.add_argument("--t", dest="t_values", default="1,2,3,4", help="receptive-field counts (default 1,2,3,4)")
    p.add_argument("--strides", default="2,4", help="strides (default 2,4)")
    p.add_argument(
        "--answer-formats",
        default="probs,logprobs,digits",
        help="answer formats (default probs,logprobs,digits)",
    )
    p.add_argument(
        "--skip-dimensions",
        action="store_true",
        help="leave out the no-dimensions variant (it retrains the vanilla model with lambda_vad = 0)",
    )
    p.add_argument(
        "--select-on",
        choices=["dev"],
        help="choose the variant by held-out likelihood on dev (never on test) and say which",
    )
    add_endpoint_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_ablate)


def _endpoint(args: argparse.Namespace):
    """The endpoint the command line names, or None to keep the recipe's own (the embedded model);
    a budget without a price is refused now, not after the stages before the LLM's have run."""
    from lantern.cli.options import endpoint_from_args
    from lantern.llm.stage import stage_price

    endpoint = endpoint_from_args(args)
    stage_price(endpoint)
    return None if endpoint == type(endpoint)() else endpoint


def _notify(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _print_results(result: dict) -> None:
    from lantern.evaluation import results_table

    print(results_table(result["metrics"]))
    print(f"\nreport: {Path(result['report']).resolve()}")


def _run(args: argparse.Namespace) -> int:
    from lantern.recipes.pipeline import run_pipeline

    result = run_pipeline(
        args.config, args.out, from_stage=args.from_stage, notify=_notify, progress=not args.quiet
    )
    _print_results(result)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lantern.recipes.demo import DEMO_DIALOGUES, DEMO_EPOCHS, demo

    result = demo(
        args.out,
        dialogues=args.dialogues or DEMO_DIALOGUES,
        epochs=args.epochs or DEMO_EPOCHS,
        endpoint=_endpoint(args),
        notify=_notify,
        progress=not args.quiet,
    )
    _print_results(result)
    return 0


def _fuse(args: argparse.Namespace) -> int:
    from lantern.fusion import fuse_run
    from lantern.rundir import RunDir

    summary = fuse_run(
        args.run,
        args.method,
        train_split=args.train_split,
        seed=args.seed,
        allow_fallbacks=args.allow_fallbacks,
    )
    for name, info in summary.items():
        print(
            f"{name:15s} trained={info['trained']!s:5s} train utterances={info['n_train']:5d} "
            f"test utterances={info['n_test']:5d}  → {RunDir(args.run).method(name).dir}"
        )
    return 0


def _annotate(args: argparse.Namespace) -> int:
    from lantern.cli.options import endpoint_overrides
    from lantern.recipes.annotate import annotate

    summary = annotate(
        args.run,
        args.input,
        args.out,
        method=args.method,
        endpoint_overrides=endpoint_overrides(args),
        max_fallback_rate=args.max_fallback_rate,
        allow_fallbacks=args.allow_fallbacks,
        notify=_notify,
        progress=not args.quiet,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    from lantern.errors import LanternError

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LanternError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise LanternError(f"{flag}: expected integers >= 1, got {text!r}")
    return values


def _ablate(args: argparse.Namespace) -> int:
    from lantern.recipes.ablate import ablate

    result = ablate(
        args.run,
        t_values=_int_list(args.t_values, "--t"),
        strides=_int_list(args.strides, "--strides"),
        answer_formats=[f.strip() for f in args.answer_formats.split(",") if f.strip()],
        dimensions=not args.skip_dimensions,
        select_on=args.select_on,
        endpoint=_endpoint(args),
        notify=_notify,
        progress=not args.quiet,
    )
    print(result["markdown"])
    print(f"\ntable: {result['markdown_path']}\n       {result['csv_path']}")
    return 0
