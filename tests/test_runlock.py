"""One process per run directory: the lock refuses a second process and dies with its holder."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lantern.rundir import RunDir
from lantern.runlock import RunLocked, run_lock

CONFIG = """
[corpus]
kind = "example"
dialogues = 6

[vanilla]
preset = "quick"
epochs = 1

[llm]
base_urls = ["http://127.0.0.1:9/v1"]
model = "m"
max_retries = 0
"""


def hold(path: Path) -> subprocess.Popen:
    """Another process holding the lock at ``path`` until it is killed."""
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from lantern.runlock import run_lock
        with run_lock(Path({str(path)!r}), "testing"):
            print("held", flush=True)
            time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_lantern_run_is_refused_naming_the_holder(tmp_path):
    root = tmp_path / "run"
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    holder = hold(RunDir(root).lock)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "lantern", "run", "--config", str(config), "--out", str(root), "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert done.returncode == 2, done.stderr
    assert f"pid {holder.pid}" in done.stderr and "running the pipeline" in done.stderr
    assert not RunDir(root).run_json.exists()  # refused before writing anything


def test_kill_9_of_the_holder_releases_the_lock(tmp_path):
    lock = tmp_path / "llm" / ".lock"
    holder = hold(lock)
    with pytest.raises(RunLocked, match=f"pid {holder.pid}"), run_lock(lock, "prompting"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    with run_lock(lock, "prompting"):
        assert lock.read_text().strip().isdigit()
