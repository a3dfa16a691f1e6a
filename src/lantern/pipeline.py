"""The end-to-end run: corpus → vanilla model(s) → LLM over receptive fields → fusion → evaluation → report.

A run is driven by one TOML file (``lantern run --config FILE.toml``) or a ``PipelineConfig`` built in
Python. Everything lands in one run directory::

    RUN_DIR/run.json          the pipeline config, Lantern version, per stage the hash of its config
    RUN_DIR/corpus/           the converted or generated corpus (absent when the config names one)
    RUN_DIR/seed-<s>/         one single-seed run per vanilla seed: vanilla/, llm/, fusion/
    RUN_DIR/eval/metrics.json every method × seed, mean ± std, bootstrap vs vanilla
    RUN_DIR/report/index.html

A stage whose recorded config hash matches and whose outputs exist is skipped, so an interrupted run
resumes where it stopped (the LLM stage also resumes inside itself from its response cache). A
stage's hash covers its own settings and the hash of the stage it reads from, so changing an early
setting re-runs everything downstream and nothing else.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lantern import __version__
from lantern.errors import StageIncomplete
from lantern.llm.config import LLMConfig
from lantern.rundir import RunDir, config_hash

log = logging.getLogger(__name__)

STAGES = ("corpus", "vanilla", "llm", "fusion", "eval", "report")
CORPUS_DIR = "corpus"
DEFAULT_FUSION_METHODS = ("vanilla", "uniform", "single", "position", "gated", "attention", "attention-llm")

Notify = Callable[[str], None]


@dataclass
class CorpusSpec:
    """Where the dialogues come from: ``kind`` = "example" (generated), "convert" (a public file)
    or "native" (an existing corpus directory, read in place)."""

    kind: str = "example"
    path: str | None = None
    format: str | None = None
    emoeval: str | None = None
    labels: str | None = None
    text_features: str | None = None
    dev_fraction: float = 0.1
    dialogues: int = 151
    seed: int = 0
    min_len: int = 8
    max_len: int = 90
    widths: dict[str, int] | None = None


@dataclass
class VanillaSpec:
    """The multi-task vanilla model and its training recipe (``preset`` + overrides), per seed."""

    model: str = "corect"
    preset: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int | None = None
    lambda_vad: float | None = None
    modalities: list[str] | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str = "auto"
    crossfit: int = 0

    def overrides(self) -> dict[str, Any]:
        """TrainConfig overrides that were set (None means: the preset's value)."""
        names = ("epochs", "lambda_vad", "modalities", "batch_size", "lr", "device")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass
class FusionSpec:
    """Which fusion methods to fit, on which held-out split; ``params`` overrides a method's
    hyperparameter grids, e.g. ``{"attention": {"hidden_sizes": [16], "epoch_grid": [200]}}``."""

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_FUSION_METHODS))
    train_split: str = "dev"
    params: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class PipelineConfig:
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    vanilla: VanillaSpec = field(default_factory=VanillaSpec)
    llm: LLMConfig = field(default_factory=LLMConfig)
    llm_splits: list[str] = field(default_factory=lambda: ["dev", "test"])
    fusion: FusionSpec = field(default_factory=FusionSpec)
    run_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The config as recorded in run.json; the LLM section holds no key (only its variable's name)."""
        return {
            "corpus": asdict(self.corpus),
            "vanilla": asdict(self.vanilla),
            "llm": asdict(self.llm) | {"splits": list(self.llm_splits)},
            "fusion": asdict(self.fusion),
        }


def _section(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a dataclass from a TOML table, naming unknown keys instead of ignoring them."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**data)


def load_config(path: str | Path) -> PipelineConfig:
    """Read a pipeline TOML file (sections ``[run]``, ``[corpus]``, ``[vanilla]``, ``[llm]``, ``[fusion]``).

    Relative paths inside it are taken relative to the file, so a config travels with its data.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from exc
    unknown = sorted(set(data) - {"run", "corpus", "vanilla", "llm", "fusion"})
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {', '.join(unknown)}")
    llm_table = dict(data.get("llm", {}))
    splits = llm_table.pop("splits", ["dev", "test"])
    config = PipelineConfig(
        corpus=_section(CorpusSpec, data.get("corpus", {}), f"{path} [corpus]"),
        vanilla=_section(VanillaSpec, data.get("vanilla", {}), f"{path} [vanilla]"),
        llm=_section(LLMConfig, llm_table, f"{path} [llm]"),
        llm_splits=list(splits),
        fusion=_section(FusionSpec, data.get("fusion", {}), f"{path} [fusion]"),
        run_dir=data.get("run", {}).get("dir"),
    )
    base = path.parent
    for attr in ("path", "emoeval"):
        value = getattr(config.corpus, attr)
        if value is not None and not Path(value).is_absolute():
            setattr(config.corpus, attr, str((base / value).resolve()))
    if config.run_dir is not None and not Path(config.run_dir).is_absolute():
        config.run_dir = str((base / config.run_dir).resolve())
    return config


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
        if self.config.fusion.train_split == "crossfit":
            if self.config.vanilla.crossfit < 2:
                raise ValueError("fusion.train_split = 'crossfit' needs vanilla.crossfit >= 2 (folds)")
            if "train" not in self.config.llm_splits:
                self.config.llm_splits = [*self.config.llm_splits, "train"]

    # ----- paths and hashes

    def seed_dir(self, seed: int) -> Path:
        return self.run.root / f"seed-{seed}"

    @property
    def corpus_dir(self) -> Path:
        if self.config.corpus.kind == "native":
            if not self.config.corpus.path:
                raise ValueError("corpus.kind = 'native' needs corpus.path")
            return Path(self.config.corpus.path)
        return self.run.root / CORPUS_DIR

    def _hashes(self) -> dict[str, Any]:
        """Each stage's effective config: its own settings plus the hash of what it reads."""
        c = self.config
        corpus = {"corpus": asdict(c.corpus)}
        vanilla = {"upstream": config_hash(corpus), "vanilla": asdict(c.vanilla)}
        llm = {"upstream": config_hash(vanilla), "llm": c.llm.outputs_config(), "splits": c.llm_splits}
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
            raise ValueError(f"unknown stage {from_stage!r}; stages: {', '.join(STAGES)}")
        self.run.root.mkdir(parents=True, exist_ok=True)
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
        outputs = [self.corpus_dir / "corpus.json"]
        if self._skip("corpus", config, outputs):
            return
        spec = self.config.corpus
        if spec.kind != "native":
            from lantern.corpus.native import save_corpus

            save_corpus(build_corpus(spec), self.corpus_dir, overwrite=True)
        elif not outputs[0].exists():
            raise FileNotFoundError(f"{outputs[0]}: corpus.path is not a Lantern corpus directory")
        self.run.mark_done("corpus", config)

    def _vanilla(self, seed: int, config: Any) -> None:
        from lantern.training import train_run

        stage = f"vanilla/seed-{seed}"
        run = RunDir(self.seed_dir(seed))
        outputs = [run.vanilla / "model.safetensors", *(run.predictions(s) for s in ("train", "dev", "test"))]
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
            f"[{stage}] best dev epoch {summary['best_epoch']}: "
            f"acc {summary['dev']['accuracy']:.2f}, wF1 {summary['dev']['weighted_f1']:.2f}"
        )
        self.run.mark_done(stage, config)

    @contextmanager
    def _llm_endpoint(self, config: Any) -> Iterator[LLMConfig]:
        """The LLM config to use; the embedded server is started only if some seed still needs it."""
        pending = [
            s
            for s in self.config.vanilla.seeds
            if not self.run.stage_done(f"llm/seed-{s}", config, self._llm_outputs(s))
        ]
        if not pending:
            yield self.config.llm
            return
        with local_endpoint(self.config.llm, self.notify) as llm:
            yield llm

    def _llm_outputs(self, seed: int) -> list[Path]:
        run = RunDir(self.seed_dir(seed))
        return [run.llm / "stats.json", *(run.answers(s) for s in self.config.llm_splits)]

    def _llm(self, seed: int, config: Any, llm_config: LLMConfig) -> None:
        from lantern.llm.stage import run_llm_stage

        stage = f"llm/seed-{seed}"
        if self._skip(stage, config, self._llm_outputs(seed)):
            return
        stats = run_llm_stage(self.seed_dir(seed), llm_config, self.config.llm_splits, progress=self.progress)
        self.notify(
            f"[{stage}] {stats.get('requests_sent', 0)} requests sent, "
            f"{stats.get('cache_hits', 0)} cache hits, fallback rate {stats.get('fallback_rate', 0):.1%}"
        )
        if not stats.get("complete", True):
            raise StageIncomplete(
                f"{stage}: the LLM stage did not finish (see {self.seed_dir(seed) / 'llm' / 'stats.json'}); "
                "run the same command again to continue from the cache"
            )
        self.run.mark_done(stage, config)

    def _fusion(self, seed: int, config: Any) -> None:
        from lantern.fusion import fuse_run

        stage = f"fusion/seed-{seed}"
        run = RunDir(self.seed_dir(seed))
        methods = self.config.fusion.methods
        outputs = [run.fusion / m / "predictions-test.jsonl" for m in methods]
        if self._skip(stage, config, outputs):
            return
        spec = self.config.fusion
        fuse_run(run.root, methods, train_split=spec.train_split, seed=seed, params=spec.params)
        self.run.mark_done(stage, config)

    def _eval(self, config: Any) -> dict[str, Any]:
        from lantern.evaluation import evaluate_run

        path = self.run.eval / "metrics.json"
        if self._skip("eval", config, [path]):
            from lantern.rundir import read_json

            return read_json(path)
        metrics = evaluate_run(self.run.root)
        self.run.mark_done("eval", config)
        return metrics

    def _report(self, config: Any) -> Path:
        from lantern.report import write_report

        path = self.run.report / "index.html"
        if self._skip("report", config, [path]):
            return path
        path = write_report(self.run.root)
        self.run.mark_done("report", config)
        return path


@contextmanager
def local_endpoint(llm: LLMConfig, notify: Notify) -> Iterator[LLMConfig]:
    """``llm`` itself when it names an endpoint; otherwise the embedded llama.cpp server, started once
    for everything inside the ``with`` block (all seeds, all variants) and stopped after it."""
    if llm.base_urls:
        yield llm
        return
    from lantern.llm.local import LocalServer

    notify("[llm] starting the embedded local LLM (llama.cpp server, SmolLM2-135M)")
    with LocalServer(llm.local_model) as server:
        yield replace(
            llm, base_urls=[server.base_url], model=server.model, server_kind=llm.server_kind or "llamacpp"
        )


def build_corpus(spec: CorpusSpec):
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
            raise ValueError("corpus.kind = 'convert' needs corpus.path and corpus.format")
        from lantern.corpus.convert import convert_corpus

        return convert_corpus(
            spec.path,
            spec.format,
            emoeval=spec.emoeval,
            labels=spec.labels,
            text_features=spec.text_features,
            dev_fraction=spec.dev_fraction,
        )[0]
    raise ValueError(f"corpus.kind must be 'example', 'convert' or 'native', got {spec.kind!r}")


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
        raise ValueError("no run directory: give --out or set [run] dir in the config")
    return Pipeline(config, target, notify=notify, progress=progress).run_all(from_stage)


DEMO_DIALOGUES = 30
DEMO_EPOCHS = 40


def demo_config(dialogues: int = DEMO_DIALOGUES, epochs: int = DEMO_EPOCHS, seed: int = 0) -> PipelineConfig:
    """The ``lantern demo`` run: a small synthetic corpus, CORECT, the embedded LLM, every fusion method.

    Sized for two CPU cores and about 7 minutes: the embedded model takes ~5 s per six-utterance
    window here, so dialogues are short (8-12 utterances), windows are six utterances (stride 3,
    t = 2) and only dev and test are prompted (about 65 requests). The dev split is 30% of the
    training dialogues rather than 10%, because the fusion module trains on it.
    """
    return PipelineConfig(
        corpus=CorpusSpec(
            kind="example",
            dialogues=dialogues,
            seed=seed,
            min_len=8,
            max_len=12,
            dev_fraction=0.3,
            widths={"t": 100, "a": 100, "v": 512},
        ),
        vanilla=VanillaSpec(model="corect", preset="quick", seeds=[seed], epochs=epochs),
        llm=LLMConfig(stride=3, t=2, concurrency=1, timeout=180.0),
        fusion=FusionSpec(),
    )


def demo(
    run_dir: str | Path = "runs/demo",
    *,
    dialogues: int = DEMO_DIALOGUES,
    epochs: int = DEMO_EPOCHS,
    llm: LLMConfig | None = None,
    notify: Notify | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo pipeline (``lantern demo``); ``llm`` swaps the embedded model for an endpoint."""
    config = demo_config(dialogues=dialogues, epochs=epochs)
    if llm is not None:
        config.llm = replace(llm, stride=config.llm.stride, t=config.llm.t)
    return run_pipeline(config, run_dir, notify=notify, progress=progress)
