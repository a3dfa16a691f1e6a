"""The `lantern run` configs shipped in examples/ load, and train text-only with the dev-chosen recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from lantern.corpus.convert import DEFAULT_LABELS
from lantern.labels import get_label_set
from lantern.recipes.config import load_config
from lantern.train_config import default_preset

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("name", "layout", "folder"),
    [("meld-text.toml", "meld-csv", "meld"), ("emorynlp-text.toml", "emorynlp-csv", "emorynlp")],
)
def test_example_configs_load_as_text_only_runs_of_the_public_releases(name, layout, folder):
    config = load_config(EXAMPLES / name)
    assert (config.corpus.kind, config.corpus.format, config.corpus.text_features) == (
        "convert",
        layout,
        "minilm",
    )
    assert Path(config.corpus.path).is_absolute() and Path(config.corpus.path).name == folder
    assert Path(config.run_dir) == EXAMPLES.parent / "runs" / name.removesuffix(".toml")
    vanilla = config.vanilla
    assert (vanilla.modalities, vanilla.seeds, vanilla.preset) == (["t"], [0, 1, 2], None)
    labels = get_label_set(DEFAULT_LABELS[layout])
    assert default_preset(vanilla.model, labels, vanilla.modalities) == f"{vanilla.model}-meld-text"
    assert config.llm.endpoint.local  # the embedded model
    assert config.llm_splits == ["dev", "test"]
    assert config.fusion.train_split == "dev"
    assert {"vanilla", "attention", "attention-unguarded"} <= set(config.fusion.methods)
