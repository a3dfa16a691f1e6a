"""Synthetic vanilla predictions and LLM window answers for the fusion tests (seeded, in-process).

The vanilla model is right with probability ``vanilla_acc``; an LLM answer is right with a
probability given per (position b, offset r), so the tests can make one position reliable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lantern.labels import IEMOCAP6
from lantern.llm.answers import FALLBACK, OK, UtteranceAnswer, WindowAnswer, write_window_answers
from lantern.predictions import Prediction, write_predictions
from lantern.rundir import write_json

CLASSES = IEMOCAP6.classes


def _peaked(
    rng: np.random.Generator, gold: int, accuracy: float, confidence: float, n_classes: int
) -> list[float]:
    """A distribution with ``confidence`` on gold (probability ``accuracy``) or on a random other class."""
    wrong = [c for c in range(n_classes) if c != gold]
    top = gold if rng.random() < accuracy else int(rng.choice(wrong))
    noise = rng.dirichlet(np.ones(n_classes)) * (1 - confidence)
    probs = noise
    probs[top] += confidence
    return [float(x) for x in probs / probs.sum()]


def make_predictions(
    rng: np.random.Generator,
    split: str,
    *,
    n_dialogues: int,
    length: tuple[int, int] = (8, 20),
    vanilla_acc: float = 0.65,
    n_classes: int = len(CLASSES),
    with_vad: bool = True,
) -> list[Prediction]:
    out = []
    for di in range(n_dialogues):
        dialogue = f"{split}_d{di:03d}"
        for ui in range(int(rng.integers(length[0], length[1] + 1))):
            gold = int(rng.integers(n_classes))
            confidence = float(rng.uniform(0.3, 0.7))
            out.append(
                Prediction(
                    id=f"{dialogue}_u{ui:03d}",
                    dialogue=dialogue,
                    speaker="AB"[ui % 2],
                    split=split,
                    label=gold,
                    probs=_peaked(rng, gold, vanilla_acc, confidence, n_classes),
                    vad=[float(x) for x in rng.uniform(1, 5, size=3)] if with_vad else None,
                )
            )
    return out


def receptive_fields(n: int, t: int, stride: int) -> list[tuple[int, int, int]]:
    """(k, start, stop) for windows R_k = [k·s, k·s + t·s) ∩ [0, n), k = -(t-1) .. ceil(n/s)-1."""
    out = []
    for k in range(-(t - 1), -(-n // stride)):
        start, stop = max(0, k * stride), min(n, k * stride + t * stride)
        if start < stop:
            out.append((k, start, stop))
    return out


def make_answers(
    rng: np.random.Generator,
    predictions: list[Prediction],
    *,
    t: int = 3,
    stride: int = 4,
    accuracy: Callable[[int, int], float] = lambda b, r: 0.8,
    confidence: float = 0.8,
    fallback_rate: float = 0.0,
    useless: bool = False,
) -> list[WindowAnswer]:
    """One WindowAnswer per receptive field; ``accuracy(b, r)`` sets each answer's chance to be right.

    ``useless``: answers are random distributions unrelated to the gold label.
    """
    by_dialogue: dict[str, list[Prediction]] = {}
    for p in predictions:
        by_dialogue.setdefault(p.dialogue, []).append(p)
    windows = []
    for dialogue, utts in by_dialogue.items():
        for k, start, stop in receptive_fields(len(utts), t, stride):
            answers = []
            for i in range(start, stop):
                u = utts[i]
                b, r = i // stride - k, i - start
                if rng.random() < fallback_rate:
                    answers.append(UtteranceAnswer(u.id, b, r, list(u.probs), FALLBACK, "invalid json"))
                    continue
                if useless:
                    probs = [float(x) for x in rng.dirichlet(np.ones(len(u.probs)) * 0.3)]
                else:
                    probs = _peaked(rng, int(u.label), accuracy(b, r), confidence, len(u.probs))
                answers.append(UtteranceAnswer(u.id, b, r, probs, OK, None))
            windows.append(WindowAnswer(dialogue, start, stop, answers))
    return windows


def make_run(
    root: Path,
    *,
    seed: int = 0,
    n_dev: int = 20,
    n_test: int = 20,
    t: int = 3,
    stride: int = 4,
    model: str = "simulated-llm",
    **answer_kwargs,
) -> Path:
    """A single-seed run directory with vanilla predictions, LLM answers and stats (no fusion yet)."""
    rng = np.random.default_rng(seed)
    write_json(root / "vanilla" / "config.json", {"label_set": IEMOCAP6.to_json(), "seed": seed})
    for split, n in (("dev", n_dev), ("test", n_test)):
        preds = make_predictions(rng, split, n_dialogues=n)
        write_predictions(root / "vanilla" / f"predictions-{split}.jsonl", preds)
        answers = make_answers(rng, preds, t=t, stride=stride, **answer_kwargs)
        write_window_answers(root / "llm" / f"answers-{split}.jsonl", answers)
    write_json(
        root / "llm" / "stats.json",
        {
            "requests_sent": 120,
            "cache_hits": 3,
            "retries": 1,
            "fallbacks": {"invalid json": 2},
            "fallback_rate": 0.01,
            "prompt_tokens": 50000,
            "completion_tokens": 9000,
            "cost_usd": 0.0,
            "wall_seconds": 12.5,
            "model": model,
            "stride": stride,
            "t": t,
        },
    )
    write_json(
        root / "run.json",
        {
            "lantern_version": "0.1.0",
            "config": {
                "llm": {"model": model, "api_key": "sk-secret-value", "base_urls": ["http://127.0.0.1:9/v1"]}
            },
            "stages": {},
        },
    )
    return root
