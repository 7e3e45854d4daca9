"""The HTTP door over a real socket: OpenAI compatibility (raw HTTP and the official client), the
``ragloop`` extras, the recorded interaction behind every answer, API keys and scopes, and bad input."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from openai import OpenAI

from ragloop.config import ServerSettings, Settings
from ragloop.errors import ConfigError
from ragloop.generation.assistant import AnswerResult
from ragloop.serve.auth import auth_required, is_loopback
from ragloop.store.db import session_scope
from ragloop.store.keys import create_key, revoke_key

QUESTION = "How many days of paid vacation do employees receive?"

pytestmark = pytest.mark.backends("transformers", "llamacpp")  # the same behaviour on both
FINES_QUESTION = "How high can fines reach in EUR or percent of worldwide annual turnover?"


def chat(client: httpx.Client, content: str = QUESTION, **body: Any) -> httpx.Response:
    return client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": content}], **body}
    )


def sse_events(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of a Server-Sent Events response, JSON-decoded except ``[DONE]``."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def assert_error(
    response: httpx.Response, status: int, code: str | None = None, param: str | None = None
) -> dict:
    """OpenAI's error shape with the expected status; returns the error object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


# Answers and their records -----------------------------------------------------------------------------


def test_chat_completion_matches_its_recorded_interaction(live_server) -> None:
    with live_server.client() as client:
        response = chat(client, user="alice")
        assert response.status_code == 200, response.text
        data = response.json()
        extras = data["ragloop"]
        assert data["object"] == "chat.completion"
        assert data["id"] == f"chatcmpl-{extras['interaction_id']}"
        assert data["model"] == extras["model_version"]
        assert extras["model_alias"] == "base"
        choice = data["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in {"stop", "length"}
        usage = data["usage"]
        assert usage["prompt_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert extras["turn_index"] == 0
        assert isinstance(extras["kb_version"], int)
        assert set(extras["latency_ms"]) >= {"retrieve", "generate", "total"}
        passages = extras["passages"]
        assert [p["rank"] for p in passages] == list(range(1, len(passages) + 1))
        assert passages and passages[0]["source_path"].endswith("vacation.md")
        for passage in passages:
            assert {
                "passage_id",
                "doc_id",
                "title",
                "section",
                "score",
                "score_dense",
                "score_fulltext",
            } <= set(passage)

        record = client.get(f"/api/interactions/{extras['interaction_id']}")
        assert record.status_code == 200, record.text
        stored = record.json()
    assert stored["id"] == extras["interaction_id"]
    assert stored["answer"] == choice["message"]["content"]
    assert stored["conversation_id"] == extras["conversation_id"]
    assert stored["turn_index"] == 0
    assert stored["model_version"] == data["model"]
    assert stored["kb_version"] == extras["kb_version"]
    assert stored["citations"] == extras["citations"]
    assert stored["messages"] == [{"role": "user", "content": QUESTION}]
    assert stored["user_id"] == "alice"
    assert stored["source"] == "api"
    assert stored["prompt_tokens"] == usage["prompt_tokens"]
    assert stored["completion_tokens"] == usage["completion_tokens"]
    assert [p["chunk_id"] for p in stored["passages"]] == [p["passage_id"] for p in passages]
    assert [p["rank"] for p in stored["passages"]] == [p["rank"] for p in passages]


def test_follow_up_turn_joins_the_conversation(live_server) -> None:
    with live_server.client() as client:
        first = chat(client).json()
        answer = first["choices"][0]["message"]["content"]
        messages = [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "And when do unused days expire?"},
        ]
        second = client.post("/v1/chat/completions", json={"messages": messages})
        assert second.status_code == 200, second.text
        assert second.json()["ragloop"]["conversation_id"] == first["ragloop"]["conversation_id"]
        assert second.json()["ragloop"]["turn_index"] == 1

        named = chat(client, ragloop={"conversation_id": "conv-42"})
        assert named.json()["ragloop"]["conversation_id"] == "conv-42"


def test_streamed_answer_ends_with_the_recorded_turn(live_server) -> None:
    body = {
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with live_server.client() as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        finals = [c for c in chunks if "ragloop" in c]
        assert len(finals) == 1
        final = finals[0]
        assert final["choices"][0]["finish_reason"] in {"stop", "length"}
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
        assert chunks.index(final) == len(chunks) - 2  # usage comes after the finish
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        extras = final["ragloop"]
        assert extras["passages"]

        stored = client.get(f"/api/interactions/{extras['interaction_id']}").json()
    assert stored["answer"] == text.strip()
    assert stored["completion_tokens"] == chunks[-1]["usage"]["completion_tokens"]
    assert [p["chunk_id"] for p in stored["passages"]] == [p["passage_id"] for p in extras["passages"]]


def test_official_openai_client(live_server) -> None:
    client = OpenAI(base_url=f"{live_server.url}/v1", api_key="unused-when-auth-is-off", max_retries=0)
    messages = [{"role": "user", "content": QUESTION}]

    completion = client.chat.completions.create(
        model="base", messages=messages, max_tokens=8, extra_body={"ragloop": {"collections": ["handbook"]}}
    )
    assert isinstance(completion.choices[0].message.content, str)
    extras = completion.model_extra["ragloop"]
    assert completion.id == f"chatcmpl-{extras['interaction_id']}"
    assert extras["passages"] and {p["collection"] for p in extras["passages"]} == {"handbook"}
    assert completion.usage is not None and completion.usage.completion_tokens <= 8

    raw = client.chat.completions.with_raw_response.create(model="base", messages=messages)
    assert (
        raw.http_response.json()["ragloop"]["interaction_id"]
        == raw.parse().model_extra["ragloop"]["interaction_id"]
    )

    chunks = list(
        client.chat.completions.create(
            model="base", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if (c.model_extra or {}).get("ragloop")]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in {"stop", "length"}
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    interaction_id = finals[0].model_extra["ragloop"]["interaction_id"]
    stored = httpx.get(f"{live_server.url}/api/interactions/{interaction_id}").json()
    assert stored["answer"] == text.strip()

    ids = {model.id for model in client.models.list()}
    assert "base" in ids and any(i.startswith("base-") for i in ids)


def test_models_lists_versions_and_aliases(live_server) -> None:
    data = httpx.get(f"{live_server.url}/v1/models").json()
    assert data["object"] == "list"
    by_id = {m["id"]: m for m in data["data"]}
    alias = by_id["base"]
    version = by_id[alias["ragloop"]["version"]]
    assert alias["object"] == version["object"] == "model"
    assert alias["owned_by"] == "ragloop"
    assert version["ragloop"]["aliases"] == ["base"]
    assert version["ragloop"]["adapter"] is None
    assert version["ragloop"]["base_model"]


def test_healthz_is_open_and_answers_while_streaming(kb_home: Settings, start_server) -> None:
    server = start_server(kb_home, server={"auth": "on"})
    health = httpx.get(f"{server.url}/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert isinstance(health.json()["kb_version"], int)
    assert health.json()["model"].startswith("base-")

    open_server = start_server(kb_home)
    body = {"messages": [{"role": "user", "content": QUESTION}], "stream": True, "max_tokens": 64}
    with (
        httpx.Client(base_url=open_server.url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # the answer has started
        assert client.get("/healthz").status_code == 200
        rest = list(lines)
    assert "data: [DONE]" in rest


# API keys ----------------------------------------------------------------------------------------------


@pytest.fixture
def keys(kb_home: Settings) -> dict[str, str]:
    """Secrets of an admin key, a non-admin key for every collection, a key and an admin key scoped to
    ``handbook``, and a revoked key."""
    with session_scope(kb_home.db_url) as session:
        _, admin = create_key(session, "admin", admin=True)
        _, reader = create_key(session, "reader")
        _, handbook = create_key(session, "handbook-only", collections=["handbook"])
        _, handbook_admin = create_key(session, "handbook-admin", admin=True, collections=["handbook"])
        _, revoked = create_key(session, "revoked")
        revoke_key(session, revoked[:10])
    return {
        "admin": admin,
        "reader": reader,
        "handbook": handbook,
        "handbook_admin": handbook_admin,
        "revoked": revoked,
    }


@pytest.fixture
def auth_server(kb_home: Settings, keys: dict[str, str], start_server):
    return start_server(kb_home, server={"auth": "on"})


def test_auto_auth_follows_the_bound_host() -> None:
    for host in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"):
        assert is_loopback(host)
        assert not auth_required(ServerSettings(host=host, auth="auto"))
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.org", ""):
        assert auth_required(ServerSettings(host=host, auth="auto"))
    assert auth_required(ServerSettings(host="127.0.0.1", auth="on"))
    assert not auth_required(ServerSettings(host="0.0.0.0", auth="off"))
    with pytest.raises(ConfigError):
        auth_required(ServerSettings(auth="maybe"))


def test_missing_wrong_and_revoked_keys_are_refused(auth_server, keys) -> None:
    calls: list[Callable[[httpx.Client], httpx.Response]] = [
        lambda c: chat(c),
        lambda c: c.get("/v1/models"),
        lambda c: c.get("/api/interactions/0123456789abcdef"),
        lambda c: c.post("/api/ingest", files=[("files", ("a.txt", b"hello"))]),
    ]
    for key in (None, "rl-not-a-real-key", keys["revoked"]):
        with auth_server.client(key) as client:
            for call in calls:
                response = call(client)
                assert_error(response, 401, code="invalid_api_key")
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json()["error"]["type"] == "authentication_error"
    with auth_server.client() as client:
        assert_error(client.get("/v1/models", headers={"Authorization": f"Basic {keys['admin']}"}), 401)
    with auth_server.client(keys["reader"]) as client:
        assert client.get("/v1/models").status_code == 200


def test_only_admin_keys_ingest(auth_server, keys) -> None:
    upload = [("files", ("holidays.txt", b"The office is closed on the first Monday of August."))]
    with auth_server.client(keys["reader"]) as client:
        assert_error(
            client.post("/api/ingest", files=upload, data={"collection": "handbook"}),
            403,
            "permission_denied",
        )
    with auth_server.client(keys["admin"]) as client:
        response = client.post("/api/ingest", files=upload, data={"collection": "handbook"})
        assert response.status_code == 200, response.text
        assert response.json()["ok"] and response.json()["errors"] == []
        assert response.json()["kb_version"] > 0
    with auth_server.client(keys["handbook_admin"]) as client:  # an admin key scoped to one collection
        assert_error(client.post("/api/ingest", files=upload, data={"collection": "finance"}), 403)
        upload = [
            ("files", ("closures.txt", b"The office closes at noon on the last working day of the year."))
        ]
        assert client.post("/api/ingest", files=upload, data={"collection": "handbook"}).status_code == 200


def test_scoped_key_never_sees_other_collections(auth_server, keys, kb_home: Settings) -> None:
    with auth_server.client(keys["admin"]) as client:  # the question does match the finance document
        unscoped = chat(client, FINES_QUESTION).json()["ragloop"]["passages"]
        assert unscoped[0]["collection"] == "finance"

    with auth_server.client(keys["handbook"]) as client:
        for asked in (None, ["handbook"], ["handbook", "finance"]):
            body = {"ragloop": {"collections": asked}} if asked else {}
            response = chat(client, FINES_QUESTION, **body)
            assert response.status_code == 200, response.text
            extras = response.json()["ragloop"]
            assert extras["passages"]
            assert {p["collection"] for p in extras["passages"]} == {"handbook"}
            assert not any(p["source_path"].endswith("fines.txt") for p in extras["passages"])
            stored = client.get(f"/api/interactions/{extras['interaction_id']}").json()
            assert stored["collections"] == ["handbook"]
            assert {p["collection"] for p in stored["passages"]} == {"handbook"}
        assert_error(
            chat(client, FINES_QUESTION, ragloop={"collections": ["finance"]}), 403, "permission_denied"
        )
        streamed = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": FINES_QUESTION}], "stream": True},
        )
        final = next(e for e in sse_events(streamed) if isinstance(e, dict) and "ragloop" in e)
        assert {p["collection"] for p in final["ragloop"]["passages"]} == {"handbook"}


def test_keys_read_only_their_own_interactions(auth_server, keys) -> None:
    with auth_server.client(keys["handbook"]) as client:
        interaction_id = chat(client).json()["ragloop"]["interaction_id"]
        assert client.get(f"/api/interactions/{interaction_id}").status_code == 200
    with auth_server.client(keys["reader"]) as client:
        assert_error(client.get(f"/api/interactions/{interaction_id}"), 404, "not_found")
    with auth_server.client(keys["admin"]) as client:
        stored = client.get(f"/api/interactions/{interaction_id}").json()
        assert stored["api_key_id"] is not None


# Bad input ---------------------------------------------------------------------------------------------


@pytest.fixture
def strict_server(kb_home: Settings, start_server):
    """Small limits, so oversized requests and files are cheap to send."""
    return start_server(kb_home, limits={"max_request_bytes": 8192, "max_upload_bytes": 4096})


def test_malformed_chat_requests_get_openai_errors(strict_server) -> None:
    user = [{"role": "user", "content": QUESTION}]
    with strict_server.client() as client:
        bad_json = client.post(
            "/v1/chat/completions", content=b'{"messages": [', headers={"Content-Type": "application/json"}
        )
        assert "JSON" in assert_error(bad_json, 400)["message"]
        assert assert_error(bad_json, 400)["type"] == "invalid_request_error"
        assert_error(client.post("/v1/chat/completions", json={"model": "base"}), 400, param="messages")
        assert_error(client.post("/v1/chat/completions", json={"messages": "hello"}), 400, param="messages")
        assert_error(client.post("/v1/chat/completions", json={"messages": []}), 400)
        not_user = [*user, {"role": "assistant", "content": "Twenty-five."}]
        assert (
            "last message"
            in assert_error(client.post("/v1/chat/completions", json={"messages": not_user}), 400)["message"]
        )
        assert_error(client.post("/v1/chat/completions", json={"messages": [{"content": "no role"}]}), 400)
        assert_error(chat(client, model="no-such-model"), 404, "not_found")
        assert_error(chat(client, model="no-such-model", stream=True), 404, "not_found")  # JSON, not a stream
        for max_tokens in (0, -1, 10**6):
            assert_error(chat(client, max_tokens=max_tokens), 400)
        assert_error(chat(client, max_tokens="many"), 400, param="max_tokens")
        assert_error(chat(client, temperature=9), 400)
        assert_error(chat(client, ragloop={"k": 0}), 400, param="ragloop.k")
        assert_error(chat(client, ragloop={"colections": ["typo"]}), 400, param="ragloop.colections")
        assert_error(client.get("/v1/nothing-here"), 404)


def test_oversized_chat_request_is_refused(strict_server) -> None:
    huge = {"messages": [{"role": "user", "content": "x" * 10_000}]}
    with strict_server.client() as client:
        assert_error(client.post("/v1/chat/completions", json=huge), 413, "request_too_large")

        def chunked():  # no Content-Length: the limit is enforced on the bytes as they arrive
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(20):
                yield b"y" * 1000
            yield b'"}]}'

        response = client.post(
            "/v1/chat/completions", content=chunked(), headers={"Content-Type": "application/json"}
        )
        assert_error(response, 413, "request_too_large")
        assert chat(client).status_code == 200  # the server is fine afterwards


def test_upload_reports_each_bad_file_and_keeps_the_good_one(strict_server) -> None:
    files = [
        ("files", ("good.txt", b"The cafeteria serves breakfast from seven to nine every weekday.")),
        ("files", ("corrupt.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage without xref")),
        ("files", ("blob.bin", bytes(range(256)) * 4)),
        ("files", ("binary.txt", b"\x00\x01\x02 not text \x00" * 10)),
        ("files", ("empty.txt", b"")),
        ("files", ("huge.txt", b"too big " * 1000)),  # 8 000 bytes > 4 096
    ]
    with strict_server.client() as client:
        response = client.post("/api/ingest", files=files, data={"collection": "canteen"})
        assert response.status_code == 200, response.text
        report = response.json()
        errors = {e["source_path"].rsplit("/", 1)[-1]: e["message"] for e in report["errors"]}
        assert set(errors) == {"corrupt.pdf", "blob.bin", "binary.txt", "empty.txt", "huge.txt"}
        assert all(message for message in errors.values())
        assert "max_upload_bytes" in errors["huge.txt"]
        assert "empty" in errors["empty.txt"]
        assert not report["ok"]
        assert report["kb_version"] > 0

        extras = chat(client, "When is breakfast served?", ragloop={"collections": ["canteen"]}).json()[
            "ragloop"
        ]
        assert [p["source_path"].rsplit("/", 1)[-1] for p in extras["passages"]] == ["good.txt"]


def test_upload_with_no_good_file_fails(strict_server) -> None:
    with strict_server.client() as client:
        too_big = client.post("/api/ingest", files=[("files", ("huge.txt", b"z" * 5000))])
        error = assert_error(too_big, 413, "ingest_error", param="files")
        assert "huge.txt" in error["message"]
        assert too_big.json()["report"]["errors"][0]["source_path"] == "huge.txt"

        corrupt = client.post("/api/ingest", files=[("files", ("broken.pdf", b"%PDF-1.4 nope"))])
        assert_error(corrupt, 422, "ingest_error", param="files")
        assert corrupt.json()["report"]["errors"]

        assert_error(client.post("/api/ingest", data={"collection": "x"}), 400)
        assert_error(client.post("/api/ingest", json={"files": []}), 400)


def test_upload_with_a_huge_declared_length_is_refused_before_reading(strict_server) -> None:
    """A client announcing 10 GB gets 413 at once; the server never waits for (or stores) the body."""
    port = int(strict_server.url.rsplit(":", 1)[1])
    head = (
        "POST /api/ingest HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        f"Content-Length: {10 * 1024**3}\r\n\r\n"
        "--xyz\r\n"
        'Content-Disposition: form-data; name="files"; filename="big.txt"\r\n\r\n'
    )
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = sock.recv(4096)
            if not data:
                break
            reply += data
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert time.monotonic() - started < 10


def test_unexpected_errors_do_not_leak_internals(kb_home: Settings, start_server) -> None:
    class Broken:
        """An assistant failing the way a bug would."""

        kb = None

        def answer(self, req: Any) -> Any:
            raise RuntimeError("secret internals at /srv/ragloop/db password=hunter2")

    server = start_server(kb_home, assistant=Broken())
    with server.client() as client:
        error = assert_error(chat(client), 500, "internal_error")
    assert "hunter2" not in error["message"] and "RuntimeError" not in error["message"]
    assert error["type"] == "server_error"


def test_concurrent_requests_are_all_answered(live_server) -> None:
    """Six questions at once, each about a different document: every answer is its own record, holding
    its own question and the passages retrieved for it (no state shared between requests leaks)."""
    topics = {
        "How many days of paid vacation do employees receive?": "vacation.md",
        "How often must passwords be rotated?": "security.txt",
        "How high can fines reach in EUR?": "fines.txt",
    }
    asked = [(f"{question} (asker {n})", source) for n in range(2) for question, source in topics.items()]
    start = threading.Barrier(len(asked))

    def ask(question: str) -> httpx.Response:
        with live_server.client() as client:
            start.wait(timeout=60)
            return chat(client, question, max_tokens=4, ragloop={"k": 1})

    with ThreadPoolExecutor(max_workers=len(asked)) as pool:
        responses = list(pool.map(ask, [question for question, _ in asked]))
    assert [r.status_code for r in responses] == [200] * len(asked), [r.text for r in responses]
    extras = [r.json()["ragloop"] for r in responses]
    assert len({e["interaction_id"] for e in extras}) == len(asked)
    with live_server.client() as client:
        for (question, source), response, extra in zip(asked, responses, extras, strict=True):
            stored = client.get(f"/api/interactions/{extra['interaction_id']}").json()
            assert stored["messages"] == [{"role": "user", "content": question}]
            assert stored["answer"] == response.json()["choices"][0]["message"]["content"]
            assert [p["source_path"] for p in stored["passages"]] == [source]
            assert [p["chunk_id"] for p in stored["passages"]] == [p["passage_id"] for p in extra["passages"]]


def test_slow_answers_leave_the_server_responsive(kb_home: Settings, start_server) -> None:
    """Answers run in worker threads: while 40 are stuck generating, health checks, model listings and
    record reads still answer at once, and every stuck answer completes once generation resumes."""
    release = threading.Event()

    class Slow:
        kb = SimpleNamespace(version=1)

        def stream(self, req: Any) -> Iterator[str | AnswerResult]:
            assert release.wait(timeout=60)
            yield "ok"
            yield AnswerResult(
                interaction_id="i", conversation_id="c", turn_index=0, answer="ok", citations=[], passages=[],
                model_version="m", model_alias=None, kb_version=1, prompt_tokens=1, completion_tokens=1,
                finish_reason="stop", latency={},
            )  # fmt: skip

    server = start_server(kb_home, assistant=Slow())

    def ask() -> int:
        with server.client() as client:
            return chat(client).status_code

    with ThreadPoolExecutor(max_workers=40) as pool:
        futures = [pool.submit(ask) for _ in range(40)]
        time.sleep(1.0)  # let them all reach the assistant
        with server.client(timeout=5) as client:
            started = time.monotonic()
            assert client.get("/healthz").status_code == 200
            assert client.get("/v1/models").status_code == 200
            assert client.get("/api/interactions/unknown").status_code == 404
            assert time.monotonic() - started < 5
        assert not any(f.done() for f in futures)
        release.set()
        statuses = [f.result(timeout=60) for f in futures]
    assert statuses == [200] * 40


def test_server_logs_hold_no_keys_nor_messages(kb_home: Settings, keys, server_process) -> None:
    """With the access log on, a request's path and status are logged; its key and its text are not."""
    server = server_process(kb_home, env={"RAGLOOP_SERVER__AUTH": "on"}, log_level="info")
    marker = "Zanzibar-quokka-4711"
    headers = {"Authorization": f"Bearer {keys['reader']}"}
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": f"{marker}: how many vacation days?"}],
            "user": marker,
        },
        headers=headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert (
        httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer rl-wrong-key"}).status_code
        == 401
    )
    server.kill()
    log = server.log_path.read_text(errors="replace")
    assert "/v1/chat/completions" in log  # the access log is on
    for secret in (keys["reader"], keys["reader"][3:], "rl-wrong-key", marker):
        assert secret not in log
