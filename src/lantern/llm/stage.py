"""The LLM stage: prompt the LLM once per receptive field and record an answer for every utterance.

Reads the vanilla predictions of each split (for ``train``, the cross-fitted ones: the weighter is
trained with exactly the p the LLM was shown, docs/method.md §4) and the transcripts of the corpus
recorded in ``run.json``; writes one answers file per split (one record per field, every field and
every utterance listed), the settings the answers were made with (:class:`LLMSettings`: fields,
prompt version, endpoint kind and model, and the hashes of the predictions prompted with and of
the answers written) and the run's figures (:class:`LLMStats`). Answers are cached as they arrive
(:mod:`lantern.llm.cache`), so a killed run resumes where it stopped.

Fields whose prompt is identical (truncated fields of a short dialogue) share one request; the
answer is written under each of them with that field's own positions ``b``.

What happens to a field the LLM does not answer (documented choice): every utterance of it falls
back to its vanilla distribution with a recorded reason — ``budget`` when ``max_cost`` stopped the
run before sending it, ``request:<why>`` when the request failed after its retries, or the
parser's reason when the answer for that utterance stayed invalid after ``max_answer_retries``.
Fallbacks are counted by reason in the stats, and the stage is incomplete when any field was left
unasked or failed in transport; because only valid answers are cached, running the same command
again (with a larger budget) asks exactly those fields and nothing else. ``fallback_rate`` is the
share of utterance answers (one per utterance per field) that fell back.

Nothing is spent on an endpoint that cannot answer: before anything else the stage checks that
``max_cost`` has a price to count with (:func:`stage_price`), and before the first request that
every base URL answers ``GET /models`` and lists the model (:meth:`LLMClient.check_endpoint`; a run
answered wholly from the cache needs no server); either failing is one line, no answers written.
While it runs, two rules keep fallbacks from passing for answers:

- after :data:`ABORT_AFTER_FAILURES` requests in a row got no usable answer (transport failures, or
  answers invalid for every utterance), the stage stops at once (incomplete, resumable): a server
  that died mid-run would otherwise have every remaining field wait out its retries and fall back;
- after each split, when its fallback rate is above ``max_fallback_rate`` (and fallbacks are not
  allowed), the split's answers, settings and stats are written and the stage stops before the next
  split (incomplete: the answers obtained are cached, so running it again asks only the rest).
  The rate and the limit are recorded with the split's answers (:class:`LLMSettings`), and fusion
  refuses answers recorded above their limit.

``limit_dialogues`` prompts the first N dialogues of each split only (to try a slice cheaply); the
slice is recorded, and fusion refuses answers that cover part of a split. :func:`plan_llm_stage`
computes what a run would send — fields, distinct requests, what the cache already holds, token and
cost estimates — without sending or writing anything (``lantern prompt --dry-run``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from lantern.answers import FALLBACK, FieldAnswer, UtteranceAnswer, write_field_answers
from lantern.corpus.dialogue import Corpus, Utterance
from lantern.errors import LanternError, StageIncomplete
from lantern.fields import FieldSpec, ReceptiveField, unique_fields
from lantern.labels import LabelSet
from lantern.llm.cache import CachedAnswer, ResponseCache, cache_key, cached_keys
from lantern.llm.client import (
    Budget,
    BudgetExhausted,
    EndpointUnusable,
    LLMClient,
    RequestFailed,
    estimate_prompt_tokens,
)
from lantern.llm.config import REMOTE_SERVER_KIND, Endpoint, LLMConfig, kind_defaults
from lantern.llm.endpoint import endpoint, resolve_api_key
from lantern.llm.formats import (
    DEFAULT_MODE,
    AnswerError,
    AnswerFormat,
    ParsedAnswer,
    answer_format,
    response_format,
)
from lantern.llm.prices import FREE, Price, price_for, price_list
from lantern.llm.prompt import FieldUtterance, build_messages, template_version
from lantern.llm.redact import public_url, url_secrets
from lantern.predictions import Prediction, read_predictions
from lantern.progress import progress_bar
from lantern.rundir import LLMSettings, LLMStats, RunDir, SplitStats, file_hash, write_json
from lantern.runlock import run_lock

log = logging.getLogger(__name__)

_PARTICULARS = re.compile(r"[:(\"'0-9]")


@dataclass
class _Request:
    """One distinct prompt (fields with identical prompts share it), and what its answer gave:
    ``result`` per valid utterance index, ``reasons`` per fallen-back index."""

    key: str
    messages: list[dict]
    params: dict[str, Any]
    indices: list[int]
    result: dict[int, list[float]] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    failed: bool = False


class PlannedField(NamedTuple):
    """A field of a dialogue and the request that answers it."""

    dialogue: str
    field: ReceptiveField
    key: str


def prompt_predictions(run: RunDir, split: str) -> Path:
    """:meth:`RunDir.prompted_predictions`, which must exist."""
    path = run.prompted_predictions(split)
    if split == "train" and not path.exists():
        raise LanternError(
            f"{path}: prompting the train split needs cross-fitted vanilla predictions "
            "(train with `lantern train --crossfit K`)"
        )
    if not path.exists():
        raise FileNotFoundError(f"{path}: no vanilla predictions (run `lantern train` first)")
    return path


def load_run_corpus(run: RunDir) -> Corpus:
    """The corpus recorded in run.json, loaded with the native reader; errors say which and why."""
    path = run.corpus_path()
    if not path.exists():
        raise FileNotFoundError(f"{path}: the corpus recorded in {run.run_json} does not exist")
    from lantern.corpus.native import load_corpus

    return load_corpus(path)


def stage_price(ep: Endpoint) -> Price | None:
    """What the endpoint's model costs: nothing for the embedded model, else its price
    (:func:`~lantern.llm.prices.price_for`); a LanternError, before anything is sent, when
    ``max_cost`` is set and the price is not known (counting it as free would make the budget none)."""
    if ep.local or ep.embedded:
        return FREE
    price = price_for(str(ep.model), ep.prices)
    if price is None and ep.max_cost is not None:
        raise LanternError(
            f"--max-cost needs the price of model {ep.model!r}, which the built-in table (as of "
            f"{price_list()['as_of']}) does not list; give it: --prices "
            f"'{{\"{ep.model}\": [USD_per_1M_prompt, USD_per_1M_completion]}}'"
        )
    return price


def run_llm_stage(
    run_dir: str | Path,
    config: LLMConfig,
    splits: list[str] | tuple[str, ...] = ("dev", "test"),
    *,
    progress: bool = True,
    notify: Callable[[str], None] | None = None,
    limit_dialogues: int | None = None,
) -> LLMStats:
    """Prompt the LLM over every receptive field of ``splits`` (of their first ``limit_dialogues``
    dialogues only, when given); write answers, settings and stats.

    Raises StageIncomplete after writing a split whose fallback rate is above the limit, or when
    requests keep failing (see the module docstring).
    """
    run = RunDir(run_dir)
    sources = {split: prompt_predictions(run, split) for split in splits}
    corpus = load_run_corpus(run)
    stage_price(config.endpoint)  # before the lock or a server: a budget without a price is refused
    fresh = not run.llm.dir.exists()
    try:
        # One process at a time: a second one would send (and pay for) the same fields again.
        with (
            run_lock(run.llm.lock, "prompting the LLM"),
            endpoint(config.endpoint, notify, log_path=run.llm.server_log) as resolved,
        ):
            return asyncio.run(_run(run, corpus, config, resolved, sources, progress, limit_dialogues))
    except EndpointUnusable:
        if fresh:  # a first try at a dead or wrong endpoint leaves the run as it was
            shutil.rmtree(run.llm.dir, ignore_errors=True)
        raise


def _structured_mode(response_format: str | None, server_kind: str) -> str:
    """The structured-output mode asked for, else the server kind's; an unknown kind is an error."""
    if response_format is not None:
        return response_format
    if server_kind not in DEFAULT_MODE:
        raise LanternError(f"unknown server kind {server_kind!r}; known: {', '.join(DEFAULT_MODE)}")
    return DEFAULT_MODE[server_kind]


@dataclass
class PlannedSplit:
    """What prompting one split would take (:func:`plan_llm_stage`): dialogues and fields, the
    distinct requests and how many of them the cache answers, and for the rest the prompt tokens
    (estimated from the text, erring high) and the completion tokens at most (their ``max_tokens``)."""

    split: str
    dialogues: int
    fields: int
    requests: int
    cached: int
    prompt_tokens: int
    max_completion_tokens: int

    @property
    def to_send(self) -> int:
        return self.requests - self.cached


@dataclass
class StagePlan:
    """:func:`plan_llm_stage`'s answer: per split, and the model with its price (None: unknown)."""

    model: str
    price: Price | None
    splits: list[PlannedSplit]
    embedded: bool = False

    @property
    def cost_at_most(self) -> float | None:
        """Dollars the requests to send would cost with every answer as long as allowed (answer
        retries aside); None without a price."""
        if self.price is None:
            return None
        return sum(self.price.cost(s.prompt_tokens, s.max_completion_tokens) for s in self.splits)


def plan_llm_stage(
    run_dir: str | Path,
    config: LLMConfig,
    splits: list[str] | tuple[str, ...] = ("dev", "test"),
    *,
    limit_dialogues: int | None = None,
) -> StagePlan:
    """What :func:`run_llm_stage` would send, sending nothing and writing nothing: no lock, no
    server started, the cache read without being opened for writing (:func:`cached_keys`)."""
    run = RunDir(run_dir)
    sources = {split: prompt_predictions(run, split) for split in splits}
    corpus = load_run_corpus(run)
    ep = config.endpoint
    price = stage_price(ep)
    if ep.local:
        from lantern.llm.local import LOCAL_MODEL_NAME, SERVER_KINDS, resolve_backend

        model, kind = LOCAL_MODEL_NAME, ep.server_kind or SERVER_KINDS[resolve_backend(ep.local_backend)]
    else:
        model, kind = str(ep.model), ep.server_kind or REMOTE_SERVER_KIND
    mode = _structured_mode(ep.response_format, kind)
    planner = _Planner(
        config=config,
        labels=corpus.labels,
        texts={u.id: u for d in corpus.dialogues for u in d.utterances},
        model=model,
        mode=mode,
    )
    cached = set() if config.refresh else cached_keys(Path(config.cache_path or run.llm.cache))
    planned = []
    for split, source in sources.items():
        dialogues = _group_by_dialogue(read_predictions(source), planner.texts, source)
        if limit_dialogues is not None:
            dialogues = dict(itertools.islice(dialogues.items(), limit_dialogues))
        plan: list[PlannedField] = []
        requests: dict[str, _Request] = {}
        for dialogue_id, preds in dialogues.items():
            planner.plan_dialogue(dialogue_id, preds, plan, requests)
        fresh = [r for key, r in requests.items() if key not in cached]
        planned.append(
            PlannedSplit(
                split=split,
                dialogues=len(dialogues),
                fields=len(plan),
                requests=len(requests),
                cached=len(requests) - len(fresh),
                prompt_tokens=sum(estimate_prompt_tokens(r.messages) for r in fresh),
                max_completion_tokens=sum(int(r.params["max_tokens"]) for r in fresh),
            )
        )
    return StagePlan(model=model, price=price, splits=planned, embedded=ep.local)


async def _run(
    run: RunDir,
    corpus: Corpus,
    config: LLMConfig,
    ep: Endpoint,
    sources: dict[str, Path],
    progress: bool,
    limit_dialogues: int | None,
) -> LLMStats:
    started = time.monotonic()
    assert ep.model is not None and ep.server_kind is not None
    assert ep.concurrency is not None and ep.timeout is not None  # resolved by endpoint()
    mode = _structured_mode(ep.response_format, ep.server_kind)
    price = stage_price(ep)
    client = LLMClient(
        ep.base_urls,
        ep.model,
        resolve_api_key(ep.api_key_env, ep.base_urls),
        concurrency=ep.concurrency,
        rpm=ep.rpm,
        tpm=ep.tpm,
        timeout=ep.timeout,
        max_retries=ep.max_retries,
        backoff_base=ep.backoff_base,
        backoff_max=ep.backoff_max,
        price=price or FREE,
        budget=Budget(ep.max_cost),
        seed=ep.seed,
        # The embedded server needs no check: it was started for this run and answered /models.
        check_model=None if ep.embedded else kind_defaults(ep.server_kind).lists_models,
    )
    if price is None:
        log.info("no price is known for model %r: its cost is not counted (--prices gives it)", ep.model)
    limit = None if config.allow_fallbacks else config.max_fallback_rate
    try:
        with ResponseCache(Path(config.cache_path or run.llm.cache), refresh=config.refresh) as cache:
            session = _Session(
                config=config,
                labels=corpus.labels,
                texts={u.id: u for d in corpus.dialogues for u in d.utterances},
                model=ep.model,
                mode=mode,
                max_answer_retries=ep.max_answer_retries,
                client=client,
                cache=cache,
                # Invalid answers in a row stop the stage only where fallbacks are not accepted anyway.
                count_invalid=limit is not None and limit < 1,
            )
            return await _ask_splits(
                run, config, ep, sources, progress, limit_dialogues, limit, session, started
            )
    finally:
        await client.close()


async def _ask_splits(
    run: RunDir,
    config: LLMConfig,
    ep: Endpoint,
    sources: dict[str, Path],
    progress: bool,
    limit_dialogues: int | None,
    limit: float | None,
    session: _Session,
    started: float,
) -> LLMStats:
    """Every split in turn, its answers, settings and stats written as soon as it is done."""
    stats = LLMStats(max_cost=ep.max_cost)
    settings = _settings(run, config, ep, session)
    for split, source in sources.items():
        predictions = read_predictions(source)
        dialogues = _group_by_dialogue(predictions, session.texts, source)
        total = len(dialogues)
        if limit_dialogues is not None:
            dialogues = dict(itertools.islice(dialogues.items(), limit_dialogues))
        plan, requests = await session.ask_split(split, dialogues, progress)
        answers, fallbacks = _assemble(plan, requests, dialogues, config.fields)
        write_field_answers(run.answers(split), answers)
        done = SplitStats(
            fields=len(answers),
            fields_unanswered=sum(requests[p.key].failed for p in plan),
            unique_requests=len(requests),
            utterance_answers=sum(len(a.utterances) for a in answers),
            fallbacks=dict(sorted(fallbacks.items())),
        )
        stats.splits[split] = done
        stats.requests_unanswered += sum(r.failed for r in requests.values())
        settings.splits[split] = {
            "predictions": file_hash(source),
            "answers": file_hash(run.answers(split)),
            "fallback_rate": round(done.fallback_rate, 4),
            "max_fallback_rate": limit,
            **(
                {"limit_dialogues": limit_dialogues, "dialogues": len(dialogues), "dialogues_total": total}
                if limit_dialogues is not None
                else {}
            ),
        }
        _write_records(run, settings, stats, session, started)
        # A budget stop is reported as one (the caller sees it in the stats), not as fallbacks.
        if limit is not None and done.fallback_rate > limit and not done.fallbacks.get("budget"):
            reasons = ", ".join(f"{reason} {n}" for reason, n in done.fallbacks.items())
            raise StageIncomplete(
                f"{split}: {done.fallback_rate:.1%} of the utterance answers fell back to vanilla "
                f"({reasons}), above max_fallback_rate {limit:.0%}; the answers obtained are cached: run "
                "the same command again to ask the rest, or accept them with --allow-fallbacks"
            )
    return stats


def _write_records(
    run: RunDir, settings: LLMSettings, stats: LLMStats, session: _Session, started: float
) -> None:
    """Write the settings and the figures so far (after each split, so a stop keeps them)."""
    client = session.client
    settings.served_models = dict(sorted(session.served_models.items()))
    stats.requests_sent = client.stats.requests_sent
    stats.requests_per_replica = list(client.stats.per_replica)
    stats.max_in_flight = client.stats.max_in_flight
    stats.cache_hits = session.cache_hits
    stats.retries = client.stats.retries
    stats.answer_retries = session.answer_retries
    stats.transport_errors = dict(sorted(client.stats.errors.items()))
    stats.prompt_tokens = client.stats.prompt_tokens
    stats.completion_tokens = client.stats.completion_tokens
    stats.tokens_estimated = client.stats.tokens_estimated > 0
    stats.cost_usd = round(client.stats.cost_usd, 6)
    stats.wall_seconds = round(time.monotonic() - started, 3)
    write_json(run.llm.settings, settings.to_json())
    write_json(run.llm.stats, stats.to_json())


def _settings(run: RunDir, config: LLMConfig, ep: Endpoint, session: _Session) -> LLMSettings:
    """This run's settings; the splits answered earlier with the same settings stay recorded, the
    others (made with other settings) are dropped, so their answers can no longer be fused."""
    settings = LLMSettings(
        model=str(ep.model),
        server_kind=str(ep.server_kind),
        response_format=session.mode,
        stride=config.fields.stride,
        t=config.fields.t,
        template=config.prompt.template,
        template_version=session.version,
        answer_format=config.prompt.answer_format,
        include_probs=config.prompt.include_probs,
        include_vad=config.prompt.include_vad,
        base_urls=[] if ep.embedded else [public_url(u) for u in ep.base_urls],
        url_credentials=not ep.embedded and any(url_secrets(u) for u in ep.base_urls),
        api_key_env=None if ep.embedded else ep.api_key_env,
        local_model=ep.local_model if ep.embedded else None,
        local_backend=ep.local_backend if ep.embedded else None,
    )
    if run.llm.settings.exists():
        previous = LLMSettings.read(run.llm.settings)
        if _same_identity(previous, settings):
            settings.splits = dict(previous.splits)
    return settings


def _same_identity(a: LLMSettings, b: LLMSettings) -> bool:
    """Whether two settings records describe the same answers: where they were asked (URLs, key
    variable, which backend served the GGUF) does not matter, as it does not for the cache."""
    keep = ("splits", "served_models", "base_urls", "url_credentials", "api_key_env", "local_backend")
    return {k: v for k, v in a.to_json().items() if k not in keep} == {
        k: v for k, v in b.to_json().items() if k not in keep
    }


def _group_by_dialogue(
    predictions: list[Prediction], texts: dict[str, Utterance], path: Path
) -> dict[str, list[Prediction]]:
    """Predictions by dialogue, in file order; every utterance must have a transcript in the corpus."""
    dialogues: dict[str, list[Prediction]] = {}
    for p in predictions:
        if p.id not in texts:
            raise LanternError(f"{path}: dialogue {p.dialogue}, utterance {p.id}: not in the run's corpus")
        dialogues.setdefault(p.dialogue, []).append(p)
    return dialogues


# Answers without logprobs, and none with them yet, after which the logprobs format is given up.
NO_LOGPROBS_LIMIT = 3
# Requests in a row without a usable answer after which the stage stops: each has had its retries
# (a transport failure after max_retries, an invalid answer after max_answer_retries), so this many
# in a row means a dead or wrong endpoint, not bad luck.
ABORT_AFTER_FAILURES = 10


@dataclass
class _Planner:
    """Fields to requests: what the prompts are and which requests share one (no sending)."""

    config: LLMConfig
    labels: LabelSet
    texts: dict[str, Utterance]
    model: str
    mode: str

    def __post_init__(self) -> None:
        self.version = template_version(self.config.prompt)
        self.classes = list(self.labels.classes)
        self.format: AnswerFormat = answer_format(self.config.prompt.answer_format)

    def plan_dialogue(
        self,
        dialogue_id: str,
        preds: list[Prediction],
        plan: list[PlannedField],
        requests: dict[str, _Request],
    ) -> list[_Request]:
        """Append the dialogue's fields to ``plan`` (in order of k); return its requests not seen before."""
        fresh: list[_Request] = []
        planned: list[PlannedField] = []
        for (start, stop), group in unique_fields(self.config.fields.fields(len(preds))).items():
            utterances = [
                FieldUtterance(
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
            messages = build_messages(dialogue_id, start, stop, utterances, self.labels, self.config.prompt)
            params: dict[str, Any] = {
                "temperature": 0,
                "max_tokens": self.format.max_tokens(stop - start, len(self.classes)),
                **self.format.request_params(),
            }
            fmt = response_format(self.mode, self.format.schema(indices, self.classes))
            if fmt is not None:
                params["response_format"] = fmt
            key = cache_key(self.model, messages, params, self.version)
            if key not in requests:
                requests[key] = _Request(key=key, messages=messages, params=params, indices=indices)
                fresh.append(requests[key])
            planned.extend(PlannedField(dialogue_id, f, key) for f in group)
        plan.extend(sorted(planned, key=lambda p: p.field.k))
        return fresh


@dataclass
class _Session(_Planner):
    """What every request of one stage run shares: endpoint, cache, prompt settings, counters.

    ``count_invalid``: whether answers invalid for every utterance count toward
    :data:`ABORT_AFTER_FAILURES` (not where fallbacks are accepted: then only transport does).
    """

    max_answer_retries: int
    client: LLMClient
    cache: ResponseCache
    count_invalid: bool = True
    cache_hits: int = 0
    answer_retries: int = 0
    served_models: Counter = field(default_factory=Counter)
    # Answers with and without token log-probabilities, while the format needs them: a server that
    # never sends them cannot answer in that format at all (see ``_check_logprobs``).
    logprobs_seen: int = 0
    logprobs_missing: int = 0
    # Requests in a row that got no usable answer, and why the last of them did not.
    failures_in_row: int = 0
    failure_reasons: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.needs_logprobs = bool(self.format.request_params().get("logprobs"))

    async def ask_split(
        self, split: str, dialogues: dict[str, list[Prediction]], progress: bool
    ) -> tuple[list[PlannedField], dict[str, _Request]]:
        """Plan every field, taking what the cache holds and sending the rest as it is planned.

        Sending starts with the first request the cache cannot answer (after the endpoint check:
        a dead endpoint is an error before any progress shows), so the server works while the
        remaining dialogues are rendered. The progress bar follows the planning, knowing its total
        and starting at what the cache answered: a resumed stage shows where it is, and its ETA
        counts only what is sent now. The first fatal error (credentials, a run of failures)
        cancels the rest and is raised.
        """
        plan: list[PlannedField] = []
        requests: dict[str, _Request] = {}
        sent = answered_early = 0
        bar = None

        async def answer(request: _Request) -> None:
            nonlocal answered_early
            await self.ask(request)
            if bar is None:
                answered_early += 1
            else:
                bar.update(1)

        try:
            async with asyncio.TaskGroup() as group:
                for dialogue_id, preds in dialogues.items():
                    for request in self.plan_dialogue(dialogue_id, preds, plan, requests):
                        if self.from_cache(request):
                            continue
                        if not sent:
                            await self.client.ensure_checked()
                        sent += 1
                        group.create_task(answer(request))
                    await asyncio.sleep(0)  # the requests just made go out before the next dialogue
                bar = progress_bar(
                    desc=f"llm {split}",
                    unit="req",
                    total=len(requests),
                    initial=len(requests) - sent,
                    enabled=progress,
                )
                bar.update(answered_early)
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None
        finally:
            if bar is not None:
                bar.close()
        return plan, requests

    def _outcome(self, usable: bool, reason: str) -> None:
        """Count a request's outcome; stop the stage after :data:`ABORT_AFTER_FAILURES` in a row
        without a usable answer."""
        if usable:
            self.failures_in_row = 0
            self.failure_reasons.clear()
            return
        self.failures_in_row += 1
        self.failure_reasons[reason] += 1
        if self.failures_in_row >= ABORT_AFTER_FAILURES:
            why = ", ".join(f"{r} {n}" for r, n in self.failure_reasons.most_common())
            raise StageIncomplete(
                f"stopped: the last {self.failures_in_row} requests to {', '.join(self.client.base_urls)} "
                f"(model {self.model}) all failed ({why}); the answers obtained are cached: check the "
                "endpoint, then run the same command again"
            )

    def parse(self, text: str, logprobs: list[dict] | None, indices: list[int]) -> ParsedAnswer:
        """The answer format's reading with every reason reduced to its category; a wholly unusable
        answer fails every index."""
        try:
            parsed = self.format.parse(text, logprobs, indices, self.classes)
        except AnswerError as exc:
            return ParsedAnswer(errors=dict.fromkeys(indices, reason_category(exc.reason)))
        parsed.errors = {i: reason_category(e) for i, e in parsed.errors.items()}
        return parsed

    def from_cache(self, request: _Request) -> bool:
        """Fill ``request.result`` from the cache when it holds a valid answer; a cached answer that
        no longer validates is dropped, to be asked again."""
        cached = self.cache.get(request.key)
        if cached is None:
            return False
        parsed = self.parse(cached.text, cached.logprobs, request.indices)
        if parsed.errors:
            log.warning("a cached answer no longer validates (%s); asking again", request.key[:12])
            self.cache.delete(request.key)
            return False
        self.cache_hits += 1
        self.served_models[cached.served_model or self.model] += 1
        request.result = dict(parsed.probs)
        return True

    async def ask(self, request: _Request) -> None:
        """Ask the server for a request the cache could not answer. Fills ``request.result`` (valid
        utterances) and ``request.reasons`` (the rest): never raises for a bad or missing answer, only
        for a fatal one (credentials, a run of failures)."""
        best: ParsedAnswer | None = None
        texts: set[str] = set()
        for attempt in range(self.max_answer_retries + 1):
            try:
                completion = await self.client.complete(request.messages, request.params)
            except BudgetExhausted:
                _fail_all(request, "budget")
                return
            except RequestFailed as exc:
                log.warning("request failed: %s", exc)
                _fail_all(request, f"request:{exc.reason}")
                self._outcome(False, exc.reason)
                return
            self._check_logprobs(completion.logprobs)
            parsed = self.parse(completion.text, completion.logprobs, request.indices)
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
                        parsed.evidence if self.needs_logprobs else None,
                    ),
                )
                self.served_models[completion.served_model or self.model] += 1
                request.result = dict(parsed.probs)
                self._outcome(True, "")
                return
            if best is None or len(parsed.errors) < len(best.errors):
                best = parsed
            # A server that repeats an invalid answer word for word is deterministic here (greedy
            # decoding at temperature 0): asking again would only repeat it, at full cost.
            if completion.text in texts:
                break
            texts.add(completion.text)
            if attempt < self.max_answer_retries:
                self.answer_retries += 1
        assert best is not None
        request.result = {i: p for i, p in best.probs.items() if i not in best.errors}
        request.reasons = {
            i: best.errors.get(i, "missing") for i in request.indices if i not in request.result
        }
        self._outcome(bool(request.result) or not self.count_invalid, "invalid answer")

    def _check_logprobs(self, logprobs: list[dict] | None) -> None:
        """Stop the stage when the answer format needs log-probabilities and the server has sent
        none in its first answers: every utterance would fall back, each after its retries."""
        if not self.needs_logprobs:
            return
        if logprobs:
            self.logprobs_seen += 1
            return
        self.logprobs_missing += 1
        if self.logprobs_seen == 0 and self.logprobs_missing >= NO_LOGPROBS_LIMIT:
            raise LanternError(
                f"the server answered {self.logprobs_missing} requests without the token logprobs the "
                f"{self.format.name!r} answer format reads; use --answer-format probs (answer_format = "
                '"probs" in a config) with this server'
            )


def _fail_all(request: _Request, reason: str) -> None:
    """No answer at all (budget, transport): every utterance of the field falls back."""
    request.result = {}
    request.reasons = dict.fromkeys(request.indices, reason)
    request.failed = True


def reason_category(message: str) -> str:
    """A parser message without its particulars (``unknown class 'x'`` → ``unknown class``), so
    fallbacks count by kind and the answers file never quotes model output."""
    return _PARTICULARS.split(message, maxsplit=1)[0].strip() or "invalid"


def _assemble(
    plan: list[PlannedField],
    requests: dict[str, _Request],
    dialogues: dict[str, list[Prediction]],
    spec: FieldSpec,
) -> tuple[list[FieldAnswer], Counter]:
    """One FieldAnswer per field, every utterance present; fallbacks carry vanilla probs and a reason."""
    answers: list[FieldAnswer] = []
    counts: Counter = Counter()
    for planned in plan:
        request = requests[planned.key]
        preds = dialogues[planned.dialogue]
        f = planned.field
        utterances = []
        for i in range(f.start, f.stop):
            m = spec.position(i, f)
            if i in request.result:
                utterances.append(UtteranceAnswer(id=preds[i].id, b=m.b, r=m.r, probs=request.result[i]))
            else:
                reason = request.reasons.get(i, "missing")
                counts[reason] += 1
                utterances.append(
                    UtteranceAnswer(
                        id=preds[i].id,
                        b=m.b,
                        r=m.r,
                        probs=list(preds[i].probs),
                        status=FALLBACK,
                        reason=reason,
                    )
                )
        answers.append(
            FieldAnswer(dialogue=planned.dialogue, start=f.start, stop=f.stop, utterances=utterances)
        )
    return answers, counts
