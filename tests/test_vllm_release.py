"""The scale-out release: with ``[generator] backend = "openai"`` and ``runtime_lora = true``, a release
(``ragloop models promote|rollback``, ``POST /api/models/{id}/promote`` and ``/api/models/rollback``) has
the vLLM server load the version's PEFT adapter (``POST /v1/load_lora_adapter``) before the alias moves, and
answers for the version then name it as their model. A refused or unreachable load leaves the alias.

vLLM itself is played by a small local HTTP server at the machine's edge (``FakeVLLM``): it implements
the routes ragloop uses, as vLLM answers them (its 200 text, its 400 "has already been loaded", its 404 for
an unknown model), and records what it received, with where the alias stood at that moment. Everything
else is real: the CLI, the ragloop server over HTTP, the database, the knowledge base, PEFT adapters.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import LiveServer
from ragloop.config import Settings, load_settings
from ragloop.store.db import session_scope
from ragloop.store.models import ModelAlias
from test_lineage import register_adapter, run_cli

BASE = "tiny-base"  # the name the fake vLLM serves its base model under
ANSWER = "Employees get twenty-five days [1]."
QUESTION = "How many days of paid vacation do employees receive?"


def production(settings: Settings) -> str | None:
    with session_scope(settings.db_url) as s:
        alias = s.get(ModelAlias, "production")
        return alias.model_version_id if alias is not None else None


# The machine's edge: a vLLM stand-in --------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.0: the end of a body is the end of the connection, so a stream needs no chunked framing."""

    server: FakeVLLM

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": status}})

    def do_GET(self) -> None:
        fake = self.server
        fake.received.append(("GET", self.path, None, production(fake.settings)))
        if self.path != "/v1/models":
            self._error(404, "Not Found", "NotFoundError")
            return
        cards = [{"id": BASE, "object": "model", "root": BASE, "parent": None}]
        cards += [
            {"id": name, "object": "model", "root": path, "parent": BASE}
            for name, path in fake.loaded.items()
            if not fake.unlisted
        ]
        self._send(200, {"object": "list", "data": cards})

    def do_POST(self) -> None:
        fake = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fake.received.append(("POST", self.path, body, production(fake.settings)))
        if self.path == "/v1/load_lora_adapter":
            name, path = body.get("lora_name"), body.get("lora_path")
            if fake.refuse is not None:
                self._error(400, fake.refuse, "BadRequestError")
            elif name in fake.loaded:
                self._error(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
            elif not (Path(path) / "adapter_config.json").is_file():
                self._error(404, f"No adapter found for {path}", "NotFoundError")
            else:
                fake.loaded[name] = path
                self._send(200, f"Success: LoRA adapter '{name}' added successfully.", "text/plain")
        elif self.path == "/v1/chat/completions":
            if body["model"] != BASE and body["model"] not in fake.loaded:
                self._error(404, f"The model `{body['model']}` does not exist.", "NotFoundError")
            elif body.get("stream"):
                self._stream(body["model"])
            else:
                self._send(200, completion(body["model"]))
        else:
            self._error(404, "Not Found", "NotFoundError")

    def _stream(self, model: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        head = {"id": "c-1", "object": "chat.completion.chunk", "created": 0, "model": model}
        for delta, finish in [({"role": "assistant", "content": ""}, None), ({"content": ANSWER}, None),
                              ({}, "stop")]:  # fmt: skip
            chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}
        self.wfile.write(
            f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode()
        )

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


def completion(model: str) -> dict:
    return {
        "id": "c-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57},
    }


class FakeVLLM(http.server.ThreadingHTTPServer):
    """``loaded``: adapter name -> folder; ``refuse``: the message of a 400 every load gets, when set;
    ``unlisted``: /v1/models leaves the adapters out; ``received``: (method, path, JSON body, the
    production alias at that moment), in arrival order."""

    daemon_threads = True

    def __init__(self, settings: Settings):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.settings = settings
        self.loaded: dict[str, str] = {}
        self.refuse: str | None = None
        self.unlisted = False
        self.received: list[tuple[str, str, Any, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def loads(self) -> list[tuple[str, str, str | None]]:
        """(lora_name, lora_path, production alias when the load arrived) of every load request."""
        return [(b["lora_name"], b["lora_path"], at) for m, p, b, at in self.received if p.endswith("/load_lora_adapter")]  # fmt: skip

    def chat_models(self) -> list[str]:
        return [b["model"] for m, p, b, _ in self.received if p == "/v1/chat/completions"]


@pytest.fixture
def vllm(kb_home: Settings) -> Iterator[Callable[[Settings], FakeVLLM]]:
    servers: list[FakeVLLM] = []

    def start(settings: Settings) -> FakeVLLM:
        server = FakeVLLM(settings)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def openai_home(settings: Settings, base_url: str, runtime_lora: bool = True) -> Settings:
    """The same home, now answering through the openai backend at ``base_url`` (no retries: a refusal
    is final, and an unreachable server is reported at once)."""
    (settings.home / "ragloop.toml").write_text(
        f"model_cache = {json.dumps(str(settings.model_cache_dir))}\n\n"
        "[generator]\n"
        'backend = "openai"\n'
        f"base_url = {json.dumps(base_url)}\n"
        f"model = {json.dumps(BASE)}\n"
        f"runtime_lora = {json.dumps(runtime_lora)}\n"
        "max_retries = 0\n"
        "max_new_tokens = 16\n\n"
        "[retrieval]\n"
        "top_k = 3\n"
    )
    return load_settings(settings.home)


@pytest.fixture
def versions(kb_home: Settings, tmp_path: Path) -> tuple[Any, Any]:
    """Two adapter versions registered on the home's (tiny) base, as training would leave them."""
    return register_adapter(kb_home, tmp_path, 1, name="v"), register_adapter(kb_home, tmp_path, 2, name="v")


def ask(client: httpx.Client, stream: bool = False) -> dict[str, Any]:
    """One chat turn through the ragloop server: the answer text and its ``ragloop`` object."""
    body = {"messages": [{"role": "user", "content": QUESTION}], "stream": stream}
    if not stream:
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        data = response.json()
        return {"text": data["choices"][0]["message"]["content"], **data["ragloop"]}
    text, record = "", {}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                assert "error" not in event, event
                text += "".join(c["delta"].get("content") or "" for c in event["choices"])
                record = event.get("ragloop", record)
    return {"text": text, **record}


# Tests -------------------------------------------------------------------------------------------------


def test_promote_loads_the_adapter_on_vllm_before_the_alias_moves(
    kb_home: Settings, versions, vllm, start_server: Callable[..., LiveServer]
) -> None:
    v1, v2 = versions
    fake = vllm(kb_home)
    settings = openai_home(kb_home, fake.url)

    # The CLI: the load reaches vLLM while production is still unset, then the alias moves.
    promoted = run_cli(settings, "models", "promote", v1.id)
    assert promoted.exit_code == 0, promoted.output
    assert fake.loads() == [(v1.id, v1.adapter_path, None)]
    assert production(settings) == v1.id

    server = start_server(settings)
    with server.client() as client:
        for stream in (False, True):
            answer = ask(client, stream)
            assert (answer["text"], answer["model_version"], answer["model_alias"]) == (
                ANSWER,
                v1.id,
                "production",
            )
        assert fake.chat_models() == [v1.id, v1.id]
        assert len(fake.loads()) == 1  # the server found v1 loaded (GET /v1/models) and did not reload it

        # The server's API: same order, through the serving process's own backend.
        response = client.post(f"/api/models/{v2.id}/promote", json={})
        assert response.status_code == 200, response.text
        assert fake.loads()[1:] == [(v2.id, v2.adapter_path, v1.id)]
        assert production(settings) == v2.id
        assert ask(client)["model_version"] == v2.id and fake.chat_models()[-1] == v2.id

        # Rollback goes through the same release: v1 is still loaded there, so nothing is sent again.
        response = client.post("/api/models/rollback", json={"alias": "production"})
        assert response.status_code == 200, response.text
        assert production(settings) == v1.id and len(fake.loads()) == 2
        assert ask(client, stream=True)["model_version"] == v1.id and fake.chat_models()[-1] == v1.id

        # A vLLM restart forgets adapters loaded at run time: the next answer loads it again and goes on.
        fake.loaded.clear()
        assert ask(client)["model_version"] == v1.id
        assert fake.loads()[-1][:2] == (v1.id, v1.adapter_path) and fake.chat_models()[-2:] == [v1.id] * 2


def test_a_refused_or_unreachable_load_leaves_the_alias(
    kb_home: Settings, versions, vllm, start_server: Callable[..., LiveServer]
) -> None:
    v1, v2 = versions
    fake = vllm(kb_home)
    settings = openai_home(kb_home, fake.url)
    assert run_cli(settings, "models", "promote", v1.id).exit_code == 0
    refusal = "LoRA rank 8 is greater than max_lora_rank 4."
    fake.refuse = refusal

    refused = run_cli(settings, "models", "promote", v2.id)
    assert refused.exit_code == 1, refused.output
    message = " ".join(refused.output.split())
    assert v2.id in message and refusal in message and "production" in message, message
    assert production(settings) == v1.id

    server = start_server(settings)
    with server.client() as client:
        response = client.post(f"/api/models/{v2.id}/promote", json={})
        assert 400 <= response.status_code < 600 and response.status_code != 500, response.text
        error = response.json()["error"]["message"]
        assert v2.id in error and refusal in error, error
        assert production(settings) == v1.id
        assert ask(client)["model_version"] == v1.id

        # A name vLLM already serves from another folder is another adapter: refused, not reused.
        fake.refuse = None
        fake.loaded[v2.id] = str(v1.adapter_path).replace(v1.id, "elsewhere")
        response = client.post(f"/api/models/{v2.id}/promote", json={})
        assert response.status_code == 502 and "already serves" in response.text, response.text
        del fake.loaded[v2.id]

        # Nothing listens there any more: refused at once, with the address to fix.
        fake.shutdown()
        fake.server_close()
        response = client.post(f"/api/models/{v2.id}/promote", json={})
        assert response.status_code == 502, response.text
        assert "Could not reach" in response.json()["error"]["message"]
        assert production(settings) == v1.id
    assert v2.id not in fake.chat_models() and v2.id not in fake.loaded


def test_a_missing_adapter_folder_is_reported_by_the_server_and_the_alias_stays(
    kb_home: Settings, versions, vllm
) -> None:
    """vLLM reads the folder itself: one it cannot find is its 404 "No adapter found", passed on."""
    v1, _ = versions
    fake = vllm(kb_home)
    settings = openai_home(kb_home, fake.url)
    (Path(v1.adapter_path) / "adapter_config.json").unlink()
    refused = run_cli(settings, "models", "promote", v1.id)
    assert refused.exit_code == 1, refused.output
    message = " ".join(refused.output.split())
    assert "No adapter found" in message and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in message, message
    assert production(settings) is None


def test_without_runtime_lora_the_server_is_never_asked_to_load(
    kb_home: Settings, versions, vllm, start_server: Callable[..., LiveServer]
) -> None:
    """The default: an OpenAI-compatible server without the route keeps working as before."""
    v1, _ = versions
    fake = vllm(kb_home)
    settings = openai_home(kb_home, fake.url, runtime_lora=False)
    server = start_server(settings)
    with server.client() as client:
        assert ask(client)["text"] == ANSWER
        refused = client.post(f"/api/models/{v1.id}/promote", json={})
        assert refused.status_code >= 400, refused.text
    assert fake.chat_models() == [BASE]
    assert fake.loads() == [] and production(settings) is None


def test_a_load_that_raced_another_process_counts_as_loaded(kb_home: Settings, versions, vllm) -> None:
    """Two processes releasing at once (the CLI and a server, two servers): the adapter is not yet in
    vLLM's model list when one asks, but loaded when its load arrives; vLLM answers 400 "has already been
    loaded", which is the state wanted, so the release goes on."""
    v1, _ = versions
    fake = vllm(kb_home)
    settings = openai_home(kb_home, fake.url)
    fake.loaded[v1.id] = v1.adapter_path
    fake.unlisted = True  # GET /v1/models as it was before the other process's load
    promoted = run_cli(settings, "models", "promote", v1.id)
    assert promoted.exit_code == 0, promoted.output
    assert [load[:2] for load in fake.loads()] == [(v1.id, v1.adapter_path)]
    assert production(settings) == v1.id
