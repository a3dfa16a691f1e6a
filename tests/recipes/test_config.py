"""The pipeline TOML is checked whole when it is read: every error is one line naming the file, the
table, the key, the bad value and what was expected, and nothing runs (no run directory is made)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lantern.cli import main
from lantern.errors import LanternError
from lantern.recipes.config import FusionSpec, PipelineConfig, VanillaSpec, load_config, table_keys
from lantern.recipes.pipeline import run_pipeline

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('[llm]\nstride = "four"\n', "[llm] stride: expected an integer, got 'four'", id="type"),
        pytest.param(
            "[vanilla]\ncrossfit = 1\n",
            "[vanilla] crossfit: expected 0 (none) or a number of folds >= 2, got 1",
            id="range",
        ),
        pytest.param(
            "[llm]\nstride = 0\n",
            "[llm]: receptive-field stride must be an integer >= 1, got 0",
            id="llm-range",
        ),
        pytest.param(
            '[vanilla]\nmodel = "corect"\nepoch = 3\n',
            "[vanilla] epoch: unknown key (did you mean 'epochs'?); known: ",
            id="unknown-key",
        ),
        pytest.param(
            "[fusoin]\nmethods = []\n",
            "[fusoin]: unknown table (did you mean 'fusion'?); known: [run], [corpus], [vanilla], [llm], "
            "[fusion]",
            id="unknown-table",
        ),
        pytest.param(
            "[llm]\nstride = 4\nt = \n",
            "not valid TOML: Invalid value (at line 3, column 5)",
            id="toml-syntax",
        ),
        pytest.param(
            '[fusion]\nmethods = ["atention"]\n',
            "[fusion] methods: expected a non-empty list of distinct names from vanilla, ",
            id="unknown-name",
        ),
    ],
)
def test_a_bad_config_is_one_located_line_and_exit_2_before_anything_runs(text, message, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    out = tmp_path / "run"
    assert main(["run", "--config", str(bad), "--out", str(out), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"lantern: error: {bad}: {message}"), captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert not out.exists()


@pytest.mark.parametrize(
    ("table", "key"), [(table, key) for table, keys in table_keys().items() for key in keys]
)
def test_every_key_of_every_table_has_its_type_checked(table, key, tmp_path):
    # A TOML date fits no key's type; the message says what would have fitted.
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[{table}]\n{key} = 1979-05-27\n")
    expected = rf"^\S+: \[{table}\] {key}: expected [a-z].*, got datetime\.date\("
    with pytest.raises(LanternError, match=expected):
        load_config(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stride = 4\n", "stride: a key outside any table; keys belong in [run], [corpus]"),
        ("[[llm]]\nstride = 4\n", "[llm]: expected a table ([llm] on a line of its own)"),
        ("[run]\ndri = 'x'\n", "[run] dri: unknown key (did you mean 'dir'?); known: dir"),
        (
            "[corpus]\nkind = 'csv'\n",
            "[corpus] kind: expected one of 'example', 'convert', 'native', got 'csv'",
        ),
        ("[corpus]\nkind = 'native'\n", "[corpus] path: required with kind = 'native'"),
        ("[corpus]\nkind = 'convert'\npath = 'x'\n", "[corpus] format: expected one of 'cogmen'"),
        (
            "[corpus]\ntarget = 'mood'\n",
            "[corpus] target: expected one of 'emotion', 'sentiment', got 'mood'",
        ),
        ("[corpus]\nlabels = 'x'\n", "[corpus] labels: unknown label set 'x'"),
        ("[corpus]\ndev_fraction = 1.0\n", "[corpus] dev_fraction: expected a number in [0, 1), got 1.0"),
        (
            "[corpus]\ntext_features = 'file'\n",
            "[corpus] text_features: expected one of 'synthetic', 'minilm'",
        ),
        ("[corpus]\ndialogues = 0\n", "[corpus] dialogues: expected an integer >= 1, got 0"),
        ("[corpus]\nmin_len = 0\n", "[corpus] min_len: expected an integer >= 1, got 0"),
        (
            "[corpus]\nmin_len = 9\nmax_len = 8\n",
            "[corpus] max_len: expected an integer >= min_len (9), got 8",
        ),
        (
            "[corpus]\nwidths = {t = 0}\n",
            "[corpus] widths: expected integers >= 1 for modalities among t, a, v",
        ),
        (
            "[corpus]\nwidths = {x = 4}\n",
            "[corpus] widths: expected integers >= 1 for modalities among t, a, v",
        ),
        (
            "[corpus]\nkind = 'convert'\npath = 'x'\nformat = 'meld-csv'\ntext_features = 'st:'\n",
            "[corpus] text_features: st: needs a sentence-transformers model",
        ),
        ("[vanilla]\nmodel = 'gpt'\n", "[vanilla] model: expected one of 'corect', 'sdt', got 'gpt'"),
        (
            "[vanilla]\nseeds = []\n",
            "[vanilla] seeds: expected a non-empty list of distinct integers >= 0, got []",
        ),
        (
            "[vanilla]\nseeds = [1, 1]\n",
            "[vanilla] seeds: expected a non-empty list of distinct integers >= 0",
        ),
        ("[vanilla]\nseeds = [-1]\n", "[vanilla] seeds: expected a non-empty list of distinct integers >= 0"),
        (
            "[vanilla]\nmodalities = ['t', 'x']\n",
            "[vanilla] modalities: expected a non-empty list of distinct names",
        ),
        (
            "[vanilla]\ndevice = 'gpu'\n",
            "[vanilla] device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'",
        ),
        ("[vanilla]\npreset = 'nope'\n", "[vanilla] unknown preset 'nope'"),
        ("[vanilla]\nlr = -1\n", "[vanilla] lr must be > 0, got -1"),
        ("[vanilla]\nepochs = 0\n", "[vanilla] epochs must be >= 1, got 0"),
        ("[vanilla]\nbatch_size = 0\n", "[vanilla] batch_size must be >= 1, got 0"),
        ("[vanilla]\nlambda_vad = -0.5\n", "[vanilla] lambda_vad must be >= 0, got -0.5"),
        ("[vanilla]\nclass_weights = 'x'\n", "[vanilla] class_weights must be one of"),
        ("[vanilla]\npatience = -1\n", "[vanilla] patience must be >= 0"),
        ("[vanilla]\naverage_epochs = -2\n", "[vanilla] average_epochs must be >= 0"),
        ("[vanilla]\nlabel_smoothing = 1\n", "[vanilla] label_smoothing must be in [0, 1)"),
        ("[vanilla]\nthreads = -1\n", "[vanilla] threads must be >= 0"),
        (
            "[vanilla]\nmodel = 'corect'\npreset = 'sdt-meld'\n",
            "[vanilla] preset: expected a recipe of corect",
        ),
        (
            "[llm]\nsplits = ['dve']\n",
            "[llm] splits: expected a non-empty list of distinct names from train, dev, test",
        ),
        ("[llm]\nserver_kind = 'vlm'\n", "[llm] server_kind: expected one of 'openai', 'vllm'"),
        ("[llm]\nresponse_format = 'xml'\n", "[llm] response_format: expected one of 'json_schema'"),
        ("[llm]\ntemplate = 'erc-v9'\n", "[llm] template: unknown prompt template 'erc-v9'"),
        ("[llm]\nconcurrency = 0\n", "[llm]: concurrency must be an integer >= 1, got 0"),
        ("[llm]\nbase_urls = ['http://127.0.0.1:9/v1']\n", "[llm]: a model name is required with a base URL"),
        (
            "[fusion]\ntrain_split = 'test'\n",
            "[fusion] train_split: expected one of 'dev', 'crossfit', got 'test'",
        ),
        (
            "[fusion]\ntrain_split = 'crossfit'\n",
            "[fusion] train_split: 'crossfit' needs [vanilla] crossfit >= 2",
        ),
        ("[fusion]\nparams = {atention = {}}\n", "[fusion] params.atention: expected a fusion method"),
        (
            "[fusion]\nparams = {attention = {hiden = 8}}\n",
            "[fusion] params.attention: fusion method 'attention': bad",
        ),
        (
            "[fusion]\nparams = {uniform = {folds = 3}}\n",
            "[fusion] params.uniform: fusion method 'uniform' is not trained",
        ),
    ],
)
def test_ranges_names_and_cross_table_rules_are_checked_on_load(text, message, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(LanternError) as info:
        load_config(bad)
    assert str(info.value).startswith(f"{bad}: {message}"), str(info.value)
    assert "\n" not in str(info.value)


def test_a_config_built_in_python_is_checked_before_the_run_directory_is_made(tmp_path):
    config = PipelineConfig(vanilla=VanillaSpec(seeds=[]), fusion=FusionSpec(methods=["vanilla"]))
    with pytest.raises(LanternError, match=r"^\[vanilla\] seeds: "):
        run_pipeline(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_the_shipped_examples_load(path):
    assert load_config(path).llm_splits == ["dev", "test"]


def test_the_training_settings_lantern_train_takes_as_flags_can_be_set_in_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[vanilla]\npatience = 4\naverage_epochs = 10\nlabel_smoothing = 0.1\nthreads = 2\n")
    overrides = load_config(path).vanilla.overrides()
    assert {k: overrides[k] for k in ("patience", "average_epochs", "label_smoothing", "threads")} == {
        "patience": 4,
        "average_epochs": 10,
        "label_smoothing": 0.1,
        "threads": 2,
    }


def test_a_run_made_before_the_later_training_settings_existed_stays_up_to_date():
    # what the first release's VanillaSpec held, and so what its run directories' stage hashes cover
    first_release = {
        "model": "sdt",
        "preset": None,
        "seeds": [0, 1],
        "epochs": 3,
        "lambda_vad": None,
        "modalities": None,
        "batch_size": None,
        "lr": None,
        "class_weights": None,
        "device": "auto",
        "crossfit": 0,
    }
    spec = VanillaSpec(model="sdt", seeds=[0, 1], epochs=3)
    assert spec.identity() == first_release
    assert VanillaSpec(model="sdt", seeds=[0, 1], epochs=3, label_smoothing=0.1).identity() == {
        **first_release,
        "label_smoothing": 0.1,
    }
