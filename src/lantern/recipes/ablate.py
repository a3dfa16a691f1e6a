"""Ablations of a finished run: receptive fields, prompt contents, answer format, dimensions, fusion.

Each variant is a small run directory (``RunDir.ablation``) changing one thing from the run:

- ``t=K`` / ``stride=S``: the receptive fields; ``no-vad`` / ``no-probs``: the references shown in
  the prompt; ``answer=F``: the answer format (probs, logprobs, digits);
- ``no-dimensions``: no valence/arousal/dominance anywhere — the vanilla model retrained with λ = 0
  (so its predictions carry no VAD and fusion sees none) and prompts without VAD;
- ``no-context``: fusion's attention without the past/future context embeddings (position b only).

Variants share the run's vanilla predictions (except ``no-dimensions``) and the run's response
cache, so the variant equal to the run itself, and any field two variants have in common, costs no
request. Every variant is fused with every method and scored on test; one table comes out as
markdown and CSV. That table is a report, not a way to choose: with ``select_on="dev"`` the variant
is chosen by the guarded attention's held-out likelihood over dialogue folds of the fusion training
split (dev), and only then is its test score quoted as the selected one.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lantern.errors import LanternError
from lantern.fields import FieldSpec
from lantern.llm.config import Endpoint, LLMConfig, recorded_endpoint
from lantern.llm.prompt import ANSWER_FORMATS
from lantern.recipes.config import Notify
from lantern.rundir import LLMSettings, RunDir, atomic_write_text, read_json

COLUMNS = (
    "variant",
    "t",
    "stride",
    "vad",
    "probs",
    "answer",
    "method",
    "accuracy",
    "weighted_f1",
    "dev_nll",
    "fallback_rate",
    "requests_sent",
    "cache_hits",
)
SELECT_ON = ("dev",)


@dataclass
class Variant:
    """One ablation: the LLM settings, fusion parameter overrides, and whether the vanilla model is
    retrained without VAD (λ = 0)."""

    name: str
    llm: LLMConfig
    fusion_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    no_dimensions: bool = False


def variants(
    base: LLMConfig,
    t_values: Sequence[int],
    strides: Sequence[int],
    answer_formats: Sequence[str] = ANSWER_FORMATS,
    *,
    dimensions: bool = True,
) -> list[Variant]:
    """The variants to compare, each changing one thing from ``base`` (the run's own settings);
    duplicates of the run itself are dropped."""
    out = [Variant("run", base)]
    out += [Variant(f"t={t}", replace(base, fields=FieldSpec(base.fields.stride, t))) for t in t_values]
    out += [Variant(f"stride={s}", replace(base, fields=FieldSpec(s, base.fields.t))) for s in strides]
    out.append(Variant("no-vad", replace(base, prompt=replace(base.prompt, include_vad=False))))
    out.append(Variant("no-probs", replace(base, prompt=replace(base.prompt, include_probs=False))))
    out += [
        Variant(f"answer={f}", replace(base, prompt=replace(base.prompt, answer_format=f)))
        for f in answer_formats
    ]
    out.append(Variant("no-context", base, {m: {"use_context": False} for m in _CONTEXT_METHODS}))
    if dimensions:
        no_vad = replace(base, prompt=replace(base.prompt, include_vad=False))
        out.append(Variant("no-dimensions", no_vad, no_dimensions=True))
    unique: dict[tuple, Variant] = {}
    for v in out:
        key = (v.llm.fields, repr(v.llm.prompt), repr(sorted(v.fusion_params.items())), v.no_dimensions)
        unique.setdefault(key, v)
    return list(unique.values())


_CONTEXT_METHODS = ("gated", "attention", "attention-unguarded", "attention-llm")


def _prepare(seed_run: RunDir, work: RunDir, variant: Variant, say: Notify) -> None:
    """A variant's run directory: the run's corpus record and vanilla predictions (retrained
    without VAD for ``no-dimensions``)."""
    work.root.mkdir(parents=True, exist_ok=True)
    work.save({"corpus": seed_run.corpus_record(), "ablation_of": str(seed_run.root)})
    if variant.no_dimensions:
        if work.vanilla.model.exists():
            return
        from lantern.train_config import TrainConfig
        from lantern.training import read_vanilla_meta, train_run

        meta = read_vanilla_meta(seed_run)
        # The recorded training section also holds facts about the run (where its preset came
        # from): only TrainConfig's own fields are settings to train with again.
        settings = {f.name for f in fields(TrainConfig)} - {"preset", "model", "progress"}
        recipe = {k: v for k, v in meta.training.items() if k in settings}
        say("[ablate] no-dimensions: retraining the vanilla model with lambda_vad = 0")
        train_run(
            seed_run.corpus_path(),
            work.root,
            meta.model,
            preset=meta.training.get("preset"),
            **{**recipe, "lambda_vad": 0.0, "progress": False},
        )
        return
    for split in ("dev", "test"):
        target = work.predictions(split)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seed_run.predictions(split), target)


def ablate(
    run_dir: str | Path,
    *,
    t_values: Sequence[int] = (1, 2, 3, 4),
    strides: Sequence[int] = (2, 4),
    answer_formats: Sequence[str] = ANSWER_FORMATS,
    dimensions: bool = True,
    methods: Sequence[str] | None = None,
    select_on: str | None = None,
    endpoint: Endpoint | None = None,
    notify: Notify | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every variant (LLM stage from the shared cache, fusion, test scores) and write the table.

    Returns ``rows`` (one per variant × method), ``markdown``, the two file paths, and with
    ``select_on="dev"`` the ``selected`` variant and its row.
    """
    from lantern.evaluation import score_predictions
    from lantern.fusion import METHODS, fuse_run
    from lantern.llm.endpoint import endpoint as serving
    from lantern.llm.stage import run_llm_stage
    from lantern.training import read_vanilla_meta

    if select_on is not None and select_on not in SELECT_ON:
        raise LanternError(
            f"ablations select on one of {', '.join(SELECT_ON)}, never on test; got {select_on!r}"
        )
    say = notify or (lambda _m: None)
    seed_run = RunDir(run_dir).first_seed_run()
    settings = LLMSettings.read(seed_run.llm.settings)
    if endpoint is None:
        # The run's own LLM, as annotate does: the variants are compared with the run's answers.
        endpoint = recorded_endpoint(settings, {}, str(seed_run.llm.settings))
    say(f"[ablate] LLM: {endpoint.describe()}")
    base = replace(LLMConfig.as_prompted(settings, endpoint), cache_path=str(seed_run.llm.cache))
    names = list(methods or METHODS)
    classes = read_vanilla_meta(seed_run).labels.classes
    rows: list[dict[str, Any]] = []
    simulated = False
    with serving(base.endpoint, say, log_path=seed_run.llm.server_log) as resolved:
        for variant in variants(
            replace(base, endpoint=resolved), t_values, strides, answer_formats, dimensions=dimensions
        ):
            config = variant.llm
            work = seed_run.ablation(variant.name)
            _prepare(seed_run, work, variant, say)
            say(
                f"[ablate] {variant.name}: LLM (t {config.fields.t}, stride {config.fields.stride}, "
                f"vad {config.prompt.include_vad}, probs {config.prompt.include_probs}, "
                f"answer {config.prompt.answer_format})"
            )
            stats = run_llm_stage(work.root, config, ["dev", "test"], progress=progress)
            simulated = simulated or LLMSettings.read(work.llm.settings).simulated
            fuse_run(work.root, names, seed=0, params=variant.fusion_params)
            for method in names:
                report = score_predictions(work.method(method).predictions, classes)
                rows.append(
                    {
                        "variant": variant.name,
                        "t": config.fields.t,
                        "stride": config.fields.stride,
                        "vad": config.prompt.include_vad and not variant.no_dimensions,
                        "probs": config.prompt.include_probs,
                        "answer": config.prompt.answer_format,
                        "method": method,
                        "accuracy": report["accuracy"],
                        "weighted_f1": report["weighted_f1"],
                        "dev_nll": _dev_nll(work, method),
                        "fallback_rate": round(stats.fallback_rate, 4),
                        "requests_sent": stats.requests_sent,
                        "cache_hits": stats.cache_hits,
                    }
                )
    selected = _select(rows) if select_on == "dev" else None
    markdown = _markdown(rows, simulated=simulated, selected=selected, select_on=select_on)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    markdown_path, csv_path = seed_run.ablation_table
    atomic_write_text(markdown_path, markdown)
    atomic_write_text(csv_path, buffer.getvalue())
    return {
        "rows": rows,
        "markdown": markdown,
        "markdown_path": str(markdown_path),
        "csv_path": str(csv_path),
        "selected": selected,
    }


def _dev_nll(work: RunDir, method: str) -> float | None:
    """The method's held-out NLL on the fusion training split (dev), from its selection record:
    the guarded value for Lantern's attention, the best cross-validated one for the other trained
    methods; None for the fixed methods."""
    files = work.method(method)
    if not files.config.exists():
        return None
    selection = read_json(files.config).get("selection") or {}
    if "guard" in selection:
        return selection["guard"]["nll_guarded"]
    cv = selection.get("cv") or []
    return min(row["nll"] for row in cv) if cv else None


def _select(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The variant whose guarded attention has the lowest held-out NLL on dev (test never looked at)."""
    candidates = [r for r in rows if r["method"] == "attention" and r["dev_nll"] is not None]
    return min(candidates, key=lambda r: r["dev_nll"]) if candidates else None


def _markdown(
    rows: list[dict[str, Any]], *, simulated: bool, selected: dict[str, Any] | None, select_on: str | None
) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = "".join("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |\n" for r in rows)
    title = "# Ablations (test split)" + (" — simulated LLM" if simulated else "") + "\n\n"
    note = (
        "The test columns are a report; choosing a variant from them would select on test. "
        "`dev_nll` is held-out likelihood over dialogue folds of the fusion training split.\n\n"
    )
    if selected is not None:
        note += (
            f"Selected on dev (lowest dev_nll of attention): **{selected['variant']}** "
            f"(t {selected['t']}, stride {selected['stride']}, answer {selected['answer']}): test accuracy "
            f"{selected['accuracy']}, weighted F1 {selected['weighted_f1']}.\n\n"
        )
    elif select_on is not None:
        note += (
            "Could not select on dev: the attention has no held-out likelihood (fewer than 2 dev "
            "dialogues to cross-validate over).\n\n"
        )
    return title + note + head + body
