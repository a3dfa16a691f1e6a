"""Throughput of the LLM stage against the project's test server with a fixed latency.

With latency L per request and concurrency c, the ideal wall time of the stage is
``ceil(requests / c) × L``: every round of c requests costs one latency and nothing else. The
figure reported is the ratio of the measured wall time (the whole stage: corpus load, prompt
rendering, requests, answers file) to that ideal — at most 1.1 is the target. A second run on the
same run directory must send 0 requests (every answer from the cache). The cold stage is run
``--repeats`` times, each on a fresh run, and the ratio reported is the median (each is printed).
Answer tokens per utterance come from the responses' usage (the test server counts tokens with the
client's estimate, about 3 characters per token).

    python bench/llm_throughput.py --fields 500 --latency 1.0 --concurrency 16
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from lantern.fields import FieldSpec
from lantern.llm.config import Endpoint, LLMConfig
from lantern.llm.stage import run_llm_stage
from lantern.testing.runs import make_corpus, make_run
from lantern.testing.server import DEFAULT_MODEL, running_test_server, server_stats

RESULTS = Path(__file__).resolve().parent / "results" / "llm_throughput.json"
STRIDE, T = 4, 3


def dialogue_lengths(fields: int) -> list[int]:
    """Dialogue lengths whose fields (ceil(n/s) + t - 1 each, all distinct) add up to ``fields``."""
    per_40 = math.ceil(40 / STRIDE) + T - 1
    lengths = [40] * (fields // per_40)
    rest = fields - len(lengths) * per_40
    if rest:
        if rest < T:  # a dialogue has at least t fields: borrow from a full one
            lengths.pop()
            rest += per_40
        lengths.append(STRIDE * (rest - T + 1))
    return lengths


def build_run(root: Path, lengths: list[int], seed: int) -> Path:
    """A run whose test split has one dialogue per length, with pretend vanilla predictions."""
    corpus = make_corpus([("test", n) for n in lengths], seed=seed, name="bench")
    return make_run(root, corpus, seed=seed).root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=500)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per request at the server")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=3, help="cold runs, each on a fresh run; the ratio is their median"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    lengths = dialogue_lengths(args.fields)
    cold_walls: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, running_test_server(latency=args.latency) as url:
        endpoint = Endpoint(base_urls=[url + "/v1"], model=DEFAULT_MODEL, concurrency=args.concurrency)
        config = LLMConfig(fields=FieldSpec(STRIDE, T), endpoint=endpoint)
        for repeat in range(args.repeats):  # each on a run of its own: every request is sent
            run = build_run(Path(tmp) / f"run-{repeat}", lengths, args.seed)
            before = server_stats(url)["chat_completions"]
            started = time.perf_counter()
            cold = run_llm_stage(run, config, ["test"], progress=False)
            cold_walls.append(time.perf_counter() - started)
            server_requests = server_stats(url)["chat_completions"] - before
        started = time.perf_counter()
        warm = run_llm_stage(run, config, ["test"], progress=False)
        warm_wall = time.perf_counter() - started
        warm_server_requests = server_stats(url)["chat_completions"] - before - server_requests

    requests = cold.unique_requests
    cold_wall = statistics.median(cold_walls)
    ideal = math.ceil(requests / args.concurrency) * args.latency
    answered_utterances = sum(lengths) * T  # every field is distinct: each utterance is answered t times
    result = {
        "fields": cold.fields,
        "unique_requests": requests,
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "ideal_wall_s": round(ideal, 3),
        "cold_walls_s": [round(w, 3) for w in cold_walls],
        "cold_ratios": [round(w / ideal, 3) for w in cold_walls],
        "cold_wall_s": round(cold_wall, 3),
        "cold_ratio": round(cold_wall / ideal, 3),
        "cold_requests_sent": cold.requests_sent,
        "server_requests": server_requests,
        "warm_wall_s": round(warm_wall, 3),
        "warm_requests_sent": warm.requests_sent,
        "warm_server_requests": warm_server_requests,
        "warm_cache_hits": warm.cache_hits,
        "completion_tokens": cold.completion_tokens,
        "prompt_tokens": cold.prompt_tokens,
        "answer_tokens_per_utterance": round(cold.completion_tokens / answered_utterances, 2),
        "prompt_tokens_per_request": round(cold.prompt_tokens / requests, 1),
        "fallback_rate": cold.fallback_rate,
        "token_counts": "test server: the client's estimate, about 3 characters per token",
        "answer_format": config.prompt.answer_format,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"{result['fields']} fields, {requests} requests, "
        f"latency {args.latency}s, concurrency {args.concurrency}\n"
        f"cold: {cold_wall:.2f}s vs ideal {ideal:.2f}s -> ratio {result['cold_ratio']:.3f} (target <= 1.1; "
        f"median of {args.repeats}: {', '.join(f'{r:.3f}' for r in result['cold_ratios'])})\n"
        f"warm re-run: {warm.requests_sent} requests sent ({warm_server_requests} at the server), "
        f"{warm.cache_hits} cache hits, {warm_wall:.2f}s\n"
        f"answer tokens per utterance: {result['answer_tokens_per_utterance']} "
        f"(prompt tokens per request {result['prompt_tokens_per_request']})\n"
        f"wrote {args.out}"
    )


if __name__ == "__main__":
    main()
