"""`lantern models summary`, `train`, `predict`, `evaluate`, called in-process."""

from __future__ import annotations

import json

import pytest

from lantern import train_config
from lantern.cli import main
from lantern.cli.models import MODEL_NAMES
from lantern.corpus.native import corpus_fingerprint, save_corpus
from lantern.models.registry import MODELS
from lantern.predictions import Prediction, read_predictions, write_predictions
from lantern.rundir import RunDir
from tests.models.synthetic import SMALL_SDT, make_corpus


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return save_corpus(make_corpus(n_dialogues=(10, 3, 3)), tmp_path_factory.mktemp("c") / "corpus")


@pytest.fixture(scope="module")
def small_quick():
    """The "quick" recipe with a small SDT: the CLI has no model-size flags by design."""
    with pytest.MonkeyPatch.context() as mp:
        quick = {**train_config.PRESETS["quick"], "model_overrides": SMALL_SDT}
        mp.setitem(train_config.PRESETS, "quick", quick)
        yield


@pytest.fixture(scope="module")
def run_dir(corpus_dir, small_quick, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--corpus", str(corpus_dir), "--model", "sdt", "--out", str(out), "--preset", "quick"]
    argv += ["--epochs", "3", "--seed", "1", "--device", "cpu", "--batch-size", "4", "--lr", "0.002"]
    assert main(argv) == 0
    return out


def test_cli_model_names_are_the_registry():
    assert set(MODEL_NAMES) == set(MODELS)


def test_summary_of_published_configs_without_data(capsys):
    argv = [
        "models",
        "summary",
        "sdt",
        "--classes",
        "6",
        "--widths",
        "t=1024,a=1582,v=342",
        "--speakers",
        "2",
    ]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backbone_parameters"] == 79_687_704
    assert out["total_parameters"] == out["backbone_parameters"] + out["vad_head_parameters"] > 79_687_704
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "79,687,704" in table and "vad head parameters" in table
    argv = ["models", "summary", "corect", "--classes", "4", "--widths", "t=768,a=100,v=512", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["backbone_parameters"] == 17_702_872


def test_summary_for_a_corpus(corpus_dir, capsys):
    assert main(["models", "summary", "sdt", "--corpus", str(corpus_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["n_classes"] == 4
    assert out["config"]["widths"] == {"t": 12, "a": 8, "v": 6}
    assert out["config"]["n_speakers"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [([], "needs --widths"), (["--widths", "t768"], "MODALITY=WIDTH"), (["--widths", "x=3"], "modalities")],
)
def test_summary_bad_arguments_are_one_line_errors(capsys, extra, message):
    assert main(["models", "summary", "sdt", "--classes", "6", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lantern: error:") and message in err


def test_train_writes_the_vanilla_stage(run_dir, corpus_dir):
    run = RunDir(run_dir)
    for f in ("model.safetensors", "config.json", "metrics.json"):
        assert (run.vanilla.dir / f).exists()
    for split in ("train", "dev", "test"):
        assert read_predictions(run.predictions(split))
    config = json.loads((run.vanilla.dir / "config.json").read_text())
    assert config["training"]["epochs"] == 3 and config["training"]["batch_size"] == 4
    assert config["training"]["lr"] == 0.002 and config["seed"] == 1
    assert config["model_config"]["hidden"] == SMALL_SDT["hidden"]
    record = run.load()["corpus"]
    assert record["path"] == str(corpus_dir.resolve())
    assert record["fingerprint"] == corpus_fingerprint(corpus_dir) == config["corpus_fingerprint"]


def test_train_options_modalities_lambda_and_crossfit(corpus_dir, small_quick, tmp_path, capsys):
    argv = [
        "train",
        "--corpus",
        str(corpus_dir),
        "--model",
        "sdt",
        "--out",
        str(tmp_path),
        "--preset",
        "quick",
    ]
    argv += ["--epochs", "1", "--modalities", "t,a", "--lambda-vad", "0", "--crossfit"]
    argv += ["--average-epochs", "2", "--label-smoothing", "0.1", "--threads", "1"]
    assert main(argv) == 0
    assert "crossfit" in capsys.readouterr().out
    config = json.loads((tmp_path / "vanilla/config.json").read_text())
    assert config["modalities"] == {"t": 12, "a": 8}
    assert config["training"]["lambda_vad"] == 0.0
    assert config["training"]["average_epochs"] == 2.0
    assert config["training"]["label_smoothing"] == 0.1
    assert config["training"]["threads"] == 1
    history = json.loads((tmp_path / "vanilla/metrics.json").read_text())["history"]
    assert [h["threads"] for h in history] == [1]
    assert (tmp_path / "vanilla/crossfit/predictions-train.jsonl").exists()
    assert json.loads((tmp_path / "vanilla/crossfit/folds.json").read_text())["k"] == 5  # bare --crossfit


def test_train_unknown_preset_is_an_error(corpus_dir, tmp_path, capsys):
    argv = ["train", "--corpus", str(corpus_dir), "--model", "sdt", "--out", str(tmp_path), "--preset", "x"]
    assert main(argv) == 2
    assert "unknown preset" in capsys.readouterr().err


@pytest.mark.parametrize(("split", "n_dialogues"), [("test", 3), ("all", 16)])
def test_predict_matches_the_training_run(run_dir, corpus_dir, tmp_path, split, n_dialogues, capsys):
    out = tmp_path / "p.jsonl"
    argv = [
        "predict",
        "--run",
        str(run_dir),
        "--corpus",
        str(corpus_dir),
        "--split",
        split,
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    preds = read_predictions(out)
    assert len({p.dialogue for p in preds}) == n_dialogues
    if split == "test":
        saved = read_predictions(RunDir(run_dir).predictions("test"))
        assert [p.probs for p in preds] == [p.probs for p in saved]


def test_predict_without_a_trained_run_is_an_error(corpus_dir, tmp_path, capsys):
    argv = [
        "predict",
        "--run",
        str(tmp_path),
        "--corpus",
        str(corpus_dir),
        "--split",
        "dev",
        "--out",
        "x.jsonl",
    ]
    assert main(argv) == 2
    assert "lantern train" in capsys.readouterr().err


def test_evaluate_table_and_json(run_dir, capsys):
    path = RunDir(run_dir).predictions("dev")
    assert main(["evaluate", "--predictions", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    preds = read_predictions(path)
    correct = sum(p.label == max(range(4), key=p.probs.__getitem__) for p in preds)
    assert report["accuracy"] == round(100 * correct / len(preds), 2)
    assert report["classes"] == ["hap", "sad", "neu", "ang"]  # names from the config.json beside the file
    assert sum(map(sum, report["confusion"])) == len(preds)
    assert set(report) >= {"accuracy", "weighted_f1", "per_class_f1", "confusion"}
    assert main(["evaluate", "--predictions", str(path)]) == 0
    table = capsys.readouterr().out
    assert "weighted F1" in table and "confusion" in table and "fru" not in table
    assert f"{report['weighted_f1']:6.2f}" in table
    assert f"macro F1     {report['macro_f1']:6.2f}" in table and "support" in table
    hap = next(line for line in table.splitlines() if line.strip().startswith("hap"))
    assert hap.split()[1:] == [
        f"{report['per_class_precision']['hap']:.2f}",
        f"{report['per_class_recall']['hap']:.2f}",
        f"{report['per_class_f1']['hap']:.2f}",
        str(report["support"]["hap"]),
    ]


def test_evaluate_elsewhere_uses_class_indices_and_skips_unlabelled(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    write_predictions(
        path,
        [
            Prediction("u1", "d", "A", "test", 0, [0.9, 0.1]),
            Prediction("u2", "d", "B", "test", 1, [0.2, 0.8]),
            Prediction("u3", "d", "A", "test", None, [0.2, 0.8]),
        ],
    )
    assert main(["evaluate", "--predictions", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == ["0", "1"] and report["n"] == 2 and report["unlabelled"] == 1
    assert report["accuracy"] == 100.0


def test_evaluate_without_gold_labels_is_an_error(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    write_predictions(path, [Prediction("u1", "d", "A", "test", None, [1.0, 0.0])])
    assert main(["evaluate", "--predictions", str(path)]) == 2
    assert "no prediction carries a gold label" in capsys.readouterr().err
