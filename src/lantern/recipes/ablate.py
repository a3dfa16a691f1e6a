"""Ablations of a finished run: receptive-field count t, stride, prompt contents, fusion method.

Each LLM variant is a small run directory (``RunDir.ablation``) that shares the run's vanilla
predictions and the run's response cache, so the variant equal to the run itself, and any field
two variants have in common, costs no request. Every variant is fused with every method and scored
on test; one table comes out as markdown and CSV.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lantern.fields import FieldSpec
from lantern.llm.config import Endpoint, LLMConfig
from lantern.recipes.config import Notify
from lantern.rundir import LLMSettings, RunDir, atomic_write_text

COLUMNS = (
    "variant",
    "t",
    "stride",
    "vad",
    "probs",
    "method",
    "accuracy",
    "weighted_f1",
    "fallback_rate",
    "requests_sent",
    "cache_hits",
)


def variants(base: LLMConfig, t_values: Sequence[int], strides: Sequence[int]) -> dict[str, LLMConfig]:
    """The LLM settings to compare, each changing one thing from ``base`` (the run's own)."""
    out = {"run": base}
    for t in t_values:
        out.setdefault(f"t={t}", replace(base, fields=FieldSpec(base.fields.stride, t)))
    for s in strides:
        out.setdefault(f"stride={s}", replace(base, fields=FieldSpec(s, base.fields.t)))
    out["no-vad"] = replace(base, prompt=replace(base.prompt, include_vad=False))
    out["no-probs"] = replace(base, prompt=replace(base.prompt, include_probs=False))
    unique: dict[tuple, str] = {}
    for name, config in list(out.items()):
        key = (config.fields, config.prompt.include_vad, config.prompt.include_probs)
        if key in unique:
            del out[name]
        else:
            unique[key] = name
    return out


def _prepare(seed_run: RunDir, work: RunDir) -> None:
    """A variant's run directory: the run's corpus record and vanilla predictions."""
    work.root.mkdir(parents=True, exist_ok=True)
    work.save({"corpus": seed_run.corpus_record(), "ablation_of": str(seed_run.root)})
    for split in ("dev", "test"):
        target = work.predictions(split)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seed_run.predictions(split), target)


def ablate(
    run_dir: str | Path,
    *,
    t_values: Sequence[int] = (1, 2, 3, 4),
    strides: Sequence[int] = (2, 4),
    methods: Sequence[str] | None = None,
    endpoint: Endpoint | None = None,
    notify: Notify | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every variant (LLM stage from the shared cache, fusion, test scores) and write the table.

    Returns ``rows`` (one per variant × method), ``markdown`` and the two file paths.
    """
    from lantern.evaluation import score_predictions
    from lantern.fusion import METHODS, fuse_run
    from lantern.llm.endpoint import endpoint as serving
    from lantern.llm.stage import run_llm_stage
    from lantern.training import read_vanilla_meta

    say = notify or (lambda _m: None)
    seed_run = RunDir(run_dir).first_seed_run()
    settings = LLMSettings.read(seed_run.llm.settings)
    base = replace(LLMConfig.as_prompted(settings, endpoint), cache_path=str(seed_run.llm.cache))
    names = list(methods or METHODS)
    classes = read_vanilla_meta(seed_run).labels.classes
    rows: list[dict[str, Any]] = []
    simulated = False
    with serving(base.endpoint, say, log_path=seed_run.llm.server_log) as resolved:
        for variant, config in variants(replace(base, endpoint=resolved), t_values, strides).items():
            work = seed_run.ablation(variant)
            _prepare(seed_run, work)
            say(
                f"[ablate] {variant}: LLM (t {config.fields.t}, stride {config.fields.stride}, "
                f"vad {config.prompt.include_vad}, probs {config.prompt.include_probs})"
            )
            stats = run_llm_stage(work.root, config, ["dev", "test"], progress=progress)
            simulated = simulated or LLMSettings.read(work.llm.settings).simulated
            fuse_run(work.root, names, seed=0)
            for method in names:
                report = score_predictions(work.method(method).predictions, classes)
                rows.append(
                    {
                        "variant": variant,
                        "t": config.fields.t,
                        "stride": config.fields.stride,
                        "vad": config.prompt.include_vad,
                        "probs": config.prompt.include_probs,
                        "method": method,
                        "accuracy": report["accuracy"],
                        "weighted_f1": report["weighted_f1"],
                        "fallback_rate": round(stats.fallback_rate, 4),
                        "requests_sent": stats.requests_sent,
                        "cache_hits": stats.cache_hits,
                    }
                )
    markdown = _markdown(rows, simulated=simulated)
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
    }


def _markdown(rows: list[dict[str, Any]], *, simulated: bool) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = "".join("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |\n" for r in rows)
    title = "# Ablations (test split)" + (" — simulated LLM" if simulated else "") + "\n\n"
    return title + head + body
