"""IEMOCAP dimension labels: read the EmoEvaluation files and join their VAD onto a corpus.

Each evaluated turn has one tab-separated header line::

    [6.2901 - 8.2357]	Ses01F_impro01_F000	neu	[2.5000, 2.5000, 2.5000]

(time span, utterance id, majority label, [valence, activation, dominance] on a 1-5 scale: the
evaluators' mean). The lines that follow a header are per-evaluator detail and are skipped, as is
the leading ``%`` comment and every file without header lines (the Categorical/Attribute
sub-folders). The public feature pickles carry no VAD; this is where the VAD head's targets come from.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from lantern.corpus.dialogue import VAD_RANGE, Corpus, CorpusError

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|NaN|inf|-inf"
HEADER = re.compile(
    rf"^\[\s*(?:{_NUMBER})\s*-\s*(?:{_NUMBER})\s*\]\t(?P<id>\S+)\t(?P<label>\S+)\t"
    rf"\[\s*(?P<v>{_NUMBER})\s*,\s*(?P<a>{_NUMBER})\s*,\s*(?P<d>{_NUMBER})\s*\]\s*$"
)


def _read_file(path: Path, vad: dict[str, tuple[float, float, float]], origin: dict[str, str]) -> None:
    try:
        # utf-8-sig: a byte-order mark would otherwise hide the first header line ("\ufeff[...").
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise CorpusError(f"cannot read: {exc.strerror}", file=str(path)) from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("["):
            continue
        match = HEADER.match(line)
        if match is None:
            raise CorpusError(
                f"line {number}: not an EmoEvaluation header "
                f"('[start - end]<TAB>id<TAB>label<TAB>[v, a, d]'): {line[:80]!r}",
                file=str(path),
            )
        uid = match["id"]
        triple = (float(match["v"]), float(match["a"]), float(match["d"]))
        for value in triple:
            if not (math.isfinite(value) and VAD_RANGE[0] <= value <= VAD_RANGE[1]):
                raise CorpusError(
                    f"line {number}: VAD value {value} is outside {VAD_RANGE[0]:g}-{VAD_RANGE[1]:g}",
                    file=str(path),
                    utterance=uid,
                )
        if uid in vad and vad[uid] != triple:
            raise CorpusError(
                f"line {number}: VAD {triple} contradicts {vad[uid]} given in {origin[uid]}",
                file=str(path),
                utterance=uid,
            )
        vad[uid] = triple
        origin[uid] = str(path)


def read_emoeval(path: str | Path) -> dict[str, tuple[float, float, float]]:
    """Utterance id → (valence, arousal, dominance) from every ``*.txt`` under ``path`` (or one file).

    Raises CorpusError naming the file and utterance for a VAD value outside 1-5 or a malformed
    header line, and when no header line is found at all (probably the wrong directory).
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or directory")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.txt") if p.is_file())
    vad: dict[str, tuple[float, float, float]] = {}
    origin: dict[str, str] = {}
    for file in files:
        _read_file(file, vad, origin)
    if not vad:
        raise CorpusError(
            f"no EmoEvaluation header lines in {len(files)} .txt file(s) "
            "(expected the Session*/dialog/EmoEvaluation folders)",
            file=str(root),
        )
    return vad


@dataclass
class VadJoinReport:
    """What joining VAD onto a corpus matched: every utterance should have VAD for the VAD head."""

    matched: int
    missing: list[str] = field(default_factory=list)  # corpus utterance ids with no VAD
    unused: list[str] = field(default_factory=list)  # VAD ids that are not in the corpus

    @property
    def total(self) -> int:
        return self.matched + len(self.missing)

    def summary(self) -> str:
        text = f"VAD {self.matched}/{self.total} utterances"
        if self.missing:
            shown = ", ".join(self.missing[:3]) + (", ..." if len(self.missing) > 3 else "")
            text += f", {len(self.missing)} without VAD ({shown})"
        if self.unused:
            text += f", {len(self.unused)} EmoEvaluation ids not in the corpus"
        return text

    def to_json(self) -> dict:
        return {"matched": self.matched, "missing": list(self.missing), "unused": list(self.unused)}


def join_vad(corpus: Corpus, vad: dict[str, tuple[float, float, float]]) -> VadJoinReport:
    """Set each utterance's ``vad`` from ``vad`` by utterance id (in place) and report the join."""
    matched = 0
    missing: list[str] = []
    ids: set[str] = set()
    for dialogue in corpus.dialogues:
        for utterance in dialogue.utterances:
            ids.add(utterance.id)
            triple = vad.get(utterance.id)
            if triple is None:
                missing.append(utterance.id)
            else:
                utterance.vad = triple
                matched += 1
    unused = sorted(uid for uid in vad if uid not in ids)
    return VadJoinReport(matched=matched, missing=missing, unused=unused)
