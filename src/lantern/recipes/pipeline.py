"""The end-to-end run: corpus → vanilla model(s) → LLM over receptive fields → fusion → evaluation → report.

A run is driven by one TOML file (``lantern run --config FILE.toml``, :mod:`lantern.recipes.config`)
or a ``PipelineConfig`` built in Python. Everything lands in one run directory
(:mod:`lantern.rundir`): the corpus when the run makes it, one single-seed run per vanilla seed,
the evaluation and the report.

A stage whose recorded config hash matches and whose outputs exist is skipped, so an interrupted run
resumes where it stopped (the LLM stage also resumes inside itself from its response cache). A
stage's hash covers its own settings and the hash of the stage it reads from, so changing an early
setting re-runs everything downstream and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lantern import __version__
from lantern.corpus.dialogue import Corpus
from lantern.errors import LanternError, StageIncomplete
from lantern.llm.config import LLMConfig
from lantern.recipes.config import CorpusSpec, Notify, PipelineConfig, load_config
from lantern.rundir import SEED_PREFIX, RunDir, config_hash, read_json
from lantern.runlock import run_lock

log = logging.getLogger(__name__)

STAGES = ("corpus", "vanilla", "llm", "fusion", "eval", "report")


class Pipeline:
    """Runs the stages of one PipelineConfig in one run directory, skipping what is already done."""

    def __init__(
        self,
        config: PipelineConfig,
        run_dir: str | Path,
        *,
        notify: Notify | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.run = RunDir(run_dir)
        self.notify = notify or (lambda message: log.info("%s", message))
        self.progress = progress
        # Before anything is written: a config built in Python gets the checks a TOML file gets.
        self.config.validate()
        if self.config.fusion.train_split == "crossfit" and "train" not in self.config.llm_splits:
            self.config.llm_splits = [*self.config.llm_splits, "train"]

    @property
    def corpus_dir(self) -> Path:
        if self.config.corpus.kind == "native":
            assert self.config.corpus.path is not None  # validate() requires it
            return Path(self.config.corpus.path)
        return self.run.corpus_dir

    def _hashes(self) -> dict[str, Any]:
        """Each stage's effective config: its own settings plus the hash of what it reads."""
        c = self.config
        corpus = {"corpus": asdict(c.corpus)}
        vanilla = {"upstream": config_hash(corpus), "vanilla": c.vanilla.identity()}
        llm = {"upstream": config_hash(vanilla), "llm": c.llm.answers_identity(), "splits": c.llm_splits}
        fusion = {"upstream": config_hash(llm), "fusion": asdict(c.fusion)}
        return {
            "corpus": corpus,
            "vanilla": vanilla,
            "llm": llm,
            "fusion": fusion,
            "eval": {"upstream": config_hash(fusion)},
            "report": {"upstream": config_hash(fusion)},
        }

    # ----- driving

    def run_all(self, from_stage: str | None = None) -> dict[str, Any]:
        """Run every stage in order (``from_stage`` and later ones forced to run again)."""
        if from_stage is not None and from_stage not in STAGES:
            raise LanternError(f"unknown stage {from_stage!r}; stages: {', '.join(STAGES)}")
        with run_lock(self.run.lock, "running the pipeline"):
            return self._run_all(from_stage)

    def _run_all(self, from_stage: str | None) -> dict[str, Any]:
        record = self.run.load()
        record.update({"lantern_version": __version__, "config": self.config.to_json()})
        self.run.save(record)
        if from_stage is not None:
            for stage in STAGES[STAGES.index(from_stage) :]:
                for key in list(self.run.load().get("stages", {})):
                    if key.split("/")[0] == stage:
                        self.run.forget(key)
        hashes = self._hashes()
        self._corpus(hashes["corpus"])
        for seed in self.config.vanilla.seeds:
            self._vanilla(seed, hashes["vanilla"])
        with self._llm_endpoint(hashes["llm"]) as llm_config:
            for seed in self.config.vanilla.seeds:
                self._llm(seed, hashes["llm"], llm_config)
        for seed in self.config.vanilla.seeds:
            self._fusion(seed, hashes["fusion"])
        metrics = self._eval(hashes["eval"])
        report = self._report(hashes["report"])
        return {"metrics": metrics, "report": report, "run_dir": str(self.run.root)}

    def _skip(self, stage: str, config: Any, outputs: list[Path]) -> bool:
        if self.run.stage_done(stage, config, outputs):
            self.notify(f"[{stage}] up to date, skipped")
            return True
        self.notify(f"[{stage}] running")
        return False

    def _corpus(self, config: Any) -> None:
        from lantern.corpus.native import CORPUS_JSON

        outputs = [self.corpus_dir / CORPUS_JSON]
        if self._skip("corpus", config, outputs):
            return
        spec = self.config.corpus
        if spec.kind != "native":
            from lantern.corpus.native import save_corpus

            save_corpus(build_corpus(spec), self.corpus_dir, overwrite=True)
        elif not outputs[0].exists():
            raise LanternError(f"{self.corpus_dir}: corpus.path is not a Lantern corpus directory")
        self.run.mark_done("corpus", config)

    def _vanilla(self, seed: int, config: Any) -> None:
        from lantern.training import train_run

        stage = f"vanilla/{SEED_PREFIX}{seed}"
        run = self.run.seed(seed)
        outputs = [run.vanilla.model, *(run.predictions(s) for s in ("train", "dev", "test"))]
        if self._skip(stage, config, outputs):
            return
        spec = self.config.vanilla
        summary = train_run(
            self.corpus_dir,
            run.root,
            spec.model,
            preset=spec.preset,
            crossfit=spec.crossfit,
            seed=seed,
            progress=self.progress,
            **spec.overrides(),
        )
        self.notify(
            f"[{stage}] recipe {summary['preset']} ({summary['preset_source']}), "
            f"best dev epoch {summary['best_epoch']}: "
            f"acc {summary['dev']['accuracy']:.2f}, wF1 {summary['dev']['weighted_f1']:.2f}"
        )
        self.run.mark_done(stage, config)

    @contextmanager
    def _llm_endpoint(self, config: Any) -> Iterator[LLMConfig]:
        """The LLM config to use; the embedded server is started only if some seed still needs it,
        once for all seeds."""
        from dataclasses import replace

        from lantern.llm.endpoint import endpoint

        pending = [
            s
            for s in self.config.vanilla.seeds
            if not self.run.stage_done(f"llm/{SEED_PREFIX}{s}", config, self._llm_outputs(s))
        ]
        if not pending:
            yield self.config.llm
            return
        log_path = self.run.seed(pending[0]).llm.server_log
        with endpoint(self.config.llm.endpoint, self.notify, log_path=log_path) as resolved:
            yield replace(self.config.llm, endpoint=resolved)

    def _llm_outputs(self, seed: int) -> list[Path]:
        run = self.run.seed(seed)
        return [run.llm.stats, run.llm.settings, *(run.answers(s) for s in self.config.llm_splits)]

    def _llm(self, seed: int, config: Any, llm_config: LLMConfig) -> None:
        from lantern.llm.stage import run_llm_stage

        stage = f"llm/{SEED_PREFIX}{seed}"
        if self._skip(stage, config, self._llm_outputs(seed)):
            return
        run = self.run.seed(seed)
        stats = run_llm_stage(run.root, llm_config, self.config.llm_splits, progress=self.progress)
        self.notify(
            f"[{stage}] {stats.requests_sent} requests sent, {stats.cache_hits} cache hits, "
            f"fallback rate {stats.fallback_rate:.1%}"
        )
        if not stats.complete:
            raise StageIncomplete(
                f"{stage}: the LLM stage did not finish (see {run.llm.stats}); "
                "run the same command again to continue from the cache"
            )
        self.run.mark_done(stage, config)

    def _fusion(self, seed: int, config: Any) -> None:
        from lantern.fusion import METHODS, fuse_run

        stage = f"fusion/{SEED_PREFIX}{seed}"
        run = self.run.seed(seed)
        spec = self.config.fusion
        methods = spec.methods or list(METHODS)
        outputs = [run.method(m).predictions for m in methods]
        if self._skip(stage, config, outputs):
            return
        fuse_run(run.root, methods, train_split=spec.train_split, seed=seed, params=spec.params)
        self.run.mark_done(stage, config)

    def _eval(self, config: Any) -> dict[str, Any]:
        from lantern.evaluation import evaluate_run

        path = self.run.eval_metrics
        if self._skip("eval", config, [path]):
            return read_json(path)
        metrics = evaluate_run(self.run.root)
        self.run.mark_done("eval", config)
        return metrics

    def _report(self, config: Any) -> Path:
        from lantern.report import write_report

        path = self.run.report_index
        if self._skip("report", config, [path]):
            return path
        path = write_report(self.run.root)
        self.run.mark_done("report", config)
        return path


def build_corpus(spec: CorpusSpec) -> Corpus:
    """The corpus a spec describes (generated or converted), in memory."""
    if spec.kind == "example":
        from lantern.corpus.example import generate_example

        return generate_example(
            spec.dialogues,
            spec.seed,
            widths=spec.widths,
            labels=spec.labels or "iemocap6",
            text_features=spec.text_features or "synthetic",
            min_len=spec.min_len,
            max_len=spec.max_len,
            dev_fraction=spec.dev_fraction,
        )
    if spec.kind == "convert":
        if not spec.path or not spec.format:
            raise LanternError("corpus.kind = 'convert' needs corpus.path and corpus.format")
        from lantern.corpus.convert import convert_corpus

        return convert_corpus(
            spec.path,
            spec.format,
            emoeval=spec.emoeval,
            labels=spec.labels,
            text_features=spec.text_features,
            dev_fraction=spec.dev_fraction,
            target=spec.target,
        )[0]
    raise LanternError(f"corpus.kind must be 'example', 'convert' or 'native', got {spec.kind!r}")


def run_pipeline(
    config: PipelineConfig | str | Path,
    run_dir: str | Path | None = None,
    *,
    from_stage: str | None = None,
    notify: Notify | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Python mirror of ``lantern run``: run (or resume) every stage; returns metrics and report path."""
    if not isinstance(config, PipelineConfig):
        config = load_config(config)
    target = run_dir or config.run_dir
    if target is None:
        raise LanternError("no run directory: give --out or set [run] dir in the config")
    return Pipeline(config, target, notify=notify, progress=progress).run_all(from_stage)
