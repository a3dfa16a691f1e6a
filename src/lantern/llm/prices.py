"""What a model's tokens cost: the built-in price table (``prices.json``) and the user's.

The built-in table holds the common hosted models with the date its prices were taken and their
source (read them from the file: :func:`builtin_prices`). A user's table (``--prices``, ``prices`` in
the ``[llm]`` table) overrides and extends it. A model name is looked up as written, then without a
release suffix — a date (``gpt-4o-2024-08-06``, ``claude-3-5-haiku-20241022``) or ``-latest`` — so a
dated snapshot costs what its family costs unless the table lists the snapshot itself (as it does
``gpt-4o-2024-05-13``, which was priced higher). A model found nowhere has no price: None, never
"free", so that a budget cannot silently count it as nothing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from lantern.errors import LanternError

_RELEASE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


@dataclass(frozen=True)
class Price:
    """US dollars per one million prompt and completion tokens."""

    prompt: float
    completion: float

    def __post_init__(self) -> None:
        for name in ("prompt", "completion"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise LanternError(
                    f"a {name} price must be a finite number >= 0 (USD per 1M tokens), got {value!r}"
                )

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1e6


FREE = Price(0.0, 0.0)


@cache
def price_list() -> dict[str, Any]:
    """The whole built-in file: ``prices`` with ``as_of`` (the date) and ``source``."""
    return json.loads(resources.files("lantern.llm").joinpath("prices.json").read_text(encoding="utf-8"))


def builtin_prices() -> dict[str, list[float]]:
    return dict(price_list()["prices"])


def base_name(model: str) -> str:
    """``model`` without a release suffix (a date or ``-latest``)."""
    return _RELEASE_SUFFIX.sub("", model)


def price_for(model: str, prices: Mapping[str, Price | Sequence[float]] | None = None) -> Price | None:
    """The price of ``model``: from ``prices`` (the user's), then the built-in table, each by the
    name as written and then by its :func:`base_name`; None when neither knows it."""
    for table in (prices or {}, builtin_prices()):
        for name in (model, base_name(model)):
            entry = table.get(name)
            if entry is not None:
                return entry if isinstance(entry, Price) else Price(float(entry[0]), float(entry[1]))
    return None
