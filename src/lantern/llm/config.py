"""The LLM stage's settings in three parts: the receptive fields (the method's s and t), the prompt
(what the LLM is shown and asked), and the endpoint (who answers and how Lantern talks to it).

Every default is written once, here or in the dataclass that owns it (:class:`FieldSpec`,
:class:`PromptOptions`); the CLI and the pipeline's TOML only override. Kept apart from the stage so
that reading a config (the pipeline, the CLI's parser) does not import the HTTP client.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from typing import Any

from lantern.errors import LanternError
from lantern.fields import FieldSpec
from lantern.llm.prompt import PromptOptions
from lantern.llm.redact import public_url
from lantern.rundir import DEFAULT_MAX_FALLBACK_RATE, LLMSettings, describe_embedded

REMOTE_SERVER_KIND = "openai"
# The embedded server's backends (lantern.llm.local.BACKENDS, which imports more than a config may).
LOCAL_BACKENDS = ("auto", "transformers", "llamacpp")


@dataclass(frozen=True)
class KindDefaults:
    """What a kind of server gets unless the user says otherwise.

    ``concurrency`` and ``timeout`` match how the server answers: llama.cpp's server (and the
    embedded one) decodes one request at a time, so a second request in flight only waits there and
    times out while it waits; a small model on a CPU needs minutes for a long field. ``lists_models``
    says whether the server's ``GET /v1/models`` names every model it answers for, so that a model
    missing from it is a wrong name (llama.cpp answers whatever name is asked for; an ``other``
    server is not known well enough to trust its list).
    """

    concurrency: int
    timeout: float
    lists_models: bool


# Per server kind (the keys of lantern.llm.formats.DEFAULT_MODE); EMBEDDED for the embedded server.
SERVER_KINDS: dict[str, KindDefaults] = {
    "openai": KindDefaults(concurrency=4, timeout=120.0, lists_models=True),
    "vllm": KindDefaults(concurrency=4, timeout=120.0, lists_models=True),
    "ollama": KindDefaults(concurrency=4, timeout=120.0, lists_models=True),
    "llamacpp": KindDefaults(concurrency=1, timeout=900.0, lists_models=False),
    "other": KindDefaults(concurrency=4, timeout=120.0, lists_models=False),
}
EMBEDDED = KindDefaults(concurrency=1, timeout=900.0, lists_models=True)


def kind_defaults(server_kind: str | None) -> KindDefaults:
    """The defaults of a server kind; an unknown kind (with its own ``response_format``) gets
    ``other``'s."""
    return SERVER_KINDS.get(server_kind or REMOTE_SERVER_KIND, SERVER_KINDS["other"])


@dataclass
class Endpoint:
    """Who answers and how: ``base_urls`` empty means the embedded local model (``local_model``, or
    the packaged SmolLM2), served by ``local_backend`` (``auto``, ``transformers``, ``llamacpp``:
    :data:`lantern.llm.local.BACKENDS`), started for the stage and stopped after it.

    ``server_kind`` picks the structured-output mode (``answers.DEFAULT_MODE``) unless
    ``response_format`` names one. ``api_key_env`` names the environment variable holding the key (a
    loopback endpoint without one gets a dummy key); the key itself is never stored. ``prices`` maps
    a model name to ``[USD per 1M prompt tokens, USD per 1M completion tokens]``, over the built-in
    prices (:mod:`lantern.llm.prices`); ``max_cost`` stops sending before it would be crossed, and
    needs a known price. ``timeout`` bounds each whole request (connect, wait, body); it and
    ``concurrency`` default to the server kind's (:data:`SERVER_KINDS`, :data:`EMBEDDED`).
    ``max_retries`` retries transport failures, ``max_answer_retries`` invalid answers. ``seed``
    seeds the retry jitter.

    ``embedded`` is not a setting: :func:`lantern.llm.endpoint.endpoint` sets it on the endpoint it
    points at the embedded server it started, so the stage records "the embedded model" rather than
    that server's passing loopback URL.
    """

    base_urls: list[str] = field(default_factory=list)
    model: str | None = None
    server_kind: str | None = None
    response_format: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    local_model: str | None = None
    local_backend: str | None = None
    concurrency: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    timeout: float | None = None
    max_retries: int = 5
    max_answer_retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    prices: dict[str, list[float]] = field(default_factory=dict)
    max_cost: float | None = None
    seed: int = 0
    embedded: bool = False

    def __post_init__(self) -> None:
        self.base_urls = list(self.base_urls)
        if self.concurrency is not None:
            _positive_int("concurrency", self.concurrency)
        for name in ("max_retries", "max_answer_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise LanternError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("rpm", "tpm", "max_cost", "timeout"):
            value = getattr(self, name)
            if value is not None:
                _positive_number(name, value, allow_zero=name == "max_cost")
        for name in ("backoff_base", "backoff_max"):
            _positive_number(name, getattr(self, name), allow_zero=True)
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
            raise LanternError("a model name is required with a base URL (--llm-model)")

    @property
    def local(self) -> bool:
        return not self.base_urls

    def describe(self) -> str:
        """Which LLM answers, in words: the model and where, or the embedded GGUF and backend."""
        if self.local or self.embedded:
            return describe_embedded(self.local_model, self.local_backend)
        return f"{self.model} at {', '.join(public_url(u) for u in self.base_urls)}"

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

    ``max_fallback_rate`` is the share of a split's utterance answers that may fall back to vanilla:
    above it the stage stops (incomplete, resumable) and fusion refuses the split's answers, since a
    fusion trained on mostly-vanilla "answers" learns nothing about the LLM. ``allow_fallbacks``
    accepts them anyway (recorded with the answers, so fusion accepts them too).
    """

    fields: FieldSpec = field(default_factory=FieldSpec)
    prompt: PromptOptions = field(default_factory=PromptOptions)
    endpoint: Endpoint = field(default_factory=Endpoint)
    cache_path: str | None = None
    refresh: bool = False
    max_fallback_rate: float = DEFAULT_MAX_FALLBACK_RATE
    allow_fallbacks: bool = False

    def __post_init__(self) -> None:
        value = self.max_fallback_rate
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise LanternError(f"max_fallback_rate must be a number from 0 to 1, got {value!r}")
        if not isinstance(self.allow_fallbacks, bool):
            raise LanternError(f"allow_fallbacks must be true or false, got {self.allow_fallbacks!r}")

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
        del endpoint["embedded"]
        return {
            **self.fields.to_json(),
            **asdict(self.prompt),
            **endpoint,
            "cache_path": self.cache_path,
            "refresh": self.refresh,
            "max_fallback_rate": self.max_fallback_rate,
            "allow_fallbacks": self.allow_fallbacks,
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
                answer_format=settings.answer_format,
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
            **{f.name: "endpoint" for f in dataclass_fields(Endpoint) if f.name != "embedded"},
            "cache_path": "own",
            "refresh": "own",
            "max_fallback_rate": "own",
            "allow_fallbacks": "own",
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


# Endpoint settings that decide which LLM answers (the rest say how Lantern talks to it), with the
# flag that sets each, for messages.
_WHICH_LLM = {
    "model": "--llm-model",
    "server_kind": "--server-kind",
    "response_format": "--response-format",
    "local_model": "--local-model",
    "local_backend": "--local-backend",
}


def recorded_endpoint(settings: LLMSettings, overrides: dict[str, Any], where: str) -> Endpoint:
    """The endpoint a run's answers came from (its :class:`LLMSettings`), with ``overrides`` (the
    Endpoint fields a user gave; ``base_urls=[]`` for ``--local``) applied.

    Overrides may change how Lantern talks to that LLM — limits, budget, the key's variable, and the
    URL (the same model served elsewhere answers alike) — but not which LLM answers: the run's
    fusion was trained on that LLM's answers and would weigh another's as if they were its own, so
    another model, server kind, GGUF or backend is refused (prompt and fuse a run with it instead).
    A run recorded before endpoints were, or whose URL carried credentials (never recorded), needs
    its URL again; ``where`` names the settings file in messages.
    """
    given = dict(overrides)
    urls = given.pop("base_urls", None)
    if settings.base_urls is None and urls is None:
        raise LanternError(
            f"{where}: this run was prompted before Lantern recorded its endpoint; say which LLM "
            f"answered it: --base-url URL --llm-model {settings.model} (server kind {settings.server_kind}), "
            "or --local if it was the embedded model"
        )
    embedded = urls == [] if settings.base_urls is None else settings.embedded
    llm = settings.describe_llm() if settings.base_urls is not None else f"{settings.model}"

    def refuse(what: str) -> LanternError:
        return LanternError(
            f"{where}: {what} asks another LLM than the one whose answers the run's fusion was trained on "
            f"({llm}), which would weigh its answers as that one's; leave it out, or prompt and fuse a "
            "run with that LLM"
        )

    if embedded and urls:
        raise refuse(f"--base-url {', '.join(public_url(u) for u in urls)}")
    if not embedded and urls == []:
        raise refuse("--local (the embedded model)")
    if not embedded and urls is None and settings.url_credentials:
        raise LanternError(
            f"{where}: the run's URL carried credentials, which are never recorded; give it again "
            f"with --base-url (it was {', '.join(settings.base_urls or [])})"
        )
    recorded = {
        "model": settings.model,
        "server_kind": None if embedded else settings.server_kind,
        "response_format": settings.response_format,
        "local_model": settings.local_model if embedded else None,
        "local_backend": settings.local_backend if embedded else None,
    }
    for name, flag in _WHICH_LLM.items():
        value = given.get(name)
        if value is None or recorded[name] is None or value == recorded[name]:
            continue
        if name == "local_backend" and value == "auto":
            continue
        if name == "model" and embedded:
            continue  # the embedded server names its model itself
        raise refuse(f"{flag} {value}")
    base = Endpoint(
        base_urls=[] if embedded else list(urls or settings.base_urls or []),
        api_key_env=settings.api_key_env or Endpoint.api_key_env,
        **{k: v for k, v in recorded.items() if v is not None and not (embedded and k == "model")},
    )
    return replace(base, **given)


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
