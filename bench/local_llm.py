"""The embedded LLM's backends side by side: seconds per request on six-utterance Lantern fields.

Each variant starts the embedded SmolLM2-135M server the way Lantern does (``server_command``) plus
the variant's options, then sends the same fields: the real Lantern prompt (template, six
utterances with synthetic text, reference probabilities and VAD, IEMOCAP's six classes) with each
answer format's schema in the form the backend is asked for (``DEFAULT_MODE``), ``temperature`` 0,
one request at a time, as the LLM stage sends them. Variants: the transformers backend as shipped
(prefix cache, dtype auto, threads from the free cores), without the prefix cache, in float32, and
llama.cpp's server (where llama-cpp-python is importable); the ``-busy`` variants repeat them with
one process spinning on a core beside (transformers with its free-core threads and with threads
fixed at every core, llama.cpp with every core, its default, and with one). Every row records the
load average at its start; the first request of a server (nothing cached but what the server
started with) is reported apart from the rest. Results are written after each variant.

    python bench/local_llm.py --fields 6 --formats probs,logprobs --out bench/results/local_llm.json
    python bench/local_llm.py --variants tf,llama --timeout 300
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from lantern.labels import IEMOCAP6
from lantern.llm.formats import DEFAULT_MODE, AnswerError, answer_format, response_format
from lantern.llm.local import LOCAL_MODEL_NAME, SERVER_KINDS, find_local_model, free_port, server_command
from lantern.llm.prompt import FieldUtterance, PromptOptions, build_messages

TEXT = (
    "well I really do not know what you mean by that but okay let us talk about it later maybe "
    "tonight then you always say this and I am tired of waiting for you to come home"
)
WORDS = TEXT.split()
SIZE = 6


def lantern_fields(fmt: str, n: int, seed: int = 0) -> list[tuple[list[dict], dict, list[int]]]:
    """``n`` consecutive fields (stride 3) of one synthetic dialogue: (messages, params, indices)."""
    rng = random.Random(seed)
    utterances = []
    for i in range(3 * n + SIZE):
        weights = [rng.random() ** 2 for _ in IEMOCAP6.classes]
        utterances.append(
            FieldUtterance(
                index=i,
                id=f"d0_u{i}",
                speaker="AB"[i % 2],
                text=" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))),
                probs=[w / sum(weights) for w in weights],
                vad=[round(rng.uniform(1, 5), 1) for _ in range(3)],
            )
        )
    f = answer_format(fmt)
    out = []
    for k in range(n):
        start = 3 * k
        indices = list(range(start, start + SIZE))
        messages = build_messages(
            "bench-dialogue",
            start,
            start + SIZE,
            utterances[start : start + SIZE],
            IEMOCAP6,
            PromptOptions(answer_format=fmt),
        )
        params = {"temperature": 0, "max_tokens": f.max_tokens(SIZE, len(IEMOCAP6)), **f.request_params()}
        out.append((messages, params, indices))
    return out


@contextlib.contextmanager
def serving(command: list[str], env: dict[str, str], log: Path) -> Iterator[str]:
    """The server of ``command`` on loopback until the block ends; yields its base URL."""
    port = command[command.index("--port") + 1]
    url = f"http://127.0.0.1:{port}/v1"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            started = time.monotonic()
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited ({process.returncode}); see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/models", timeout=2).status_code == 200:
                        break
                time.sleep(0.25)
            print(f"  ready in {time.monotonic() - started:.1f}s", flush=True)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


@contextlib.contextmanager
def busy_core(active: bool) -> Iterator[None]:
    """One process spinning on a core for the length of the block (when ``active``)."""
    if not active:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(2)
        yield
    finally:
        spinner.kill()
        spinner.wait()


# key: (description, backend, extra server options, n_threads for server_command, a busy process beside)
VARIANTS: dict[str, tuple[str, str, list[str], int | None, bool]] = {
    "tf": ("transformers", "transformers", [], None, False),
    "tf-nocache": ("transformers, no prefix cache", "transformers", ["--no-prefix-cache"], None, False),
    "tf-fp32": ("transformers, float32", "transformers", ["--dtype", "float32"], None, False),
    "llama": ("llama.cpp", "llamacpp", [], None, False),
    "tf-busy": ("transformers, busy", "transformers", [], None, True),
    "tf-allcores-busy": ("transformers, threads = all cores, busy", "transformers", [], os.cpu_count(), True),
    "llama-busy": ("llama.cpp, busy", "llamacpp", [], None, True),
    "llama-1thread-busy": ("llama.cpp, 1 thread, busy", "llamacpp", [], 1, True),
}


def run_variant(key: str, formats: list[str], n: int, timeout: float, log_dir: Path) -> dict:
    name, backend, extra, threads, busy = VARIANTS[key]
    print(f"{name}:", flush=True)
    command = server_command(find_local_model(), free_port(), backend=backend, n_threads=threads) + extra
    mode = DEFAULT_MODE[SERVER_KINDS[backend]]
    rows: dict[str, dict] = {}
    with busy_core(busy), serving(command, dict(os.environ), log_dir / f"{key}.log") as url:
        for fmt in formats:
            f = answer_format(fmt)
            seconds, usage, finishes, valid, load = [], [], [], 0, os.getloadavg()[0]
            for messages, params, indices in lantern_fields(fmt, n):
                body = {"model": LOCAL_MODEL_NAME, "messages": messages, **params}
                body["response_format"] = response_format(mode, f.schema(indices, IEMOCAP6.classes))
                started = time.monotonic()
                try:
                    reply = httpx.post(url + "/chat/completions", json=body, timeout=timeout)
                except httpx.TimeoutException:
                    print(f"  {fmt}: a request took over {timeout:.0f}s; the rest of this format is skipped")
                    seconds.append(None)
                    break
                seconds.append(time.monotonic() - started)
                reply.raise_for_status()
                data = reply.json()
                text = data["choices"][0]["message"]["content"] or ""
                logprobs = (data["choices"][0].get("logprobs") or {}).get("content")
                with contextlib.suppress(AnswerError):  # no JSON object at all (cut short): not valid
                    valid += not f.parse(text, logprobs, indices, IEMOCAP6.classes).errors
                usage.append(data.get("usage") or {})
                finishes.append(data["choices"][0].get("finish_reason"))
            done = [s for s in seconds if s is not None]
            rows[fmt] = {
                "first_s": round(done[0], 3) if done else None,
                "warm_mean_s": round(statistics.mean(done[1:]), 3)
                if len(done) > 1 and None not in seconds
                else None,
                "seconds": [None if s is None else round(s, 3) for s in seconds],
                "prompt_tokens": [u.get("prompt_tokens") for u in usage],
                "cached_tokens": [(u.get("prompt_tokens_details") or {}).get("cached_tokens") for u in usage],
                "completion_tokens": [u.get("completion_tokens") for u in usage],
                "finish_reasons": finishes,
                "fully_valid_answers": valid,
                "load_at_start": round(load, 2),
            }
            print(f"  {fmt}: {rows[fmt]['seconds']} s ({valid} fully valid; load {load:.2f})", flush=True)
    return {"variant": name, "backend": backend, "options": extra, "n_threads": threads,
            "busy_process_beside": busy, "formats": rows}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fields", type=int, default=6, help="requests per format and variant (default 6)")
    p.add_argument("--formats", default="probs,logprobs")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}"
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take (default 600)")
    p.add_argument("--out", type=Path, default=Path("bench/results/local_llm.json"))
    args = p.parse_args()
    formats = args.formats.split(",")
    keys = [
        k
        for k in args.variants.split(",")
        if VARIANTS[k][1] != "llamacpp" or importlib.util.find_spec("llama_cpp")
    ]
    log_dir = args.out.with_suffix(".logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for key in keys:  # written after every variant: a long run keeps what it measured
        results[key] = run_variant(key, formats, args.fields, args.timeout, log_dir)
        payload = {
            "bench": "bench/local_llm.py",
            "argv": sys.argv[1:],
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "fields_per_format": args.fields,
            "results": results,
        }
        args.out.write_text(json.dumps(payload, indent=2))
    if "tf" in results:
        base = results["tf"]["formats"]
        print("\nwarm seconds per request, and ratio to the transformers backend as shipped:")
        for result in results.values():
            cells = []
            for fmt, r in result["formats"].items():
                warm, reference = r["warm_mean_s"], base[fmt]["warm_mean_s"]
                ratio = f"{warm / reference:.2f}x" if warm and reference else "n/a"
                cells.append(f"{fmt} {warm if warm is not None else 'timed out'}s ({ratio})")
            print(f"  {result['variant']:40s} " + ", ".join(cells))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
