"""A whole run's configuration: the dataclasses behind ``lantern run --config FILE.toml``.

Sections ``[run]`` (``dir``), ``[corpus]``, ``[vanilla]``, ``[llm]`` (flat keys of
:class:`lantern.llm.config.LLMConfig`'s parts, plus ``splits``) and ``[fusion]``. Every default is
the dataclass's own; a TOML file or the CLI only overrides. Relative paths are taken relative to the
TOML file, so a config travels with its data.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lantern.errors import LanternError
from lantern.llm.config import LLMConfig

SECTIONS = ("run", "corpus", "vanilla", "llm", "fusion")

# How a recipe reports progress to its caller (the CLI prints each line to stderr).
Notify = Callable[[str], None]


@dataclass
class CorpusSpec:
    """Where the dialogues come from: ``kind`` = "example" (generated), "convert" (a public file or
    folder) or "native" (an existing corpus directory, read in place)."""

    kind: str = "example"
    path: str | None = None
    format: str | None = None
    emoeval: str | None = None
    labels: str | None = None
    target: str = "emotion"
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
    class_weights: str | None = None
    device: str = "auto"
    crossfit: int = 0

    def overrides(self) -> dict[str, Any]:
        """TrainConfig overrides that were set (None means: the preset's value)."""
        names = ("epochs", "lambda_vad", "modalities", "batch_size", "lr", "class_weights", "device")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass
class FusionSpec:
    """Which fusion methods to fit (None: all of them), on which held-out split ("dev" or
    "crossfit"); ``params`` overrides a method's hyperparameters or search grid, e.g.
    ``{"attention": {"hidden_sizes": [16], "epoch_grid": [200]}}``."""

    methods: list[str] | None = None
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
        """The config as recorded in run.json: no key (only its variable's name), no URL credentials."""
        return {
            "corpus": asdict(self.corpus),
            "vanilla": asdict(self.vanilla),
            "llm": self.llm.to_json() | {"splits": list(self.llm_splits)},
            "fusion": asdict(self.fusion),
        }


def _section(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a dataclass from a TOML table, naming unknown keys instead of ignoring them."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LanternError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise LanternError(f"{where}: {exc}") from None


def load_config(path: str | Path) -> PipelineConfig:
    """Read a pipeline TOML file; errors name the file, the section and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LanternError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise LanternError(f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    llm_table = dict(data.get("llm", {}))
    splits = llm_table.pop("splits", ["dev", "test"])
    config = PipelineConfig(
        corpus=_section(CorpusSpec, data.get("corpus", {}), f"{path} [corpus]"),
        vanilla=_section(VanillaSpec, data.get("vanilla", {}), f"{path} [vanilla]"),
        llm=LLMConfig.from_flat(llm_table, f"{path} [llm]"),
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
