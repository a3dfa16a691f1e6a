"""The project's own test LLM: a real OpenAI-compatible chat-completions server on loopback.

It answers from the request alone: it reads the rendered Lantern prompt back
(:func:`lantern.testing.prompt_reader.read_field`) and, by default, echoes the vanilla probabilities it finds
there in the compact answer form, so answers are deterministic and checkable. On demand it
misbehaves like real servers and hostile proxies do (rate limits, errors, hangs, dropped
connections, malformed answers, unreadable or endless 200 bodies, usage that lies, an error that
echoes the Authorization header), mimics llama.cpp's refusal of ``response_format: json_schema``,
and — clearly labelled ``simulated-llm`` with the header ``X-Lantern-Simulated: 1`` — simulates an
LLM of chosen accuracy from gold labels, so the fusion stage can be exercised end to end without a model.

Run ``python -m lantern.testing.server --port 0`` (it prints ``LISTENING http://127.0.0.1:PORT``
once ready; the OpenAI base URL is that plus ``/v1``), or from Python::

    with running_test_server(latency=0.05) as url:
        inject_faults(url, [{"kind": "429", "retry_after": 1}])
        ...

Control endpoints: ``POST /_control/faults`` with a JSON list of faults applied to the next chat
requests in order (``{"kind": K, "count": n, ...}``, kinds in :data:`FAULT_KINDS`; ``429`` takes
``retry_after``, ``timeout`` ``seconds``, ``slow_drip`` ``interval`` seconds per byte, ``bad_usage``
``raw`` JSON text for the usage),
``GET /_control/stats``, ``GET /_control/requests`` (recent request bodies), ``POST /_control/reset``.
The server exits by itself after ``--idle-exit`` seconds without a request.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lantern.llm.client import estimate_tokens
from lantern.llm.formats import answer_format
from lantern.llm.prompt import ANSWER_FORMATS
from lantern.rundir import SIMULATED_MODEL
from lantern.testing.prompt_reader import PromptField, read_field
from lantern.testing.simulation import CONTEXT_SIDES, MODES, Simulation, echo

log = logging.getLogger(__name__)

DEFAULT_MODEL = "lantern-test-llm"
# The answer format of a request that names none (no schema, no logprobs flag): percentages, since a
# logprobs answer without the log-probabilities it is read from would say nothing.
UNNAMED_FORMAT = "probs"
KINDS = ("openai", "llamacpp")
# Transport faults replace the response; body faults spoil the HTTP 200 a normal answer would get
# (its JSON, usage or delivery); answer faults corrupt the answer text inside a well-formed 200.
TRANSPORT_FAULTS = ("429", "500", "timeout", "drop", "html", "echo_auth")
BODY_FAULTS = (
    "empty_body",
    "truncated_body",
    "no_choices",
    "no_message",
    "no_usage",
    "no_logprobs",
    "bad_usage",
    "slow_drip",
)
ANSWER_FAULTS = (
    "non_json",
    "missing_utterance",
    "unknown_class",
    "negative",
    "nan",
    "oversized",
    "truncated",
)
FAULT_KINDS = TRANSPORT_FAULTS + BODY_FAULTS + ANSWER_FAULTS
RECENT_REQUESTS = 50


@dataclass
class ServerConfig:
    kind: str = "openai"
    model: str = DEFAULT_MODEL
    latency: float = 0.0
    answer_form: str = UNNAMED_FORMAT
    api_key: str | None = None
    idle_exit: float = 600.0
    simulation: Simulation | None = None
    record: int = RECENT_REQUESTS


@dataclass
class ServerState:
    """Mutable state of one server instance, shared by its handler threads under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: deque = field(default_factory=deque)
    requests: Counter = field(default_factory=Counter)
    faults_applied: Counter = field(default_factory=Counter)
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_REQUESTS))
    completions: int = 0
    last_activity: float = field(default_factory=time.monotonic)

    def reset(self) -> None:
        with self.lock:
            self.faults.clear()
            self.requests.clear()
            self.faults_applied.clear()
            self.recent.clear()
            self.completions = 0

    def next_fault(self) -> dict | None:
        with self.lock:
            fault = self.faults.popleft() if self.faults else None
            if fault is not None:
                self.faults_applied[fault["kind"]] += 1
            return fault

    def stats(self) -> dict:
        with self.lock:
            return {
                "requests": dict(self.requests),
                "chat_completions": self.requests["/v1/chat/completions"]
                + self.requests["/chat/completions"],
                "completions_answered": self.completions,
                "faults_pending": [f["kind"] for f in self.faults],
                "faults_applied": dict(self.faults_applied),
            }


def parse_faults(payload: object) -> list[dict]:
    """Validate a fault list and expand ``count``; ValueError on anything unknown."""
    if isinstance(payload, dict):
        payload = [payload]
    if not isinstance(payload, list):
        raise ValueError("faults must be a JSON list of objects")
    out = []
    for item in payload:
        fault = {"kind": item} if isinstance(item, str) else item
        if not isinstance(fault, dict) or str(fault.get("kind")) not in FAULT_KINDS:
            raise ValueError(f"unknown fault {item!r}; kinds: {', '.join(FAULT_KINDS)}")
        fault = {**fault, "kind": str(fault["kind"])}
        count = fault.pop("count", 1)
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"fault count must be a positive integer, got {count!r}")
        out.extend(dict(fault) for _ in range(count))
    return out


def requested_format(body: dict, default: str) -> str:
    """The answer format a request asks for: read from its schema's value shape (an enum of class
    names, a digit pattern, an object of classes) or its ``logprobs`` flag; ``default`` otherwise."""
    fmt = body.get("response_format")
    schema = None
    if isinstance(fmt, dict):
        schema = fmt.get("schema") or (fmt.get("json_schema") or {}).get("schema")
    values = list((schema or {}).get("properties", {}).values()) if isinstance(schema, dict) else []
    if values and isinstance(values[0], dict):
        if "enum" in values[0]:
            return "logprobs"
        if "pattern" in values[0]:
            return "digits"
        if values[0].get("type") == "object":
            return "probs"
    if body.get("logprobs") is True:
        return "logprobs"
    return default


def token_logprobs(content: str, probs: dict[int, list[float]], classes: list[str], top: int) -> list[dict]:
    """OpenAI-style ``logprobs.content`` for a logprobs-format answer: structure characters are
    tokens of their own (certain), and each label is one token whose ``top_logprobs`` hold the
    simulated distribution over the class names."""
    tokens: list[dict] = []
    position = 0
    for match in re.finditer(r'"(\d+)"\s*:\s*"([^"]*)"', content):
        for ch in content[position : match.start(2)]:
            tokens.append({"token": ch, "logprob": 0.0, "top_logprobs": [{"token": ch, "logprob": 0.0}]})
        p = probs[int(match.group(1))]
        total = sum(p) or 1.0
        ranked = sorted(range(len(classes)), key=lambda j: -p[j])[:top]
        candidates = [{"token": classes[j], "logprob": math.log(max(p[j] / total, 1e-12))} for j in ranked]
        tokens.append(
            {"token": match.group(2), "logprob": candidates[0]["logprob"], "top_logprobs": candidates}
        )
        position = match.end(2)
    for ch in content[position:]:
        tokens.append({"token": ch, "logprob": 0.0, "top_logprobs": [{"token": ch, "logprob": 0.0}]})
    return tokens


def _corrupt(fault: dict, content: str, field: PromptField) -> tuple[str, str]:
    """An answer spoiled the way ``fault`` says; returns (content, finish_reason)."""
    kind = fault["kind"]
    n_classes = len(field.classes)
    first = field.utterances[0].index
    target = int(fault.get("index", first))
    obj: dict[str, object] = json.loads(content)
    if kind == "non_json":
        return "I'm sorry, but I can't assign emotions to this conversation.", "stop"
    if kind == "missing_utterance":
        obj.pop(str(int(fault.get("index", field.utterances[-1].index))), None)
    elif kind == "unknown_class":
        obj[str(target)] = {"bored": 9}
    elif kind == "negative":
        obj[str(target)] = [-1] + [9] * (n_classes - 1)
    elif kind == "nan":
        obj[str(target)] = [math.nan] + [1] * (n_classes - 1)
    elif kind == "oversized":
        size = int(fault.get("chars", 200_000))
        return json.dumps(obj) + "\n" + "la " * (size // 3 + 1), "stop"
    elif kind == "truncated":
        text = json.dumps(obj)
        return text[: len(text) // 2], "length"
    return json.dumps(obj), "stop"


def _spoil(fault: dict, response: dict) -> bytes:
    """The body of a 200 spoiled the way ``fault`` says (``slow_drip`` keeps it; it is sent slowly).

    ``bad_usage`` puts ``fault["raw"]`` (JSON text, default ``"abc"``) verbatim in place of the usage
    object, so values json.dumps cannot write (``1e400``) can be sent too.
    """
    kind = fault["kind"]
    response = dict(response)
    if kind == "empty_body":
        return b""
    if kind == "no_choices":
        response.pop("choices")
    elif kind == "no_message":
        response["choices"] = [{"index": 0, "finish_reason": "stop"}]
    elif kind == "no_usage":
        response.pop("usage")
    elif kind == "no_logprobs":  # a server that ignores the logprobs request, as some do
        response["choices"] = [{**c, "logprobs": None} for c in response["choices"]]
    elif kind == "bad_usage":
        response["usage"] = "@usage@"
        raw = str(fault.get("raw", '"abc"'))
        return json.dumps(response).replace('"@usage@"', raw).encode("utf-8")
    data = json.dumps(response).encode("utf-8")
    if kind == "truncated_body":
        return data[: len(data) // 2]
    return data


class _Reply(Exception):
    """An HTTP error reply, raised from inside request handling."""

    def __init__(self, status: int, message: str, error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type


class LLMTestServer(ThreadingHTTPServer):
    """A threading HTTP server carrying its configuration and state (no module-level state)."""

    daemon_threads = True
    allow_reuse_address = True
    # The listen backlog. socketserver's default of 5 is overrun when a client opens its pool of
    # connections at once (16 for the LLM stage): the kernel drops the extra SYNs and those clients
    # retry a second later (a SYN retransmit), a stall that benchmarks measured as Lantern's overhead
    # and production servers do not have (uvicorn, which serves vLLM, listens with 2048).
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], config: ServerConfig) -> None:
        super().__init__(address, _Handler)
        self.config = config
        self.state = ServerState(recent=deque(maxlen=config.record))

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def watch_idle(self) -> None:
        """Shut the server down after ``idle_exit`` seconds without a request (runs in a thread)."""
        idle = self.config.idle_exit
        while True:
            time.sleep(min(1.0, idle / 4))
            if time.monotonic() - self.state.last_activity > idle:
                log.info("no request for %.0f s: exiting", idle)
                self.shutdown()
                return


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as production servers (uvicorn, vLLM) set it: the headers and the body go out in
    # two writes, and with Nagle's algorithm the body waited for the client's delayed ACK, 40 ms on
    # Linux, adding that to every response (the LLM stage's benchmark measured it as client overhead).
    disable_nagle_algorithm = True
    server: LLMTestServer

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- plumbing ---------------------------------------------------------------------------

    def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode("utf-8")
        self._send_bytes(status, data, headers)

    def _send_bytes(
        self,
        status: int,
        data: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        drip: float = 0.0,
    ) -> None:
        """Send ``data``; with ``drip`` > 0, one byte every ``drip`` seconds after the headers."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            if drip <= 0:
                self.wfile.write(data)
                return
            self.wfile.flush()
            for i in range(len(data)):
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                time.sleep(drip)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _error(
        self, status: int, message: str, error_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self._send(status, {"error": {"message": message, "type": error_type, "code": status}}, headers)

    def _body(self) -> object:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise _Reply(400, f"request body is not JSON ({exc})") from exc

    def _route(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        state = self.server.state
        with state.lock:
            state.requests[path] += 1
            state.last_activity = time.monotonic()
        return path

    # -- verbs ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self._route()
        if path in ("/v1/models", "/models"):
            model = self._model_name()
            self._send(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": model, "object": "model", "created": 0, "owned_by": "lantern-testserver"}
                    ],
                },
            )
        elif path == "/_control/stats":
            self._send(200, self.server.state.stats())
        elif path == "/_control/requests":
            with self.server.state.lock:
                self._send(200, list(self.server.state.recent))
        elif path in ("/health", "/"):
            self._send(200, {"status": "ok"})
        else:
            self._error(404, f"no route {path}", "not_found_error")

    def do_POST(self) -> None:
        path = self._route()
        try:
            body = self._body()
            if path == "/_control/faults":
                faults = parse_faults(body)
                with self.server.state.lock:
                    self.server.state.faults.extend(faults)
                self._send(200, {"queued": len(faults)})
            elif path == "/_control/reset":
                self.server.state.reset()
                self._send(200, {"reset": True})
            elif path in ("/v1/chat/completions", "/chat/completions"):
                self._chat(body)
            else:
                raise _Reply(404, f"no route {path}", "not_found_error")
        except _Reply as reply:
            self._error(reply.status, reply.message, reply.error_type)
        except ValueError as exc:
            self._error(400, str(exc), "invalid_request_error")

    # -- chat completions -------------------------------------------------------------------

    def _model_name(self, requested: object = None) -> str:
        config = self.server.config
        if config.simulation is not None:
            return SIMULATED_MODEL
        return requested if isinstance(requested, str) and requested else config.model

    def _check_auth(self) -> None:
        key = self.server.config.api_key
        if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
            raise _Reply(401, "invalid or missing API key", "authentication_error")

    def _check_response_format(self, fmt: object) -> None:
        if fmt is None:
            return
        if not isinstance(fmt, dict):
            raise _Reply(400, "response_format must be an object")
        kind = self.server.config.kind
        ftype = fmt.get("type")
        if ftype == "json_schema":
            if kind == "llamacpp":
                # What llama.cpp's servers answer to OpenAI's structured-output form.
                raise _Reply(
                    500,
                    'response_format type must be one of "text" or "json_object", but got: json_schema',
                    "server_error",
                )
            spec = fmt.get("json_schema")
            if not (
                isinstance(spec, dict)
                and isinstance(spec.get("name"), str)
                and isinstance(spec.get("schema"), dict)
            ):
                raise _Reply(400, "response_format.json_schema needs a name and a schema object")
        elif ftype == "json_object":
            extra = set(fmt) - {"type", "schema"}
            if extra or ("schema" in fmt and not isinstance(fmt["schema"], dict)):
                raise _Reply(400, f"response_format json_object: unexpected fields {sorted(extra)}")
            if "schema" in fmt and kind != "llamacpp":
                raise _Reply(400, "response_format json_object takes no schema on this server")
        elif ftype != "text":
            raise _Reply(400, f"response_format type {ftype!r} is not supported")

    def _chat(self, body: object) -> None:
        self._check_auth()
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise _Reply(400, "a chat completion needs a JSON body with a messages list")
        if body.get("stream"):
            raise _Reply(400, "the test server does not stream")
        self._check_response_format(body.get("response_format"))
        messages = body["messages"]
        user = next(
            (m.get("content") for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"),
            None,
        )
        if not isinstance(user, str):
            raise _Reply(400, "no user message with text content")
        try:
            field = read_field(user)
        except (ValueError, IndexError) as exc:
            raise _Reply(400, f"test server: not a Lantern prompt ({exc})") from exc
        state, config = self.server.state, self.server.config
        with state.lock:
            state.recent.append(body)
        fault = state.next_fault()
        if config.latency > 0:
            time.sleep(config.latency)
        if fault is not None and fault["kind"] in TRANSPORT_FAULTS:
            self._transport_fault(fault)
            if fault["kind"] != "timeout":
                return
        self._answer(body, messages, field, fault)

    def _transport_fault(self, fault: dict) -> None:
        kind = fault["kind"]
        if kind == "429":
            retry = fault.get("retry_after", 1)
            self._error(429, "Rate limit reached (injected)", "rate_limit_error", {"Retry-After": str(retry)})
        elif kind == "500":
            self._error(500, "Internal server error (injected)", "server_error")
        elif kind == "timeout":
            time.sleep(float(fault.get("seconds", 5.0)))
        elif kind == "drop":
            self.close_connection = True
            with suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        elif kind == "html":
            page = b"<html><body><h1>502 Bad Gateway</h1>(a proxy's page, sent as 200)</body></html>"
            self._send_bytes(200, page, content_type="text/html")
        elif kind == "echo_auth":
            # Some servers quote the request back in their error: the key with it.
            echoed = self.headers.get("Authorization", "")
            self._error(400, f"malformed request (headers: Authorization: {echoed})", "invalid_request_error")

    def _answer(self, body: dict, messages: list, field: PromptField, fault: dict | None) -> None:
        config = self.server.config
        n_classes = len(field.classes)
        if config.simulation is not None:
            probs = config.simulation.answer(field)
        else:
            probs = {u.index: echo(u.probs, n_classes) for u in field.utterances}
        form = requested_format(body, config.answer_form)
        content, finish = answer_format(form).render(probs, field.classes), "stop"
        if fault is not None and fault["kind"] in ANSWER_FAULTS:
            content, finish = _corrupt(fault, content, field)
        logprobs = None
        if body.get("logprobs") is True and form == "logprobs" and finish == "stop":
            top = body.get("top_logprobs") if isinstance(body.get("top_logprobs"), int) else 1
            logprobs = {"content": token_logprobs(content, probs, field.classes, max(top, 1))}
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(max_tokens, int) and max_tokens > 0 and len(content) > 4 * max_tokens:
            content, finish = content[: 4 * max_tokens], "length"
        prompt_text = "".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
        prompt_tokens = max(1, estimate_tokens(prompt_text))
        completion_tokens = max(1, estimate_tokens(content))
        with self.server.state.lock:
            self.server.state.completions += 1
            serial = self.server.state.completions
        response = {
            "id": f"chatcmpl-lantern-{serial:08x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self._model_name(body.get("model")),
            "system_fingerprint": "lantern-testserver",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish,
                    "logprobs": logprobs,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        headers = {"X-Lantern-Simulated": "1"} if config.simulation is not None else None
        if fault is not None and fault["kind"] in BODY_FAULTS:
            drip = float(fault.get("interval", 0.5)) if fault["kind"] == "slow_drip" else 0.0
            self._send_bytes(200, _spoil(fault, response), headers, drip=drip)
        else:
            self._send(200, response, headers)


# ---------------------------------------------------------------------------------------------
# Running it: the command line, and a context manager for tests and benches.


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lantern.testing.server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    p.add_argument(
        "--kind",
        choices=KINDS,
        default="openai",
        help="server to mimic: llamacpp answers HTTP 500 to response_format json_schema",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name reported when the request names none")
    p.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each answer")
    p.add_argument(
        "--answer-form",
        choices=ANSWER_FORMATS,
        default=UNNAMED_FORMAT,
        help="the answer format when neither a request's schema nor its logprobs flag says (default "
        "%(default)s)",
    )
    p.add_argument("--api-key", default=None, help="require this bearer token")
    p.add_argument("--idle-exit", type=float, default=600.0, help="exit after this many idle seconds")
    p.add_argument(
        "--record",
        type=int,
        default=RECENT_REQUESTS,
        help="how many recent request bodies /_control/requests keeps",
    )
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    sim = p.add_argument_group("simulation (answers labelled simulated-llm)")
    sim.add_argument(
        "--simulate",
        nargs="+",
        metavar="PREDICTIONS_JSONL",
        help="simulate an LLM from the gold labels in these predictions files",
    )
    defaults = Simulation(gold={})
    sim.add_argument(
        "--mode", choices=MODES, default=defaults.mode, help="realistic (default) or independent"
    )
    sim.add_argument(
        "--accuracy",
        type=float,
        default=defaults.accuracy,
        help="top-1 accuracy of the simulated judgement (independent: at the field's first utterance)",
    )
    sim.add_argument(
        "--correlation",
        type=float,
        default=defaults.correlation,
        help="realistic: correlation of the judgements of two fields about one utterance",
    )
    sim.add_argument(
        "--anchoring",
        type=float,
        default=defaults.anchoring,
        help="realistic: weight of the shown vanilla distribution in the answer (log-linear)",
    )
    sim.add_argument(
        "--context-weight",
        type=float,
        default=defaults.context_weight,
        help="realistic: how much reliability grows with context in the field",
    )
    sim.add_argument("--context", choices=CONTEXT_SIDES, default=defaults.context, help="context side")
    sim.add_argument(
        "--accuracy-last",
        type=float,
        default=None,
        help="independent: accuracy at the field's last utterance (default: --accuracy)",
    )
    sim.add_argument(
        "--confidence",
        type=float,
        default=defaults.confidence,
        help="independent: probability put on the chosen class",
    )
    sim.add_argument("--fallback-rate", type=float, default=0.0, help="share of utterances left out")
    sim.add_argument("--random", action="store_true", help="answer random distributions (a useless LLM)")
    sim.add_argument("--seed", type=int, default=0)
    return p


def serve(args: argparse.Namespace) -> LLMTestServer:
    simulation = None
    if args.simulate:
        simulation = Simulation.from_predictions(
            args.simulate,
            mode=args.mode,
            accuracy=args.accuracy,
            correlation=args.correlation,
            anchoring=args.anchoring,
            context_weight=args.context_weight,
            context=args.context,
            accuracy_last=args.accuracy_last,
            confidence=args.confidence,
            fallback_rate=args.fallback_rate,
            random_answers=args.random,
            seed=args.seed,
        )
    config = ServerConfig(
        kind=args.kind,
        model=args.model,
        latency=args.latency,
        answer_form=args.answer_form,
        api_key=args.api_key,
        idle_exit=args.idle_exit,
        record=args.record,
        simulation=simulation,
    )
    return LLMTestServer((args.host, args.port), config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        server = serve(args)
    except (ValueError, OSError) as exc:
        print(f"testserver: error: {exc}", file=sys.stderr)
        return 2
    threading.Thread(target=server.watch_idle, daemon=True).start()
    print(f"LISTENING {server.url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _flags(options: dict[str, object]) -> list[str]:
    out: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, list | tuple):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


@contextmanager
def running_test_server(*args: str, timeout: float = 20.0, **options: object) -> Iterator[str]:
    """Start the test server as a subprocess; yield its URL (``http://127.0.0.1:PORT``); stop it on exit.

    ``args`` are command-line arguments; keyword ``options`` are flags too (``latency=0.05`` →
    ``--latency 0.05``, ``simulate=[path]`` → ``--simulate path``, ``random=True`` → ``--random``).
    """
    command = [sys.executable, "-m", "lantern.testing.server", "--port", "0", *args, *_flags(options)]
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL)
        try:
            yield _wait_listening(proc, stderr, timeout)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def _wait_listening(proc: subprocess.Popen, stderr: object, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    if proc.stdout is None:
        raise RuntimeError("test LLM server started without a stdout pipe")
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            line = proc.stdout.readline().decode("utf-8", "replace").strip()
            if line.startswith("LISTENING "):
                return line.split(" ", 1)[1]
            if not line and proc.poll() is not None:
                break
    stderr.seek(0)
    detail = stderr.read().decode("utf-8", "replace").strip()
    raise RuntimeError(f"test LLM server did not start within {timeout:.0f} s: {detail or 'no output'}")


def _control(url: str, path: str, payload: object | None = None) -> object:
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    method = "GET" if payload is None else "POST"
    request = urllib.request.Request(
        url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def inject_faults(url: str, faults: list[dict | str]) -> int:
    """Queue faults for the next chat requests; returns how many were queued."""
    return int(_control(url, "/_control/faults", faults)["queued"])


def server_stats(url: str) -> dict:
    return _control(url, "/_control/stats")


def recent_requests(url: str) -> list[dict]:
    """The last chat request bodies the server received (oldest first)."""
    return _control(url, "/_control/requests")


def reset_server(url: str) -> None:
    _control(url, "/_control/reset", {})


if __name__ == "__main__":
    sys.exit(main())
