"""The transformers backend's HTTP side on a stand-in model (no weights): OpenAI's shapes through the
openai SDK, constrained and free generation, and HTTP 400 for what it cannot honour."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import httpx
import openai
import pytest

from lantern.llm.client import read_reply
from lantern.llm.formats import LogprobsFormat, ProbsFormat, response_format
from lantern.llm.transformers_server import BadRequest, ChatEngine, make_handler, parse_request
from tests.llm.fake_lm import FakeModel

C = ["hap", "sad", "neu", "ang", "exc", "fru"]
IDX = [4, 5]
ANSWER = '{"4":"neu","5":"ang"}'
MESSAGES = [{"role": "system", "content": "You annotate."}, {"role": "user", "content": "Go."}]


@pytest.fixture
def serve() -> Iterator:
    """Start a server on loopback for a stand-in model; yields a function returning its base URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(model: FakeModel, n_ctx: int = 4096) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(ChatEngine(model, "fake-llm", n_ctx)))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="none", max_retries=0)


def test_a_schema_answer_in_openais_shape_with_logprobs(serve):
    model = FakeModel(ANSWER, bonus={"sad": 11.0})
    url = serve(model)
    reply = client(url).chat.completions.create(
        model="fake-llm",
        messages=MESSAGES,
        temperature=0,
        max_tokens=50,
        logprobs=True,
        top_logprobs=3,
        response_format=response_format("json_schema", LogprobsFormat().schema(IDX, C)),
    )
    assert (
        reply.id.startswith("chatcmpl-") and reply.object == "chat.completion" and reply.model == "fake-llm"
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == ANSWER
    assert choice.finish_reason == "stop"
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == ANSWER
    assert all(bytes(t.bytes) == t.token.encode() and 1 <= len(t.top_logprobs) <= 3 for t in tokens)
    assert reply.usage.prompt_tokens == len(model.prompts[0])
    assert reply.usage.completion_tokens == len(tokens) == len(model.tokenizer.encode(ANSWER))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.usage.prompt_tokens_details.cached_tokens == 0


def test_llamacpps_json_object_with_schema_is_held_to_the_schema_too(serve):
    url = serve(FakeModel("Sure! Here you go."))
    fmt = response_format("json_object_schema", ProbsFormat().schema(IDX, C))
    reply = client(url).chat.completions.create(
        model="m", messages=MESSAGES, temperature=0, response_format=fmt
    )
    answer = json.loads(reply.choices[0].message.content)
    assert list(answer) == ["4", "5"] and all(list(v) == C for v in answer.values())


def test_the_logprobs_format_reads_this_servers_answer_through_the_client(serve):
    url = serve(FakeModel(ANSWER, bonus={"sad": 11.0}))
    body = {
        "model": "m",
        "messages": MESSAGES,
        "temperature": 0,
        **LogprobsFormat().request_params(),
        "response_format": response_format("json_schema", LogprobsFormat().schema(IDX, C)),
    }
    reply = read_reply(httpx.post(f"{url}/chat/completions", json=body).content)
    parsed = LogprobsFormat().parse(reply.text, reply.logprobs, IDX, C)
    assert parsed.errors == {}
    assert max(parsed.probs[4]) == parsed.probs[4][C.index("neu")] and parsed.probs[4][C.index("sad")] > 0.2


def test_without_a_schema_generation_is_free(serve):
    url = serve(FakeModel("hello world"))
    for fmt in (None, {"type": "json_object"}, {"type": "text"}):
        extra = {"response_format": fmt} if fmt else {}
        reply = client(url).chat.completions.create(model="m", messages=MESSAGES, temperature=0, **extra)
        assert reply.choices[0].message.content == "hello world" and reply.choices[0].logprobs is None
        assert reply.choices[0].finish_reason == "stop"


def test_max_tokens_ends_with_finish_reason_length(serve):
    url = serve(FakeModel(ANSWER))
    fmt = response_format("json_schema", LogprobsFormat().schema(IDX, C))
    reply = client(url).chat.completions.create(
        model="m", messages=MESSAGES, temperature=0, max_tokens=3, response_format=fmt
    )
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3
    assert ANSWER.startswith(reply.choices[0].message.content)


def test_an_unsupported_schema_is_refused_with_400_naming_it(serve):
    url = serve(FakeModel(ANSWER))
    schema = {"type": "object", "properties": {"4": {"type": "array"}}, "required": ["4"]}
    with pytest.raises(openai.BadRequestError) as caught:
        client(url).chat.completions.create(
            model="m", messages=MESSAGES, response_format=response_format("json_schema", schema)
        )
    error = caught.value.body
    assert "unsupported JSON schema at $.4: type 'array'" in error["message"]
    assert error["param"] == "response_format" and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"stream": True}, "stream"),
        ({"n": 2}, "n"),
        ({"stop": ["\n"]}, "stop"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_logprobs": 30, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"response_format": {"type": "grammar"}}, "response_format"),
    ],
)
def test_requests_it_cannot_honour_are_refused_not_ignored(change, named):
    with pytest.raises(BadRequest) as caught:
        parse_request({"model": "m", "messages": MESSAGES, **change})
    assert caught.value.param == named


def test_http_errors_a_client_can_read(serve):
    url = serve(FakeModel(ANSWER), n_ctx=8)
    too_long = httpx.post(f"{url}/chat/completions", json={"messages": MESSAGES})
    assert too_long.status_code == 400 and "context is 8" in too_long.json()["error"]["message"]
    not_json = httpx.post(f"{url}/chat/completions", content=b"{oops")
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]["message"]
    assert httpx.get(f"{url}/nothing").status_code == 404
    models = httpx.get(f"{url}/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "fake-llm"


def test_text_parts_are_joined_and_the_chat_template_sees_every_message():
    request = parse_request(
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ]
        }
    )
    assert request.messages == [{"role": "user", "content": "ab"}]
    assert request.temperature == 1.0 and request.top_logprobs is None and request.schema is None


class SlowModel(FakeModel):
    """A stand-in model that takes ``delay`` seconds per decoding step, counting its steps."""

    def __init__(self, want: str, delay: float) -> None:
        super().__init__(want)
        self.delay = delay
        self.steps = 0

    def start(self, prompt):
        context, cached = super().start(prompt)
        logits = context.logits

        def slow(allowed=None):
            time.sleep(self.delay)
            self.steps += 1
            return logits(allowed)

        context.logits = slow
        return context, cached


def test_a_request_whose_client_went_away_stops_generating_and_leaves_the_queue():
    model = SlowModel("ha" * 200, delay=0.02)  # 200 steps: about 4 s if nobody stopped it
    engine = ChatEngine(model, "slow", 4096)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(engine))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    impatient = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=0.4)
    try:
        # Two requests: one generating, one waiting for its turn; both clients give up (as on Ctrl-C).
        def ask() -> None:
            with pytest.raises(openai.APITimeoutError):
                impatient.chat.completions.create(model="slow", messages=MESSAGES, max_tokens=400)

        askers = [threading.Thread(target=ask) for _ in range(2)]
        for a in askers:
            a.start()
        for a in askers:
            a.join()
        deadline = time.monotonic() + 3
        while engine.cancelled < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.cancelled == 2
        steps = model.steps
        time.sleep(0.3)
        assert model.steps == steps < 100  # nothing decodes for the abandoned requests
        # The model is free again for the next request.
        model.want = ANSWER
        reply = client(url).chat.completions.create(model="slow", messages=MESSAGES, max_tokens=50)
        assert reply.choices[0].message.content == ANSWER and engine.cancelled == 2
    finally:
        server.shutdown()
        server.server_close()
