"""Choosing tokens: free generation, and generation held to a JSON plan (:mod:`lantern.llm.json_plan`).

Both loops drive a :class:`Context` — a model with its KV cache that is fed tokens and asked for the
next token's logits, over the whole vocabulary or over a given few. Feeding is lazy in the model,
so a run of forced tokens costs one forward pass, made when the next choice needs logits.

In a planned generation, forced text (braces, keys, quotes, separators) is fed as it is, with no
look at the vocabulary; at a value position only the tokens that continue an allowed value are
scored (the model's head is applied to those rows alone), and where only one token can follow it
is fed like forced text.

Log-probabilities are the model's own (temperature 1, whatever the sampling temperature), as
OpenAI reports them. At a free position they are over the whole vocabulary. At a constrained
position they are over the allowed tokens only, renormalised: a value token's ``logprob`` and
``top`` alternatives are the log-softmax of the allowed tokens' logits, and a forced token reports
0 (probability 1) with itself as its only alternative. So the ``top_logprobs`` at a label's first
token are the model's preference among the labels' first tokens, which is what
:class:`lantern.llm.formats.LogprobsFormat` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from lantern.llm.json_plan import Forced, TokenChoice, TokenSegment


class Context(Protocol):
    """A model part-way through a sequence."""

    def feed(self, ids: Sequence[int]) -> None:
        """Append tokens to the sequence."""

    def logits(self, allowed: Sequence[int] | None = None) -> torch.Tensor:
        """The next token's logits (1-D): for every token, or for ``allowed`` in that order."""


@dataclass(frozen=True)
class Step:
    """One generated token, its log-probability and the best alternatives (token, logprob)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass
class Generation:
    """The generated tokens and why generation ended: ``stop`` (done) or ``length`` (max_tokens)."""

    steps: list[Step]
    finish_reason: str


class Sampler:
    """Picks a token from logits: the best at temperature 0, else a draw from the tempered softmax,
    reproducible for a given ``seed``."""

    def __init__(self, temperature: float, seed: int | None = None) -> None:
        self.temperature = temperature
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def pick(self, logits: torch.Tensor) -> int:
        if self.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.double() / self.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def _scored(logits: torch.Tensor, index: int, ids: Sequence[int] | None, top_k: int) -> Step:
    """The step choosing ``logits[index]``; token ids are ``ids[i]`` (or ``i`` when ``ids`` is None)."""
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    token = int(ids[index]) if ids is not None else index
    top: tuple[tuple[int, float], ...] = ()
    if top_k > 0:
        values, where = torch.topk(logprobs, min(top_k, logprobs.numel()))
        top = tuple(
            (int(ids[i]) if ids is not None else int(i), float(v))
            for v, i in zip(values.tolist(), where.tolist(), strict=True)
        )
    return Step(token, float(logprobs[index]), top)


def _forced(token: int, top_k: int) -> Step:
    return Step(token, 0.0, ((token, 0.0),) if top_k > 0 else ())


def generate_free(
    context: Context, sampler: Sampler, max_tokens: int, stop_ids: set[int], top_k: int = 0
) -> Generation:
    """Unconstrained generation until a stop token (not part of the output) or ``max_tokens``."""
    steps: list[Step] = []
    while len(steps) < max_tokens:
        logits = context.logits()
        token = sampler.pick(logits)
        if token in stop_ids:
            return Generation(steps, "stop")
        steps.append(_scored(logits, token, None, top_k))
        context.feed([token])
    return Generation(steps, "length")


def generate_planned(
    context: Context, plan: list[TokenSegment], sampler: Sampler, max_tokens: int, top_k: int = 0
) -> Generation:
    """Generation held to ``plan``: the text is a valid answer unless ``max_tokens`` cuts it short."""
    steps: list[Step] = []
    done = 0  # tokens of the next forced segment already generated (its first, ending a choice)
    for segment in plan:
        if isinstance(segment, Forced):
            ids = segment.ids[done:]
            room = max_tokens - len(steps)
            steps.extend(_forced(t, top_k) for t in ids[:room])
            context.feed(ids[:room])
            if len(ids) > room:
                return Generation(steps, "length")
            done = 0
            continue
        outcome = _choose(context, segment, sampler, max_tokens, top_k, steps)
        if outcome == _CUT:
            return Generation(steps, "length")
        done = 1 if outcome == _ENDED else 0
    return Generation(steps, "stop")


_COMPLETE, _ENDED, _CUT = "complete", "ended", "cut"


def _choose(
    context: Context, choice: TokenChoice, sampler: Sampler, max_tokens: int, top_k: int, steps: list[Step]
) -> str:
    """Generate one option of ``choice`` into ``steps``: ``_COMPLETE`` when the option can only
    end there, ``_ENDED`` when the model ended it with its end token (the first token of the forced
    text that follows, then already fed), ``_CUT`` when ``max_tokens`` came first."""
    node = choice.root
    while True:
        allowed = list(node.children)
        if node.terminal:
            if not allowed:
                return _COMPLETE
            assert choice.end is not None  # json_plan guarantees an end where an option may go on
            allowed.append(choice.end)
        if len(steps) >= max_tokens:
            return _CUT
        if len(allowed) == 1:
            step = _forced(allowed[0], top_k)
        else:
            logits = context.logits(allowed)
            step = _scored(logits, sampler.pick(logits), allowed, top_k)
        steps.append(step)
        context.feed([step.token])
        if node.terminal and step.token == choice.end:
            return _ENDED
        node = node.children[step.token]
