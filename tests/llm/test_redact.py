"""Secrets in base URLs and echoed error bodies never reach a file, a log line or a message."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from lantern.llm.config import Endpoint, LLMConfig
from lantern.llm.redact import REDACTED, RedactingFilter, Redactor, public_url, scrub, url_secrets
from lantern.recipes.config import PipelineConfig
from lantern.report import redact
from lantern.rundir import LLMSettings, LLMStats, RunDir
from lantern.testing.runs import make_corpus, make_run
from lantern.testing.server import DEFAULT_MODEL, inject_faults, running_test_server

SECRET_URL = (
    "https://alice:pw-SECRET-1@llm.example.com:8443/v1?api-key=q-SECRET-2&deployment=x&TOKEN-SECRET-3"
)


def test_public_url_drops_user_info_and_every_query_value():
    assert public_url(SECRET_URL) == (
        f"https://llm.example.com:8443/v1?api-key={REDACTED}&deployment={REDACTED}&{REDACTED}"
    )
    assert public_url("http://[::1]:8080/v1") == "http://[::1]:8080/v1"
    assert public_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert set(url_secrets(SECRET_URL)) >= {"alice", "pw-SECRET-1", "q-SECRET-2", "TOKEN-SECRET-3"}


def test_scrub_and_the_redactor_leave_no_secret_in_free_text():
    line = f'HTTP Request: POST {SECRET_URL.replace("/v1", "/v1/chat/completions")} "HTTP/1.1 200 OK"'
    assert "SECRET" not in scrub(line) and "llm.example.com:8443" in scrub(line)
    assert scrub("Authorization: Bearer sk-abc123") == f"Authorization: Bearer {REDACTED}"
    redactor = Redactor(["sk-the-key-77", *url_secrets(SECRET_URL)])
    echoed = "bad request (headers: Authorization: sk-the-key-77; url q-SECRET-2)"
    assert redactor(echoed) == f"bad request (headers: Authorization: {REDACTED}; url {REDACTED})"


def test_the_log_filter_scrubs_records_of_any_logger():
    record = logging.LogRecord(
        "httpx", logging.INFO, __file__, 1, "HTTP Request: POST %s", (SECRET_URL,), None
    )
    assert RedactingFilter().filter(record) and "SECRET" not in record.getMessage()


def test_run_json_and_the_report_hold_no_url_secret():
    config = LLMConfig(endpoint=Endpoint(base_urls=[SECRET_URL], model="m"))
    assert "SECRET" not in str(PipelineConfig(llm=config).to_json()) and "SECRET" not in str(config.to_json())
    # A run.json written before URLs were redacted is redacted when the report shows it.
    assert "SECRET" not in str(redact({"config": {"llm": {"base_urls": [SECRET_URL]}}}))


def _prompt(run: Path, base_url: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "lantern", "-v", "prompt", "--run", str(run), "--base-url", base_url,
        "--llm-model", DEFAULT_MODEL, "--splits", "test", "--quiet", "--timeout", "5", *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, timeout=120, env=env)


def _files(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_credentials_in_a_base_url_reach_no_log_and_no_file(tmp_path):
    run = make_run(tmp_path, make_corpus([("test", 3)])).root
    with running_test_server() as url:
        done = _prompt(run, url.replace("http://", "http://alice:pw-SECRET-1@") + "/v1")
    assert done.returncode == 0, done.stderr.decode()
    assert b"INFO" in done.stderr and b"HTTP Request" in done.stderr  # the request lines were logged
    assert b"pw-SECRET-1" not in done.stdout + done.stderr + _files(run)
    # The URL is recorded for annotate without its credentials, and that they were there.
    settings = LLMSettings.read(RunDir(run).llm.settings)
    assert settings.base_urls == [url + "/v1"] and settings.url_credentials


def test_an_error_body_that_echoes_the_key_is_scrubbed_before_it_is_shown_or_stored(tmp_path):
    key = "sk-lantern-ECHOED-5d2e"
    run = make_run(tmp_path, make_corpus([("test", 3)])).root
    env = {**os.environ, "LANTERN_ECHO_KEY": key}
    with running_test_server() as url:
        inject_faults(url, ["echo_auth"])
        done = _prompt(run, url + "/v1", "--api-key-env", "LANTERN_ECHO_KEY", env=env)
    assert done.returncode == 3, done.stderr.decode()  # the 400 is not retried: the field fell back
    assert b"malformed request" in done.stderr and REDACTED.encode() in done.stderr
    assert key.encode() not in done.stdout + done.stderr + _files(run)
    assert LLMStats.read(RunDir(run).llm.stats).transport_errors == {"http_400": 1}


def test_punctuation_after_a_url_in_a_message_stays_outside_it():
    text = "trained on answers of m at http://127.0.0.1:8000; other (at http://u:pw-SECRET@h:9/v1), done."
    assert scrub(text) == "trained on answers of m at http://127.0.0.1:8000; other (at http://h:9/v1), done."
