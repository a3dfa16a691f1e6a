"""The LLM stage: prompt the LLM once per receptive field and record an answer for every utterance.

Reads ``RUN_DIR/vanilla/predictions-<split>.jsonl`` and the transcripts of the corpus recorded in
``run.json``; writes ``RUN_DIR/llm/answers-<split>.jsonl`` (one record per window, every window and
every utterance listed) and ``RUN_DIR/llm/stats.json``. Answers are cached in
``RUN_DIR/llm/cache.sqlite`` as they arrive, so a killed run resumes where it stopped.

Windows whose prompt is identical (truncated windows of a short dialogue) share one request; the
answer is written under each of them with that window's own positions ``b``.

What happens to a window the LLM does not answer (documented choice): every utterance of it falls
back to its vanilla distribution with a recorded reason — ``budget`` when ``max_cost`` stopped the
run before sending it, ``request:<why>`` when the request failed after its retries, or the
parser's reason when the answer for that utterance stayed invalid after ``max_answer_retries``.
Fallbacks are counted by reason in the stats, and ``complete`` is false when any window was left
unasked or failed in transport; because only valid answers are cached, running the same command
again (with a larger budget) asks exactly those windows and nothing else. ``fallback_rate`` is the
share of utterance answers (one per utterance per window) that fell back.

The cache stores an answer only once every utterance of it parsed (a retried bad answer is never
stored) and re-validates stored text when it reads it; see :mod:`lantern.llm.cache`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm

from lantern.corpus.dialogue import Corpus, Utterance
from lantern.fields import receptive_fields, unique_windows
from lantern.labels import LabelSet
from lantern.llm.answers import (
    DEFAULT_MODE,
    FALLBACK,
    AnswerError,
    ParsedAnswer,
    UtteranceAnswer,
    WindowAnswer,
    answer_schema,
    parse_answer,
    response_format,
    write_window_answers,
)
from lantern.llm.cache import CachedAnswer, ResponseCache, cache_key
from lantern.llm.client import (
    Budget,
    BudgetExhausted,
    LLMClient,
    RequestFailed,
    price_for,
)
from lantern.llm.config import LLMConfig
from lantern.llm.prompt import PromptOptions, WindowUtterance, build_messages, template_version
from lantern.predictions import Prediction, read_predictions
from lantern.rundir import RunDir, write_json

log = logging.getLogger(__name__)

DUMMY_KEY = "sk-local-no-key"
REMOTE_SERVER_KIND = "openai"
LOCAL_SERVER_KIND = "llamacpp"
ANSWER_SLACK_TOKENS = 32
LOCAL_TIMEOUT = 900.0
_PARTICULARS = re.compile(r"[:(\"'0-9]")


@dataclass
class _Request:
    """One distinct prompt (windows with identical prompts share it), and what its answer gave:
    ``result`` per valid utterance index, ``reasons`` per fallen-back index."""

    key: str
    messages: list[dict]
    params: dict[str, Any]
    indices: list[int]
    result: dict[int, list[float]] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    failed: bool = False


def max_answer_tokens(n_utterances: int, n_classes: int) -> int:
    """Room for the answer: ``"index": "digits",`` is about 6 + C tokens per utterance, plus slack."""
    return n_utterances * (6 + n_classes) + ANSWER_SLACK_TOKENS


def resolve_api_key(env_name: str, base_urls: list[str]) -> str:
    """The key from ``env_name``; a dummy for loopback endpoints without one; else a clear error."""
    key = os.environ.get(env_name)
    if key:
        return key
    if all((urlsplit(u).hostname or "") in ("127.0.0.1", "localhost", "::1") for u in base_urls):
        return DUMMY_KEY
    raise ValueError(
        f"environment variable {env_name} is not set (it must hold the API key for {base_urls[0]})"
    )


def load_run_corpus(run: RunDir) -> Corpus:
    """The corpus recorded in run.json, loaded with the native reader; errors say which and why."""
    path = run.corpus_path()
    if not path.exists():
        raise FileNotFoundError(f"{path}: the corpus recorded in {run.root / 'run.json'} does not exist")
    from lantern.corpus.native import load_corpus

    return load_corpus(path)


def run_llm_stage(
    run_dir: str | Path,
    config: LLMConfig,
    splits: list[str] | tuple[str, ...] = ("dev", "test"),
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Prompt the LLM over every receptive field of ``splits``; write answers and stats; return the stats."""
    run = RunDir(run_dir)
    for split in splits:
        if not run.predictions(split).exists():
            raise FileNotFoundError(
                f"{run.predictions(split)}: no vanilla predictions (run `lantern train` first)"
            )
    if config.base_urls and not config.model:
        raise ValueError("--model is required with --base-url")
    corpus = load_run_corpus(run)
    if not config.base_urls:
        # llama-cpp-python's server decodes one request at a time: queueing more there only makes
        # them time out while they wait, and a small CPU model needs minutes for a long window.
        config = replace(config, concurrency=1, timeout=max(config.timeout, LOCAL_TIMEOUT))
    with _endpoint(config) as (base_urls, model, server_kind):
        return asyncio.run(_run(run, corpus, config, list(splits), base_urls, model, server_kind, progress))


@contextmanager
def _endpoint(config: LLMConfig) -> Iterator[tuple[list[str], str, str]]:
    """(base URLs, model name, server kind): the configured endpoint, or the embedded server for its life."""
    if config.base_urls:
        yield list(config.base_urls), str(config.model), config.server_kind or REMOTE_SERVER_KIND
        return
    from lantern.llm.local import LocalServer

    with LocalServer(config.local_model) as server:
        yield [server.base_url], server.model, config.server_kind or LOCAL_SERVER_KIND


async def _run(
    run: RunDir,
    corpus: Corpus,
    config: LLMConfig,
    splits: list[str],
    base_urls: list[str],
    model: str,
    server_kind: str,
    progress: bool,
) -> dict[str, Any]:
    started = time.monotonic()
    if config.response_format is None and server_kind not in DEFAULT_MODE:
        raise ValueError(f"unknown server kind {server_kind!r}; known: {', '.join(DEFAULT_MODE)}")
    api_key = resolve_api_key(config.api_key_env, base_urls)
    client = LLMClient(
        base_urls,
        model,
        api_key,
        concurrency=config.concurrency,
        rpm=config.rpm,
        tpm=config.tpm,
        timeout=config.timeout,
        max_retries=config.max_retries,
        backoff_base=config.backoff_base,
        backoff_max=config.backoff_max,
        price=price_for(model, config.prices),
        budget=Budget(config.max_cost),
        seed=config.seed,
    )
    cache = ResponseCache(Path(config.cache_path or run.llm / "cache.sqlite"), refresh=config.refresh)
    session = _Session(
        config=config,
        client=client,
        cache=cache,
        labels=corpus.labels,
        texts={u.id: u for d in corpus.dialogues for u in d.utterances},
        model=model,
        mode=config.response_format or DEFAULT_MODE[server_kind],
    )
    split_stats: dict[str, dict[str, Any]] = {}
    fallbacks: Counter = Counter()
    totals: Counter = Counter()
    try:
        for split in splits:
            predictions = read_predictions(run.predictions(split))
            dialogues = _group_by_dialogue(predictions, session.texts, run.predictions(split))
            plan, requests = await session.ask_split(split, dialogues, progress)
            windows, counts = _assemble(plan, requests, dialogues, config.stride)
            write_window_answers(run.answers(split), windows)
            fallbacks.update(counts)
            n_answers = sum(len(w.utterances) for w in windows)
            unanswered = sum(requests[w[4]].failed for w in plan)
            split_stats[split] = {
                "windows": len(windows),
                "windows_unanswered": unanswered,
                "unique_requests": len(requests),
                "utterance_answers": n_answers,
                "fallbacks": dict(sorted(counts.items())),
                "fallback_rate": sum(counts.values()) / n_answers if n_answers else 0.0,
            }
            totals.update(
                windows=len(windows),
                windows_unanswered=unanswered,
                unique_requests=len(requests),
                requests_unanswered=sum(r.failed for r in requests.values()),
                utterance_answers=n_answers,
            )
    finally:
        cache.close()
        await client.close()
    n_answers = totals["utterance_answers"]
    stats = {
        "model": model,
        "base_urls": client.base_urls,
        "server_kind": server_kind,
        "response_format": session.mode,
        "template_version": session.version,
        "stride": config.stride,
        "t": config.t,
        "config": config.outputs_config(),
        "splits": split_stats,
        "windows": totals["windows"],
        "unique_requests": totals["unique_requests"],
        "utterance_answers": n_answers,
        "requests_sent": client.stats.requests_sent,
        "requests_per_replica": client.stats.per_replica,
        "max_in_flight": client.stats.max_in_flight,
        "cache_hits": session.cache_hits,
        "served_models": dict(sorted(session.served_models.items())),
        "retries": client.stats.retries,
        "answer_retries": session.answer_retries,
        "transport_errors": dict(sorted(client.stats.errors.items())),
        "fallbacks": dict(sorted(fallbacks.items())),
        "fallback_rate": sum(fallbacks.values()) / n_answers if n_answers else 0.0,
        "prompt_tokens": client.stats.prompt_tokens,
        "completion_tokens": client.stats.completion_tokens,
        "cost_usd": round(client.stats.cost_usd, 6),
        "max_cost": config.max_cost,
        "windows_answered": totals["windows"] - totals["windows_unanswered"],
        "windows_unanswered": totals["windows_unanswered"],
        "requests_unanswered": totals["requests_unanswered"],
        "complete": totals["windows_unanswered"] == 0,
        "wall_seconds": round(time.monotonic() - started, 3),
    }
    write_json(run.llm / "stats.json", stats)
    return stats


def _group_by_dialogue(
    predictions: list[Prediction], texts: dict[str, Utterance], path: Path
) -> dict[str, list[Prediction]]:
    """Predictions by dialogue, in file order; every utterance must have a transcript in the corpus."""
    dialogues: dict[str, list[Prediction]] = {}
    for p in predictions:
        if p.id not in texts:
            raise ValueError(f"{path}: dialogue {p.dialogue}, utterance {p.id}: not in the run's corpus")
        dialogues.setdefault(p.dialogue, []).append(p)
    return dialogues


Window = tuple[str, int, int, int, str]  # (dialogue, k, start, stop, request key)


@dataclass
class _Session:
    """What every request of one stage run shares: endpoint, cache, prompt settings, counters."""

    config: LLMConfig
    client: LLMClient
    cache: ResponseCache
    labels: LabelSet
    texts: dict[str, Utterance]
    model: str
    mode: str
    cache_hits: int = 0
    answer_retries: int = 0
    served_models: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.options = PromptOptions(
            include_probs=self.config.include_probs,
            include_vad=self.config.include_vad,
            template=self.config.template,
        )
        self.version = template_version(self.options)
        self.classes = list(self.labels.classes)

    async def ask_split(
        self, split: str, dialogues: dict[str, list[Prediction]], progress: bool
    ) -> tuple[list[Window], dict[str, _Request]]:
        """Plan every window and answer every distinct request; sending starts while planning goes on.

        The first fatal error (credentials) cancels the rest and is raised.
        """
        plan: list[Window] = []
        requests: dict[str, _Request] = {}
        bar = tqdm(desc=f"llm {split}", unit="req", disable=not progress)

        async def answer(request: _Request) -> None:
            await self.ask(request)
            bar.update(1)

        try:
            async with asyncio.TaskGroup() as group:
                for dialogue_id, preds in dialogues.items():
                    for request in self.plan_dialogue(dialogue_id, preds, plan, requests):
                        group.create_task(answer(request))
                    bar.total = len(requests)
                    await asyncio.sleep(0)  # let requests go out while the next dialogue is planned
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None
        finally:
            bar.close()
        return plan, requests

    def plan_dialogue(
        self, dialogue_id: str, preds: list[Prediction], plan: list[Window], requests: dict[str, _Request]
    ) -> list[_Request]:
        """Append the dialogue's windows to ``plan`` (in order of k); return its requests not seen before."""
        config = self.config
        fresh: list[_Request] = []
        windows: list[Window] = []
        fields = receptive_fields(len(preds), config.stride, config.t)
        for (start, stop), group in unique_windows(fields).items():
            utterances = [
                WindowUtterance(
                    index=i,
                    id=preds[i].id,
                    speaker=self.texts[preds[i].id].speaker,
                    text=self.texts[preds[i].id].text,
                    probs=preds[i].probs,
                    vad=preds[i].vad,
                )
                for i in range(start, stop)
            ]
            indices = list(range(start, stop))
            messages = build_messages(dialogue_id, start, stop, utterances, self.labels, self.options)
            params: dict[str, Any] = {
                "temperature": 0,
                "max_tokens": max_answer_tokens(stop - start, len(self.classes)),
            }
            fmt = response_format(self.mode, answer_schema(indices, self.classes))
            if fmt is not None:
                params["response_format"] = fmt
            key = cache_key(self.model, messages, params, self.version)
            if key not in requests:
                requests[key] = _Request(key=key, messages=messages, params=params, indices=indices)
                fresh.append(requests[key])
            windows.extend((dialogue_id, f.k, start, stop, key) for f in group)
        plan.extend(sorted(windows, key=lambda w: w[1]))
        return fresh

    async def ask(self, request: _Request) -> None:
        """Fill ``request.result`` (valid utterances) and ``request.reasons`` (the rest): never raises for
        a bad or missing answer, only for a fatal one (credentials)."""
        cached = self.cache.get(request.key)
        if cached is not None:
            parsed = _parse(cached.text, request.indices, self.classes)
            if not parsed.errors:
                self.cache_hits += 1
                self.served_models[cached.served_model or self.model] += 1
                request.result = dict(parsed.probs)
                return
            log.warning("a cached answer no longer validates (%s); asking again", request.key[:12])
            self.cache.delete(request.key)
        best: ParsedAnswer | None = None
        for attempt in range(self.config.max_answer_retries + 1):
            try:
                completion = await self.client.complete(request.messages, request.params)
            except BudgetExhausted:
                _fail_all(request, "budget")
                return
            except RequestFailed as exc:
                log.warning("request failed: %s", exc)
                _fail_all(request, f"request:{exc.reason}")
                return
            parsed = _parse(completion.text, request.indices, self.classes)
            if not parsed.errors:
                self.cache.put(
                    request.key,
                    self.model,
                    self.version,
                    CachedAnswer(
                        completion.text,
                        completion.prompt_tokens,
                        completion.completion_tokens,
                        completion.served_model,
                    ),
                )
                self.served_models[completion.served_model or self.model] += 1
                request.result = dict(parsed.probs)
                return
            if best is None or len(parsed.errors) < len(best.errors):
                best = parsed
            if attempt < self.config.max_answer_retries:
                self.answer_retries += 1
        assert best is not None
        request.result = {i: p for i, p in best.probs.items() if i not in best.errors}
        request.reasons = {
            i: best.errors.get(i, "missing") for i in request.indices if i not in request.result
        }


def _fail_all(request: _Request, reason: str) -> None:
    """No answer at all (budget, transport): every utterance of the window falls back."""
    request.result = {}
    request.reasons = dict.fromkeys(request.indices, reason)
    request.failed = True


def _parse(text: str, indices: list[int], classes: list[str]) -> ParsedAnswer:
    """parse_answer with every reason reduced to its category; a wholly unusable answer fails every index."""
    try:
        parsed = parse_answer(text, indices, classes)
    except AnswerError as exc:
        return ParsedAnswer(errors=dict.fromkeys(indices, reason_category(exc.reason)))
    parsed.errors = {i: reason_category(e) for i, e in parsed.errors.items()}
    return parsed


def reason_category(message: str) -> str:
    """A parser message without its particulars (``unknown class 'x'`` → ``unknown class``), so
    fallbacks count by kind and the answers file never quotes model output."""
    return _PARTICULARS.split(message, maxsplit=1)[0].strip() or "invalid"


def _assemble(
    plan: list[tuple[str, int, int, int, str]],
    requests: dict[str, _Request],
    dialogues: dict[str, list[Prediction]],
    stride: int,
) -> tuple[list[WindowAnswer], Counter]:
    """One WindowAnswer per window, every utterance present; fallbacks carry vanilla probs and a reason."""
    windows: list[WindowAnswer] = []
    counts: Counter = Counter()
    for dialogue_id, k, start, stop, key in plan:
        request = requests[key]
        preds = dialogues[dialogue_id]
        utterances = []
        for i in range(start, stop):
            b = i // stride - k  # receptive-field position (METHOD.md §2)
            if i in request.result:
                utterances.append(UtteranceAnswer(id=preds[i].id, b=b, r=i - start, probs=request.result[i]))
            else:
                reason = request.reasons.get(i, "missing")
                counts[reason] += 1
                utterances.append(
                    UtteranceAnswer(
                        id=preds[i].id,
                        b=b,
                        r=i - start,
                        probs=list(preds[i].probs),
                        status=FALLBACK,
                        reason=reason,
                    )
                )
        windows.append(WindowAnswer(dialogue=dialogue_id, start=start, stop=stop, utterances=utterances))
    return windows, counts
