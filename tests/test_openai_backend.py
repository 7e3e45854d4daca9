"""The OpenAI backend, tested against ragloop's own OpenAI-compatible server.

A relay home answers through ``[generator] backend = "openai"`` with a first, real server (tiny model, API
keys on) as its generator: what the first server records is what the relay receives, streamed or not.
Failures of the network between them are played by a small local HTTP server (503 once, an error event
mid-stream, a stream cut short) and by a free port with nothing behind it: the machine's edge, nothing
inside ragloop is mocked.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from sqlalchemy import select

from conftest import LiveServer, free_port
from ragloop.config import Settings, init_home, load_settings
from ragloop.errors import ConfigError, GenerationError
from ragloop.generation.backends import Generation, GenParams, OpenAIBackend
from ragloop.store.db import session_scope
from ragloop.store.keys import create_key
from ragloop.store.models import Interaction

QUESTION = [{"role": "user", "content": "How many days of paid vacation do employees get?"}]
# Sampled, seeded: the random tiny model's greedy choice is often its end-of-turn token, an empty answer.
SAMPLED = {"temperature": 1.0, "seed": 7}
KEY_ENV = "RAGLOOP_TEST_UPSTREAM_KEY"


@pytest.fixture
def upstream(kb_home: Settings, start_server: Callable[..., LiveServer]) -> tuple[LiveServer, str]:
    """The first server, with API keys on, and a key it accepts."""
    with session_scope(kb_home.db_url) as s:
        _, secret = create_key(s, "relay")
    return start_server(kb_home, server={"auth": "on"}), secret


def recorded(server: LiveServer) -> list[Interaction]:
    """Every turn a server has recorded, oldest first."""
    with session_scope(server.settings.db_url) as s:
        rows = list(s.scalars(select(Interaction).order_by(Interaction.created_at)))
        s.expunge_all()
        return rows


def relay_home(folder: Path, kb_template: Path, base_url: str) -> Settings:
    """A home whose generator is the server at ``base_url``, with the same documents to retrieve from."""
    root = init_home(folder / "relay")
    (root / "ragloop.toml").write_text(
        "[generator]\n"
        'backend = "openai"\n'
        f"base_url = {json.dumps(base_url)}\n"
        'model = "production"\n'
        f'api_key_env = "{KEY_ENV}"\n'
        "max_new_tokens = 16\n"
    )
    settings = load_settings(root)
    shutil.copytree(kb_template, settings.data_dir, dirs_exist_ok=True)
    return settings


def test_relayed_answers_arrive_intact_streamed_or_not(
    upstream: tuple[LiveServer, str],
    start_server: Callable[..., LiveServer],
    kb_template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, secret = upstream
    monkeypatch.setenv(KEY_ENV, secret)
    relay = start_server(relay_home(tmp_path, kb_template, f"{first.url}/v1"))
    client = OpenAI(base_url=f"{relay.url}/v1", api_key="unused", max_retries=0)

    whole = client.chat.completions.create(model="production", messages=QUESTION, **SAMPLED)  # type: ignore[arg-type]
    chunks = list(
        client.chat.completions.create(
            model="production",
            messages=QUESTION,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            **SAMPLED,  # type: ignore[arg-type]
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    sent = recorded(first)
    received = recorded(relay)
    assert len(sent) == len(received) == 2
    for answer, s, r in zip([whole.choices[0].message.content, streamed], sent, received, strict=True):
        assert s.answer, "the tiny model said nothing: the comparison would prove nothing"
        assert r.answer == s.answer and answer.strip() == s.answer  # type: ignore[union-attr]
        assert (r.prompt_tokens, r.completion_tokens, r.finish_reason) == (
            s.prompt_tokens,
            s.completion_tokens,
            s.finish_reason,
        )
        # The first server answered the relay's rendered prompt (its passages included), not the question.
        assert s.messages[-1]["content"] != QUESTION[-1]["content"]
        assert QUESTION[-1]["content"] in s.messages[-1]["content"]


# The machine's edge ------------------------------------------------------------------------------------

DELTA = {"id": "c-1", "object": "chat.completion.chunk", "created": 0, "model": "m"}


def _event(delta: dict) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": None}
    return f"data: {json.dumps({**DELTA, 'choices': [choice]})}\n\n".encode()


class _Edge(http.server.BaseHTTPRequestHandler):
    """Each POST plays the next step of ``server.script``: ``503``, ``proxy`` (to ``server.upstream``),
    ``error-event`` (a stream that reports a failure mid-answer) or ``cut`` (a stream that stops mid-answer).
    HTTP/1.0: the end of a body is the end of the connection, so no framing to get wrong."""

    server: _EdgeServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        step = self.server.script.pop(0) if self.server.script else "proxy"
        self.server.played.append(step)
        if step == "503":
            payload = json.dumps({"error": {"message": "warming up", "type": "server_error"}}).encode()
            self.send_response(503)
            # OpenAI's own delay hint, which the client honours: the retry comes without a 0.5 s backoff.
            self.send_header("Retry-After-Ms", "20")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if step == "proxy":
            headers = {
                k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")
            }
            with httpx.stream(
                "POST", self.server.upstream + self.path, content=body, headers=headers, timeout=60
            ) as resp:
                self.send_response(resp.status_code)
                self.send_header("Content-Type", resp.headers["content-type"])
                self.end_headers()
                for data in resp.iter_raw():
                    self.wfile.write(data)
                    self.wfile.flush()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(_event({"role": "assistant", "content": ""}) + _event({"content": "Twenty"}))
        if step == "error-event":
            error = {"error": {"message": "CUDA out of memory", "type": "server_error", "code": None}}
            self.wfile.write(f"data: {json.dumps(error)}\n\n".encode())

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


class _EdgeServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, script: list[str]):
        super().__init__(("127.0.0.1", 0), _Edge)
        self.upstream, self.script, self.played = upstream, script, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def edge() -> Iterator[Callable[..., _EdgeServer]]:
    """Factory: ``edge(upstream_url, script)`` serves on a free loopback port until the test ends."""
    servers: list[_EdgeServer] = []

    def start(upstream: str, script: list[str]) -> _EdgeServer:
        server = _EdgeServer(upstream, script)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()  # quick shutdown
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _drain(stream: Iterator[str | Generation]) -> tuple[str, Generation]:
    pieces, final = [], None
    for item in stream:
        if isinstance(item, Generation):
            final = item
        else:
            pieces.append(item)
    assert final is not None
    return "".join(pieces), final


def test_a_transient_failure_is_retried(
    upstream: tuple[LiveServer, str], edge: Callable[..., _EdgeServer]
) -> None:
    first, secret = upstream
    proxy = edge(first.url, ["503", "proxy", "503", "proxy"])
    backend = OpenAIBackend(proxy.url, "production", secret, timeout_s=30, max_retries=1)
    params = GenParams(max_new_tokens=8, **SAMPLED)  # type: ignore[arg-type]

    whole = backend.generate(QUESTION, params)
    text, streamed = _drain(backend.stream(QUESTION, params))

    assert proxy.played == ["503", "proxy", "503", "proxy"]
    sent = recorded(first)
    assert [whole.text, streamed.text] == [s.answer for s in sent] and text.strip() == streamed.text
    assert streamed.completion_tokens == sent[1].completion_tokens > 0


@pytest.mark.parametrize(
    ("step", "says"),
    [("error-event", "CUDA out of memory"), ("cut", "ended before the answer finished")],
)
def test_a_stream_that_fails_mid_answer_is_an_error_not_a_short_answer(
    edge: Callable[..., _EdgeServer], step: str, says: str
) -> None:
    backend = OpenAIBackend(edge("", [step]).url, "m", max_retries=0)
    stream = backend.stream(QUESTION, GenParams(max_new_tokens=8))
    assert next(stream) == "Twenty"
    with pytest.raises(GenerationError, match=says):
        next(stream)


def test_an_unreachable_server_says_where_and_what_to_set() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    backend = OpenAIBackend(url, "production", max_retries=1)
    for call in (
        lambda: backend.generate(QUESTION, GenParams()),
        lambda: _drain(backend.stream(QUESTION, GenParams())),
    ):
        with pytest.raises(GenerationError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(f"Could not reach the generator at {url} (after 2 attempts")
        assert "base_url" in message


def test_a_refused_key_or_unknown_model_names_the_setting(upstream: tuple[LiveServer, str]) -> None:
    first, secret = upstream
    url = f"{first.url}/v1"
    with pytest.raises(
        ConfigError, match=r"refused the API key \(401: Invalid or revoked API key.*api_key_env"
    ):
        OpenAIBackend(url, "production", "rl-wrong", max_retries=0).generate(QUESTION, GenParams())
    # Without a key no Authorization header goes out at all (ragloop tells a missing key from a wrong one).
    with pytest.raises(ConfigError, match=r"needs an API key \(401: An API key is required"):
        OpenAIBackend(url, "production", None, max_retries=0).generate(QUESTION, GenParams())
    with pytest.raises(
        ConfigError, match=r"does not serve the model 'nope' \(404: The model 'nope' does not"
    ):
        _drain(OpenAIBackend(url, "nope", secret, max_retries=0).stream(QUESTION, GenParams()))
    assert recorded(first) == []
