"""The LLM stage's settings in three parts: the receptive fields (the method's s and t), the prompt
(what the LLM is shown and asked), and the endpoint (who answers and how Lantern talks to it).

Every default is written once, here or in the dataclass that owns it (:class:`FieldSpec`,
:class:`PromptOptions`); the CLI and the pipeline's TOML only override. Kept apart from the stage so
that reading a config (the pipeline, the CLI's parser) does not import the HTTP client.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

from lantern.errors import LanternError
from lantern.fields import FieldSpec
from lantern.llm.prompt import PromptOptions
from lantern.llm.redact import public_url
from lantern.rundir import LLMSettings

REMOTE_SERVER_KIND = "openai"
# The embedded server's backends (lantern.llm.local.BACKENDS, which imports more than a config may).
LOCAL_BACKENDS = ("auto", "transformers", "llamacpp")


@dataclass
class Endpoint:
    """Who answers and how: ``base_urls`` empty means the embedded local model (``local_model``, or
    the packaged SmolLM2), served by ``local_backend`` (``auto``, ``transformers``, ``llamacpp``:
    :data:`lantern.llm.local.BACKENDS`), started for the stage and stopped after it.

    ``server_kind`` picks the structured-output mode (``answers.DEFAULT_MODE``) unless
    ``response_format`` names one. ``api_key_env`` names the environment variable holding the key (a
    loopback endpoint without one gets a dummy key); the key itself is never stored. ``prices`` maps
    a model name to ``[USD per 1M prompt tokens, USD per 1M completion tokens]``; ``max_cost`` stops
    sending before it would be crossed. ``timeout`` bounds each whole request (connect, wait, body);
    ``max_retries`` retries transport failures, ``max_answer_retries`` invalid answers. ``seed``
    seeds the retry jitter.
    """

    base_urls: list[str] = field(default_factory=list)
    model: str | None = None
    server_kind: str | None = None
    response_format: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    local_model: str | None = None
    local_backend: str | None = None
    concurrency: int = 4
    rpm: float | None = None
    tpm: float | None = None
    timeout: float = 120.0
    max_retries: int = 5
    max_answer_retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    prices: dict[str, list[float]] = field(default_factory=dict)
    max_cost: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.base_urls = list(self.base_urls)
        _positive_int("concurrency", self.concurrency)
        for name in ("max_retries", "max_answer_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise LanternError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("rpm", "tpm", "max_cost"):
            value = getattr(self, name)
            if value is not None:
                _positive_number(name, value, allow_zero=name == "max_cost")
        for name in ("timeout", "backoff_base", "backoff_max"):
            _positive_number(name, getattr(self, name), allow_zero=name != "timeout")
        for model, pair in self.prices.items():
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise LanternError(
                    f"prices[{model!r}] must be [usd_per_1M_prompt, usd_per_1M_completion], got {pair!r}"
                )
            for value in pair:
                _positive_number(f"prices[{model!r}]", value, allow_zero=True)
        if self.local_backend not in (None, *LOCAL_BACKENDS):
            raise LanternError(
                f"local_backend must be one of {', '.join(LOCAL_BACKENDS)}, got {self.local_backend!r}"
            )
        if self.base_urls and not self.model:
            raise LanternError("a model name is required with a base URL (--model)")

    @property
    def local(self) -> bool:
        return not self.base_urls

    def identity(self) -> dict[str, Any]:
        """What about the endpoint changes the answers: model and structured-output mode, never a URL
        or key (replicas of one model answer alike)."""
        return {
            "model": self.model,
            "server_kind": self.server_kind,
            "response_format": self.response_format,
            "local_model": self.local_model if self.local else None,
            # Only when chosen, so the runs made before there was a choice keep their identity.
            **({"local_backend": self.local_backend} if self.local and self.local_backend else {}),
        }


@dataclass
class LLMConfig:
    """Everything the LLM stage needs: fields, prompt, endpoint, and where answers are cached.

    ``cache_path`` shares one response cache between run directories (the ablation variants reuse
    the run's answers); by default each run has its own (``RunDir.llm.cache``). ``refresh`` starts a
    fresh cache instead of reading the old one.
    """

    fields: FieldSpec = field(default_factory=FieldSpec)
    prompt: PromptOptions = field(default_factory=PromptOptions)
    endpoint: Endpoint = field(default_factory=Endpoint)
    cache_path: str | None = None
    refresh: bool = False

    def answers_identity(self) -> dict[str, Any]:
        """The settings that determine the answers (for stage bookkeeping): fields, prompt, endpoint
        identity — nothing about limits, URLs or keys."""
        return {
            "fields": self.fields.to_json(),
            "prompt": asdict(self.prompt),
            "endpoint": self.endpoint.identity(),
        }

    def to_json(self) -> dict[str, Any]:
        """The whole config as recorded in run.json: the key's variable name only, never the key, and
        base URLs without credentials or query values (:func:`~lantern.llm.redact.public_url`)."""
        endpoint = asdict(self.endpoint)
        endpoint["base_urls"] = [public_url(u) for u in endpoint["base_urls"]]
        return {
            **self.fields.to_json(),
            **asdict(self.prompt),
            **endpoint,
            "cache_path": self.cache_path,
            "refresh": self.refresh,
        }

    @classmethod
    def as_prompted(cls, settings: LLMSettings, endpoint: Endpoint | None = None) -> LLMConfig:
        """The fields and prompt a run's answers were made with (its :class:`LLMSettings`), asked of
        ``endpoint`` (default: the embedded model): new dialogues and ablation variants see the same
        kind of prompts as the run."""
        return cls(
            fields=FieldSpec(settings.stride, settings.t),
            prompt=PromptOptions(
                include_probs=settings.include_probs,
                include_vad=settings.include_vad,
                template=settings.template,
            ),
            endpoint=endpoint or Endpoint(),
        )

    @classmethod
    def from_flat(cls, table: dict[str, Any], where: str = "llm") -> LLMConfig:
        """Build from one flat table (the ``[llm]`` section of a pipeline TOML): each key belongs to
        exactly one part; an unknown key is an error naming it and the known ones."""
        parts: dict[str, dict[str, Any]] = {"fields": {}, "prompt": {}, "endpoint": {}, "own": {}}
        owners = {
            **{f.name: "fields" for f in dataclass_fields(FieldSpec)},
            **{f.name: "prompt" for f in dataclass_fields(PromptOptions)},
            **{f.name: "endpoint" for f in dataclass_fields(Endpoint)},
            "cache_path": "own",
            "refresh": "own",
        }
        unknown = sorted(set(table) - set(owners))
        if unknown:
            raise LanternError(
                f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(owners))}"
            )
        for key, value in table.items():
            parts[owners[key]][key] = value
        try:
            return cls(
                fields=FieldSpec(**parts["fields"]),
                prompt=PromptOptions(**parts["prompt"]),
                endpoint=Endpoint(**parts["endpoint"]),
                **parts["own"],
            )
        except LanternError as exc:
            raise LanternError(f"{where}: {exc}") from None


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LanternError(f"{name} must be an integer >= 1, got {value!r}")


def _positive_number(name: str, value: object, *, allow_zero: bool = False) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        raise LanternError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
