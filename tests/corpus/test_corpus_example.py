"""The synthetic IEMOCAP-shaped example corpus."""

from __future__ import annotations

import re
import time
from itertools import pairwise

import numpy as np
import pytest

from lantern.corpus.example import generate_example


@pytest.fixture(scope="module")
def example():
    return generate_example()


def test_shape_like_iemocap(example):
    assert "synthetic" in example.name and "not real data" in example.name
    assert example.modalities == {"t": 768, "a": 100, "v": 512}
    lengths = [len(d) for d in example]
    assert len(lengths) == 151 and min(lengths) >= 8 and max(lengths) <= 90
    assert 40 <= np.mean(lengths) <= 60
    splits = example.summary()["splits"]
    assert (
        splits["test"] == 30 and splits["dev"] == int(0.1 * (151 - 30)) and splits["train"] == 151 - 30 - 12
    )
    assert [d.split for d in example.dialogues[:13]] == ["dev"] * 12 + ["train"]
    assert all(d.id.startswith("Ses05") for d in example.split("test"))
    assert all(re.fullmatch(r"Ses0[1-5][FM]_(impro|script)\d\d", d.id) for d in example)
    d = example.dialogues[0]
    assert all(re.fullmatch(rf"{d.id}_[FM]\d{{3}}", u.id) for u in d.utterances)
    assert set(example.speakers) == {"F", "M"}
    switches = np.mean([a.speaker != b.speaker for d in example for a, b in pairwise(d.utterances)])
    assert 0.75 < switches < 0.95
    for d in example:
        for m, width in example.modalities.items():
            assert d.features[m].shape == (len(d), width) and d.features[m].dtype == np.float32


def test_deterministic_and_fast():
    start = time.perf_counter()
    a = generate_example(seed=3)
    assert time.perf_counter() - start < 2.0 * 3  # < 2 s on a free core; slack for a busy test machine
    b = generate_example(seed=3)
    c = generate_example(seed=4)
    assert [u for d in a for u in d.utterances] == [u for d in b for u in d.utterances]
    np.testing.assert_array_equal(a.dialogues[5].features["v"], b.dialogues[5].features["v"])
    assert [u.text for u in a.dialogues[0].utterances] != [u.text for u in c.dialogues[0].utterances]


def test_labels_persist_and_follow_priors(example):
    counts = example.summary()["label_counts"]
    total = sum(counts.values())
    assert counts["fru"] / total > counts["hap"] / total  # IEMOCAP priors: fru 25%, hap 9%
    labels = [u.label for d in example for u in d.utterances]
    same = np.mean([a.label == b.label for d in example for a, b in pairwise(d.utterances)])
    chance = sum((np.array(labels) == c).mean() ** 2 for c in range(6))
    assert same > chance + 0.15


def _nearest_mean_accuracy(example, modality):
    train = [d for d in example if d.split != "test"]
    x = np.concatenate([d.features[modality] for d in train])
    y = np.array([u.label for d in train for u in d.utterances])
    means = np.stack([x[y == c].mean(0) for c in range(6)])
    xt = np.concatenate([d.features[modality] for d in example.split("test")])
    yt = np.array([u.label for d in example.split("test") for u in d.utterances])
    predicted = np.argmin(((xt[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    return (predicted == yt).mean(), predicted, yt


def test_features_learnable_but_not_perfectly(example):
    accuracy = {m: _nearest_mean_accuracy(example, m)[0] for m in example.modalities}
    assert all(0.3 < a < 0.9 for a in accuracy.values()), accuracy
    assert accuracy["t"] > accuracy["v"]
    # hap and exc are confused with each other more than with sad.
    _, predicted, truth = _nearest_mean_accuracy(example, "t")
    hap = truth == 0
    assert (predicted[hap] == 4).sum() > (predicted[hap] == 1).sum()


def test_transcripts_carry_cues_and_vad_matches_class(example):
    utterances = [u for d in example for u in d.utterances]
    angry = [u for u in utterances if u.label == 3]
    happy = [u for u in utterances if u.label == 0]
    cue = re.compile(r"dare|furious|shut up|get out|done with you|lie to me", re.IGNORECASE)
    share = np.mean([bool(cue.search(u.text)) for u in angry])
    assert 0.4 < share < 0.95  # mostly cued, some neutral-worded or rendered as a neighbour
    assert np.mean([u.vad[0] for u in angry]) < np.mean([u.vad[0] for u in happy]) - 1.0
    assert np.mean([u.vad[1] for u in angry]) > 3.4
    assert all(1.0 <= x <= 5.0 for u in utterances for x in u.vad)


def test_options(tmp_path):
    small = generate_example(5, seed=0, widths={"a": 16}, labels="meld7", min_len=3, max_len=4)
    assert small.modalities == {"a": 16} and small.labels.name == "meld7"
    assert all(3 <= len(d) <= 4 for d in small)
    assert {d.split for d in small} == {"train", "dev", "test"}
    with pytest.raises(ValueError, match=r"widths"):
        generate_example(2, widths={"x": 3})
    with pytest.raises(ValueError, match=r"min_len"):
        generate_example(2, min_len=5, max_len=4)
