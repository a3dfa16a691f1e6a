"""The practitioner's path: emotions for new, unlabelled dialogues through a trained run.

Transcribed dialogues (speaker + text per utterance, JSONL) get text features computed offline, go
through the run's vanilla model, the LLM over the same receptive fields the run used, and the run's
trained fusion; out comes, per utterance, the emotion, its probabilities, VAD, and the fields that
contributed with their weights. Everything intermediate is kept in a small run directory of its own
(``RunDir.annotation``), so re-annotating the same file re-uses the LLM's cached answers.

The LLM is the one the run was prompted with — the URL and model recorded in its LLM settings (the
key again from the environment variable recorded by name), or the same embedded GGUF and backend —
since the run's fusion was trained on that LLM's answers. The user may point at the same model
elsewhere or change limits and budget, but naming another LLM is refused
(:func:`lantern.llm.config.recorded_endpoint`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lantern.answers import FieldAnswer, read_field_answers
from lantern.corpus.dialogue import Corpus
from lantern.errors import LanternError
from lantern.fields import FieldSpec
from lantern.labels import LabelSet
from lantern.llm.config import LLMConfig, recorded_endpoint
from lantern.llm.redact import public_url
from lantern.models.batch import VAD_NAMES
from lantern.predictions import Prediction, write_predictions
from lantern.recipes.config import Notify
from lantern.rundir import LLMSettings, RunDir, atomic_write_text

SPLIT = "test"


def _input_corpus(path: Path, labels: LabelSet, text_source: str | None, progress: bool) -> Corpus:
    """The input dialogues as a corpus in the run's label set (labels, when given, are checked),
    their text embedded by the encoder that made the run's training text features."""
    from lantern.corpus.jsonl import read_jsonl
    from lantern.corpus.text_features import MINILM, text_encoder

    encoder = text_encoder(text_source or MINILM)
    corpus = read_jsonl(
        path, labels=None, default_split=SPLIT, text_features=True, text_encoder=encoder, progress=progress
    )
    for d in corpus.dialogues:
        d.split = SPLIT
        for u in d.utterances:
            if u.label is not None:
                u.label = labels.index(corpus.labels.classes[u.label])
    corpus.labels = labels
    return corpus


def annotate(
    run_dir: str | Path,
    input_path: str | Path,
    out_path: str | Path,
    *,
    method: str = "attention",
    endpoint_overrides: dict[str, Any] | None = None,
    max_fallback_rate: float | None = None,
    allow_fallbacks: bool = False,
    notify: Notify | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Annotate the dialogues of ``input_path``; write one JSON object per utterance to ``out_path``.

    The run's LLM answers (the fields and prompt are the run's too); ``endpoint_overrides`` are the
    Endpoint fields the user gave (``base_urls=[]`` for ``--local``), refused when they name another
    LLM; ``max_fallback_rate`` (default: LLMConfig's) and ``allow_fallbacks`` as for the LLM stage.
    Returns counts: dialogues, utterances, fallbacks, and which LLM answered.
    """
    from lantern.corpus.native import corpus_fingerprint, load_corpus, save_corpus
    from lantern.fusion import FusionMethod, build_inputs
    from lantern.llm.stage import run_llm_stage, stage_price
    from lantern.training import load_checkpoint, predict

    say = notify or (lambda _m: None)
    seed_run = RunDir(run_dir).first_seed_run()
    files = seed_run.method(method)
    if not files.config.exists():
        raise FileNotFoundError(f"{files.dir}: fusion method {method!r} was not fitted in this run")
    settings = LLMSettings.read(seed_run.llm.settings)
    endpoint = recorded_endpoint(settings, endpoint_overrides or {}, str(seed_run.llm.settings))
    stage_price(endpoint)  # a budget without a price: refused before any work
    say(f"[annotate] LLM: {endpoint.describe()}")
    if settings.base_urls and [public_url(u) for u in endpoint.base_urls] != settings.base_urls:
        say(f"[annotate] (the run was prompted with the same model at {', '.join(settings.base_urls)})")
    fusion = FusionMethod.load(files.dir)
    model, meta = load_checkpoint(seed_run.vanilla.dir)
    input_path = Path(input_path)
    training_corpus = load_corpus(seed_run.corpus_path())
    corpus = _input_corpus(input_path, meta.labels, training_corpus.feature_sources.get("t"), progress)
    missing = sorted(set(meta.modalities) - set(corpus.modalities))
    if missing or any(corpus.modalities[m] != w for m, w in meta.modalities.items()):
        raise LanternError(
            f"{input_path}: the run's model reads modalities {meta.modalities}, transcripts give "
            f"{corpus.modalities}; annotate needs a text-only model trained on computed text features "
            "(a corpus made with --text-features minilm or st:MODEL, trained with --modalities t)"
        )
    digest = hashlib.sha256(input_path.read_bytes()).hexdigest()[:10]
    work = seed_run.annotation(f"{input_path.stem}-{digest}")
    save_corpus(corpus, work.corpus_dir, overwrite=True)
    work.set_corpus(work.corpus_dir, corpus_fingerprint(work.corpus_dir))
    say(f"[annotate] {len(corpus)} dialogues, {corpus.n_utterances} utterances: vanilla model")
    predictions = predict(model, meta, corpus.dialogues)
    write_predictions(work.predictions(SPLIT), predictions)

    config = replace(LLMConfig.as_prompted(settings, endpoint), allow_fallbacks=allow_fallbacks)
    if max_fallback_rate is not None:
        config = replace(config, max_fallback_rate=max_fallback_rate)
    say(f"[annotate] LLM over receptive fields (stride {config.fields.stride}, t {config.fields.t})")
    stats = run_llm_stage(work.root, config, [SPLIT], progress=progress, notify=say)
    answers = read_field_answers(work.answers(SPLIT))
    inputs = build_inputs(predictions, answers, config.fields.t)
    fused, weights = fusion.predict_proba(inputs), fusion.weights(inputs)

    records = _records(corpus, predictions, answers, fused, weights, meta.labels.classes, config.fields)
    atomic_write_text(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    answered = LLMSettings.read(work.llm.settings)
    return {
        "dialogues": len(corpus),
        "utterances": len(records),
        "method": method,
        "llm": answered.describe_llm(),
        "llm_model": answered.model,
        "llm_fallbacks": stats.fallbacks,
        "out": str(out_path),
        "work_dir": str(work.root),
    }


def _records(
    corpus: Corpus,
    predictions: list[Prediction],
    answers: list[FieldAnswer],
    fused: np.ndarray,
    weights: np.ndarray,
    classes: tuple[str, ...],
    spec: FieldSpec,
) -> list[dict[str, Any]]:
    """One output object per utterance, in input order."""
    by_field = {(a.dialogue, a.start, a.stop): a for a in answers}
    text = {u.id: u.text for d in corpus.dialogues for u in d.utterances}
    position = {u.id: i for d in corpus.dialogues for i, u in enumerate(d.utterances)}
    n_of = {d.id: len(d) for d in corpus.dialogues}
    out = []
    for row, p in enumerate(predictions):
        contributed = []
        for m in spec.memberships(position[p.id], n_of[p.dialogue]):
            answer = next(u for u in by_field[(p.dialogue, m.start, m.stop)].utterances if u.id == p.id)
            contributed.append(
                {
                    "start": m.start,
                    "stop": m.stop,
                    "b": m.b,
                    "weight": round(float(weights[row, m.b]), 4),
                    "status": answer.status,
                    "reason": answer.reason,
                }
            )
        probs = fused[row]
        out.append(
            {
                "id": p.id,
                "dialogue": p.dialogue,
                "speaker": p.speaker,
                "text": text[p.id],
                "emotion": classes[int(probs.argmax())],
                "probs": {c: round(float(x), 4) for c, x in zip(classes, probs, strict=True)},
                "vad": None
                if p.vad is None
                else dict(zip(VAD_NAMES, [round(v, 2) for v in p.vad], strict=True)),
                "vanilla": {
                    "emotion": classes[int(np.argmax(p.probs))],
                    "weight": round(float(weights[row, -1]), 4),
                },
                "fields": contributed,
            }
        )
    return out
