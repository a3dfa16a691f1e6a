"""The embedded LLM without a compiler: an OpenAI-compatible chat-completions server on transformers.

``python -m lantern.llm.transformers_server --model FILE.gguf --port N`` serves the GGUF model
(:class:`lantern.llm.gguf_model.GGUFModel`) on loopback, so the LLM stage talks to it through the
client it uses for every endpoint. It implements what Lantern sends, in OpenAI's shapes:

- ``GET /v1/models``;
- ``POST /v1/chat/completions`` with ``messages`` (rendered by the model's own chat template),
  ``max_tokens`` (or ``max_completion_tokens``), ``temperature`` (0: greedy; OpenAI's default 1),
  ``seed``, ``logprobs`` and ``top_logprobs`` (up to 20; see :mod:`lantern.llm.decoding` for what
  they mean at constrained positions), and ``response_format``:
  ``{"type": "json_schema", "json_schema": {"schema": S}}`` or llama.cpp's
  ``{"type": "json_object", "schema": S}`` hold decoding to the schema ``S``
  (:mod:`lantern.llm.json_plan` says which schemas; any other is refused with HTTP 400 naming what
  is unsupported), while ``{"type": "json_object"}`` without a schema, ``{"type": "text"}`` or no
  ``response_format`` leave generation free.

The answer has OpenAI's body: ``id``, ``object``, ``created``, ``model``, ``choices[0]`` with
``message``, ``logprobs`` and ``finish_reason``, and ``usage`` counted by the model's tokenizer,
``usage.prompt_tokens_details.cached_tokens`` being the prompt tokens reused from the previous
request's KV cache. Streaming, ``n`` > 1, ``stop`` and tools are refused (400), not ignored.
Requests are answered one at a time; ``/v1/models`` answers meanwhile. Each request is logged with
its token counts, seconds and threads.

A request whose client has gone away (Ctrl-C, a client timeout) is dropped: the connection is
checked while the request waits for its turn and before every decoding step, so abandoned requests
do not keep the model busy while the requests that replaced them wait.
"""

from __future__ import annotations

import argparse
import json
import logging
import select
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lantern.cores import CoreBudget
from lantern.llm.decoding import Context, Sampler, Step, generate_free, generate_planned
from lantern.llm.gguf_model import DTYPES, GGUFModel
from lantern.llm.json_plan import TokenPlanner, UnsupportedSchema, compile_schema

log = logging.getLogger("lantern.llm.transformers_server")

DEFAULT_ALIAS = "local-gguf"
DEFAULT_N_CTX = 4096
MAX_TOP_LOGPROBS = 20
MAX_BODY = 16 * 1024 * 1024
ROLES = ("system", "user", "assistant")
# Parameters whose other values this server cannot honour, with the values it can.
REFUSED = {"stream": (None, False), "n": (None, 1), "stop": (None, [], ""), "tools": (None, []),
           "functions": (None, []), "logit_bias": (None, {})}  # fmt: skip


class BadRequest(ValueError):
    """A request this server refuses (HTTP 400); ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class ChatRequest:
    """A checked chat-completions request."""

    messages: list[dict[str, str]]
    max_tokens: int | None
    temperature: float
    seed: int | None
    top_logprobs: int | None  # None: no logprobs asked for
    schema: dict | None  # None: free generation


def _integer(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise BadRequest(f"{name} must be an integer {bounds}, got {value!r}", name)
    return value


def _content(message: object, n: int) -> dict[str, str]:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise BadRequest(f"messages[{n}] must be an object with a role among {', '.join(ROLES)}", "messages")
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text ones
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):  # fmt: skip
            raise BadRequest(f"messages[{n}].content: only text parts are supported", "messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise BadRequest(f"messages[{n}].content must be text", "messages")
    return {"role": message["role"], "content": content}


def _schema(response_format: object) -> dict | None:
    """The schema decoding is held to, or None for free generation."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
    elif kind == "json_schema":
        inner = response_format.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, dict) else None
        if schema is None:
            raise BadRequest("response_format json_schema needs json_schema.schema", "response_format")
    else:
        raise BadRequest(f"response_format type {kind!r} is not supported", "response_format")
    if schema is not None and not isinstance(schema, dict):
        raise BadRequest("the response_format schema must be an object", "response_format")
    return schema


def parse_request(body: object) -> ChatRequest:
    """The request ``body`` checked; BadRequest saying what is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    for name, accepted in REFUSED.items():
        if body.get(name) not in accepted:
            raise BadRequest(f"{name}={body[name]!r} is not supported by this server", name)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    temperature = body.get("temperature")
    if temperature is None:
        temperature = 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise BadRequest(f"temperature must be a number from 0 to 2, got {temperature!r}", "temperature")
    max_tokens = _integer(body, "max_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_completion_tokens", 1)
    top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if body.get("logprobs") not in (None, True, False):
        raise BadRequest("logprobs must be true or false", "logprobs")
    if top is not None and not body.get("logprobs"):
        raise BadRequest("top_logprobs needs logprobs: true", "top_logprobs")
    return ChatRequest(
        messages=[_content(m, n) for n, m in enumerate(messages)],
        max_tokens=max_tokens,
        temperature=float(temperature),
        seed=_integer(body, "seed", -(2**63), 2**63 - 1),
        top_logprobs=(top or 0) if body.get("logprobs") else None,
        schema=_schema(body.get("response_format")),
    )


class Cancelled(Exception):
    """The client of a request went away; nobody is waiting for its answer."""


def _never() -> bool:
    return False


class _Watched:
    """A decoding :class:`~lantern.llm.decoding.Context` that stops (raises Cancelled) before
    computing logits once ``cancelled()`` says the client is gone: a check per decoding step."""

    def __init__(self, context: Context, cancelled: Callable[[], bool]) -> None:
        self.context = context
        self.cancelled = cancelled

    def feed(self, ids: Sequence[int]) -> None:
        self.context.feed(ids)

    def logits(self, allowed: Sequence[int] | None = None) -> Any:
        if self.cancelled():
            raise Cancelled
        return self.context.logits(allowed)


def peer_closed(connection: socket.socket) -> bool:
    """Whether the client closed its end: the socket reads as ended (or reset). Bytes waiting to be
    read (a next request on the connection) are not a close."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class ChatEngine:
    """Requests to completions on one model, one at a time; ``cancelled`` counts the requests
    dropped because their client went away."""

    def __init__(self, model: GGUFModel, alias: str, n_ctx: int) -> None:
        self.model = model
        self.alias = alias
        self.n_ctx = n_ctx
        self.planner = TokenPlanner(model.tokenizer.encode)
        self.lock = threading.Lock()
        self.cancelled = 0

    def complete(self, request: ChatRequest, cancelled: Callable[[], bool] = _never) -> dict[str, Any]:
        """The chat-completion body answering ``request``; BadRequest for what it cannot honour,
        Cancelled as soon as ``cancelled()`` is true, waiting for its turn or between decoding steps."""
        # Waiting in short slices, so a request abandoned in the queue leaves it.
        while not self.lock.acquire(timeout=0.1):
            if cancelled():
                self.cancelled += 1
                raise Cancelled
        try:
            return self._complete(request, cancelled)
        except Cancelled:
            self.cancelled += 1
            raise
        finally:
            self.lock.release()

    def _complete(self, request: ChatRequest, cancelled: Callable[[], bool]) -> dict[str, Any]:
        tokenizer = self.model.tokenizer
        # The caller holds the lock: the tokenizer's, the planner's and the model's caches are one
        # request's at a time.
        plan = None
        if request.schema is not None:
            try:
                plan = self.planner.plan(compile_schema(request.schema))
            except UnsupportedSchema as exc:
                raise BadRequest(str(exc), "response_format") from None
        prompt = tokenizer.chat(request.messages)
        if len(prompt) >= self.n_ctx:
            raise BadRequest(
                f"the prompt has {len(prompt)} tokens; this model's context is {self.n_ctx}", "messages"
            )
        room = self.n_ctx - len(prompt)
        max_tokens = min(request.max_tokens or room, room)
        top_k = request.top_logprobs or 0
        sampler = Sampler(request.temperature, request.seed)
        started = time.monotonic()
        started_sequence, cached = self.model.start(prompt)
        sequence = _Watched(started_sequence, cancelled)
        if plan is None:
            generation = generate_free(sequence, sampler, max_tokens, tokenizer.stop_ids, top_k)
        else:
            generation = generate_planned(sequence, plan, sampler, max_tokens, top_k)
        seconds = time.monotonic() - started
        text = b"".join(tokenizer.token_bytes(s.token) for s in generation.steps).decode(
            "utf-8", "replace"
        )
        logprobs = None
        if request.top_logprobs is not None:
            logprobs = {"content": [self._logprob(s) for s in generation.steps], "refusal": None}
        log.info(
            "chat completion: %d prompt tokens (%d from the cache), %d generated, %s, %.2fs, %d threads",
            len(prompt), cached, len(generation.steps), generation.finish_reason, seconds, self.model.threads,
        )  # fmt: skip
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.alias,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": logprobs,
                    "finish_reason": generation.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(generation.steps),
                "total_tokens": len(prompt) + len(generation.steps),
                "prompt_tokens_details": {"cached_tokens": cached},
            },
            "system_fingerprint": None,
        }

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        raw = self.model.tokenizer.token_bytes(token)
        return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}

    def _logprob(self, step: Step) -> dict[str, Any]:
        entry = self._entry(step.token, step.logprob)
        entry["top_logprobs"] = [self._entry(t, lp) for t, lp in step.top]
        return entry

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": self.alias, "object": "model", "created": 0, "owned_by": "lantern"}],
        }


def make_handler(engine: ChatEngine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str, param: str | None = None) -> None:
            self._send(status, {"error": {"message": message, "type": kind, "param": param, "code": None}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, engine.models())
            else:
                self._error(404, f"no route {self.path}", "not_found_error")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if self.path.rstrip("/") != "/v1/chat/completions":
                self.rfile.read(min(length, MAX_BODY))
                self._error(404, f"no route {self.path}", "not_found_error")
                return
            if length > MAX_BODY:
                self.close_connection = True
                self._error(413, f"the request body exceeds {MAX_BODY} bytes", "invalid_request_error")
                return
            try:
                request = parse_request(json.loads(self.rfile.read(length) or b"null"))
                self._send(200, engine.complete(request, lambda: peer_closed(self.connection)))
            except Cancelled:
                log.info("chat completion dropped: the client went away")
                self.close_connection = True
            except (ValueError, RecursionError) as exc:  # BadRequest, or a body that is not JSON
                param = exc.param if isinstance(exc, BadRequest) else None
                message = str(exc) if isinstance(exc, BadRequest) else f"the body is not JSON: {exc}"
                self._error(400, message, "invalid_request_error", param)
            except Exception as exc:
                log.exception("chat completion failed")
                self._error(500, f"{type(exc).__name__}: {exc}", "server_error")

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lantern.llm.transformers_server", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", required=True, type=Path, help="GGUF file")
    p.add_argument("--alias", default=DEFAULT_ALIAS, help=f"the model name served (default {DEFAULT_ALIAS})")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    p.add_argument(
        "--n-ctx", type=int, default=DEFAULT_N_CTX, help=f"context tokens (default {DEFAULT_N_CTX})"
    )
    p.add_argument("--threads", type=int, help="fixed thread count (default: the cores free at each request)")
    p.add_argument("--no-prefix-cache", action="store_true", help="recompute every prompt in full")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="auto: bfloat16 where the CPU computes it in hardware, else float32",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    cores = CoreBudget()  # before loading, so the loading counts as this process's own load
    started = time.monotonic()
    model = GGUFModel.load(
        args.model, dtype=args.dtype, cores=cores, threads=args.threads, prefix_cache=not args.no_prefix_cache
    )
    log.info("loaded %s (%s) in %.1fs", args.model, model.dtype, time.monotonic() - started)
    engine = ChatEngine(model, args.alias, args.n_ctx)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(engine))
    server.daemon_threads = True
    print(f"LISTENING http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
