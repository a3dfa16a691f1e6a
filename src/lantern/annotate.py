"""The practitioner's path: emotions for new, unlabelled dialogues through a trained run.

Transcribed dialogues (speaker + text per utterance, JSONL) get text features computed offline, go
through the run's vanilla model, the LLM over the same receptive fields the run used, and the run's
trained fusion; out comes, per utterance, the emotion, its probabilities, VAD, and the windows that
contributed with their weights. Everything intermediate is kept in
``RUN_DIR/annotations/<input>-<hash>/`` (a small run directory of its own), so re-annotating the
same file re-uses the LLM's cached answers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lantern.corpus.dialogue import Corpus
from lantern.fields import memberships
from lantern.llm.answers import WindowAnswer, read_window_answers
from lantern.llm.config import LLMConfig
from lantern.predictions import Prediction, write_predictions
from lantern.rundir import RunDir, atomic_write_text, read_json

SPLIT = "test"


def resolve_seed_run(run_dir: str | Path) -> RunDir:
    """A single-seed run inside ``run_dir``: itself, or its first ``seed-*`` directory (pipeline runs)."""
    root = Path(run_dir)
    if (root / "vanilla").is_dir():
        return RunDir(root)
    seeds = sorted(p for p in root.glob("seed-*") if (p / "vanilla").is_dir())
    if not seeds:
        raise FileNotFoundError(f"{root}: no trained model here (neither vanilla/ nor seed-*/vanilla/)")
    return RunDir(seeds[0])


def run_llm_config(seed_run: RunDir) -> LLMConfig:
    """The LLM settings a run was prompted with, so new dialogues see the same kind of prompts."""
    stats_path = seed_run.llm / "stats.json"
    if not stats_path.exists():
        raise FileNotFoundError(f"{stats_path}: the run has no LLM stage yet (run `lantern prompt` first)")
    stats = read_json(stats_path)
    settings = stats.get("config", {})
    config = LLMConfig(stride=int(stats["stride"]), t=int(stats["t"]))
    for name in ("include_probs", "include_vad", "template", "server_kind", "response_format"):
        if settings.get(name) is not None:
            setattr(config, name, settings[name])
    return config


def with_run_prompting(endpoint: LLMConfig, run_settings: LLMConfig) -> LLMConfig:
    """``endpoint`` asked the way the run asked: same receptive fields, same prompt contents."""
    return replace(
        endpoint,
        stride=run_settings.stride,
        t=run_settings.t,
        include_probs=run_settings.include_probs,
        include_vad=run_settings.include_vad,
        template=run_settings.template,
    )


def _input_corpus(path: Path, labels) -> Corpus:
    """The input dialogues as a corpus in the run's label set (labels, when given, are checked)."""
    from lantern.corpus.jsonl import read_jsonl

    corpus = read_jsonl(path, labels=None, default_split=SPLIT, text_features=True)
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
    llm: LLMConfig | None = None,
    notify: Callable[[str], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Annotate the dialogues of ``input_path``; write one JSON object per utterance to ``out_path``.

    ``llm`` names another endpoint (its stride/t/prompt settings are replaced by the run's); by
    default the embedded local model answers. Returns counts: dialogues, utterances, fallbacks.
    """
    from lantern.corpus.native import corpus_fingerprint, save_corpus
    from lantern.fusion import FusionMethod, build_inputs
    from lantern.llm.stage import run_llm_stage
    from lantern.training import load_checkpoint, predict

    say = notify or (lambda _m: None)
    seed_run = resolve_seed_run(run_dir)
    fusion_dir = seed_run.fusion / method
    if not (fusion_dir / "config.json").exists():
        raise FileNotFoundError(f"{fusion_dir}: fusion method {method!r} was not fitted in this run")
    fusion = FusionMethod.load(fusion_dir)
    model, meta = load_checkpoint(seed_run.vanilla)
    input_path = Path(input_path)
    corpus = _input_corpus(input_path, meta.labels)
    missing = sorted(set(meta.modalities) - set(corpus.modalities))
    if missing or any(corpus.modalities[m] != w for m, w in meta.modalities.items()):
        raise ValueError(
            f"{input_path}: the run's model reads modalities {meta.modalities}, transcripts give "
            f"{corpus.modalities}; annotate needs a text-only model trained on MiniLM text features "
            "(a corpus made with --text-features minilm, trained with --modalities t)"
        )
    digest = hashlib.sha256(input_path.read_bytes()).hexdigest()[:10]
    work = RunDir(seed_run.root / "annotations" / f"{input_path.stem}-{digest}")
    corpus_dir = work.root / "corpus"
    save_corpus(corpus, corpus_dir, overwrite=True)
    work.set_corpus(corpus_dir, corpus_fingerprint(corpus_dir))
    say(f"[annotate] {len(corpus)} dialogues, {corpus.n_utterances} utterances: vanilla model")
    predictions = predict(model, meta, corpus.dialogues)
    write_predictions(work.predictions(SPLIT), predictions)

    settings = run_llm_config(seed_run)
    config = settings if llm is None else with_run_prompting(llm, settings)
    say(f"[annotate] LLM over receptive fields (stride {config.stride}, t {config.t})")
    stats = run_llm_stage(work.root, config, [SPLIT], progress=progress)
    windows = read_window_answers(work.answers(SPLIT))
    inputs = build_inputs(predictions, windows, config.t)
    fused, weights = fusion.predict_proba(inputs), fusion.weights(inputs)

    records = _records(corpus, predictions, windows, fused, weights, meta.labels.classes, config)
    atomic_write_text(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return {
        "dialogues": len(corpus),
        "utterances": len(records),
        "method": method,
        "llm_model": stats.get("model"),
        "llm_fallbacks": stats.get("fallbacks", {}),
        "out": str(out_path),
        "work_dir": str(work.root),
    }


def _records(
    corpus: Corpus,
    predictions: list[Prediction],
    windows: list[WindowAnswer],
    fused,
    weights,
    classes: tuple[str, ...],
    config: LLMConfig,
) -> list[dict[str, Any]]:
    """One output object per utterance, in input order."""
    by_window = {(w.dialogue, w.start, w.stop): w for w in windows}
    text = {u.id: u.text for d in corpus.dialogues for u in d.utterances}
    position = {u.id: i for d in corpus.dialogues for i, u in enumerate(d.utterances)}
    n_of = {d.id: len(d) for d in corpus.dialogues}
    out = []
    for row, p in enumerate(predictions):
        i = position[p.id]
        contributed = []
        for m in memberships(i, config.stride, config.t):
            start = max(0, m.k * config.stride)
            stop = min(n_of[p.dialogue], m.k * config.stride + config.t * config.stride)
            answer = next(u for u in by_window[(p.dialogue, start, stop)].utterances if u.id == p.id)
            contributed.append(
                {
                    "start": start,
                    "stop": stop,
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
                else dict(
                    zip(("valence", "arousal", "dominance"), [round(v, 2) for v in p.vad], strict=True)
                ),
                "vanilla": {
                    "emotion": classes[max(range(len(p.probs)), key=p.probs.__getitem__)],
                    "weight": round(float(weights[row, -1]), 4),
                },
                "windows": contributed,
            }
        )
    return out
