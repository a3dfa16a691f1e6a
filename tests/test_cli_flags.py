"""Every numeric flag is checked where it is parsed: one usage error naming the flag, exit code 2."""

from __future__ import annotations

import pytest

from lantern.cli import main

TRAIN = ["train", "--corpus", "no-corpus", "--model", "corect", "--out", "no-run"]
PROMPT = ["prompt", "--run", "no-run"]

BAD_FLAGS = [
    (["llm", "serve", "--port", "-5"], "--port"),
    (["llm", "serve", "--port", "70000"], "--port"),
    ([*TRAIN, "--lr", "nan"], "--lr"),
    ([*TRAIN, "--lr", "0"], "--lr"),
    ([*TRAIN, "--lambda-vad", "nan"], "--lambda-vad"),
    ([*TRAIN, "--epochs", "0"], "--epochs"),
    ([*TRAIN, "--batch-size", "-2"], "--batch-size"),
    ([*TRAIN, "--patience", "-1"], "--patience"),
    ([*PROMPT, "--timeout", "0"], "--timeout"),
    ([*PROMPT, "--timeout", "inf"], "--timeout"),
    ([*PROMPT, "--rpm", "-1"], "--rpm"),
    ([*PROMPT, "--tpm", "0"], "--tpm"),
    ([*PROMPT, "--concurrency", "0"], "--concurrency"),
    ([*PROMPT, "--max-retries", "-1"], "--max-retries"),
    ([*PROMPT, "--max-answer-retries", "-1"], "--max-answer-retries"),
    ([*PROMPT, "--max-cost", "-0.5"], "--max-cost"),
]


@pytest.mark.parametrize(("argv", "flag"), BAD_FLAGS, ids=[" ".join(a[-2:]) for a, _ in BAD_FLAGS])
def test_a_bad_numeric_flag_is_a_usage_error_naming_it(argv, flag, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: argument {flag}" in last
