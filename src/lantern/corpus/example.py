"""A built-in, seeded, SYNTHETIC corpus shaped like IEMOCAP, so the whole pipeline runs without data.

Nothing here is real speech or real annotation. The generator imitates what matters to the models
and to the LLM stage:

- dyadic dialogues of ``min_len``-``max_len`` utterances (gamma-distributed, about 50 on average),
  speakers "F"/"M" mostly alternating; ids shaped like ``Ses01F_impro01`` / ``Ses01F_impro01_F000``;
- labels that persist between turns (a Markov chain: a speaker tends to keep their emotion, a
  dialogue has a theme) with IEMOCAP's class priors;
- per-class structure in every modality — a class mean plus noise, a per-speaker offset, a pull
  from the previous turn's class — strongest in text, weakest in visual, with neighbouring classes
  (hap/exc, ang/fru, sad/neu) close together and some utterances rendered as their neighbour, so a
  model can learn it but not perfectly;
- transcripts from templates with emotion cue words (some deliberately neutral-worded), so a
  sentence embedding or an LLM can pick up the emotion;
- VAD consistent with the class (ang: low valence, high arousal) plus noise, within 1-5;
- splits like IEMOCAP: sessions 1-4 train (the first 10% of them dev), session 5 (~20%) test.
"""

from __future__ import annotations

import numpy as np

from lantern.corpus.dialogue import Corpus, Dialogue, Utterance
from lantern.errors import LanternError
from lantern.labels import LabelSet, get_label_set

DEFAULT_WIDTHS = {"t": 768, "a": 100, "v": 512}

# Published IEMOCAP 6-way train priors; MELD train frequencies (approximate).
PRIORS = {
    "hap": 0.0867, "sad": 0.1444, "neu": 0.2279, "ang": 0.1606, "exc": 0.1277, "fru": 0.2527,
    "neutral": 0.47, "surprise": 0.12, "fear": 0.03, "sadness": 0.07, "joy": 0.17, "disgust": 0.03,
    "anger": 0.11,
}  # fmt: skip

# Pairs of classes that are hard to tell apart (hap/exc, ang/fru, ...), with how close they are.
NEIGHBOURS = (
    ("hap", "exc", 0.35), ("ang", "fru", 0.3), ("sad", "neu", 0.15), ("neu", "fru", 0.1),
    ("joy", "surprise", 0.25), ("anger", "disgust", 0.3), ("fear", "sadness", 0.2),
    ("neutral", "sadness", 0.1),
)  # fmt: skip

# (valence, arousal, dominance) centres on the 1-5 scale.
VAD_CENTRES = {
    "hap": (4.0, 3.1, 3.2), "exc": (4.1, 3.8, 3.5), "sad": (1.9, 2.2, 2.1), "neu": (3.0, 2.5, 2.8),
    "ang": (1.8, 3.9, 3.9), "fru": (2.1, 3.2, 3.1),
    "neutral": (3.0, 2.5, 2.8), "surprise": (3.5, 4.0, 3.0), "fear": (1.9, 3.8, 1.8),
    "sadness": (1.9, 2.2, 2.1), "joy": (4.1, 3.5, 3.4), "disgust": (2.0, 3.1, 3.2), "anger": (1.8, 3.9, 3.9),
}  # fmt: skip

# Cue sentences per class (MELD classes reuse the IEMOCAP ones they correspond to).
CUES = {
    "hap": ("I'm really happy about this.", "That makes me so glad.", "What a lovely day, honestly.",
            "I'm so pleased for you.", "That's sweet, thank you.", "I feel good about us."),
    "exc": ("Oh my god, that's amazing!", "I can't believe it, we did it!", "This is incredible!",
            "Yes! That's fantastic news!", "Wow, I'm so excited!", "No way, that's awesome!"),
    "sad": ("I miss him so much.", "I just feel empty.", "It's over, isn't it.", "I can't stop crying.",
            "Nothing is ever going to be the same.", "I'm so sorry, I lost it."),
    "neu": ("Okay. What time is it?", "I'll be there at five.", "It's on the table.",
            "Sure, we can do that.", "The form is in the second drawer.", "Fine, let me check."),
    "ang": ("Don't you dare talk to me like that!", "Get out of my face!", "I'm furious with you!",
            "How dare you lie to me!", "Shut up, just shut up!", "That's it, I'm done with you!"),
    "fru": ("I've been waiting here for hours.", "This is ridiculous, nothing works.",
            "Why does this keep happening?", "I already told you that twice.",
            "I can't deal with this form again.", "Nobody ever listens to me."),
    "surprise": ("Wait, what? Really?", "You're kidding me!", "I did not see that coming!",
                 "Seriously? Since when?", "Whoa, hold on!", "That's unexpected!"),
    "fear": ("I'm scared, what if they come back?", "Please don't leave me alone.",
             "Something's wrong, I can feel it.", "I'm terrified of what happens next.",
             "What was that noise?", "I don't want to die."),
    "disgust": ("Ugh, that's disgusting.", "Gross, get it away from me.", "That's revolting.",
                "I can't even look at it.", "Eww, what is that smell?", "That's just nasty."),
}  # fmt: skip
CUES["neutral"], CUES["sadness"], CUES["joy"], CUES["anger"] = (
    CUES["neu"],
    CUES["sad"],
    CUES["hap"],
    CUES["ang"],
)

NEUTRAL_WORDED = (
    "Yeah.", "I know.", "What do you mean?", "Okay, okay.", "So what now?", "Mm-hm.",
    "Let's talk about it later.", "I went to the office today.", "Right.", "Is that what you think?",
)  # fmt: skip

# How far class means lie apart (in noise standard deviations) per modality: text > audio > visual.
SEPARATION = {"t": 4.5, "a": 3.2, "v": 2.4}
NEUTRAL_WORDED_RATE = 0.25  # utterances whose transcript carries no cue word
AMBIGUOUS_RATE = 0.12  # utterances rendered as their neighbouring class
CONTEXT_PULL = 0.3  # share of the previous turn's class mean in an utterance's features
SPEAKER_OFFSET = 1.0  # norm of a per-dialogue speaker offset (noise has unit variance per dimension)
VAD_NOISE = 0.4


def _class_params(labels: LabelSet) -> tuple[np.ndarray, np.ndarray, list[list[tuple[int, float]]]]:
    """(priors (C,), VAD centres (C, 3), neighbours of each class as (index, closeness))."""
    names = labels.classes
    priors = np.array([PRIORS.get(c, 1.0 / len(names)) for c in names])
    centres = np.array([VAD_CENTRES.get(c, (3.0, 3.0, 3.0)) for c in names])
    neighbours: list[list[tuple[int, float]]] = [[] for _ in names]
    for a, b, closeness in NEIGHBOURS:
        if a in names and b in names:
            neighbours[names.index(a)].append((names.index(b), closeness))
            neighbours[names.index(b)].append((names.index(a), closeness))
    return priors / priors.sum(), centres, neighbours


def _class_means(
    rng: np.random.Generator, width: int, separation: float, neighbours: list[list[tuple[int, float]]]
) -> np.ndarray:
    """``(C, width)`` means whose pairwise distance is about ``separation``, neighbours pulled closer."""
    base = rng.standard_normal((len(neighbours), width))
    base *= separation / np.sqrt(2.0) / np.linalg.norm(base, axis=1, keepdims=True)
    means = base.copy()
    for c, pairs in enumerate(neighbours):
        for other, closeness in pairs:
            means[c] += closeness * (base[other] - base[c])
    return means.astype(np.float32)


def _dialogue_ids(n: int) -> tuple[list[str], list[int]]:
    """IEMOCAP-shaped dialogue ids and their session (1-5); the last ~20% form session 5."""
    n_test = max(1, round(0.2 * n)) if n >= 2 else 0
    n_train = n - n_test
    sessions = [1 + (4 * i) // max(n_train, 1) for i in range(n_train)] + [5] * n_test
    counters: dict[tuple[int, str, str], int] = {}
    ids = []
    for i, s in enumerate(sessions):
        actor = "F" if i % 2 == 0 else "M"
        kind = "impro" if (i // 2) % 3 != 2 else "script"
        k = counters.get((s, actor, kind), 0) + 1
        counters[(s, actor, kind)] = k
        ids.append(f"Ses{s:02d}{actor}_{kind}{k:02d}")
    return ids, sessions


def _speakers(rng: np.random.Generator, n: int) -> list[str]:
    """Dyadic turns: the other speaker takes the next turn 85% of the time."""
    switch = rng.random(n) < 0.85
    current = "F" if switch[0] else "M"
    out = []
    for i in range(n):
        if i > 0 and switch[i]:
            current = "M" if current == "F" else "F"
        out.append(current)
    return out


def _labels_for_dialogue(rng: np.random.Generator, speakers: list[str], priors: np.ndarray) -> list[int]:
    """A Markov chain over turns: keep your last emotion, else drift to the dialogue's theme or anywhere."""
    n = len(speakers)
    theme = int(rng.choice(len(priors), p=priors))
    draws = rng.random(n)
    fresh = rng.choice(len(priors), p=priors, size=n)
    last: dict[str, int] = {}
    out = []
    for i, speaker in enumerate(speakers):
        previous = last.get(speaker)
        if previous is not None and draws[i] < 0.6:
            label = previous
        elif draws[i] < 0.8:
            label = theme
        else:
            label = int(fresh[i])
        last[speaker] = label
        out.append(label)
    return out


def _transcripts(rng: np.random.Generator, rendered: list[str]) -> list[str]:
    """A cue sentence of the rendered class, sometimes after a filler; some only a neutral filler."""
    n = len(rendered)
    neutral = rng.random(n) < NEUTRAL_WORDED_RATE
    prefixed = rng.random(n) < 0.4
    fillers = rng.integers(len(NEUTRAL_WORDED), size=n)
    picks = rng.random(n)
    out = []
    for i, name in enumerate(rendered):
        filler = NEUTRAL_WORDED[fillers[i]]
        if neutral[i]:
            out.append(filler)
            continue
        cues = CUES.get(name, NEUTRAL_WORDED)
        cue = cues[int(picks[i] * len(cues))]
        out.append(f"{filler} {cue}" if prefixed[i] else cue)
    return out


def generate_example(
    n_dialogues: int = 151,
    seed: int = 0,
    *,
    widths: dict[str, int] | None = None,
    labels: str = "iemocap6",
    text_features: str = "synthetic",
    min_len: int = 8,
    max_len: int = 90,
    dev_fraction: float = 0.1,
) -> Corpus:
    """A synthetic IEMOCAP-shaped corpus (see the module docstring); the same seed gives the same corpus.

    ``widths`` maps modalities ("t", "a", "v") to feature widths (default t 768, a 100, v 512).
    ``text_features="minilm"`` makes "t" the MiniLM embedding (384-d) of the transcripts instead of
    synthetic vectors. Splits: sessions 1-4 are train, the first 10% of them (at least one when
    there are two or more) dev; session 5 (~20% of dialogues) is test. ``dev_fraction`` changes the
    10% (small demo corpora want a larger dev split: the fusion module trains on it).
    """
    if n_dialogues < 1:
        raise LanternError(f"n_dialogues must be at least 1, got {n_dialogues}")
    if not 1 <= min_len <= max_len:
        raise LanternError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    if not 0.0 <= dev_fraction < 1.0:
        raise LanternError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    if text_features not in ("synthetic", "minilm"):
        raise LanternError(f"text_features must be 'synthetic' or 'minilm', got {text_features!r}")
    widths = dict(DEFAULT_WIDTHS if widths is None else widths)
    unknown = sorted(set(widths) - set(SEPARATION))
    if unknown or any(w < 1 for w in widths.values()):
        raise LanternError(f"widths must map 't', 'a', 'v' to positive widths, got {widths}")
    label_set = get_label_set(labels)
    priors, centres, neighbours = _class_params(label_set)
    rng_structure, rng_labels, rng_text, rng_vad, rng_features = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
    )

    dialogue_ids, sessions = _dialogue_ids(n_dialogues)
    lengths = np.clip(np.rint(rng_structure.gamma(4.0, 12.5, size=n_dialogues)), min_len, max_len).astype(int)
    speakers = [_speakers(rng_structure, int(n)) for n in lengths]
    classes = [_labels_for_dialogue(rng_labels, spk, priors) for spk in speakers]
    true_idx = np.array([c for cs in classes for c in cs])
    previous_idx = np.array([cs[max(i - 1, 0)] for cs in classes for i in range(len(cs))])
    speaker_keys = np.array([2 * k + (s == "M") for k, spk in enumerate(speakers) for s in spk])
    # Some utterances are rendered (features and wording) as a neighbouring class.
    rendered_idx = true_idx.copy()
    ambiguous = rng_labels.random(len(true_idx)) < AMBIGUOUS_RATE
    picks = rng_labels.random(len(true_idx))
    for i in np.flatnonzero(ambiguous):
        options = neighbours[true_idx[i]]
        if options:
            rendered_idx[i] = options[int(picks[i] * len(options))][0]
    texts = _transcripts(rng_text, [label_set.classes[c] for c in rendered_idx])
    vads = np.clip(
        centres[true_idx] + rng_vad.normal(0.0, VAD_NOISE, size=(len(true_idx), 3)), 1.0, 5.0
    ).round(4)

    dialogues: list[Dialogue] = []
    row = 0
    for did, session, spk, cs in zip(dialogue_ids, sessions, speakers, classes, strict=True):
        counts = {"F": 0, "M": 0}
        utterances = []
        for speaker, c in zip(spk, cs, strict=True):
            v, a, d = vads[row].tolist()
            utterances.append(
                Utterance(
                    id=f"{did}_{speaker}{counts[speaker]:03d}",
                    speaker=speaker,
                    text=texts[row],
                    label=c,
                    vad=(v, a, d),
                )
            )
            counts[speaker] += 1
            row += 1
        dialogues.append(Dialogue(id=did, split="test" if session == 5 else "train", utterances=utterances))

    train = [d for d in dialogues if d.split == "train"]
    n_dev = int(dev_fraction * len(train)) or (1 if len(train) >= 2 else 0)
    for d in train[:n_dev]:
        d.split = "dev"

    offsets = np.cumsum([0, *lengths])
    synthetic = {m: w for m, w in widths.items() if not (m == "t" and text_features == "minilm")}
    for m, width in synthetic.items():
        means = _class_means(rng_features, width, SEPARATION[m], neighbours)
        # Unit-variance noise per dimension; a speaker's offset has norm about SPEAKER_OFFSET.
        speaker_offsets = rng_features.normal(
            0.0, SPEAKER_OFFSET / np.sqrt(width), size=(2 * n_dialogues, width)
        )
        x = rng_features.standard_normal((int(offsets[-1]), width), dtype=np.float32)
        x += means[rendered_idx] + CONTEXT_PULL * means[previous_idx]
        x += speaker_offsets[speaker_keys].astype(np.float32)
        for d, start in zip(dialogues, offsets, strict=False):
            d.features[m] = x[start : start + len(d)]

    name = f"synthetic IEMOCAP-shaped example (seed {seed}, {n_dialogues} dialogues; not real data)"
    corpus = Corpus(
        name=name,
        labels=label_set,
        dialogues=dialogues,
        modalities={m: widths[m] for m in synthetic},
        feature_sources={m: "synthetic" for m in synthetic},
    )
    if "t" in widths and text_features == "minilm":
        from lantern.corpus.text_features import add_text_features

        corpus = add_text_features(corpus, replace=False)
    corpus.validate()
    return corpus
