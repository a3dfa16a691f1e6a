"""Ablations of a finished run: receptive-field count t, stride, prompt contents, fusion method.

Each LLM variant is a small run directory under ``RUN_DIR/ablations/<variant>/`` that shares the
run's vanilla predictions and the run's response cache, so the variant equal to the run itself, and
any window two variants have in common, costs no request. Every variant is fused with every method
and scored on test; one table comes out as markdown and CSV.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lantern.annotate import resolve_seed_run, run_llm_config, with_run_prompting
from lantern.evaluation import SIMULATED_MODEL
from lantern.llm.config import LLMConfig
from lantern.metrics import classification_report
from lantern.predictions import read_predictions
from lantern.rundir import RunDir, atomic_write_text, read_json

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
        out.setdefault(f"t={t}", replace(base, t=t))
    for s in strides:
        out.setdefault(f"stride={s}", replace(base, stride=s))
    out["no-vad"] = replace(base, include_vad=False)
    out["no-probs"] = replace(base, include_probs=False)
    unique: dict[tuple, str] = {}
    for name, config in list(out.items()):
        key = (config.t, config.stride, config.include_vad, config.include_probs)
        if key in unique:
            del out[name]
        else:
            unique[key] = name
    return out


def _prepare(seed_run: RunDir, work: RunDir) -> None:
    """A variant's run directory: the run's corpus record, vanilla predictions and shared cache."""
    record = seed_run.load()
    if "corpus" not in record:
        raise FileNotFoundError(f"{seed_run.root / 'run.json'}: the run records no corpus")
    work.root.mkdir(parents=True, exist_ok=True)
    work.save({"corpus": record["corpus"], "ablation_of": str(seed_run.root)})
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
    llm: LLMConfig | None = None,
    notify: Callable[[str], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every variant (LLM stage from the shared cache, fusion, test scores) and write the table.

    Returns ``rows`` (one per variant × method), ``markdown`` and the two file paths.
    """
    from lantern.fusion import METHODS, fuse_run
    from lantern.llm.stage import run_llm_stage
    from lantern.pipeline import local_endpoint

    say = notify or (lambda _m: None)
    seed_run = resolve_seed_run(run_dir)
    base = run_llm_config(seed_run)
    if llm is not None:
        base = with_run_prompting(llm, base)
    base = replace(base, cache_path=str(seed_run.llm / "cache.sqlite"))
    names = list(methods or METHODS)
    labels = read_json(seed_run.vanilla / "config.json")["label_set"]["classes"]
    rows: list[dict[str, Any]] = []
    simulated = False
    with local_endpoint(base, say) as endpoint:
        for variant, config in variants(endpoint, t_values, strides).items():
            work = RunDir(seed_run.root / "ablations" / variant.replace("=", "-"))
            _prepare(seed_run, work)
            say(
                f"[ablate] {variant}: LLM (t {config.t}, stride {config.stride}, "
                f"vad {config.include_vad}, probs {config.include_probs})"
            )
            stats = run_llm_stage(work.root, config, ["dev", "test"], progress=progress)
            simulated = simulated or _simulated(stats)
            fuse_run(work.root, names, seed=0)
            for method in names:
                preds = read_predictions(work.fusion / method / "predictions-test.jsonl")
                scored = [p for p in preds if p.label is not None]
                report = classification_report(
                    [p.label for p in scored],
                    [max(range(len(p.probs)), key=p.probs.__getitem__) for p in scored],
                    labels,
                )
                rows.append(
                    {
                        "variant": variant,
                        "t": config.t,
                        "stride": config.stride,
                        "vad": config.include_vad,
                        "probs": config.include_probs,
                        "method": method,
                        "accuracy": report["accuracy"],
                        "weighted_f1": report["weighted_f1"],
                        "fallback_rate": round(stats["fallback_rate"], 4),
                        "requests_sent": stats["requests_sent"],
                        "cache_hits": stats["cache_hits"],
                    }
                )
    out_dir = seed_run.root / "ablations"
    markdown = _markdown(rows, simulated=simulated)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "ablation.md", markdown)
    atomic_write_text(out_dir / "ablation.csv", buffer.getvalue())
    return {
        "rows": rows,
        "markdown": markdown,
        "markdown_path": str(out_dir / "ablation.md"),
        "csv_path": str(out_dir / "ablation.csv"),
    }


def _simulated(stats: dict[str, Any]) -> bool:
    """Whether an LLM stage's answers came from the simulation server (configured or as served)."""
    return SIMULATED_MODEL in {stats.get("model"), *(stats.get("served_models") or {})}


def _markdown(rows: list[dict[str, Any]], *, simulated: bool) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = "".join("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |\n" for r in rows)
    title = "# Ablations (test split)" + (" — simulated LLM" if simulated else "") + "\n\n"
    return title + head + body
