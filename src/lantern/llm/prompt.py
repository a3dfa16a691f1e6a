"""Prompts: one chat request per receptive field, rendered from a versioned template file.

The template (``templates/<name>.txt``) holds all the wording, so a prompt variant is a new file and
an experiment axis; its name and a hash of its text form :func:`template_version`, which is part of
the cache key. The code here only renders the data: a header naming the dialogue (by an alias) and the field,
the label set, and one line per utterance::

    4 | speaker "M" | text "Why did you do that?" | probs hap 0.10, sad 0.00, ... | vad 2.1 3.4 3.0

Speaker and transcript are JSON strings, with ``<``, ``>`` and every line or paragraph separator
escaped, so no transcript can end its line or close the ``<dialogue>`` block it sits in: text that
reads like an instruction stays data (the system message says so too). The project's test server reads a
rendered prompt back (:mod:`lantern.testing.prompt_reader`) to answer from the request alone.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from lantern.errors import LanternError
from lantern.labels import LabelSet

DEFAULT_TEMPLATE = "erc-v2"
# How the LLM answers (lantern.llm.formats); the default is chosen by measurement (README, "Answer
# formats"): under the simulated LLM the three formats' fused gains agree within their intervals,
# logprobs writes 5-6x fewer answer tokens than probs (SmolLM2's tokenizer), and the embedded
# SmolLM2 answered every probs request with all-zero percentages (every utterance fell back) while
# its logprobs answers were all valid. A server that returns no logprobs is told to use "probs".
ANSWER_FORMATS = ("probs", "logprobs", "digits")
DEFAULT_ANSWER_FORMAT = "logprobs"

# Full words for the abbreviated IEMOCAP class names, so that the LLM reads "fru" as "frustrated".
CLASS_GLOSS = {
    "hap": "happy",
    "sad": "sad",
    "neu": "neutral",
    "ang": "angry",
    "exc": "excited",
    "fru": "frustrated",
    "sur": "surprised",
    "fea": "fearful",
    "dis": "disgusted",
}

_SECTION = re.compile(r"^=== (system|user) ===$", re.MULTILINE)
_BLOCKS = ("probs", "vad")
# Characters that must not appear raw inside a quoted transcript: the block delimiters' angle
# brackets, and everything that some reader (str.splitlines, a tokenizer, a terminal) treats as a
# line break or an invisible control.
_UNSAFE = re.compile(
    r"[<>\x7f-\x9f\u2028\u2029\u0085]|[^\S ]|[\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]"
)


@dataclass
class PromptOptions:
    """What goes into a prompt: the references shown (ablations), the template variant and the
    answer format asked for.

    ``template`` is a packaged template name (``erc-v2``) or the path of a template file; a template
    holds one ``[[answer:NAME]]`` block per answer format it supports.
    """

    include_probs: bool = True
    include_vad: bool = True
    template: str = DEFAULT_TEMPLATE
    answer_format: str = DEFAULT_ANSWER_FORMAT

    def __post_init__(self) -> None:
        if self.answer_format not in ANSWER_FORMATS:
            raise LanternError(
                f"unknown answer format {self.answer_format!r}; known: {', '.join(ANSWER_FORMATS)}"
            )


@dataclass
class FieldUtterance:
    """One utterance of a field: absolute ``index`` in its dialogue, vanilla ``probs`` and ``vad`` (1-5)."""

    index: int
    id: str
    speaker: str
    text: str
    probs: list[float] = field(default_factory=list)
    vad: list[float] | None = None


@dataclass(frozen=True)
class Template:
    name: str
    text: str
    system: str
    user: str


def load_template(name: str = DEFAULT_TEMPLATE) -> Template:
    """A packaged template by name, or a template file by path; ValueError naming the known ones otherwise.

    Read once per file state (path, size, modification time): a stage renders hundreds of prompts
    from one template, and an edited file is read again.
    """
    path = Path(name)
    if path.suffix == ".txt" and path.is_file():
        state = path.stat()
        return _template_file(str(path.resolve()), state.st_size, state.st_mtime_ns)
    return _packaged_template(name)


@functools.lru_cache(maxsize=32)
def _template_file(path: str, size: int, mtime_ns: int) -> Template:
    """The template in file ``path`` as it is at this size and modification time."""
    return _parse_template(Path(path).stem, Path(path).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=32)
def _packaged_template(name: str) -> Template:
    """A template shipped with Lantern (read once per process: the package does not change)."""
    packaged = resources.files("lantern.llm") / "templates" / f"{name}.txt"
    if not packaged.is_file():
        known = sorted(
            p.name.removesuffix(".txt")
            for p in (resources.files("lantern.llm") / "templates").iterdir()
            if p.name.endswith(".txt")
        )
        raise LanternError(f"unknown prompt template {name!r}; known: {', '.join(known)} (or a .txt path)")
    return _parse_template(name, packaged.read_text(encoding="utf-8"))


def _parse_template(name: str, text: str) -> Template:
    parts = _SECTION.split(text)
    # parts: [preamble, role, body, role, body, ...]
    sections = {parts[i]: parts[i + 1].strip("\n") for i in range(1, len(parts) - 1, 2)}
    preamble = [line for line in parts[0].splitlines() if line.strip() and not line.startswith("#")]
    if preamble or set(sections) != {"system", "user"} or len(parts) != 5:
        raise LanternError(
            f"prompt template {name!r}: needs exactly one '=== system ===' and one '=== user ===' section"
        )
    return Template(name=name, text=text, system=sections["system"], user=sections["user"])


def template_version(options: PromptOptions) -> str:
    """Template name, hash of its text, answer format, ablations: ``erc-v2@3f2a9c1d0b7e-probs-novad``."""
    template = load_template(options.template)
    digest = hashlib.sha256(template.text.encode("utf-8")).hexdigest()[:12]
    suffix = ("" if options.include_probs else "-noprobs") + ("" if options.include_vad else "-novad")
    return f"{template.name}@{digest}-{options.answer_format}{suffix}"


def quote(text: str) -> str:
    """``text`` as a single-line JSON string in which no delimiter or line break can appear raw."""
    dumped = json.dumps(text, ensure_ascii=False)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", dumped)


def _glossary(classes: tuple[str, ...]) -> str:
    return ", ".join(f"{c} = {CLASS_GLOSS[c.lower()]}" if c.lower() in CLASS_GLOSS else c for c in classes)


def _check_class_names(labels: LabelSet) -> None:
    for c in labels.classes:
        if not c.strip() or c != c.strip() or _UNSAFE.search(c) or "," in c or "|" in c:
            raise LanternError(
                f"label set {labels.name!r}: class name {c!r} cannot be shown in a prompt "
                "(no commas, bars, angle brackets, control characters or surrounding spaces)"
            )


def _utterance_line(u: FieldUtterance, labels: LabelSet, show_probs: bool, show_vad: bool) -> str:
    parts = [str(u.index), f"speaker {quote(u.speaker)}", f"text {quote(u.text)}"]
    if show_probs:
        parts.append(
            "probs " + ", ".join(f"{c} {p:.2f}" for c, p in zip(labels.classes, u.probs, strict=True))
        )
    if show_vad and u.vad is not None:
        parts.append("vad " + " ".join(f"{x:.1f}" for x in u.vad))
    return " | ".join(parts)


def _check_field(
    dialogue_id: str,
    start: int,
    stop: int,
    utterances: list[FieldUtterance],
    n_classes: int,
    options: PromptOptions,
) -> None:
    where = f"dialogue {dialogue_id}, field {start}-{stop - 1}"
    if not 0 <= start < stop:
        raise LanternError(f"{where}: not a field (start must be >= 0 and below stop)")
    indices = [u.index for u in utterances]
    if indices != list(range(start, stop)):
        raise LanternError(f"{where}: utterances must be indices {start}..{stop - 1} in order, got {indices}")
    for u in utterances:
        if options.include_probs and (
            len(u.probs) != n_classes or not all(math.isfinite(p) and p >= 0 for p in u.probs)
        ):
            raise LanternError(f"{where}, utterance {u.id}: needs {n_classes} finite probabilities >= 0")
        if (
            options.include_vad
            and u.vad is not None
            and (len(u.vad) != 3 or not all(math.isfinite(x) for x in u.vad))
        ):
            raise LanternError(f"{where}, utterance {u.id}: VAD must be 3 finite numbers")


@functools.lru_cache(maxsize=64)
def _drop_blocks(text: str, keep_probs: bool, keep_vad: bool, answer_format: str) -> str:
    """The template body with the reference blocks left out and only the chosen answer block kept."""
    keep = {"probs": keep_probs, "vad": keep_vad}
    for block in _BLOCKS:
        pattern = re.compile(rf"\[\[{block}\]\](.*?)\[\[/{block}\]\]", re.DOTALL)
        text = pattern.sub((lambda m: m.group(1)) if keep[block] else "", text)
    answers = re.compile(r"\[\[answer:([a-z]+)\]\](.*?)\[\[/answer:\1\]\]", re.DOTALL)
    return answers.sub(lambda m: m.group(2) if m.group(1) == answer_format else "", text)


def dialogue_alias(dialogue_id: str) -> str:
    """The name a prompt gives a dialogue: a short hash of its id, never the id itself (a model that
    memorised a public corpus's scripts could use ``Ses01F_impro01``). Stable, so prompts and their
    cache keys are too."""
    return "conversation-" + hashlib.sha256(dialogue_id.encode("utf-8")).hexdigest()[:12]


def build_messages(
    dialogue_id: str,
    start: int,
    stop: int,
    utterances: list[FieldUtterance],
    labels: LabelSet,
    options: PromptOptions | None = None,
) -> list[dict]:
    """OpenAI chat messages ``[system, user]`` asking for adjusted distributions of field ``[start, stop)``.

    ``utterances`` are the field's utterances in order (indices ``start..stop-1``). VAD is shown
    only for utterances that have it; a field where none has it drops the VAD wording entirely.
    """
    options = options or PromptOptions()
    _check_class_names(labels)
    _check_field(dialogue_id, start, stop, utterances, len(labels), options)
    template = load_template(options.template)
    show_vad = options.include_vad and any(u.vad is not None for u in utterances)

    values = {
        "dialogue": quote(dialogue_alias(dialogue_id)),
        "first": str(start),
        "last": str(stop - 1),
        "classes": json.dumps(list(labels.classes), ensure_ascii=False),
        "glossary": _glossary(labels.classes),
        "n_classes": str(len(labels)),
        "utterances": "\n".join(
            _utterance_line(u, labels, options.include_probs, show_vad) for u in utterances
        ),
    }
    messages = []
    for role, body in (("system", template.system), ("user", template.user)):
        try:
            body = _drop_blocks(body, options.include_probs, show_vad, options.answer_format)
            content = string.Template(body).substitute(values)
        except (KeyError, ValueError) as exc:
            raise LanternError(f"prompt template {template.name!r}: bad placeholder ({exc})") from exc
        messages.append({"role": role, "content": content})
    return messages
