"""`lantern run`: every stage into one run directory, skipping what is done, resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from lantern.cli import main
from lantern.errors import StageIncomplete
from lantern.evaluation import results_table
from lantern.fields import FieldSpec
from lantern.recipes.config import load_config
from lantern.recipes.pipeline import run_pipeline
from lantern.rundir import SIMULATED_MODEL, LLMSettings, LLMStats, RunDir, read_json
from lantern.testing.server import reset_server, running_test_server, server_stats
from tests.corpus.corpus_fixtures import cogmen_tuple, dialogue_tables, dump_pickle


def _chat_requests(url: str) -> int:
    return int(server_stats(url)["chat_completions"])


def test_run_writes_every_stage_then_skips_them(tiny_corpus, tiny_config, tmp_path):
    corpus_dir, gold = tiny_corpus
    run_dir = tmp_path / "run"
    with running_test_server(simulate=[gold], accuracy=0.9) as url:
        messages: list[str] = []
        result = run_pipeline(tiny_config(corpus_dir, url), run_dir, notify=messages.append, progress=False)
        seed = run_dir / "seed-0"
        for path in (
            seed / "vanilla" / "model.safetensors",
            seed / "vanilla" / "predictions-test.jsonl",
            seed / "llm" / "answers-dev.jsonl",
            seed / "llm" / "answers-test.jsonl",
            seed / "fusion" / "attention" / "predictions-test.jsonl",
            run_dir / "eval" / "metrics.json",
            run_dir / "report" / "index.html",
        ):
            assert path.exists(), path
        assert Path(result["report"]) == run_dir / "report" / "index.html"
        assert "label set iemocap6" in results_table(result["metrics"])
        stages = read_json(run_dir / "run.json")["stages"]
        assert {"corpus", "vanilla/seed-0", "llm/seed-0", "fusion/seed-0", "eval", "report"} <= set(stages)
        assert not any("skipped" in m for m in messages)

        sent = _chat_requests(url)
        again: list[str] = []
        run_pipeline(tiny_config(corpus_dir, url), run_dir, notify=again.append, progress=False)
        assert all("skipped" in m for m in again), again
        assert _chat_requests(url) == sent


def test_changed_llm_setting_reruns_llm_and_later_stages_only(tiny_corpus, tiny_config, tmp_path):
    corpus_dir, gold = tiny_corpus
    run_dir = tmp_path / "run"
    with running_test_server(simulate=[gold]) as url:
        config = tiny_config(corpus_dir, url)
        run_pipeline(config, run_dir, progress=False)
        messages: list[str] = []
        changed = replace(config, llm=replace(config.llm, fields=FieldSpec(stride=2, t=3)))
        run_pipeline(changed, run_dir, notify=messages.append, progress=False)
    ran = {m.split("]")[0].strip("[") for m in messages if m.endswith("running")}
    skipped = {m.split("]")[0].strip("[") for m in messages if "skipped" in m}
    assert skipped == {"corpus", "vanilla/seed-0"}
    assert ran == {"llm/seed-0", "fusion/seed-0", "eval", "report"}
    assert LLMSettings.read(RunDir(run_dir).seed(0).llm.settings).t == 3


def test_from_stage_forces_that_stage_and_later(tiny_corpus, tiny_config, tmp_path):
    corpus_dir, gold = tiny_corpus
    with running_test_server(simulate=[gold]) as url:
        config = tiny_config(corpus_dir, url)
        run_pipeline(config, tmp_path / "run", progress=False)
        messages: list[str] = []
        run_pipeline(config, tmp_path / "run", from_stage="fusion", notify=messages.append, progress=False)
    assert [m for m in messages if m.endswith("running")] == [
        "[fusion/seed-0] running",
        "[eval] running",
        "[report] running",
    ]


def test_several_seeds_give_mean_and_std(tiny_corpus, tiny_config, tmp_path):
    corpus_dir, gold = tiny_corpus
    with running_test_server(simulate=[gold], accuracy=0.8) as url:
        result = run_pipeline(tiny_config(corpus_dir, url, seeds=(0, 1)), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "seed-1" / "fusion" / "attention" / "predictions-test.jsonl").exists()
    text = json.dumps(result["metrics"])
    assert ("std" in text and "seed-1" in text.replace("seed_1", "seed-1")) or '"1"' in text


def test_toml_config_resolves_relative_paths_and_names_unknown_keys(tmp_path):
    (tmp_path / "data").mkdir()
    good = tmp_path / "lantern.toml"
    good.write_text(
        '[run]\ndir = "runs/x"\n[corpus]\nkind = "native"\npath = "data"\n'
        '[vanilla]\nmodel = "sdt"\nseeds = [1, 2]\nepochs = 3\n'
        '[llm]\nbase_urls = ["http://127.0.0.1:9/v1"]\nmodel = "m"\nt = 2\nsplits = ["dev", "test"]\n'
        '[fusion]\nmethods = ["attention"]\n'
    )
    config = load_config(good)
    assert config.corpus.path == str((tmp_path / "data").resolve())
    assert config.run_dir == str((tmp_path / "runs" / "x").resolve())
    assert (
        config.vanilla.seeds == [1, 2] and config.llm.fields.t == 2 and config.fusion.methods == ["attention"]
    )
    assert config.llm.endpoint.model == "m" and config.llm.fields.stride == FieldSpec().stride

    bad = tmp_path / "bad.toml"
    bad.write_text('[vanilla]\nmodel = "corect"\nepoch = 3\n')
    with pytest.raises(ValueError, match=r"\[vanilla\] epoch: unknown key \(did you mean 'epochs'\?\)"):
        load_config(bad)


def _write_toml(path: Path, corpus_dir: Path, url: str) -> Path:
    path.write_text(
        f'[corpus]\nkind = "native"\npath = "{corpus_dir}"\n'
        '[vanilla]\nmodel = "corect"\npreset = "quick"\nepochs = 2\n'
        f'[llm]\nbase_urls = ["{url}"]\nmodel = "simulated-llm"\nstride = 2\nt = 2\nconcurrency = 1\n'
        '[fusion]\nmethods = ["vanilla", "attention"]\n'
    )
    return path


def test_killed_run_resumes_without_redoing_finished_work(tiny_corpus, tmp_path):
    corpus_dir, gold = tiny_corpus
    run_dir = tmp_path / "run"
    with running_test_server(simulate=[gold], latency=0.15) as url:
        config = _write_toml(tmp_path / "run.toml", corpus_dir, url)
        command = [
            sys.executable,
            "-m",
            "lantern",
            "run",
            "--config",
            str(config),
            "--out",
            str(run_dir),
            "--quiet",
        ]
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while _chat_requests(url) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (run_dir / "eval" / "metrics.json").exists()
        before = _chat_requests(url)
        reset_server(url)

        out = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert "[vanilla/seed-0] up to date, skipped" in out.stderr
        resent = _chat_requests(url)
        stats = LLMStats.read(RunDir(run_dir).seed(0).llm.stats)
        assert stats.cache_hits >= 1
        assert resent == stats.unique_requests - stats.cache_hits
        assert before >= 4
    assert (run_dir / "report" / "index.html").exists()


def test_demo_command_prints_table_and_report_path(tmp_path, capsys):
    with running_test_server(model="echo") as url:
        code = main(
            [
                "demo",
                "--out",
                str(tmp_path / "demo"),
                "--dialogues",
                "8",
                "--epochs",
                "1",
                "--base-url",
                url,
                "--llm-model",
                "echo",
                "--quiet",
            ]
        )
    out = capsys.readouterr().out
    assert code == 0
    assert "attention" in out and "vanilla" in out
    assert f"report: {(tmp_path / 'demo' / 'report' / 'index.html').resolve()}" in out


def test_budget_stop_is_reported_and_a_larger_budget_continues(tiny_corpus, tiny_config, tmp_path):
    corpus_dir, gold = tiny_corpus
    with running_test_server(simulate=[gold]) as url:
        config = tiny_config(corpus_dir, url)
        endpoint = replace(
            config.llm.endpoint, prices={SIMULATED_MODEL: [1000.0, 1000.0]}, max_cost=1.0, concurrency=1
        )
        config.llm = replace(config.llm, endpoint=endpoint)
        with pytest.raises(StageIncomplete, match="run the same command again"):
            run_pipeline(config, tmp_path / "run", progress=False)
        stats_path = RunDir(tmp_path / "run").seed(0).llm.stats
        stats = LLMStats.read(stats_path)
        assert not stats.complete and stats.fallbacks.get("budget", 0) > 0
        assert stats.cost_usd <= 1.0
        first = _chat_requests(url)

        config.llm = replace(config.llm, endpoint=replace(endpoint, max_cost=None))
        run_pipeline(config, tmp_path / "run", progress=False)
        stats = LLMStats.read(stats_path)
        assert stats.complete and stats.cache_hits == first
        assert _chat_requests(url) == stats.unique_requests
    assert (tmp_path / "run" / "report" / "index.html").exists()


def test_a_public_layout_file_runs_through_the_whole_pipeline(tmp_path):
    from lantern.corpus.native import load_corpus

    source = dump_pickle(
        tmp_path / "IEMOCAP_features.pkl", cogmen_tuple(dialogue_tables(8, 3, py2=True)), py2=True
    )
    corpus_dir = tmp_path / "run" / "corpus"
    config_path = tmp_path / "lantern.toml"
    with running_test_server(model="echo") as url:
        config_path.write_text(
            '[run]\ndir = "run"\n'
            '[corpus]\nkind = "convert"\npath = "IEMOCAP_features.pkl"\nformat = "cogmen"\n'
            "dev_fraction = 0.25\n"
            '[vanilla]\nmodel = "sdt"\npreset = "quick"\nepochs = 1\n'
            f'[llm]\nbase_urls = ["{url}"]\nmodel = "echo"\nstride = 2\nt = 2\n'
            '[fusion]\nmethods = ["vanilla", "attention"]\n'
        )
        code = main(["run", "--config", str(config_path), "--quiet"])
    assert code == 0
    corpus = load_corpus(corpus_dir)
    assert len(corpus) == 11 and corpus.modalities == {"t": 100, "a": 100, "v": 512}
    assert {d.split for d in corpus} == {"train", "dev", "test"}
    assert read_json(tmp_path / "run" / "run.json")["config"]["corpus"]["path"] == str(source)
    assert (tmp_path / "run" / "report" / "index.html").exists()
