"""Per-utterance predictions: the hand-over between the vanilla model, the LLM stage and fusion.

One JSON object per line: ``id``, ``dialogue``, ``speaker``, ``split``, ``label`` (gold index or
null), ``probs`` (label-set order, sums to 1), ``vad`` ([valence, arousal, dominance], 1-5 scale,
or null when the model has no VAD head output for it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from lantern.corpus.dialogue import CorpusError
from lantern.jsonio import json_lines
from lantern.rundir import atomic_write_text


@dataclass
class Prediction:
    id: str
    dialogue: str
    speaker: str
    split: str
    label: int | None
    probs: list[float]
    vad: list[float] | None = None


def write_predictions(path: str | Path, predictions: Iterable[Prediction]) -> None:
    """Write predictions as JSONL, atomically (a reader never sees half a file)."""
    lines = [json.dumps(asdict(p), separators=(",", ":")) for p in predictions]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def read_predictions(path: str | Path) -> list[Prediction]:
    """Read a predictions JSONL file, checking each record; errors name the file and line."""
    file = str(path)
    out: list[Prediction] = []
    for lineno, obj in json_lines(path):
        try:
            p = Prediction(
                id=str(obj["id"]),
                dialogue=str(obj["dialogue"]),
                speaker=str(obj["speaker"]),
                split=str(obj["split"]),
                label=None if obj.get("label") is None else int(obj["label"]),
                probs=[float(x) for x in obj["probs"]],
                vad=None if obj.get("vad") is None else [float(x) for x in obj["vad"]],
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise CorpusError(f"line {lineno}: not a prediction record ({exc!r})", file=file) from None
        if not p.probs or any(not math.isfinite(x) or x < 0 for x in p.probs):
            raise CorpusError(
                f"line {lineno}: probabilities must be finite and >= 0", file=file, utterance=p.id
            )
        out.append(p)
    return out
