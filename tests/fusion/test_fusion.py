"""Fusion: input joining, every method's distributions, save/load, what attention learns, CV hygiene."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lantern.answers import FieldAnswer, UtteranceAnswer
from lantern.errors import LanternError
from lantern.fields import FieldSpec
from lantern.fusion import METHODS, FusionMethod, SearchCV, build_inputs, crossval, fuse_run, make_method
from lantern.predictions import read_predictions, write_predictions
from lantern.rundir import LLMSettings, RunDir, write_json
from lantern.testing.runs import (
    dialogue_sizes,
    make_corpus,
    make_run,
    synthetic_answers,
    vanilla_predictions,
    write_answers,
)

FAST = {"hidden_sizes": [8], "weight_decays": [1e-2], "epoch_grid": [60, 150], "folds": 3}


def fast(name: str) -> dict:
    return FAST if METHODS[name].trained else {}


def fitted(name: str, inputs, *, seed: int = 0, **params):
    """A method fitted the way the fusion stage fits it (trained ones through their search)."""
    return make_method(name, seed=seed, params={**fast(name), **params}).fit(inputs)


def make_predictions(rng, split: str, *, n_dialogues: int, length=(8, 20), with_vad: bool = True):
    seed = int(rng.integers(1 << 30))
    corpus = make_corpus(dialogue_sizes({split: n_dialogues}, length, seed=seed), seed=seed)
    return vanilla_predictions(corpus, split, seed=seed, vad=with_vad)


def make_answers(rng, preds, *, t: int = 3, stride: int = 4, **kwargs):
    return synthetic_answers(preds, spec=FieldSpec(stride, t), rng=rng, **kwargs)


def world(seed: int = 0, *, n_dev: int = 16, n_test: int = 16, **answer_kwargs):
    rng = np.random.default_rng(seed)
    out = []
    for split, n in (("dev", n_dev), ("test", n_test)):
        preds = make_predictions(rng, split, n_dialogues=n)
        out.append(build_inputs(preds, make_answers(rng, preds, **answer_kwargs), 3))
    return out


def accuracy(model: FusionMethod, inputs) -> float:
    return float((model.predict(inputs) == inputs.labels).mean())


def make_fused_run(root, *, n_dev: int, n_test: int, spec: FieldSpec | None = None) -> RunDir:
    corpus = make_corpus(dialogue_sizes({"dev": n_dev, "test": n_test}, (8, 20)))
    run = make_run(root, corpus)
    write_answers(run, spec=spec)
    return run


# ---- build_inputs ---------------------------------------------------------------------------


def test_build_inputs_orders_candidates_by_position_and_rescales_vad():
    rng = np.random.default_rng(1)
    preds = make_predictions(rng, "dev", n_dialogues=2)
    answers = make_answers(rng, preds, t=3, stride=2)
    shuffled = [
        FieldAnswer(w.dialogue, w.start, w.stop, list(reversed(w.utterances))) for w in reversed(answers)
    ]
    x = build_inputs(preds, shuffled, 3)
    assert x.q.shape == (len(preds), 3, 6) and x.p.shape == (len(preds), 6)
    assert (x.b == np.arange(3)).all()
    assert ((x.d >= 0) & (x.d <= 1)).all() and x.has_vad
    np.testing.assert_allclose(x.d[0], (np.array(preds[0].vad) - 1) / 4)
    # The answer at position b of utterance 5 is the one from window k = 5 // 2 - b.
    for b in range(3):
        k = 5 // 2 - b
        start = max(0, 2 * k)
        answer = next(
            u
            for w in answers
            if w.dialogue == preds[5].dialogue and w.start == start
            for u in w.utterances
            if u.id == preds[5].id
        )
        np.testing.assert_allclose(x.q[5, b], np.array(answer.probs) / sum(answer.probs))
        assert x.r[5, b] == answer.r


def test_build_inputs_without_vad_gives_zeros_and_flag():
    rng = np.random.default_rng(2)
    preds = make_predictions(rng, "dev", n_dialogues=2, with_vad=False)
    x = build_inputs(preds, make_answers(rng, preds), 3)
    assert not x.has_vad and (x.d == 0).all()


def test_build_inputs_fallback_answers_carry_vanilla():
    rng = np.random.default_rng(3)
    preds = make_predictions(rng, "dev", n_dialogues=3)
    answers = make_answers(rng, preds, fallback_rate=0.5)
    x = build_inputs(preds, answers, 3)
    row = {p.id: i for i, p in enumerate(preds)}
    fell_back = [(row[u.id], u.b) for a in answers for u in a.utterances if u.status == "fallback"]
    assert 0 < len(fell_back) < x.n * 3
    for i, b in fell_back:
        np.testing.assert_allclose(x.q[i, b], x.p[i])


def _one_dialogue():
    rng = np.random.default_rng(4)
    preds = make_predictions(rng, "dev", n_dialogues=1, length=(8, 8))
    return preds, make_answers(rng, preds)


def test_build_inputs_missing_answer_names_the_utterance():
    preds, answers = _one_dialogue()
    answers[0].utterances = answers[0].utterances[1:]
    with pytest.raises(ValueError, match=rf"{preds[0].id}.*expected exactly t=3"):
        build_inputs(preds, answers, 3)


def test_build_inputs_duplicate_position_names_the_utterance():
    preds, answers = _one_dialogue()
    extra = answers[-1].utterances[-1]
    answers[-1].utterances.append(UtteranceAnswer(extra.id, extra.b, extra.r, extra.probs))
    with pytest.raises(ValueError, match=extra.id):
        build_inputs(preds, answers, 3)


def test_build_inputs_wrong_t_and_unknown_utterance():
    preds, answers = _one_dialogue()
    with pytest.raises(ValueError, match="expected exactly t=2"):
        build_inputs(preds, answers, 2)
    answers[0].utterances.append(UtteranceAnswer("ghost", 0, 0, [1.0] * 6))
    with pytest.raises(ValueError, match=r"'ghost'.*no vanilla prediction"):
        build_inputs(preds, answers, 3)


def test_build_inputs_class_count_mismatch():
    preds, answers = _one_dialogue()
    answers[1].utterances[0].probs = [0.5, 0.5]
    with pytest.raises(ValueError, match="has 2 classes, expected 6"):
        build_inputs(preds, answers, 3)


# ---- methods --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reliable_last():
    """Answers at the field's last offsets are reliable (0.95), the first ones poor (0.3)."""
    return world(5, accuracy=lambda b, r: 0.3 + 0.65 * r / 11)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_gives_distributions_and_roundtrips(name, reliable_last, tmp_path):
    dev, test = reliable_last
    model = fitted(name, dev)
    probs = model.predict_proba(test)
    assert probs.shape == (test.n, test.n_classes)
    assert np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    weights = model.attention_by_position(test)
    assert set(weights) == {"0", "1", "2", "vanilla"}
    assert abs(sum(weights.values()) - 1) < 1e-4
    model.save(tmp_path)
    assert (tmp_path / "model.safetensors").exists() == model.trained
    loaded = FusionMethod.load(tmp_path)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.predict_proba(test), probs)


def test_fixed_methods_are_what_they_say(reliable_last):
    _, test = reliable_last
    np.testing.assert_allclose(METHODS["vanilla"]().fit(test).predict_proba(test), test.p)
    np.testing.assert_allclose(METHODS["uniform"]().fit(test).predict_proba(test), test.q.mean(axis=1))
    np.testing.assert_allclose(METHODS["single"]().fit(test).predict_proba(test), test.q[:, 2])


def test_unfitted_or_mismatched_inputs_are_refused(reliable_last):
    dev, _ = reliable_last
    with pytest.raises(ValueError, match="not fitted"):
        METHODS["attention"]().predict_proba(dev)
    model = METHODS["uniform"]().fit(dev)
    narrow = dev.subset(range(5))
    narrow.q = narrow.q[:, :2]
    narrow.b, narrow.r, narrow.future = narrow.b[:, :2], narrow.r[:, :2], narrow.future[:, :2]
    with pytest.raises(ValueError, match="fitted for t=3"):
        model.predict_proba(narrow)


def test_training_is_deterministic_with_a_seed(reliable_last):
    dev, test = reliable_last
    a = fitted("attention", dev, seed=3).predict_proba(test)
    b = fitted("attention", dev, seed=3).predict_proba(test)
    np.testing.assert_array_equal(a, b)


def test_attention_learns_to_prefer_the_reliable_position(reliable_last):
    dev, test = reliable_last
    model = fitted("attention", dev)
    # A real gain: the guard keeps (nearly) all of the learned weighting.
    assert (
        model.shrink_ >= 0.8
        and model.selection_["guard"]["nll_guarded"] < model.selection_["guard"]["nll_vanilla"]
    )
    weights = model.attention_by_position(test)
    assert weights["2"] > weights["1"] > weights["0"]
    assert accuracy(model, test) > accuracy(METHODS["uniform"]().fit(dev), test) + 0.03
    position = fitted("position", dev).attention_by_position(test)
    assert position["2"] > position["0"]


def test_attention_with_a_useless_llm_stays_with_vanilla():
    dev, test = world(6, useless=True)
    model = fitted("attention", dev)
    vanilla = accuracy(METHODS["vanilla"]().fit(dev), test)
    # The guard: held-out likelihood says the LLM does not help, so Lantern shrinks to (nearly) vanilla.
    guard = model.selection_["guard"]
    assert model.shrink_ == 0.0 and guard["lambda"] == model.shrink_ and not guard["kept"]
    assert guard["nll_guarded"] <= guard["nll_vanilla"] and guard["nll_guarded"] <= guard["nll_unguarded"]
    assert model.attention_by_position(test)["vanilla"] > 0.9
    assert accuracy(model, test) >= vanilla - 0.01
    # Without the guard the learned weights still lean on vanilla.
    unguarded = fitted("attention-unguarded", dev)
    assert unguarded.shrink_ == 1.0 and "guard" not in unguarded.selection_
    assert unguarded.attention_by_position(test)["vanilla"] > 0.6
    assert accuracy(unguarded, test) >= vanilla - 0.03
    # The paper-literal merge has no vanilla candidate and pays for the useless LLM.
    assert accuracy(fitted("attention-llm", dev), test) < vanilla - 0.2


def test_guard_keeps_the_weighting_only_beyond_a_one_standard_error_likelihood_margin():
    rng = np.random.default_rng(0)
    n, c = 600, 6
    labels = rng.integers(c, size=n)
    dialogues = [f"d{i // 10}" for i in range(n)]
    top = np.where(rng.random(n) < 0.7, labels, rng.integers(c, size=n))
    p = rng.dirichlet(np.ones(c), size=n) * 0.1
    p[np.arange(n), top] += 0.9  # an over-confident vanilla model, right ~70% of the time
    p /= p.sum(axis=1, keepdims=True)
    noise = rng.dirichlet(np.ones(c) * 0.3, size=n)
    # A useless fused model (the vanilla answer mixed with noise): its hedging advantage is matched
    # by smoothing vanilla (ε), so Lantern stays vanilla.
    lam, eps, record = crossval.vanilla_guard(0.7 * p + 0.3 * noise, p, labels, dialogues)
    assert lam == 0.0 and eps > 0 and not record["kept"]
    assert record["nll_guarded"] == record["nll_vanilla"] <= record["nll_unguarded"]
    # An informative one: its gain is many standard errors away, so it is kept whole.
    onehot = np.eye(c)[labels]
    good = 0.5 * p + 0.5 * (0.7 * onehot + 0.3 * noise)
    lam, eps, record = crossval.vanilla_guard(good, p, labels, dialogues)
    assert lam == 1.0 and eps == 0.0 and record["kept"]
    assert record["nll_gain"] > 3 * record["standard_error"] and record["nll_guarded"] < record["nll_vanilla"]
    # A small gain within one standard error is not distinguishable from noise: vanilla.
    barely = 0.97 * p + 0.03 * (0.5 * onehot + 0.5 * noise)
    lam, _, record = crossval.vanilla_guard(barely, p, labels, dialogues)
    assert (lam == 1.0) == (record["nll_gain"] > record["standard_error"])


def test_cv_selects_hyperparameters_on_the_training_set_only(reliable_last, monkeypatch):
    dev, test = reliable_last
    seen: list[int] = []
    original = crossval.train_replicas

    def spy(build, x, *args, **kwargs):
        seen.append(int(x["labels"].shape[0]))
        return original(build, x, *args, **kwargs)

    monkeypatch.setattr(crossval, "train_replicas", spy)
    monkeypatch.setattr("lantern.fusion.methods.train_replicas", spy)
    search = SearchCV(
        METHODS["attention"](seed=0),
        hidden_sizes=[4, 8],
        weight_decays=[1e-2, 10.0],
        epoch_grid=[1, 150],
        folds=3,
    )
    model = search.fit(dev)
    model.predict_proba(test)
    assert seen == [dev.n] * 3  # one CV run per hidden size, then the refit; never the test split
    cv = model.selection_["cv"]
    assert len(cv) == 2 * 2 * 2
    best = min(cv, key=lambda row: row["nll"])
    assert model.selection_["selected"] == {k: best[k] for k in ("hidden", "weight_decay", "epochs")}
    assert (model.hidden, model.weight_decay, model.epochs) == (
        best["hidden"],
        best["weight_decay"],
        best["epochs"],
    )
    # One step from uniform and a crushing weight decay are both worse than a real fit.
    assert model.epochs == 150 and model.weight_decay == 1e-2


def test_cv_folds_never_split_a_dialogue(reliable_last, monkeypatch):
    dev, _ = reliable_last
    masks = []
    original = crossval.train_replicas

    def spy(build, x, *args, train_mask=None, **kwargs):
        if train_mask is not None:
            masks.append(train_mask)
        return original(build, x, *args, train_mask=train_mask, **kwargs)

    monkeypatch.setattr(crossval, "train_replicas", spy)
    fitted("position", dev)
    for row in masks[0]:
        held = {d for d, m in zip(dev.dialogues, row, strict=True) if not m}
        kept = {d for d, m in zip(dev.dialogues, row, strict=True) if m}
        assert held and kept and not held & kept


# ---- fuse_run -------------------------------------------------------------------------------


def test_fuse_run_writes_every_method(tmp_path):
    run = make_fused_run(tmp_path, n_dev=8, n_test=8)
    summary = fuse_run(run.root, params={m: fast(m) for m in METHODS})
    assert list(summary) == list(METHODS)
    test_ids = [p.id for p in read_predictions(run.predictions("test"))]
    for name in METHODS:
        files = run.method(name)
        preds = read_predictions(files.predictions)
        assert [p.id for p in preds] == test_ids
        assert all(abs(sum(p.probs) - 1) < 1e-4 and p.vad is not None for p in preds)
        assert json.loads(files.config.read_text())["method"] == name
        assert files.model.exists() == METHODS[name].trained
        assert set(json.loads(files.attention.read_text())["test"]) == {"0", "1", "2", "vanilla"}
        assert summary[name]["n_test"] == len(test_ids)
    assert not list(run.root.rglob("*.tmp"))


def test_fuse_run_reads_t_from_the_llm_settings_and_checks_inputs(tmp_path):
    run = make_fused_run(tmp_path, n_dev=6, n_test=6, spec=FieldSpec(stride=3, t=2))
    summary = fuse_run(run.root, ["uniform"])
    assert summary["uniform"]["t"] == 2
    with pytest.raises(ValueError, match=r"unknown fusion method.*nope"):
        fuse_run(run.root, ["nope"])
    with pytest.raises(ValueError, match="dev, crossfit"):
        fuse_run(run.root, ["uniform"], train_split="test")
    with pytest.raises(FileNotFoundError, match="crossfit"):
        fuse_run(run.root, ["uniform"], train_split="crossfit")


def test_guarded_and_unguarded_attention_share_one_fit(tmp_path, monkeypatch):
    run = make_fused_run(tmp_path, n_dev=8, n_test=8)
    fits: list[str] = []
    original = SearchCV.fit

    def spy(self, inputs):
        fits.append(self.estimator.name)
        return original(self, inputs)

    monkeypatch.setattr(SearchCV, "fit", spy)
    fuse_run(
        run.root,
        ["attention", "attention-unguarded"],
        params={"attention": FAST, "attention-unguarded": FAST},
    )
    assert fits == ["attention"]
    guarded = FusionMethod.load(run.method("attention").dir)
    unguarded = FusionMethod.load(run.method("attention-unguarded").dir)
    assert unguarded.shrink_ == 1.0 and unguarded.selection_["selected"] == guarded.selection_["selected"]
    assert "guard" in guarded.selection_ and "guard" not in unguarded.selection_


def test_fusion_refuses_answers_made_from_other_predictions_or_settings(tmp_path):
    run = make_fused_run(tmp_path, n_dev=6, n_test=6)
    fuse_run(run.root, ["uniform"])
    # The vanilla model was retrained (its dev predictions changed) after the LLM stage.
    predictions = read_predictions(run.predictions("dev"))
    predictions[0].probs = list(reversed(predictions[0].probs))
    write_predictions(run.predictions("dev"), predictions)
    with pytest.raises(ValueError, match="prompted with other vanilla predictions"):
        fuse_run(run.root, ["uniform"])
    # Answers of one split remade with another stride: the other split's answers are stale.
    run2 = make_fused_run(tmp_path / "b", n_dev=6, n_test=6)
    write_answers(run2, ["test"], spec=FieldSpec(stride=2, t=3))
    with pytest.raises(ValueError, match=r"answers-dev\.jsonl: not made with the current LLM settings"):
        fuse_run(run2.root, ["uniform"])
    # An answers file edited by hand.
    run3 = make_fused_run(tmp_path / "c", n_dev=6, n_test=6)
    path = run3.answers("test")
    path.write_text(path.read_text().replace('"ok"', '"ok" ', 1))
    with pytest.raises(ValueError, match="changed since the LLM stage wrote it"):
        fuse_run(run3.root, ["uniform"])


def test_answers_mostly_fallen_back_are_refused_unless_allowed(tmp_path, capsys):
    from lantern.cli import main

    corpus = make_corpus(dialogue_sizes({"dev": 6, "test": 6}, (8, 20)))
    run = make_run(tmp_path, corpus)
    write_answers(run, fallback_rate=0.5)  # recorded without a limit: the default one applies
    with pytest.raises(LanternError, match=r"answers-dev\.jsonl: \d\d\.\d% of the dev utterance answers"):
        fuse_run(run.root, ["uniform"])
    assert main(["fuse", "--run", str(run.root), "--method", "uniform"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(run.root) in err and "above the 20% allowed" in err
    assert "--allow-fallbacks" in err and not run.method("uniform").predictions.exists()
    assert main(["fuse", "--run", str(run.root), "--method", "uniform", "--allow-fallbacks"]) == 0
    assert run.method("uniform").predictions.exists()


def test_the_limit_recorded_with_the_answers_decides(tmp_path):
    corpus = make_corpus(dialogue_sizes({"dev": 6, "test": 6}, (8, 20)))
    run = make_run(tmp_path, corpus)
    write_answers(run, fallback_rate=0.5)
    settings = LLMSettings.read(run.llm.settings)
    for entry in settings.splits.values():
        entry["max_fallback_rate"] = 0.6  # the stage was told --max-fallback-rate 0.6
    write_json(run.llm.settings, settings.to_json())
    assert set(fuse_run(run.root, ["uniform"])) == {"uniform"}
    for entry in settings.splits.values():
        entry["max_fallback_rate"] = None  # --allow-fallbacks at the stage
    write_json(run.llm.settings, settings.to_json())
    assert set(fuse_run(run.root, ["uniform"])) == {"uniform"}
