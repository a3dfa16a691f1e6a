"""A whole run's configuration: the dataclasses behind ``lantern run --config FILE.toml``.

Sections ``[run]`` (``dir``), ``[corpus]``, ``[vanilla]``, ``[llm]`` (flat keys of
:class:`lantern.llm.config.LLMConfig`'s parts, plus ``splits``) and ``[fusion]``. Every default is
the dataclass's own; a TOML file or the CLI only overrides. Relative paths are taken relative to the
TOML file, so a config travels with its data.

A config is checked whole when it is read, before any stage runs or any file is written: a key's
type comes from its dataclass's annotation, its range or name from the component that uses it
(:meth:`PipelineConfig.validate`). A misspelt fusion method or a ``stride = "four"`` found only
after the vanilla model has trained for an hour costs that hour.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from lantern.errors import LanternError
from lantern.fields import FieldSpec
from lantern.llm.config import Endpoint, LLMConfig
from lantern.llm.prompt import PromptOptions

SECTIONS = ("run", "corpus", "vanilla", "llm", "fusion")
CORPUS_KINDS = ("example", "convert", "native")
# What generate_example can put in the "t" rows (a converted corpus may also name an encoder).
EXAMPLE_TEXT_FEATURES = ("synthetic", "minilm")

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


# VanillaSpec settings that came after the first release's run directories (see VanillaSpec.identity).
ADDED_LATER = ("patience", "average_epochs", "label_smoothing", "threads")


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
    patience: int | None = None
    average_epochs: float | None = None
    label_smoothing: float | None = None
    threads: int | None = None
    device: str = "auto"
    crossfit: int = 0

    def identity(self) -> dict[str, Any]:
        """What the vanilla stage's up-to-date check hashes: every setting, except those added after
        run directories were made (``ADDED_LATER``) while they are unset, so that a run made before
        they existed is still up to date and its LLM answers are not asked again."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ADDED_LATER}

    def overrides(self) -> dict[str, Any]:
        """TrainConfig overrides that were set (None means: the preset's value): the settings
        ``lantern train`` takes as flags."""
        names = (
            "epochs",
            "lambda_vad",
            "modalities",
            "batch_size",
            "lr",
            "class_weights",
            "patience",
            "average_epochs",
            "label_smoothing",
            "threads",
            "device",
        )
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

    def validate(self) -> None:
        """Check every value's range or name and how the sections fit together, before any stage
        runs, with the checks of the components that use them (the preset and training options by
        :func:`~lantern.train_config.make_train_config`, the fusion methods by
        :func:`~lantern.fusion.stage.make_method`): a typo must not surface after hours of training.
        An error names the section and key, ``[vanilla] seeds: ...``; :func:`load_config` adds the
        file. A TOML file's types are checked as it is read (:func:`load_config`)."""
        _check_corpus(self.corpus)
        _check_vanilla(self.vanilla)
        _check_llm(self.llm, self.llm_splits)
        _check_fusion(self.fusion, self.vanilla)


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline TOML file: unknown tables and keys, types (from the dataclasses'
    annotations), then :meth:`PipelineConfig.validate`. Every error is one line naming the file,
    the table and the key, the bad value and what was expected."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such config file") from None
    except UnicodeDecodeError as exc:
        raise LanternError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LanternError(f"{path}: not valid TOML: {exc}") from None
    try:
        config = _from_tables(data)
        config.validate()
    except LanternError as exc:
        raise LanternError(f"{path}: {exc}") from None
    base = path.parent
    for attr in ("path", "emoeval"):
        value = getattr(config.corpus, attr)
        if value is not None and not Path(value).is_absolute():
            setattr(config.corpus, attr, str((base / value).resolve()))
    if config.run_dir is not None and not Path(config.run_dir).is_absolute():
        config.run_dir = str((base / config.run_dir).resolve())
    return config


# ----- reading the tables: names and types


def table_keys() -> dict[str, dict[str, Any]]:
    """Every table's keys and their types, read from the dataclasses that hold them (``[llm]``: the
    flat keys of :class:`LLMConfig`'s parts, plus ``splits``), so a new field is known and checked
    without being listed here."""
    pipeline = _hints(PipelineConfig)
    llm = {key: hint for part in (FieldSpec, PromptOptions, Endpoint) for key, hint in _hints(part).items()}
    llm |= {key: hint for key, hint in _hints(LLMConfig).items() if not is_dataclass(hint)}
    return {
        "run": {"dir": pipeline["run_dir"]},
        "corpus": _hints(CorpusSpec),
        "vanilla": _hints(VanillaSpec),
        "llm": llm | {"splits": pipeline["llm_splits"]},
        "fusion": _hints(FusionSpec),
    }


def _hints(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _from_tables(data: dict[str, Any]) -> PipelineConfig:
    """The config the TOML tables describe, after checking their names, keys and value types."""
    known = table_keys()
    tables = ", ".join(f"[{name}]" for name in SECTIONS)
    for name, table in data.items():
        if not isinstance(table, dict):
            if name in known:
                raise LanternError(f"[{name}]: expected a table ([{name}] on a line of its own), got {table}")
            raise LanternError(f"{name}: a key outside any table; keys belong in {tables}")
        if name not in known:
            raise LanternError(f"[{name}]: unknown table{_did_you_mean(name, known)}; known: {tables}")
        for key, value in table.items():
            if key not in known[name]:
                raise LanternError(
                    f"[{name}] {key}: unknown key{_did_you_mean(key, known[name])}; "
                    f"known: {', '.join(sorted(known[name]))}"
                )
            if not _matches(value, known[name][key]):
                raise LanternError(f"[{name}] {key}: expected {_describe(known[name][key])}, got {value!r}")
    llm = dict(data.get("llm", {}))
    given: dict[str, Any] = {}
    if "splits" in llm:
        given["llm_splits"] = llm.pop("splits")
    if "dir" in data.get("run", {}):
        given["run_dir"] = data["run"]["dir"]
    return PipelineConfig(
        corpus=CorpusSpec(**data.get("corpus", {})),
        vanilla=VanillaSpec(**data.get("vanilla", {})),
        llm=LLMConfig.from_flat(llm, "[llm]"),
        fusion=FusionSpec(**data.get("fusion", {})),
        **given,
    )


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# The annotations a config field may carry, as TOML values: (one, several).
_NOUNS: dict[Any, tuple[str, str]] = {
    bool: ("true or false", "booleans"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
}


def _matches(value: Any, hint: Any) -> bool:
    """Whether a TOML value fits a field's annotation (an integer fits ``float``; TOML has no null,
    so ``X | None`` means: X, or leave the key out)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (Union, UnionType):
        return any(_matches(value, arm) for arm in args if arm is not NoneType)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(v, args[1]) for v in value.values())
    raise TypeError(f"no TOML check for the annotation {hint!r}")


def _describe(hint: Any, plural: bool = False) -> str:
    """What a value of this annotation looks like in TOML, for an error message."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return "values" if plural else "any value"
    if hint in _NOUNS:
        return _NOUNS[hint][plural]
    if origin in (Union, UnionType):
        return " or ".join(_describe(arm, plural) for arm in args if arm is not NoneType)
    if origin is list:
        return f"{'lists' if plural else 'a list'} of {_describe(args[0], plural=True)}"
    if origin is dict:
        return f"{'tables' if plural else 'a table'} of {_describe(args[1], plural=True)}"
    raise TypeError(f"no TOML check for the annotation {hint!r}")


# ----- ranges, names, and how the tables fit together


def _expected(table: str, key: str, expected: str, value: Any) -> LanternError:
    return LanternError(f"[{table}] {key}: expected {expected}, got {value!r}")


def _choices(names: Iterable[str]) -> str:
    return "one of " + ", ".join(repr(n) for n in names)


def _distinct_subset(table: str, key: str, values: list[str] | None, allowed: Iterable[str]) -> None:
    """``values`` (when given) is a non-empty list of distinct names from ``allowed``."""
    allowed = tuple(allowed)
    if values is not None and (not values or len(set(values)) < len(values) or set(values) - set(allowed)):
        raise _expected(table, key, f"a non-empty list of distinct names from {', '.join(allowed)}", values)


def _check_corpus(c: CorpusSpec) -> None:
    from lantern.corpus.convert import FORMATS, TARGETS
    from lantern.corpus.dialogue import MODALITIES
    from lantern.corpus.text_features import text_encoder
    from lantern.labels import get_label_set

    if c.kind not in CORPUS_KINDS:
        raise _expected("corpus", "kind", _choices(CORPUS_KINDS), c.kind)
    if c.kind in ("convert", "native") and not c.path:
        raise LanternError(f"[corpus] path: required with kind = {c.kind!r}")
    if c.kind == "convert" and c.format not in FORMATS:
        raise _expected("corpus", "format", f"{_choices(FORMATS)} with kind = 'convert'", c.format)
    if c.target not in TARGETS:
        raise _expected("corpus", "target", _choices(TARGETS), c.target)
    if c.labels is not None:
        try:
            get_label_set(c.labels)
        except LanternError as exc:
            raise LanternError(f"[corpus] labels: {exc}") from None
    if not 0.0 <= c.dev_fraction < 1.0:
        raise _expected("corpus", "dev_fraction", "a number in [0, 1)", c.dev_fraction)
    if c.kind == "example":
        if c.text_features not in (None, *EXAMPLE_TEXT_FEATURES):
            expected = f"{_choices(EXAMPLE_TEXT_FEATURES)} with kind = 'example'"
            raise _expected("corpus", "text_features", expected, c.text_features)
        if c.dialogues < 1:
            raise _expected("corpus", "dialogues", "an integer >= 1", c.dialogues)
        if c.min_len < 1:
            raise _expected("corpus", "min_len", "an integer >= 1", c.min_len)
        if c.max_len < c.min_len:
            raise _expected("corpus", "max_len", f"an integer >= min_len ({c.min_len})", c.max_len)
        widths = c.widths or {}
        if set(widths) - set(MODALITIES) or any(w < 1 for w in widths.values()):
            expected = f"integers >= 1 for modalities among {', '.join(MODALITIES)}"
            raise _expected("corpus", "widths", expected, widths)
    elif c.kind == "convert" and c.text_features not in (None, "file"):
        try:
            text_encoder(c.text_features)
        except LanternError as exc:
            raise LanternError(f"[corpus] text_features: {exc}") from None


def _check_vanilla(v: VanillaSpec) -> None:
    from lantern.corpus.dialogue import MODALITIES
    from lantern.models.registry import MODELS
    from lantern.train_config import make_train_config
    from lantern.training import resolve_device

    if v.model not in MODELS:
        raise _expected("vanilla", "model", _choices(MODELS), v.model)
    if not v.seeds or len(set(v.seeds)) < len(v.seeds) or min(v.seeds) < 0:
        raise _expected("vanilla", "seeds", "a non-empty list of distinct integers >= 0", v.seeds)
    _distinct_subset("vanilla", "modalities", v.modalities, MODALITIES)
    if v.crossfit == 1 or v.crossfit < 0:
        raise _expected("vanilla", "crossfit", "0 (none) or a number of folds >= 2", v.crossfit)
    try:
        resolve_device(v.device)
    except RuntimeError:
        raise _expected("vanilla", "device", "'auto', 'cpu', 'cuda' or 'cuda:N'", v.device) from None
    try:
        train = make_train_config(v.preset or "quick", **v.overrides())
    except LanternError as exc:
        raise LanternError(f"[vanilla] {exc}") from None
    if v.preset is not None and train.model not in (None, v.model):
        expected = f"a recipe of {v.model} ({v.preset!r} is {train.model}'s)"
        raise _expected("vanilla", "preset", expected, v.preset)


def _check_llm(llm: LLMConfig, splits: list[str]) -> None:
    from lantern.corpus.dialogue import SPLITS
    from lantern.llm.formats import DEFAULT_MODE, MODES
    from lantern.llm.prompt import load_template

    _distinct_subset("llm", "splits", splits, SPLITS)
    ep = llm.endpoint
    if ep.response_format is not None and ep.response_format not in MODES:
        raise _expected("llm", "response_format", _choices(MODES), ep.response_format)
    if ep.response_format is None and ep.server_kind not in (None, *DEFAULT_MODE):
        expected = f"{_choices(DEFAULT_MODE)} (or a response_format)"
        raise _expected("llm", "server_kind", expected, ep.server_kind)
    try:
        load_template(llm.prompt.template)
    except (LanternError, OSError) as exc:
        raise LanternError(f"[llm] template: {exc}") from None


def _check_fusion(f: FusionSpec, vanilla: VanillaSpec) -> None:
    from lantern.fusion.methods import METHODS
    from lantern.fusion.stage import TRAIN_SPLITS, make_method

    _distinct_subset("fusion", "methods", f.methods, METHODS)
    if f.train_split not in TRAIN_SPLITS:
        raise _expected("fusion", "train_split", _choices(TRAIN_SPLITS), f.train_split)
    if f.train_split == "crossfit" and vanilla.crossfit < 2:
        raise LanternError("[fusion] train_split: 'crossfit' needs [vanilla] crossfit >= 2 (folds)")
    for name in f.params:
        if name not in METHODS:
            raise _expected("fusion", f"params.{name}", f"a fusion method ({', '.join(METHODS)})", name)
    for name in f.methods or METHODS:
        try:
            make_method(name, seed=0, params=f.params.get(name))
        except LanternError as exc:
            raise LanternError(f"[fusion] params.{name}: {exc}") from None
