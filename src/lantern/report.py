"""The run report: one self-contained HTML page (RUN_DIR/report/index.html) and its PNGs beside it.

The page opens from disk with no network: plots are embedded as base64 data URIs, the CSS is
inline, there is no script. It says first what the numbers rest on — the corpus (synthetic or
which real one), the LLM that answered (with a plain warning for the simulation server or a tiny
model), the stages the run has and lacks, what each method does — then the results (accuracy,
weighted and macro F1, Δ vs vanilla with its bootstrap interval), a per-class table with support,
confusion matrices, example test utterances with every field's answer and the weight fusion gave
it, the attention weight by receptive-field position, a reliability diagram, the training curve,
the quality of the LLM's answers (so a toy model's empty answers show even at a 0 % fallback
rate), its cost, the timings, and the run configuration (secrets removed).

A run with only some stages gets a report of what is there. Plots use matplotlib's Agg canvas
directly (no pyplot, so no global backend state).
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lantern.answers import OK, UtteranceAnswer, read_field_answers
from lantern.corpus.native import CORPUS_JSON
from lantern.evaluation import EVAL_FORMAT, METRICS, SCORES, VANILLA, evaluate_run, run_corpus
from lantern.fusion.inputs import build_inputs
from lantern.fusion.methods import FusionMethod, UnguardedAttentionWeighting
from lantern.llm.local import LOCAL_MODEL_NAME, SERVER_KINDS
from lantern.llm.redact import scrub
from lantern.predictions import Prediction, read_predictions
from lantern.report_plots import (
    attention_plot,
    confusion_plot,
    per_class_mean,
    per_class_plot,
    png,
    reliability_plot,
    results_plot,
    training_plot,
)
from lantern.rundir import (
    SIMULATED_MODEL,
    LLMSettings,
    LLMStats,
    RunDir,
    atomic_write_bytes,
    atomic_write_text,
    read_json,
)

_SECRET_KEY = re.compile(
    r"(api[_-]?key|secret|password|passwd|authorization|bearer|credential|(^|_)token$)", re.I
)
_REDACTED = "<redacted>"

# What a reader of the report needs to know of each method (fusion.methods has the detail).
METHOD_DEFINITIONS = {
    "vanilla": "the multimodal model alone (CORECT or SDT, trained here); every other row is compared "
    "with it.",
    "uniform": "LLM only: the plain mean of the t answers the LLM gave the utterance, one per receptive "
    "field holding it; the vanilla model is not used (except where an answer fell back to it).",
    "single": "LLM only, one field: the answer from the field where the utterance has the most past "
    "context (position b = t−1).",
    "position": "a learned weight per receptive-field position, the same for every utterance, over the t "
    "LLM answers.",
    "gated": "attention over the t LLM answers, mixed with the vanilla distribution by a learned "
    "per-utterance gate.",
    "attention": "Lantern: learned additive attention over the t LLM answers and the vanilla distribution, "
    "per utterance; kept only where it beats vanilla on held-out dev folds (the vanilla guard), "
    "else vanilla.",
    "attention-unguarded": "Lantern's attention without the vanilla guard.",
    "attention-llm": "the paper's literal merge: attention over the t LLM answers only, without the "
    "vanilla distribution as a candidate.",
}
# Fusion methods whose per-utterance weights the examples show, besides the one compared with vanilla.
_UNGUARDED = UnguardedAttentionWeighting.name
# A model size in its name: "135M", "0.5B", "8b".
_SIZE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)([mb])(?![a-z])", re.I)
# Below this many parameters an LLM is a toy for this task: it cannot be expected to know emotions.
TOY_PARAMETERS = 1e9
# How many test utterances the examples show of each kind (fixed by fusion, broken by it).
N_EXAMPLES = 2

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.banner{background:#b00020;color:#fff;font-weight:bold;font-size:1.3em;padding:.6em 1em;border-radius:4px;
margin:.4em 0}
.warning{background:#fff4e5;border-left:4px solid #e65100;padding:.4em .8em}
.note{color:#555;font-size:.9em}img{max-width:100%;border:1px solid #eee}
dt{font-weight:bold}dd{margin:0 0 .5em 1.5em}q{font-style:italic}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
"""


def redact(obj: Any) -> Any:
    """A copy of a JSON-able object with secret-looking keys' values (API keys, tokens) replaced and
    every URL in a string made public (run.json files written by older versions may hold credentials)."""
    if isinstance(obj, dict):
        return {k: _REDACTED if _SECRET_KEY.search(str(k)) and v else redact(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return _REDACTED if obj.startswith("sk-") else scrub(obj)
    return obj


def _esc(value: Any) -> str:
    return html.escape(str(value))


# ---------------------------------------------------------------------------------------------
# What the numbers rest on: corpus, LLM, stages


def describe_corpus(run: RunDir) -> tuple[str, bool]:
    """(one line on where the run's dialogues come from, whether they are synthetic).

    Read from the corpus the first seed recorded in run.json and its corpus.json (name, counts,
    feature sources), and from the pipeline config when the run was made by ``lantern run``."""
    first = run.first_seed_run()
    record = (first.load() if first.run_json.exists() else {}).get("corpus")
    spec = (run.load() if run.run_json.exists() else {}).get("config", {}).get("corpus") or {}
    if not record:
        return "Corpus: not recorded in run.json (the vanilla model was trained from memory).", False
    path = Path(record["path"])
    header = read_json(path / CORPUS_JSON) if (path / CORPUS_JSON).is_file() else {}
    name = str(header.get("name", path.name))
    synthetic = (
        spec.get("kind") == "example"
        or "synthetic" in header.get("feature_sources", {}).values()
        or name.lower().startswith("synthetic")
    )
    parts = [f"Corpus: {name}"]
    if synthetic:
        parts.append("SYNTHETIC — generated by Lantern, not real conversations; no score below says "
                     "anything about emotion recognition on real data")  # fmt: skip
    if spec.get("kind") == "convert":
        source = f"converted from {spec.get('path')} (format {spec.get('format')})"
        if spec.get("emoeval"):
            source += f", dimensions from {spec['emoeval']}"
        parts.append(source)
    elif not synthetic:
        parts.append("source files not recorded (converted outside this run; see the corpus name)")
    counts = header.get("counts")
    if counts:
        splits = ", ".join(f"{s} {n}" for s, n in counts.get("splits", {}).items())
        parts.append(f"{counts.get('dialogues')} dialogues ({splits}), {counts.get('utterances')} utterances")
    parts.append(f"directory {path}, fingerprint {record.get('fingerprint')}")
    if not header:
        parts.append("the directory is gone")
    return "; ".join(parts) + ".", synthetic


def _size_in_parameters(name: str) -> float | None:
    sizes = [float(n) * (1e6 if unit.lower() == "m" else 1e9) for n, unit in _SIZE.findall(name)]
    return min(sizes) if sizes else None


def describe_llm(settings: LLMSettings) -> tuple[str, str | None]:
    """(one line naming the LLM that answered and how it was reached, a warning when it cannot be
    expected to recognise emotions: the simulation server or a model below TOY_PARAMETERS)."""
    if settings.model == LOCAL_MODEL_NAME:
        backend = {kind: name for name, kind in SERVER_KINDS.items()}.get(settings.server_kind)
        how = f"the embedded local model, {backend or settings.server_kind} backend, no network"
    else:
        how = f"an OpenAI-compatible endpoint of kind {settings.server_kind}"
    served = sorted(set(settings.served_models) - {settings.model})
    line = f"LLM: {settings.model} ({how})"
    if served:
        line += f"; the server answered as {', '.join(served)}"
    line += (
        f"; {settings.t} receptive fields per utterance, stride {settings.stride}, answer format "
        f"{settings.answer_format}, template {settings.template_version}."
    )
    if settings.simulated:
        return line, (
            f"{SIMULATED_MODEL}: the simulation server, not a language model — its answers are built "
            "from the gold labels at a set accuracy. These numbers test the machinery; they are not results."
        )
    for name in sorted({settings.model, *settings.served_models}):
        size = _size_in_parameters(name)
        if size is not None and size < TOY_PARAMETERS:
            return line, (
                f"{name} is a tiny model (about {size / 1e6:,.0f}M parameters), a toy for this task: "
                "it cannot be expected to recognise emotions, and its answers are likely a fixed pattern "
                "(see Answer quality). These numbers test the machinery, not the method."
            )
    return line, None


def _llm_settings(run: RunDir) -> dict[str, LLMSettings]:
    return {
        name: LLMSettings.read(seed_run.llm.settings)
        for name, seed_run in run.seed_runs().items()
        if seed_run.llm.settings.exists()
    }


def missing_stages(seed_run: RunDir) -> list[str]:
    """What a single-seed run lacks, each as 'what (the file that is not there): the command'."""
    root = seed_run.root
    checks = [
        ("training record", seed_run.vanilla.metrics, "written by `lantern train`"),
        ("LLM stage", seed_run.answers("test"), "run `lantern prompt`"),
        ("LLM statistics", seed_run.llm.stats, "run `lantern prompt`"),
    ]
    out = [f"{what} ({path.relative_to(root)}): {how}" for what, path, how in checks if not path.exists()]
    if not seed_run.methods():
        out.append(f"fusion ({seed_run.fusion.relative_to(root)}/<method>/): run `lantern fuse`")
    return out


# ---------------------------------------------------------------------------------------------
# The evaluation the report rests on


def _inputs(run: RunDir) -> list[Path]:
    """Every file evaluation reads, to tell whether eval/metrics.json is older than one of them."""
    paths = []
    for seed_run in run.seed_runs().values():
        paths += [seed_run.vanilla.config, seed_run.vanilla.crossfit_predictions, seed_run.llm.settings]
        paths += [seed_run.llm.stats, *(seed_run.predictions(s) for s in ("dev", "test"))]
        paths += [seed_run.answers(s) for s in ("train", "dev", "test")]
        paths += [p for m in seed_run.methods() for p in (m.predictions, m.config)]
    return paths


def current_metrics(run: RunDir, *, save: bool = True) -> dict[str, Any]:
    """eval/metrics.json when it has this version's layout and is newer than every file it was
    computed from (a method fused after ``lantern evaluate`` is not left out), else the run
    evaluated again (and saved, unless ``save`` is False)."""
    path = run.eval_metrics
    if path.exists():
        metrics = read_json(path)
        newest = max((p.stat().st_mtime_ns for p in _inputs(run) if p.exists()), default=0)
        if metrics.get("format") == EVAL_FORMAT and path.stat().st_mtime_ns >= newest:
            return metrics
    return evaluate_run(run.root, save=save)


# ---------------------------------------------------------------------------------------------
# Figures read from the run


def _attention_weights(run: RunDir, methods: list[str]) -> dict[str, dict[str, float]]:
    """Method → mean test weight per position key ("0".."t-1", "vanilla"), averaged over seeds."""
    out: dict[str, dict[str, float]] = {}
    for method in methods:
        runs = [
            read_json(p)["test"]
            for seed_run in run.seed_runs().values()
            if (p := seed_run.method(method).attention).exists()
        ]
        if runs:
            out[method] = {k: float(np.mean([r.get(k, 0.0) for r in runs])) for k in runs[0]}
    return out


# ---------------------------------------------------------------------------------------------
# Tables


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _results_rows(metrics: dict[str, Any]) -> list[list[str]]:
    rows = []
    for m in metrics["methods"]:
        s = metrics["summary"][m]
        cells = [f"{m} (Lantern)" if m == metrics.get("lantern_method") else m]
        cells += [f"{s[k]['mean']:.2f} ± {s[k]['std']:.2f}" for k in SCORES]
        for k in METRICS:
            e = metrics["vs_vanilla"].get(m, {}).get(k)
            cells.append(f"{e['delta']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]" if e else "—")
        eces = [
            r["methods"][m]["calibration"]["ece"] for r in metrics["per_seed"].values() if m in r["methods"]
        ]
        cells.append(f"{np.mean(eces):.2f}")
        cells.append(str(s["n_seeds"]))
        rows.append(cells)
    return rows


def per_class_table(metrics: dict[str, Any], methods: list[str]) -> str:
    """Per class: its support (gold test utterances of one seed's test set) and each method's
    precision, recall and F1 (%, mean over seeds); macro and weighted F1 and accuracy beneath."""
    classes = metrics["labels"]["classes"]
    first = next(iter(metrics["per_seed"].values()))
    support = first["methods"][VANILLA]["support"]
    figures = {
        m: [per_class_mean(metrics, m, f"per_class_{k}") for k in ("precision", "recall", "f1")]
        for m in methods
    }
    header = ["class", "support"] + [f"{m} {k}" for m in methods for k in ("P", "R", "F1")]
    rows = [
        [c, support[c]] + [f"{figure[c]:.2f}" for m in methods for figure in figures[m]] for c in classes
    ]
    for key, label in (("macro_f1", "macro F1"), ("weighted_f1", "weighted F1"), ("accuracy", "accuracy")):
        cells = [f"{metrics['summary'][m][key]['mean']:.2f}" for m in methods]
        rows.append([label, sum(support.values())] + [c for cell in cells for c in ("", "", cell)])
    return _table(header, rows)


# ---------------------------------------------------------------------------------------------
# Example utterances


@dataclass
class Example:
    """One test utterance as fusion saw it: its t fields' answers and the weight each got."""

    kind: str
    prediction: Prediction
    text: str | None
    fused: dict[str, list[float]]
    answers: list[tuple[int, int, UtteranceAnswer]]
    weights: dict[str, np.ndarray]


def choose_examples(
    gold: np.ndarray, vanilla: np.ndarray, fused: np.ndarray | None, seed: int = 0
) -> list[tuple[int, str]]:
    """(index, kind) of up to N_EXAMPLES utterances that fusion fixed (vanilla wrong, fused right),
    as many it broke, and one more drawn at random: where fusion matters, and what it usually does."""
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, str]] = []
    if fused is not None:
        for kind, mask in (
            ("fixed by fusion", (vanilla != gold) & (fused == gold)),
            ("broken by fusion", (vanilla == gold) & (fused != gold)),
        ):
            found = np.flatnonzero(mask)
            picks = rng.choice(found, size=min(N_EXAMPLES, len(found)), replace=False) if len(found) else []
            chosen += [(int(i), kind) for i in sorted(picks)]
    rest = sorted(set(range(len(gold))) - {i for i, _ in chosen})
    if rest:
        chosen.append((int(rng.choice(rest)), "drawn at random"))
    return chosen


def _examples(run: RunDir, method: str | None) -> tuple[str, list[Example]]:
    """(seed name, examples) from the first seed that has LLM answers for test; ``method`` is the
    fused method compared with vanilla (None: none in the run)."""
    answered = [
        (name, r)
        for name, r in run.seed_runs().items()
        if r.answers("test").exists() and r.llm.settings.exists()
    ]
    if not answered:
        return "", []
    seed, seed_run = answered[0]
    predictions = read_predictions(seed_run.predictions("test"))
    answers = read_field_answers(seed_run.answers("test"))
    settings = LLMSettings.read(seed_run.llm.settings)
    labelled = [i for i, p in enumerate(predictions) if p.label is not None]
    gold = np.array([predictions[i].label for i in labelled])
    vanilla = np.array([int(np.argmax(predictions[i].probs)) for i in labelled])
    fused_probs: dict[str, dict[str, list[float]]] = {}
    weights: dict[str, np.ndarray] = {}
    shown = [m for m in (method, _UNGUARDED) if m and seed_run.method(m).predictions.exists()]
    for m in shown:
        fused_probs[m] = {p.id: p.probs for p in read_predictions(seed_run.method(m).predictions)}
        files = seed_run.method(m)
        if files.config.exists():
            inputs = build_inputs(predictions, answers, settings.t)
            weights[m] = FusionMethod.load(files.dir).weights(inputs)
    fused = (
        np.array([int(np.argmax(fused_probs[method][predictions[i].id])) for i in labelled])
        if method in fused_probs
        else None
    )
    corpus = run_corpus(seed_run, "example transcripts")
    texts = {u.id: u.text for d in corpus.dialogues for u in d.utterances} if corpus else {}
    by_id: dict[str, list[tuple[int, int, UtteranceAnswer]]] = {}
    for field in answers:
        for u in field.utterances:
            by_id.setdefault(u.id, []).append((field.start, field.stop, u))
    out = []
    for index, kind in choose_examples(gold, vanilla, fused):
        row = labelled[index]
        p = predictions[row]
        out.append(
            Example(
                kind=kind,
                prediction=p,
                text=texts.get(p.id),
                fused={m: probs[p.id] for m, probs in fused_probs.items()},
                answers=sorted(by_id.get(p.id, []), key=lambda a: a[2].b),
                weights={m: w[row] for m, w in weights.items()},
            )
        )
    return seed, out


def _top(probs: list[float] | np.ndarray, classes: list[str]) -> str:
    k = int(np.argmax(probs))
    return f"{classes[k]} {float(probs[k]) / float(np.sum(probs)):.2f}"


def example_html(example: Example, classes: list[str]) -> str:
    p = example.prediction
    fused = " · ".join(f"{m}: {_top(probs, classes)}" for m, probs in example.fused.items())
    text = f"<q>{_esc(example.text)}</q>" if example.text is not None else "(transcript not available)"
    parts = [
        f"<h3>{_esc(p.id)} — {_esc(example.kind)}</h3>",
        f"<p>Dialogue {_esc(p.dialogue)}, speaker {_esc(p.speaker)}: {text}<br>"
        f"gold <b>{_esc(classes[p.label])}</b> · vanilla: {_esc(_top(p.probs, classes))}"
        + (f" · {_esc(fused)}" if fused else "")
        + "</p>",
    ]
    methods = list(example.weights)
    rows = []
    for start, stop, answer in example.answers:
        said = _top(answer.probs, classes)
        if answer.status != OK:
            said = f"fallback ({answer.reason}): vanilla used"
        weights = [f"{example.weights[m][answer.b]:.3f}" for m in methods]
        rows.append([f"[{start}, {stop})", answer.b, said, *weights])
    vanilla_weights = [f"{example.weights[m][-1]:.3f}" for m in methods]
    rows.append(["vanilla distribution", "—", _top(p.probs, classes), *vanilla_weights])
    header = ["field", "position b", "answer (top class, probability)", *(f"weight in {m}" for m in methods)]
    parts.append(_table(header, rows))
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# The LLM's answers, cost and timings


def quality_table(metrics: dict[str, Any]) -> tuple[str, list[str]]:
    """(a table of every seed × split's answer quality, the warnings in words) from evaluation's
    ``llm_answers`` records."""
    rows, warnings = [], []
    for seed, record in metrics["per_seed"].items():
        for split, q in record.get("llm_answers", {}).items():
            rows.append(
                [
                    f"{seed} {split}",
                    q["answers"],
                    f"{100 * q['fallback_rate']:.1f}",
                    f"{q['llm_only']['accuracy']:.2f} / {q['llm_only']['weighted_f1']:.2f} / "
                    f"{q['llm_only']['macro_f1']:.2f}",
                    f"{q['vanilla']['accuracy']:.2f} / {q['vanilla']['weighted_f1']:.2f} / "
                    f"{q['vanilla']['macro_f1']:.2f}",
                    f"{q['majority']:.2f}",
                    f"{100 * q['agreement']:.1f}",
                    f"{100 * q['one_hot']:.1f}",
                    f"{100 * q['identical']:.1f}",
                    f"{100 * q['uniform_fields']:.1f}",
                ]
            )
            warnings += [f"{seed} {split}: {sign}" for sign in q["degenerate"]]
    header = [
        "seed, split",
        "utterance answers",
        "fallback (%)",
        "LLM only: acc / wF1 / macro F1",
        "vanilla, same utterances",
        "always the majority class: acc",
        "top class = vanilla's (%)",
        "all mass on one class (%)",
        "= most common answer (%)",
        "fields with one answer for all (%)",
    ]
    return _table(header, rows), warnings


def stats_table(run: RunDir) -> str | None:
    """The LLM stage's figures (llm/stats.json) per seed: requests, tokens, cost, wall time, fallbacks."""
    stats = {
        name: LLMStats.read(seed_run.llm.stats)
        for name, seed_run in run.seed_runs().items()
        if seed_run.llm.stats.exists()
    }
    if not stats:
        return None
    figures: list[tuple[str, Any]] = [
        ("requests sent (retries included)", lambda s: s.requests_sent),
        ("distinct fields asked", lambda s: s.unique_requests),
        ("answers read from the cache", lambda s: s.cache_hits),
        ("retries", lambda s: s.retries),
        ("fields left unanswered", lambda s: s.fields_unanswered),
        (
            "prompt / completion tokens",
            lambda s: f"{s.prompt_tokens:,} / {s.completion_tokens:,}"
            + (" (partly estimated)" if s.tokens_estimated else ""),
        ),
        (
            "cost (USD)",
            lambda s: f"{s.cost_usd:.4f}" + (f" (cap {s.max_cost})" if s.max_cost is not None else ""),
        ),
        ("wall time (s)", lambda s: f"{s.wall_seconds:.1f}"),
        ("utterance answers", lambda s: s.utterance_answers),
        ("fallback rate (%)", lambda s: f"{100 * s.fallback_rate:.1f}"),
        ("fallbacks by reason", lambda s: ", ".join(f"{k}: {v}" for k, v in s.fallbacks.items()) or "none"),
    ]
    rows = [[label, *(get(s) for s in stats.values())] for label, get in figures]
    return _table(["statistic", *stats], rows)


def timings_table(run: RunDir) -> str:
    """Per seed what the run recorded of its time: the vanilla fit, the LLM stage, and the fusion
    stage (every method's fit, prediction and save, from its ``attention.json``)."""
    rows = []
    for name, seed_run in run.seed_runs().items():
        fit = "not recorded"
        if seed_run.vanilla.metrics.exists():
            record = read_json(seed_run.vanilla.metrics)
            if "seconds" in record:
                fit = f"{record['seconds']:.1f} ({len(record['history'])} epochs)"
        llm = "no LLM stage"
        if seed_run.llm.stats.exists():
            llm = f"{LLMStats.read(seed_run.llm.stats).wall_seconds:.1f}"
        records = [read_json(p) for p in sorted(seed_run.fusion.glob("*/attention.json"))]
        timed = [r["seconds"] for r in records if "seconds" in r]
        fusion = f"{sum(timed):.1f} ({len(timed)} methods)" if timed else "not recorded"
        rows.append([name, fit, llm, fusion])
    return _table(["seed", "vanilla training (s)", "LLM stage (s)", "fusion (s)"], rows)


def _run_config(run: RunDir) -> dict[str, Any]:
    configs = {}
    for name, seed_run in run.seed_runs().items():
        if seed_run.run_json.exists():
            configs[name] = redact(read_json(seed_run.run_json))
    if run.run_json.exists() and not run.is_single_seed():
        configs["run"] = redact(read_json(run.run_json))
    return configs


# ---------------------------------------------------------------------------------------------
# The page


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render the report of a single- or multi-seed run; returns the page's path.

    Without ``out``: RUN_DIR/report/index.html with the PNGs beside it, evaluating the run first
    when eval/metrics.json is missing or older than what it was computed from. With ``out``: that
    one self-contained file, and nothing written into the run (it may be someone else's).
    """
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"{run.root}: no such run directory")
    metrics = current_metrics(run, save=out is None)

    def figure(filename: str, caption: str, fig: Figure) -> str:
        """The figure as an embedded PNG under its heading (and the PNG beside the run's page)."""
        data = png(fig)
        if out is None:
            atomic_write_bytes(run.report_dir / filename, data)
        encoded = base64.b64encode(data).decode("ascii")
        return f"<h2>{_esc(caption)}</h2><img alt='{_esc(caption)}' src='data:image/png;base64,{encoded}'>"

    fused = [m for m in metrics["methods"] if m != VANILLA]
    lantern = (
        metrics.get("lantern_method")
        if metrics.get("lantern_method") in fused
        else (fused[0] if fused else None)
    )
    compared = [VANILLA] + ([lantern] if lantern else [])
    classes = metrics["labels"]["classes"]
    simulated = bool(metrics.get("simulated_llm"))
    corpus_line, synthetic = describe_corpus(run)
    settings = _llm_settings(run)
    llm_lines = {describe_llm(s) for s in settings.values()}

    title = "Lantern run report" + (" — simulated LLM" if simulated else "")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"]
    parts.append(f"<style>{_CSS}</style></head><body>")
    if simulated:
        parts.append(
            "<div class='banner'>simulated LLM — the LLM answers in this run come from the simulation "
            "server (answers built from gold labels at a set accuracy), not from a language model. "
            "These numbers test the machinery; they are not results.</div>"
        )
    else:
        parts += [f"<div class='banner'>toy LLM — {_esc(w)}</div>" for _, w in sorted(llm_lines) if w]
    if synthetic:
        parts.append("<div class='banner'>synthetic corpus — not real conversations.</div>")
    parts.append(f"<h1>{_esc(title)}</h1>")

    parts.append("<h2>What this run is</h2>")
    parts.append(f"<p>{_esc(corpus_line)}</p>")
    if settings:
        parts += [f"<p>{_esc(line)}</p>" for line, _ in sorted(llm_lines)]
    else:
        parts.append("<p>LLM: none — this run has no LLM stage.</p>")
    parts.append(
        f"<p class='note'>Run directory: {_esc(run.root.resolve())}. "
        f"Seeds: {_esc(', '.join(metrics['seeds']))}. "
        f"Label set: {_esc(metrics['labels']['name'])} ({_esc(', '.join(classes))}). Fusion is trained and "
        "tuned without the test split; test is read once, at evaluation. No epoch or hyperparameter is "
        "selected on test.</p>"
    )
    missing = {name: missing_stages(seed_run) for name, seed_run in run.seed_runs().items()}
    if any(missing.values()):
        parts.append("<p class='warning'>Missing stages — this report shows only what the run has:</p><ul>")
        parts += [f"<li>{_esc(name)}: {_esc(m)}</li>" for name, found in missing.items() for m in found]
        parts.append("</ul>")

    parts.append("<h2>Methods</h2><dl>")
    for m in metrics["methods"]:
        definition = METHOD_DEFINITIONS.get(m, "a fusion method of this run (no description known).")
        parts.append(f"<dt>{_esc(m)}</dt><dd>{_esc(definition)}</dd>")
    parts.append("</dl>")

    parts.append("<h2>Results</h2>")
    header = ["method", "accuracy (%)", "weighted F1 (%)", "macro F1 (%)", "Δ acc vs vanilla [95% CI]",
              "Δ wF1 vs vanilla [95% CI]", "ECE (%)", "seeds"]  # fmt: skip
    parts.append(_table(header, _results_rows(metrics)))
    parts.append(
        f"<p class='note'>Mean ± std over seeds. Macro F1 weighs every class alike; weighted F1 weighs "
        f"them by support. Intervals: paired bootstrap over test dialogues "
        f"({metrics['bootstrap']['n_resamples']} resamples), pooled over seeds.</p>"
    )
    parts.append(figure("results.png", "Scores by method", results_plot(metrics)))
    parts.append("<h2>Per class</h2>")
    parts.append(per_class_table(metrics, compared))
    parts.append(
        "<p class='note'>Support: gold test utterances of each class (one seed's test set). P, R, F1: "
        "precision, recall, F1 in %, mean over seeds.</p>"
    )
    caption = "Confusion matrices (rows: gold)"
    parts.append(figure("confusion.png", caption, confusion_plot(metrics, compared)))
    parts.append(figure("per_class_f1.png", "Per-class F1", per_class_plot(metrics, compared)))

    parts.append("<h2>Examples</h2>")
    seed, examples = _examples(run, lantern)
    if examples:
        weighted = ", ".join(examples[0].weights) or "no fusion method"
        parts.append(
            f"<p class='note'>Test utterances of {_esc(seed)}: each field that holds the utterance, the "
            f"LLM's answer there (its top class and probability) and the weight {_esc(weighted)} gave "
            "that answer for this very utterance; the last row is the vanilla distribution, one more "
            "candidate.</p>"
        )
        parts += [example_html(e, classes) for e in examples]
    else:
        parts.append("<p class='note'>No examples: the run has no LLM answers for test.</p>")

    weights = _attention_weights(run, fused)
    if weights:
        caption = "Attention weight by receptive-field position"
        parts.append(figure("attention.png", caption, attention_plot(weights)))
    else:
        parts.append("<p class='note'>No fusion method with attention weights in this run.</p>")
    caption = "Reliability (calibration)"
    parts.append(figure("reliability.png", caption, reliability_plot(metrics, compared)))

    histories = {
        name: read_json(seed_run.vanilla.metrics)
        for name, seed_run in run.seed_runs().items()
        if seed_run.vanilla.metrics.exists()
    }
    if histories:
        parts.append(figure("training.png", "Vanilla training curve", training_plot(histories)))
    else:
        parts.append("<h2>Vanilla training curve</h2>")
        parts.append("<p class='note'>Not recorded: the run has no vanilla/metrics.json.</p>")

    parts.append("<h2>Answer quality</h2>")
    if any(s.get("llm_answers") for s in metrics["per_seed"].values()):
        table, warnings = quality_table(metrics)
        parts.append(
            "<p class='note'>What the LLM's answers are worth on their own, whatever the fallback rate. "
            "LLM only: the mean of an utterance's answered fields, on the utterances with one; shares are "
            "of the answered (non-fallback) answers.</p>"
        )
        parts.append(table)
        if warnings:
            parts.append("<p class='warning'>The answers look degenerate:</p><ul>")
            parts += [f"<li>{_esc(w)}</li>" for w in warnings]
            parts.append("</ul>")
    else:
        parts.append("<p class='note'>No LLM answers in this run.</p>")
    parts.append("<h2>LLM requests and cost</h2>")
    stats = stats_table(run)
    parts.append(stats or "<p class='note'>No LLM statistics in this run.</p>")
    parts.append("<h2>Timings</h2>")
    parts.append(timings_table(run))

    guards = {name: g for name, g in (metrics.get("guard") or {}).items() if g}
    parts.append("<h2>Vanilla guard</h2>")
    if guards:
        parts.append(
            "<p class='note'>Lantern's attention keeps its learned weighting only when, on held-out "
            "dialogue folds of the fusion training split, its likelihood beats the vanilla model's by more "
            "than one standard error; otherwise it is the vanilla model. The unguarded attention is "
            "reported beside it.</p>"
        )
        rows = [
            [
                name,
                "attention" if g["kept"] else "vanilla",
                f"{g['nll_vanilla']:.4f}",
                f"{g['nll_unguarded']:.4f}",
                f"{g['nll_gain']:+.4f} ± {g['standard_error']:.4f}",
            ]
            for name, g in guards.items()
        ]
        parts.append(_table(["seed", "decision", "NLL vanilla", "NLL unguarded", "NLL gain ± SE"], rows))
    else:
        parts.append("<p class='note'>No guarded method in this run.</p>")
    vad = metrics.get("dev_vad")
    if vad:
        parts.append("<h2>Vanilla VAD quality (dev)</h2>")
        rows = [[name, f"{v['pearson']:.3f}", f"{v['ccc']:.3f}"] for name, v in vad.items()]
        parts.append(_table(["dimension", "Pearson r", "CCC"], rows))
    parts.append("<h2>Configuration</h2>")
    parts.append(f"<pre>{_esc(json.dumps(_run_config(run), indent=2))}</pre>")
    parts.append("</body></html>\n")

    page = Path(out) if out is not None else run.report_index
    atomic_write_text(page, "\n".join(parts))
    return page
