"""The practitioner's path (`lantern annotate`) and the ablation sweep (`lantern ablate`)."""

from __future__ import annotations

import io
import json
import shutil
from csv import DictReader
from dataclasses import replace

import pytest

from lantern.cli import main
from lantern.predictions import read_predictions
from lantern.recipes.config import CorpusSpec, VanillaSpec
from lantern.recipes.pipeline import build_corpus, run_pipeline
from lantern.rundir import SIMULATED_MODEL, LLMSettings, LLMStats, RunDir
from lantern.testing.runs import gold_file
from lantern.testing.server import running_test_server, server_stats
from lantern.training import read_vanilla_meta


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_config):
    """A trained text-only run (MiniLM features of the transcripts) with its simulation gold file and
    the URL of the server it was prompted at, still serving."""
    from lantern.corpus.example import generate_example
    from lantern.corpus.native import save_corpus

    root = tmp_path_factory.mktemp("textrun")
    corpus = generate_example(
        12, seed=5, text_features="minilm", widths={"t": 16, "a": 8, "v": 8}, min_len=6, max_len=9
    )
    corpus_dir = save_corpus(corpus, root / "corpus")
    gold = gold_file(corpus, root / "gold.jsonl")
    with running_test_server(simulate=[gold], accuracy=0.9) as url:
        config = tiny_config(corpus_dir, url)
        config.vanilla = VanillaSpec(model="corect", preset="quick", epochs=2, modalities=["t"])
        run_pipeline(config, root / "run", progress=False)
        yield root / "run", gold, url


def _dialogues(path):
    utterances = [{"speaker": "A", "text": "hello"}, {"speaker": "B", "text": "hi"}]
    path.write_text(json.dumps({"id": "x", "utterances": utterances}) + "\n")
    return path


def _served(url: str) -> dict[str, int]:
    """The requests a server answered, by route, other than the tests' own control requests."""
    return {k: v for k, v in server_stats(url)["requests"].items() if not k.startswith("/_control")}


def _annotate(run_dir, dialogues, out, *flags: str) -> int:
    return main(
        ["annotate", "--run", str(run_dir), "--input", str(dialogues), "--out", str(out), "--quiet", *flags]
    )


def test_annotate_gives_every_utterance_an_emotion_with_its_fields(text_run, tmp_path, capsys):
    run_dir, _gold, url = text_run
    dialogues = tmp_path / "mine.jsonl"
    dialogues.write_text(
        json.dumps(
            {
                "id": "call-1",
                "utterances": [
                    {"speaker": "Ana", "text": "I can't believe you did this, I'm furious!"},
                    {"speaker": "Ben", "text": "Calm down, it was an accident."},
                    {"speaker": "Ana", "text": "An accident? This is the third time."},
                    {"speaker": "Cleo", "text": "Let's all sit down and talk."},
                ],
            }
        )
        + "\n"
        + json.dumps({"id": "call-2", "utterances": [{"speaker": "Dee", "text": "What a lovely surprise!"}]})
        + "\n"
    )
    out = tmp_path / "emotions.jsonl"
    before = server_stats(url)["chat_completions"]
    # No endpoint flags: the run's own LLM answers, at the URL the run was prompted at.
    assert _annotate(run_dir, dialogues, out) == 0
    assert server_stats(url)["chat_completions"] > before
    err = capsys.readouterr().err
    assert f"[annotate] LLM: {SIMULATED_MODEL} at {url}" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["call-1_000", "call-1_001", "call-1_002", "call-1_003", "call-2_000"]
    classes = {"hap", "sad", "neu", "ang", "exc", "fru"}
    for r in rows:
        assert r["emotion"] in classes
        assert abs(sum(r["probs"].values()) - 1) < 1e-3
        assert len(r["fields"]) == 2
        assert {f["b"] for f in r["fields"]} == {0, 1}
        total = sum(f["weight"] for f in r["fields"]) + r["vanilla"]["weight"]
        assert total == pytest.approx(1, abs=2e-3)
    assert rows[3]["speaker"] == "Cleo" and rows[0]["text"].startswith("I can't believe")


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--llm-model", "gpt-4o"], "--llm-model gpt-4o"),
        (["--local"], "--local"),
        (["--server-kind", "vllm"], "--server-kind vllm"),
    ],
)
def test_annotate_refuses_another_llm_than_the_run_was_prompted_with(
    text_run, tmp_path, capsys, flags, named
):
    run_dir, _gold, url = text_run
    before = _served(url)
    out = tmp_path / "o.jsonl"
    assert _annotate(run_dir, _dialogues(tmp_path / "mine.jsonl"), out, *flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and named in err
    assert "asks another LLM" in err and f"was trained on ({SIMULATED_MODEL} at {url})" in err
    assert not out.exists() and _served(url) == before


def test_annotate_takes_the_same_model_at_another_url_and_other_limits(text_run, tmp_path, capsys):
    run_dir, _gold, url = text_run
    dialogues = _dialogues(tmp_path / "mine.jsonl")
    with running_test_server(simulate=[text_run[1]]) as elsewhere:
        flags = ["--base-url", elsewhere, "--concurrency", "1"]
        assert _annotate(run_dir, dialogues, tmp_path / "o.jsonl", *flags) == 0
        assert server_stats(elsewhere)["chat_completions"] > 0
    err = capsys.readouterr().err
    assert f"LLM: {SIMULATED_MODEL} at {elsewhere}" in err and f"same model at {url}" in err


def test_annotate_asks_which_llm_answered_a_run_that_did_not_record_it(text_run, tmp_path, capsys):
    run_dir, _gold, url = text_run
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old)
    settings_path = RunDir(old).first_seed_run().llm.settings
    record = json.loads(settings_path.read_text())
    for key in ("base_urls", "url_credentials", "api_key_env", "local_model", "local_backend"):
        del record[key]
    settings_path.write_text(json.dumps(record))
    dialogues = _dialogues(tmp_path / "mine.jsonl")
    assert _annotate(old, dialogues, tmp_path / "o.jsonl") == 2
    err = capsys.readouterr().err
    assert "before Lantern recorded its endpoint" in err and f"--llm-model {SIMULATED_MODEL}" in err
    assert _annotate(old, dialogues, tmp_path / "o.jsonl", "--base-url", url, "--llm-model", "gpt-4o") == 2
    assert _annotate(old, dialogues, tmp_path / "o.jsonl", "--base-url", url) == 0


def test_annotate_refuses_a_model_that_needs_audio_and_video(tiny_corpus, tiny_config, tmp_path):
    corpus_dir, gold = tiny_corpus
    with running_test_server(simulate=[gold]) as url:
        run_pipeline(tiny_config(corpus_dir, url, methods=("attention",)), tmp_path / "run", progress=False)
        code = _annotate(tmp_path / "run", _dialogues(tmp_path / "mine.jsonl"), tmp_path / "o.jsonl")
    assert code == 2
    assert not (tmp_path / "o.jsonl").exists()


def test_ablate_writes_one_table_and_reuses_cached_answers(tiny_corpus, tiny_config, tmp_path, capsys):
    corpus_dir, gold = tiny_corpus
    with running_test_server(simulate=[gold], accuracy=0.8) as url:
        run_pipeline(tiny_config(corpus_dir, url), tmp_path / "run", progress=False)
        before = server_stats(url)["chat_completions"]
        code = main(
            [
                "ablate",
                "--run",
                str(tmp_path / "run"),
                "--t",
                "1,2",
                "--strides",
                "2,3",
                "--select-on",
                "dev",
                "--quiet",
            ]
        )  # no endpoint given: the one the run was prompted at
        after = server_stats(url)["chat_completions"]
    assert code == 0
    assert after > before  # the new variants were asked of the run's own LLM
    assert f"[ablate] LLM: {SIMULATED_MODEL} at {url}" in capsys.readouterr().err
    seed_run = RunDir(tmp_path / "run").seed(0)
    markdown, csv = seed_run.ablation_table
    text = markdown.read_text()
    assert "simulated LLM" in text and "Selected on dev" in text
    rows = list(DictReader(io.StringIO(csv.read_text())))
    variants = {row["variant"] for row in rows}
    assert variants == {
        "run", "t=1", "stride=3", "no-vad", "no-probs", "answer=probs", "answer=digits", "no-context",
        "no-dimensions",
    }  # fmt: skip
    assert {"vanilla", "uniform", "single", "position", "gated", "attention", "attention-llm"} <= {
        row["method"] for row in rows
    }
    run_stats = LLMStats.read(seed_run.ablation("run").llm.stats)
    assert run_stats.requests_sent == 0 and run_stats.cache_hits == run_stats.unique_requests
    # no-dimensions: a vanilla model retrained with lambda_vad = 0, whose predictions carry no VAD,
    # prompted without VAD.
    no_dims = seed_run.ablation("no-dimensions")
    assert read_vanilla_meta(no_dims).training["lambda_vad"] == 0.0
    assert all(p.vad is None for p in read_predictions(no_dims.predictions("test")))
    assert not LLMSettings.read(no_dims.llm.settings).include_vad
    # no-context: the same answers as the run, attention without context embeddings.
    config = json.loads(seed_run.ablation("no-context").method("attention").config.read_text())
    assert config["params"]["use_context"] is False and config["n_context"] == 0
    assert all(row["dev_nll"] for row in rows if row["method"] == "attention")
    assert before > 0
    assert "| variant |" in (seed_run.ablation_table[0]).read_text()


def test_corpus_example_spec_builds_in_the_run_directory(tmp_path):
    corpus = build_corpus(CorpusSpec(kind="example", dialogues=5, widths={"t": 8, "a": 8, "v": 8}))
    assert len(corpus) == 5
    with pytest.raises(ValueError, match="kind"):
        build_corpus(replace(CorpusSpec(), kind="nope"))


@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        ["ablate", "--run", "r"],
        ["annotate", "--run", "r", "--input", "i.jsonl", "--out", "o.jsonl"],
    ],
)
def test_every_command_that_takes_a_budget_takes_prices_too(command):
    from lantern.cli import build_parser

    args = build_parser().parse_args(
        [*command, "--llm-model", "my-model", "--max-cost", "1", "--prices", '{"my-model": [1, 2]}']
    )
    assert args.max_cost == 1.0 and args.prices == {"my-model": [1.0, 2.0]} and args.model == "my-model"


def test_a_demo_with_a_budget_but_no_price_is_refused_before_any_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--base-url", "http://127.0.0.1:9/v1", "--llm-model", "my-model",
                 "--max-cost", "1", "--quiet"])  # fmt: skip
    assert code == 2 and "--max-cost needs the price of model 'my-model'" in capsys.readouterr().err
    assert not out.exists()
