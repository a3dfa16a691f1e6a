"""evaluate_run on synthetic single- and multi-seed run directories; results_table."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from lantern.answers import FieldAnswer, UtteranceAnswer
from lantern.errors import LanternError
from lantern.evaluation import answer_quality, calibration, evaluate_run, results_table
from lantern.fusion import fuse_run
from lantern.predictions import read_predictions, write_predictions
from lantern.rundir import LLMStats, RunDir
from lantern.testing.runs import dialogue_sizes, make_corpus, make_run, write_answers


def fused_run(root, *, seed: int = 0, n: int = 8, run_dir=None, **answers) -> RunDir:
    corpus = make_corpus(dialogue_sizes({"dev": n, "test": n}, (8, 20)))
    run = make_run(root, corpus, seed=seed, run_dir=run_dir)
    write_answers(run, seed=seed, **answers)
    return run


FAST = {"hidden_sizes": [8], "weight_decays": [1e-2], "epoch_grid": [60], "folds": 3}
METHODS = ["uniform", "attention"]


@pytest.fixture(scope="module")
def multi_seed(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    for seed in (0, 1, 2):
        run = fused_run(root, seed=seed, run_dir=root / f"seed-{seed}", accuracy=lambda b, r: 0.85)
        fuse_run(run.root, METHODS, seed=seed, params={"attention": FAST})
    return root


def test_multi_seed_summary_and_bootstrap(multi_seed):
    metrics = evaluate_run(multi_seed, n_resamples=200)
    assert metrics["seeds"] == ["seed-0", "seed-1", "seed-2"]
    assert metrics["methods"] == ["vanilla", "uniform", "attention"]
    assert metrics["labels"]["name"] == "iemocap6"
    for m in metrics["methods"]:
        acc = metrics["summary"][m]["accuracy"]
        values = [metrics["per_seed"][s]["methods"][m]["accuracy"] for s in metrics["seeds"]]
        assert acc["values"] == values
        assert acc["mean"] == pytest.approx(np.mean(values), abs=0.01)
        assert acc["std"] == pytest.approx(np.std(values, ddof=1), abs=0.01)
        assert metrics["summary"][m]["n_seeds"] == 3
    for seed in metrics["seeds"]:
        bs = metrics["per_seed"][seed]["bootstrap_vs_vanilla"]
        assert set(bs) == {"uniform", "attention"}
        for key in ("accuracy", "weighted_f1"):
            assert (
                bs["attention"][key]["low"] <= bs["attention"][key]["delta"] <= bs["attention"][key]["high"]
            )
    pooled = metrics["vs_vanilla"]["attention"]["accuracy"]
    assert pooled["delta"] > 5  # an 85%-accurate LLM beats a 65% vanilla model
    assert pooled["low"] > 0
    assert metrics["simulated_llm"] is True and metrics["llm"]["model"] == "simulated-llm"
    sent = sum(LLMStats.read(RunDir(multi_seed / f"seed-{s}").llm.stats).requests_sent for s in range(3))
    assert metrics["llm"]["requests_sent"] == sent > 0
    assert json.loads(RunDir(multi_seed).eval_metrics.read_text())["summary"] == metrics["summary"]


def test_results_table_has_every_method_and_says_simulated(multi_seed):
    metrics = evaluate_run(multi_seed, n_resamples=50)
    table = results_table(metrics)
    assert "simulated LLM" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "method" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["vanilla", "uniform", "attention (Lantern)"]
    s = metrics["summary"]["attention"]["accuracy"]
    assert f"{s['mean']:.2f} ± {s['std']:.2f}" in rows[2]
    assert "[" in rows[2] and "—" in rows[0]
    # The guard's decision per seed is part of every table, with the likelihoods it rests on.
    assert table.count("kept the attention") + table.count("fell back to vanilla") == 3
    assert set(metrics["guard"]) == {"seed-0", "seed-1", "seed-2"}


def test_single_seed_run_and_real_llm(tmp_path):
    run = fused_run(tmp_path, n=6, model="gpt-4o")
    fuse_run(run.root, ["uniform"])
    metrics = evaluate_run(run.root, n_resamples=50)
    assert metrics["seeds"] == ["seed-0"]
    assert metrics["summary"]["uniform"]["accuracy"]["std"] == 0.0
    assert metrics["simulated_llm"] is False
    assert "simulated LLM" not in results_table(metrics)
    test = read_predictions(run.predictions("test"))
    gold = [p.label for p in test]
    pred = [int(np.argmax(p.probs)) for p in test]
    assert metrics["per_seed"]["seed-0"]["methods"]["vanilla"]["accuracy"] == round(
        100 * float(np.mean(np.array(gold) == np.array(pred))), 2
    )


def test_unlabelled_test_utterances_are_left_out_and_missing_fused_rows_fail(tmp_path):
    run = fused_run(tmp_path, n=6)
    fuse_run(run.root, ["uniform"])
    path = run.predictions("test")
    preds = read_predictions(path)
    preds[0].label = None
    write_predictions(path, preds)
    assert evaluate_run(run.root, n_resamples=20)["per_seed"]["seed-0"]["n_test"] == len(preds) - 1
    fused_path = run.method("uniform").predictions
    write_predictions(fused_path, read_predictions(fused_path)[2:])
    with pytest.raises(ValueError, match="no prediction for test utterance"):
        evaluate_run(run.root, n_resamples=20)


def test_vanilla_predictions_missing_a_test_utterance_of_the_corpus_are_refused(tmp_path):
    run = fused_run(tmp_path, n=6)
    path = run.predictions("test")
    preds = read_predictions(path)
    write_predictions(path, preds[:5] + preds[6:])  # one utterance of the test split left out
    with pytest.raises(
        LanternError, match=rf"{path}.*no prediction for test utterance '{preds[5].id}'.*1 of"
    ):
        evaluate_run(run.root, n_resamples=20)
    write_predictions(path, [*preds, replace(preds[0], id="stranger_u0")])
    with pytest.raises(LanternError, match=r"'stranger_u0' is not in the test split"):
        evaluate_run(run.root, n_resamples=20)
    write_predictions(path, preds)
    assert evaluate_run(run.root, n_resamples=20)["per_seed"]["seed-0"]["n_test"] == len(preds)


def test_no_run_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained model here"):
        evaluate_run(tmp_path)


def test_calibration_of_perfect_and_overconfident_models():
    gold = np.array([0, 1, 0, 1])
    right = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert calibration(right, gold)["ece"] == 0.0
    wrong = right[:, ::-1] * 0.9 + 0.05
    assert (wrong.argmax(1) != gold).all()
    assert calibration(wrong, gold)["ece"] == pytest.approx(95.0)


def test_summary_has_macro_f1_and_save_false_writes_nothing(tmp_path):
    run = fused_run(tmp_path, n=6)
    metrics = evaluate_run(run.root, n_resamples=20, save=False)
    assert not run.eval_metrics.exists()
    vanilla = metrics["per_seed"]["seed-0"]["methods"]["vanilla"]
    assert metrics["summary"]["vanilla"]["macro_f1"]["values"] == [vanilla["macro_f1"]]
    assert sum(vanilla["support"].values()) == metrics["per_seed"]["seed-0"]["n_test"]
    assert "| macro F1 |" in results_table(metrics)


def _answers(predictions, answer):
    """One field per dialogue, every utterance given ``answer`` (None: its vanilla distribution)."""
    by_dialogue = {}
    for p in predictions:
        by_dialogue.setdefault(p.dialogue, []).append(p)
    return [
        FieldAnswer(
            d,
            0,
            len(ps),
            [UtteranceAnswer(p.id, 0, i, list(answer or p.probs)) for i, p in enumerate(ps)],
        )
        for d, ps in by_dialogue.items()
    ]


def test_answer_quality_sees_a_toy_llm_that_answers_the_same_digits_everywhere(tmp_path):
    run = fused_run(tmp_path, n=6)
    predictions = read_predictions(run.predictions("test"))
    classes = [str(c) for c in range(6)]
    toy = answer_quality(predictions, _answers(predictions, [1, 2, 3, 4, 5, 6]), classes)
    assert toy["fallback_rate"] == 0.0 and toy["answered"] == len(predictions)
    assert toy["identical"] == 1.0 and toy["uniform_fields"] == 1.0 and toy["one_hot"] == 0.0
    assert toy["most_common"] == [round(k / 21, 2) for k in range(1, 7)]
    assert len(toy["degenerate"]) >= 2 and "same distribution" in toy["degenerate"][0]
    # An LLM that repeats the vanilla model agrees with it everywhere and scores what it scores.
    echo = answer_quality(predictions, _answers(predictions, None), classes)
    assert echo["agreement"] == 1.0 and echo["llm_only"] == echo["vanilla"]
    assert echo["identical"] < 0.5 and echo["uniform_fields"] == 0.0
    assert echo["covered"] == len(predictions)


def test_evaluate_run_records_the_quality_of_each_split_s_answers(tmp_path):
    run = fused_run(tmp_path, n=6, accuracy=lambda b, r: 0.95)
    quality = evaluate_run(run.root, n_resamples=20)["per_seed"]["seed-0"]["llm_answers"]
    assert set(quality) == {"dev", "test"}
    test = quality["test"]
    assert test["llm_only"]["accuracy"] > test["vanilla"]["accuracy"] > test["majority"]
    assert test["degenerate"] == [] and 0 < test["agreement"] < 1
