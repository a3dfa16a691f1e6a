"""Command-line options shared by several commands, and the one place that turns them into configs.

Flags default to None and fall back to the dataclass that owns the setting (:class:`Endpoint`,
:class:`FieldSpec`, :class:`PromptOptions`), so no default is restated here; help texts read them
from those dataclasses. Numeric flags are checked by their argparse type, so a bad value is a usage
error naming the flag.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import fields, replace
from typing import Any

from lantern.fields import FieldSpec
from lantern.llm.config import (
    EMBEDDED,
    LOCAL_BACKENDS,
    REMOTE_SERVER_KIND,
    SERVER_KINDS,
    Endpoint,
    LLMConfig,
)
from lantern.llm.prices import price_list
from lantern.llm.prompt import ANSWER_FORMATS, PromptOptions
from lantern.rundir import DEFAULT_MAX_FALLBACK_RATE

_ENDPOINT_DEFAULTS = {f.name: f.default for f in fields(Endpoint)}
_FIELD_DEFAULTS = FieldSpec()
_PROMPT_DEFAULTS = PromptOptions()


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def share_below_one(text: str) -> float:
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to below 1, got {text!r}")
    return value


def port(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 1-65535, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text[:40]!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text[:40]!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def _rate(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, got {text!r}")
    return value


def _prices(text: str) -> dict[str, list[float]]:
    try:
        table = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError("--prices must be JSON, e.g. '{\"gpt-4o\": [2.5, 10]}'") from None
    ok = isinstance(table, dict) and all(
        isinstance(v, list)
        and len(v) == 2
        and all(isinstance(x, int | float) and not isinstance(x, bool) and x >= 0 for x in v)
        for v in table.values()
    )
    if not ok:
        raise argparse.ArgumentTypeError(
            "--prices maps a model name to [usd_per_1M_prompt, usd_per_1M_completion]"
        )
    return {str(k): [float(x) for x in v] for k, v in table.items()}


def add_endpoint_arguments(p: argparse.ArgumentParser) -> None:
    """Where the LLM answers and how Lantern talks to it (every command that prompts)."""
    d = _ENDPOINT_DEFAULTS
    remote = SERVER_KINDS[REMOTE_SERVER_KIND]
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--base-url",
        action="append",
        default=None,
        metavar="URL",
        help="OpenAI-compatible endpoint (e.g. http://host:8000/v1); repeat for replicas of one model "
        "(default: none, the embedded local model)",
    )
    where.add_argument(
        "--local", action="store_true", help="use the embedded local model (the default without --base-url)"
    )
    p.add_argument(
        "--llm-model",
        dest="model",
        metavar="NAME",
        help="model name at the endpoint (required with --base-url; no default)",
    )
    p.add_argument(
        "--local-model", metavar="GGUF", help="GGUF file for the embedded server (default: SmolLM2)"
    )
    add_local_backend_argument(p)
    p.add_argument(
        "--server-kind",
        choices=list(SERVER_KINDS),
        help=f"what serves the endpoint: picks the structured-output mode and the defaults of "
        f"--concurrency and --timeout (default {REMOTE_SERVER_KIND})",
    )
    p.add_argument(
        "--response-format",
        metavar="MODE",
        help="override the structured-output mode (default: the server kind's)",
    )
    p.add_argument(
        "--api-key-env",
        metavar="NAME",
        help=f"environment variable holding the key (default {d['api_key_env']})",
    )
    p.add_argument(
        "--concurrency",
        type=positive_int,
        help=f"requests in flight at most (default {remote.concurrency}; {EMBEDDED.concurrency} for "
        f"--server-kind llamacpp and the embedded model, which answer one at a time)",
    )
    p.add_argument("--rpm", type=positive_float, help="requests per minute at most (default: no limit)")
    p.add_argument(
        "--tpm",
        type=positive_float,
        help="tokens per minute at most, prompt estimate + max_tokens (default: no limit)",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        metavar="S",
        help=f"seconds a whole request may take, connect to last byte (default {remote.timeout:g}; "
        f"{EMBEDDED.timeout:g} for --server-kind llamacpp and the embedded model)",
    )
    p.add_argument(
        "--max-retries",
        type=non_negative_int,
        help=f"retries of a failed request (default {d['max_retries']})",
    )
    p.add_argument(
        "--max-answer-retries",
        type=non_negative_int,
        help=f"retries of an invalid answer (default {d['max_answer_retries']})",
    )
    p.add_argument(
        "--max-cost",
        type=non_negative_float,
        metavar="USD",
        help="stop sending before spending more (default: no limit); needs the model's price, "
        "built in or from --prices (the embedded model is free)",
    )
    p.add_argument(
        "--prices",
        type=_prices,
        metavar="JSON",
        help='prices over the built-in table: {"model": [usd_per_1M_prompt, usd_per_1M_completion]} '
        f"(default: the built-in table, as of {price_list()['as_of']}: "
        f"{', '.join(list(price_list()['prices'])[:4])}, ...)",
    )


def add_fallback_arguments(p: argparse.ArgumentParser) -> None:
    """How many fallbacks a split's answers may hold (the LLM stage stops above it; fusion refuses)."""
    p.add_argument(
        "--max-fallback-rate",
        type=_rate,
        metavar="RATE",
        help=f"share of a split's utterance answers that may fall back to vanilla before the stage "
        f"stops (exit 3, resumable) and fusion refuses them (default {DEFAULT_MAX_FALLBACK_RATE:g})",
    )
    p.add_argument(
        "--allow-fallbacks",
        action="store_true",
        help="accept answers whatever their fallback rate, recorded so that fusion accepts them too "
        "(default: off)",
    )


def add_local_backend_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--local-backend",
        choices=LOCAL_BACKENDS,
        help="what serves the embedded model: transformers (no compiler) or llama.cpp (the 'llamacpp' "
        "extra); auto, the default, takes transformers where the 'local' extra is installed (6x faster "
        "here), llama.cpp where only it is",
    )


def add_field_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stride", type=positive_int, help=f"receptive-field stride s (default {_FIELD_DEFAULTS.stride})"
    )
    p.add_argument("--t", type=positive_int, help=f"fields per utterance t (default {_FIELD_DEFAULTS.t})")


def add_prompt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--template", help=f"prompt template name or .txt path (default {_PROMPT_DEFAULTS.template})"
    )
    p.add_argument(
        "--answer-format",
        choices=ANSWER_FORMATS,
        help=f"how the LLM answers: adjusted probabilities, a label read by log-probabilities, or "
        f"digits (default {_PROMPT_DEFAULTS.answer_format})",
    )
    p.add_argument("--no-vad", action="store_true", help="leave the VAD references out of the prompt")
    p.add_argument("--no-probs", action="store_true", help="leave the class-probability references out")


def endpoint_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The Endpoint fields the user gave flags for (``base_urls=[]`` for an explicit ``--local``)."""
    overrides: dict[str, Any] = {}
    if args.base_url:
        overrides["base_urls"] = list(args.base_url)
    elif getattr(args, "local", False):
        overrides["base_urls"] = []
    for name in (
        "model",
        "local_model",
        "local_backend",
        "server_kind",
        "response_format",
        "api_key_env",
        "concurrency",
        "rpm",
        "tpm",
        "timeout",
        "max_retries",
        "max_answer_retries",
        "max_cost",
        "prices",
    ):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return overrides


def endpoint_from_args(args: argparse.Namespace, base: Endpoint | None = None) -> Endpoint:
    """``base`` (default: Endpoint()) with every endpoint flag the user gave applied."""
    return replace(base or Endpoint(), **endpoint_overrides(args))


def llm_config_from_args(args: argparse.Namespace) -> LLMConfig:
    """The LLM stage's whole config from ``lantern prompt``'s flags."""
    fields_spec = FieldSpec(
        stride=args.stride if args.stride is not None else _FIELD_DEFAULTS.stride,
        t=args.t if args.t is not None else _FIELD_DEFAULTS.t,
    )
    prompt = PromptOptions(
        include_probs=not args.no_probs,
        include_vad=not args.no_vad,
        template=args.template or _PROMPT_DEFAULTS.template,
        answer_format=args.answer_format or _PROMPT_DEFAULTS.answer_format,
    )
    return LLMConfig(
        fields=fields_spec,
        prompt=prompt,
        endpoint=endpoint_from_args(args),
        refresh=args.refresh,
        max_fallback_rate=(
            args.max_fallback_rate if args.max_fallback_rate is not None else DEFAULT_MAX_FALLBACK_RATE
        ),
        allow_fallbacks=args.allow_fallbacks,
    )
