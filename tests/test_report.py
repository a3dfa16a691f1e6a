"""The HTML report: self-contained, every part present, simulated runs flagged, secrets left out."""

from __future__ import annotations

import base64
import re

import pytest

from lantern.evaluation import evaluate_run
from lantern.fusion import fuse_run
from lantern.report import redact, write_report
from lantern.rundir import RunDir
from lantern.testing.runs import dialogue_sizes, make_corpus, make_run, write_answers

FAST = {"hidden_sizes": [8], "weight_decays": [1e-2], "epoch_grid": [60], "folds": 3}
PNG = b"\x89PNG\r\n\x1a\n"


def fused_run(root, *, seed: int = 0, run_dir=None, model: str = "simulated-llm") -> RunDir:
    corpus = make_corpus(dialogue_sizes({"dev": 6, "test": 6}, (8, 20)))
    run = make_run(root, corpus, seed=seed, run_dir=run_dir)
    write_answers(run, seed=seed, model=model)
    # A config that holds a secret, as a careless user might write one.
    record = run.load()
    record["config"] = {"llm": {"model": model, "api_key": "sk-secret-value"}}
    run.save(record)
    return run


def _run(root, model: str, seeds=(0, 1)):
    for seed in seeds:
        run = fused_run(root, seed=seed, run_dir=root / f"seed-{seed}", model=model)
        fuse_run(
            run.root,
            ["uniform", "position", "attention"],
            seed=seed,
            params={"position": FAST, "attention": FAST},
        )
    evaluate_run(root, n_resamples=50)
    return root


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    root = _run(tmp_path_factory.mktemp("sim"), "simulated-llm")
    return root, write_report(root)


def test_report_is_self_contained_with_every_part(simulated):
    root, index = simulated
    assert index == root / "report" / "index.html"
    page = index.read_text(encoding="utf-8")
    # Results table: one row per method, Lantern marked, mean ± std.
    for method in ("vanilla", "uniform", "position", "attention (Lantern)"):
        assert re.search(rf"<tr><td>{re.escape(method)}</td><td>\d+\.\d\d ± \d+\.\d\d</td>", page), method
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 5
    assert all(base64.b64decode(img).startswith(PNG) for img in images)
    for name in ("results", "confusion", "per_class_f1", "attention", "reliability"):
        assert (root / "report" / f"{name}.png").read_bytes().startswith(PNG)
    for caption in ("Confusion", "Per-class F1", "receptive-field position", "Reliability", "LLM statistics"):
        assert caption in page
    assert "ECE (%)" in page
    assert "Configuration" in page and "lantern_version" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page, re.I)
    assert "<script" not in page.lower() and "@import" not in page


def test_report_flags_a_simulated_llm_and_hides_secrets(simulated):
    _, index = simulated
    page = index.read_text(encoding="utf-8")
    assert "class='banner'>simulated LLM" in page
    assert "<title>Lantern run report — simulated LLM</title>" in page
    assert "sk-secret-value" not in page and "&lt;redacted&gt;" in page


def test_report_of_a_real_llm_run_has_no_banner(tmp_path):
    root = _run(tmp_path, "gpt-4o", seeds=(0,))
    page = write_report(root).read_text(encoding="utf-8")
    assert "simulated LLM" not in page and "gpt-4o" in page


def test_report_evaluates_when_metrics_are_missing(tmp_path):
    run = fused_run(tmp_path)
    fuse_run(run.root, ["uniform"])
    index = write_report(run.root)
    assert run.eval_metrics.exists() and index.exists()
    # Without a trained method there are no attention weights to plot beyond uniform's own.
    assert "uniform" in index.read_text(encoding="utf-8")


def test_redact_removes_secret_values_but_keeps_token_counts():
    config = {
        "llm": {"api_key": "abc", "headers": {"Authorization": "Bearer x"}, "max_tokens": 512},
        "stats": {"prompt_tokens": 10, "access_token": "t"},
        "keys": ["sk-123", "plain"],
    }
    out = redact(config)
    assert out["llm"]["api_key"] == "<redacted>" and out["llm"]["headers"]["Authorization"] == "<redacted>"
    assert out["llm"]["max_tokens"] == 512 and out["stats"]["prompt_tokens"] == 10
    assert out["stats"]["access_token"] == "<redacted>"
    assert out["keys"] == ["<redacted>", "plain"]
