"""What the LLM stage hands to fusion: per window, per utterance, an adjusted distribution.

``answers-<split>.jsonl`` holds one object per receptive field::

    {"dialogue": ..., "start": 0, "stop": 12,
     "utterances": [{"id": ..., "b": 2, "r": 0, "probs": [...], "status": "ok"|"fallback",
                     "reason": null|"..."}]}

``b`` is the receptive-field position (0..t-1), ``r`` the offset inside the window. A fallback
utterance carries its vanilla distribution and the reason the LLM's answer was not used.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lantern.rundir import atomic_write_text

OK = "ok"
FALLBACK = "fallback"


@dataclass
class UtteranceAnswer:
    id: str
    b: int
    r: int
    probs: list[float]
    status: str = OK
    reason: str | None = None


@dataclass
class WindowAnswer:
    dialogue: str
    start: int
    stop: int
    utterances: list[UtteranceAnswer] = field(default_factory=list)


def write_window_answers(path: str | Path, windows: Iterable[WindowAnswer]) -> None:
    lines = [json.dumps(asdict(w), separators=(",", ":")) for w in windows]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def read_window_answers(path: str | Path) -> list[WindowAnswer]:
    path = Path(path)
    out: list[WindowAnswer] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                out.append(
                    WindowAnswer(
                        dialogue=str(obj["dialogue"]),
                        start=int(obj["start"]),
                        stop=int(obj["stop"]),
                        utterances=[UtteranceAnswer(**u) for u in obj["utterances"]],
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{lineno}: not a window answer record ({exc})") from exc
    return out
