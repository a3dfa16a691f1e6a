"""What the LLM stage hands to fusion: per field, per utterance, an adjusted distribution.

``answers-<split>.jsonl`` holds one object per receptive field::

    {"dialogue": ..., "start": 0, "stop": 12,
     "utterances": [{"id": ..., "b": 2, "r": 0, "probs": [...], "status": "ok"|"fallback",
                     "reason": null|"..."}]}

``b`` is the receptive-field position (0..t-1), ``r`` the offset inside the field. A fallback
utterance carries its vanilla distribution and the reason the LLM's answer was not used.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lantern.errors import LanternError
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
class FieldAnswer:
    dialogue: str
    start: int
    stop: int
    utterances: list[UtteranceAnswer] = field(default_factory=list)

    def to_json(self) -> dict:
        """The record as written (built directly: ``dataclasses.asdict`` deep-copies every list)."""
        return {
            "dialogue": self.dialogue,
            "start": self.start,
            "stop": self.stop,
            "utterances": [
                {"id": u.id, "b": u.b, "r": u.r, "probs": u.probs, "status": u.status, "reason": u.reason}
                for u in self.utterances
            ],
        }


def write_field_answers(path: str | Path, answers: Iterable[FieldAnswer]) -> None:
    lines = [json.dumps(a.to_json(), separators=(",", ":")) for a in answers]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def read_field_answers(path: str | Path) -> list[FieldAnswer]:
    path = Path(path)
    out: list[FieldAnswer] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                out.append(
                    FieldAnswer(
                        dialogue=str(obj["dialogue"]),
                        start=int(obj["start"]),
                        stop=int(obj["stop"]),
                        utterances=[UtteranceAnswer(**u) for u in obj["utterances"]],
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise LanternError(f"{path}:{lineno}: not a field answer record ({exc})") from exc
    return out
