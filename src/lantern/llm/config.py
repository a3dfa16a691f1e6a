"""The LLM stage's settings, kept apart from the stage so that reading a config (the pipeline, the
CLI's parser) does not import the HTTP client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LLMConfig:
    """Everything the stage needs to know; ``base_urls`` empty means the embedded local model.

    ``cache_path`` shares one response cache between run directories (the ablation variants
    reuse the run's answers); by default each run has ``RUN_DIR/llm/cache.sqlite``.
    ``prices`` maps a model name to ``[USD per 1M prompt tokens, USD per 1M completion tokens]``.
    ``server_kind`` picks the structured-output mode (``answers.DEFAULT_MODE``) unless
    ``response_format`` names one. ``api_key_env`` names the environment variable holding the key;
    a loopback endpoint without one gets a dummy key. With the embedded model (``local_model`` or
    the packaged SmolLM2) requests go one at a time with a timeout of at least ``LOCAL_TIMEOUT``.
    """

    base_urls: list[str] = field(default_factory=list)
    model: str | None = None
    server_kind: str | None = None
    response_format: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    rpm: float | None = None
    tpm: float | None = None
    timeout: float = 120.0
    max_retries: int = 5
    max_answer_retries: int = 2
    prices: dict[str, list[float]] = field(default_factory=dict)
    max_cost: float | None = None
    stride: int = 4
    t: int = 3
    include_probs: bool = True
    include_vad: bool = True
    template: str = "erc-v1"
    refresh: bool = False
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    local_model: str | None = None
    cache_path: str | None = None
    seed: int = 0

    def outputs_config(self) -> dict[str, Any]:
        """The settings that change the answers (for stage bookkeeping): no URL, key name or limits."""
        return {
            "model": self.model,
            "server_kind": self.server_kind,
            "response_format": self.response_format,
            "stride": self.stride,
            "t": self.t,
            "include_probs": self.include_probs,
            "include_vad": self.include_vad,
            "template": self.template,
            "local_model": self.local_model if not self.base_urls else None,
        }
