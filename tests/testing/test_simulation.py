"""The simulated LLM does what its knobs say, measured on its own answers."""

from __future__ import annotations

import numpy as np
import pytest

from lantern.labels import IEMOCAP6, MELD7
from lantern.llm.prompt import FieldUtterance, dialogue_alias
from lantern.testing.prompt_reader import PromptField
from lantern.testing.simulation import NEIGHBOURS, Simulation

CLASSES = list(IEMOCAP6.classes)
N_DIALOGUES = 400
LENGTH = 8  # utterances per dialogue; every field below covers the whole dialogue


def world(rng: np.random.Generator, classes: list[str] = CLASSES) -> tuple[dict, dict]:
    """Gold labels and shown vanilla distributions for N_DIALOGUES × LENGTH utterances."""
    gold, shown = {}, {}
    for d in range(N_DIALOGUES):
        alias = dialogue_alias(f"d{d}")
        for i in range(LENGTH):
            gold[(alias, i)] = int(rng.integers(len(classes)))
            p = rng.dirichlet(np.ones(len(classes)))
            shown[(alias, i)] = [round(float(x), 2) for x in p]
    return gold, shown


def field(alias: str, start: int, stop: int, shown: dict, classes: list[str] = CLASSES) -> PromptField:
    utterances = [
        FieldUtterance(index=i, id="", speaker="A", text="", probs=shown[(alias, i)])
        for i in range(start, stop)
    ]
    return PromptField(dialogue_id=alias, start=start, stop=stop, classes=classes, utterances=utterances)


def answers(sim: Simulation, shown: dict, starts=(0, 1)) -> dict[int, np.ndarray]:
    """Per field start: the answers ``(N_DIALOGUES · LENGTH', C)`` for utterances 1..LENGTH-1."""
    out = {}
    for start in starts:
        rows = []
        for d in range(N_DIALOGUES):
            alias = dialogue_alias(f"d{d}")
            got = sim.answer(field(alias, start, LENGTH, shown))
            rows += [got[i] for i in range(1, LENGTH)]
        out[start] = np.asarray(rows)
    return out


def labels(gold: dict) -> np.ndarray:
    return np.array(
        [gold[(dialogue_alias(f"d{d}"), i)] for d in range(N_DIALOGUES) for i in range(1, LENGTH)]
    )


@pytest.fixture(scope="module")
def data():
    return world(np.random.default_rng(0))


@pytest.mark.parametrize("accuracy", [0.4, 0.7, 0.9])
def test_accuracy_is_what_it_is_set_to_and_answers_are_calibrated(data, accuracy):
    gold, shown = data
    q = answers(Simulation(gold=gold, accuracy=accuracy, correlation=0.5), shown, starts=(0,))[0]
    y = labels(gold)
    hit = q.argmax(axis=1) == y
    assert hit.mean() == pytest.approx(accuracy, abs=0.03)
    # Graded answers whose confidence matches their accuracy (not one-hot).
    confidence = q.max(axis=1)
    assert confidence.std() > 0.05 and confidence.max() < 1.0
    assert abs(confidence.mean() - hit.mean()) < 0.04


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_correlation_between_fields_is_what_it_is_set_to(data, rho):
    gold, shown = data
    both = answers(Simulation(gold=gold, accuracy=0.6, correlation=rho), shown)
    y = labels(gold)
    # Centred log-probabilities are linear in the judgement: their noise correlates as the judgements do.
    residuals = []
    for start in (0, 1):
        log_q = np.log(both[start])
        log_q -= log_q.mean(axis=1, keepdims=True)
        for c in range(len(CLASSES)):
            log_q[y == c] -= log_q[y == c].mean(axis=0)
        residuals.append(log_q)
    measured = np.corrcoef(residuals[0].ravel(), residuals[1].ravel())[0, 1]
    assert measured == pytest.approx(rho, abs=0.05)


@pytest.mark.parametrize("beta", [0.3, 0.7])
def test_anchoring_pulls_answers_toward_the_shown_distribution_by_its_weight(data, beta):
    gold, shown = data
    free = answers(Simulation(gold=gold, accuracy=0.6, anchoring=0.0), shown, starts=(0,))[0]
    anchored = answers(Simulation(gold=gold, accuracy=0.6, anchoring=beta), shown, starts=(0,))[0]
    p = np.array([shown[(dialogue_alias(f"d{d}"), i)] for d in range(N_DIALOGUES) for i in range(1, LENGTH)])
    p = np.maximum(p, 0.005)
    # log q_β − log q_0 = β (log p − log q_0) up to a constant per row: the fitted slope is β.
    target = np.log(anchored) - np.log(free)
    source = np.log(p / p.sum(axis=1, keepdims=True)) - np.log(free)
    target -= target.mean(axis=1, keepdims=True)
    source -= source.mean(axis=1, keepdims=True)
    slope = float((target * source).sum() / (source * source).sum())
    assert slope == pytest.approx(beta, abs=0.01)
    # Agreement with the shown distribution's top class grows with β; β = 1 echoes it.
    echoed = answers(Simulation(gold=gold, accuracy=0.6, anchoring=1.0), shown, starts=(0,))[0]
    np.testing.assert_allclose(echoed, p / p.sum(axis=1, keepdims=True), atol=1e-9)
    assert (anchored.argmax(1) == p.argmax(1)).mean() > (free.argmax(1) == p.argmax(1)).mean()


def test_errors_go_to_neighbouring_classes_first(data):
    gold, shown = data
    q = answers(Simulation(gold=gold, accuracy=0.5, correlation=0.5), shown, starts=(0,))[0]
    y, pred = labels(gold), q.argmax(axis=1)
    names = [c.lower() for c in CLASSES]
    neighbours = {(names.index(a), names.index(b)) for a, b in NEIGHBOURS if a in names and b in names}
    neighbours |= {(b, a) for a, b in neighbours}
    wrong = pred != y
    to_neighbour = np.array(
        [(int(a), int(b)) in neighbours for a, b in zip(y[wrong], pred[wrong], strict=True)]
    )
    # Under uniform errors a wrong answer would land on a neighbour with probability (#neighbours / 5).
    uniform = np.mean([sum((c, k) in neighbours for k in range(6)) / 5 for c in y[wrong]])
    assert to_neighbour.mean() > 1.5 * uniform


def test_reliability_can_grow_with_past_context():
    gold, shown = world(np.random.default_rng(1), list(MELD7.classes))
    sim = Simulation(gold=gold, accuracy=0.6, context_weight=0.8, context="past")
    early, late = [], []
    for d in range(N_DIALOGUES):
        alias = dialogue_alias(f"d{d}")
        got = sim.answer(field(alias, 0, LENGTH, shown, list(MELD7.classes)))
        early += [int(np.argmax(got[i])) == gold[(alias, i)] for i in (0, 1)]
        late += [int(np.argmax(got[i])) == gold[(alias, i)] for i in (6, 7)]
    assert np.mean(late) > np.mean(early) + 0.15


def test_independent_mode_keeps_uniform_errors_and_fixed_confidence(data):
    gold, shown = data
    q = answers(Simulation(gold=gold, mode="independent", accuracy=0.7, confidence=0.8), shown, starts=(0,))[
        0
    ]
    assert set(np.round(q.max(axis=1), 6)) == {0.8}
    assert (q.argmax(axis=1) == labels(gold)).mean() == pytest.approx(0.7, abs=0.03)


def test_knobs_out_of_range_are_refused():
    with pytest.raises(ValueError, match="correlation"):
        Simulation(gold={}, correlation=1.5)
    with pytest.raises(ValueError, match="mode"):
        Simulation(gold={}, mode="magic")
