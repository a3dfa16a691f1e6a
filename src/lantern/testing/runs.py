"""Small corpora and run directories made to order, for the tests and the benches.

Everything is seeded and synthetic (labelled so): :func:`make_corpus` builds dialogues with
zero or class-structured features; :func:`make_run` saves a corpus and writes the vanilla stage's
outputs as if a model had been trained (predictions of a chosen accuracy); :func:`write_answers`
writes an LLM stage's outputs as if an LLM of a chosen accuracy per position had answered, with the
settings record fusion checks them against. No network, no model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lantern.answers import FALLBACK, OK, FieldAnswer, UtteranceAnswer, write_field_answers
from lantern.corpus.dialogue import Corpus, Dialogue, Utterance
from lantern.corpus.native import CORPUS_JSON, corpus_fingerprint, save_corpus
from lantern.fields import FieldSpec
from lantern.labels import IEMOCAP6, LabelSet
from lantern.predictions import Prediction, read_predictions, write_predictions
from lantern.rundir import SIMULATED_MODEL, LLMSettings, LLMStats, RunDir, SplitStats, file_hash, write_json
from lantern.training import CheckpointMeta

SPEAKERS = "AB"


def dialogue_sizes(
    counts: dict[str, int], lengths: tuple[int, int] = (4, 12), seed: int = 0
) -> list[tuple[str, int]]:
    """``[(split, n_utterances)]``: ``counts[split]`` dialogues per split, lengths drawn in ``lengths``
    (inclusive)."""
    rng = np.random.default_rng(seed)
    return [
        (split, int(rng.integers(lengths[0], lengths[1] + 1)))
        for split, n in counts.items()
        for _ in range(n)
    ]


def make_corpus(
    dialogues: Sequence[tuple[str, int]],
    *,
    labels: LabelSet = IEMOCAP6,
    priors: Sequence[float] | None = None,
    widths: dict[str, int] | None = None,
    noise: float | None = None,
    vad_means: Sequence[Sequence[float]] | None = None,
    texts: dict[str, str] | None = None,
    seed: int = 0,
    name: str = "synthetic",
) -> Corpus:
    """A corpus of the given ``[(split, n_utterances)]`` dialogues (ids ``d<j>``, utterances
    ``d<j>_u<i>``, speakers alternating A/B).

    Labels are drawn from ``priors`` (uniform by default). With ``noise`` the features are learnable:
    each class has a random prototype per modality and an utterance's vector is its class's
    prototype plus Gaussian noise; without, they are zeros. With ``vad_means`` (one triple per
    class) an utterance's VAD is its class's mean plus noise, clipped to 1-5. ``texts`` overrides
    transcripts by utterance id.
    """
    widths = dict(widths or {"t": 2})
    rng = np.random.default_rng(seed)
    n_classes = len(labels)
    p = np.full(n_classes, 1.0 / n_classes) if priors is None else np.asarray(priors, dtype=float)
    prototypes = {m: rng.normal(0, 1, size=(n_classes, w)).astype(np.float32) for m, w in widths.items()}
    out = []
    for j, (split, n) in enumerate(dialogues):
        did = f"d{j}"
        gold = rng.choice(n_classes, size=n, p=p / p.sum())
        utterances = []
        for i, y in enumerate(gold):
            uid = f"{did}_u{i}"
            vad = None
            if vad_means is not None:
                v = np.clip(np.asarray(vad_means[y]) + rng.normal(0, 0.3, 3), 1.0, 5.0)
                vad = (float(v[0]), float(v[1]), float(v[2]))
            text = (texts or {}).get(uid, f"turn {i} of dialogue {j}")
            utterances.append(Utterance(uid, SPEAKERS[i % len(SPEAKERS)], text, int(y), vad))
        features = {
            m: (
                (prototypes[m][gold] + rng.normal(0, noise, size=(n, w))).astype(np.float32)
                if noise is not None
                else np.zeros((n, w), np.float32)
            )
            for m, w in widths.items()
        }
        out.append(Dialogue(did, split, utterances, features))
    return Corpus(name, labels, out, widths)


def gold_file(corpus: Corpus, path: Path) -> Path:
    """Every utterance's gold label in dialogue order, as a predictions file with uniform
    probabilities: what the simulation server answers from."""
    n = len(corpus.labels)
    write_predictions(
        path,
        [
            Prediction(u.id, d.id, u.speaker, d.split, u.label, [1.0 / n] * n)
            for d in corpus.dialogues
            for u in d.utterances
        ],
    )
    return path


def vanilla_predictions(
    corpus: Corpus, split: str, *, accuracy: float = 0.65, seed: int = 0, vad: bool = True
) -> list[Prediction]:
    """Predictions of a pretend vanilla model: top class right with probability ``accuracy``, the
    rest of the mass spread at random; VAD uniform in 1-5 when ``vad``."""
    rng = np.random.default_rng([seed, *split.encode()])
    n_classes = len(corpus.labels)
    out = []
    for d in corpus.split(split):
        for u in d.utterances:
            gold = u.label if u.label is not None else int(rng.integers(n_classes))
            out.append(
                Prediction(
                    id=u.id,
                    dialogue=d.id,
                    speaker=u.speaker,
                    split=split,
                    label=u.label,
                    probs=peaked(rng, gold, accuracy, float(rng.uniform(0.3, 0.7)), n_classes),
                    vad=[float(x) for x in rng.uniform(1, 5, size=3)] if vad else None,
                )
            )
    return out


def peaked(
    rng: np.random.Generator, gold: int, accuracy: float, confidence: float, n_classes: int
) -> list[float]:
    """A distribution with ``confidence`` on gold (probability ``accuracy``) or on a random other class,
    the rest spread at random."""
    top = gold
    if n_classes > 1 and rng.random() >= accuracy:
        top = int(rng.choice([c for c in range(n_classes) if c != gold]))
    probs = rng.dirichlet(np.ones(n_classes)) * (1 - confidence)
    probs[top] += confidence
    return [float(x) for x in probs / probs.sum()]


def make_run(
    root: Path,
    corpus: Corpus,
    *,
    accuracy: float = 0.65,
    seed: int = 0,
    vad: bool = True,
    crossfit: bool = False,
    run_dir: Path | None = None,
) -> RunDir:
    """``root/corpus`` (the saved corpus) and a single-seed run recording it (``run_dir``, by
    default ``root/run``), with a vanilla config and pretend predictions for every split the corpus
    has (and cross-fitted train predictions when ``crossfit``)."""
    corpus_dir = root / "corpus"
    if not (corpus_dir / CORPUS_JSON).exists():
        save_corpus(corpus, corpus_dir)
    run = RunDir(run_dir or root / "run")
    run.set_corpus(corpus_dir, corpus_fingerprint(corpus_dir))
    meta = CheckpointMeta(
        model="corect",
        model_config={},
        labels=corpus.labels,
        modalities=dict(corpus.modalities),
        speaker_vocab={s: i for i, s in enumerate(SPEAKERS)},
        vad_trained=vad,
        seed=seed,
    )
    write_json(run.vanilla.config, meta.to_json())
    for split in ("train", "dev", "test"):
        if corpus.split(split):
            write_predictions(
                run.predictions(split),
                vanilla_predictions(corpus, split, accuracy=accuracy, seed=seed, vad=vad),
            )
    if crossfit and corpus.split("train"):
        write_predictions(
            run.vanilla.crossfit_predictions,
            vanilla_predictions(corpus, "train", accuracy=accuracy, seed=seed + 1000, vad=vad),
        )
    return run


def synthetic_answers(
    predictions: Sequence[Prediction],
    *,
    spec: FieldSpec,
    accuracy: Callable[[int, int], float] = lambda b, r: 0.8,
    confidence: float = 0.8,
    fallback_rate: float = 0.0,
    useless: bool = False,
    rng: np.random.Generator,
) -> list[FieldAnswer]:
    """One answer per field of each dialogue of ``predictions`` (in file order), as an LLM of the
    given ``accuracy(b, r)`` would give; see :func:`write_answers`."""
    by_dialogue: dict[str, list[Prediction]] = {}
    for p in predictions:
        by_dialogue.setdefault(p.dialogue, []).append(p)
    answers = []
    for dialogue, preds in by_dialogue.items():
        for f in spec.fields(len(preds)):
            utterances = []
            for i in range(f.start, f.stop):
                u, m = preds[i], spec.position(i, f)
                if rng.random() < fallback_rate:
                    utterances.append(
                        UtteranceAnswer(u.id, m.b, m.r, list(u.probs), FALLBACK, "invalid json")
                    )
                    continue
                if useless or u.label is None:
                    probs = [float(x) for x in rng.dirichlet(np.ones(len(u.probs)) * 0.3)]
                else:
                    probs = peaked(rng, u.label, accuracy(m.b, m.r), confidence, len(u.probs))
                utterances.append(UtteranceAnswer(u.id, m.b, m.r, probs, OK, None))
            answers.append(FieldAnswer(dialogue, f.start, f.stop, utterances))
    return answers


def write_answers(
    run: RunDir,
    splits: Sequence[str] = ("dev", "test"),
    *,
    spec: FieldSpec | None = None,
    accuracy: Callable[[int, int], float] = lambda b, r: 0.8,
    confidence: float = 0.8,
    fallback_rate: float = 0.0,
    useless: bool = False,
    model: str = SIMULATED_MODEL,
    seed: int = 0,
) -> None:
    """Pretend LLM answers for every field of ``splits`` (``train``: from the cross-fitted
    predictions), with the settings and stats records of a finished LLM stage.

    ``accuracy(b, r)`` gives each answer's chance to put ``confidence`` on the gold class; ``useless``
    answers are random distributions unrelated to it; ``fallback_rate`` of utterance answers fall
    back to vanilla.
    """
    spec = spec or FieldSpec()
    rng = np.random.default_rng(seed)
    settings = LLMSettings(
        model=model,
        server_kind="openai",
        response_format="json_schema",
        stride=spec.stride,
        t=spec.t,
        template="erc-v1",
        template_version="erc-v1@synthetic",
        answer_format="digits",
        include_probs=True,
        include_vad=True,
        served_models={model: 1},
    )
    stats = LLMStats()
    for split in splits:
        source = run.prompted_predictions(split)
        answers = synthetic_answers(
            read_predictions(source),
            spec=spec,
            accuracy=accuracy,
            confidence=confidence,
            fallback_rate=fallback_rate,
            useless=useless,
            rng=rng,
        )
        fallbacks = sum(u.status == FALLBACK for a in answers for u in a.utterances)
        write_field_answers(run.answers(split), answers)
        settings.splits[split] = {"predictions": file_hash(source), "answers": file_hash(run.answers(split))}
        n = sum(len(a.utterances) for a in answers)
        stats.splits[split] = SplitStats(
            fields=len(answers),
            unique_requests=len(answers),
            utterance_answers=n,
            fallbacks={"invalid json": fallbacks} if fallbacks else {},
        )
    stats.requests_sent = stats.unique_requests
    write_json(run.llm.settings, settings.to_json())
    write_json(run.llm.stats, stats.to_json())
