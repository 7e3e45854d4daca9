"""What the API says about its errors, checked against the schema it serves and the errors it sends.

Every operation of ``/openapi.json`` lists the error statuses it can answer, each with OpenAI's error body
(``{"error": {message, type, param, code}}``, a ``$ref`` to ``ErrorBody``), and no 422 that FastAPI
would declare but the app never sends (it answers 400). Then one real error of each kind, over a real
socket: its status is among those its operation declares, its body validates against the declared schema
(with schemathesis's validator, jsonschema-rs), its declared headers are there, and the OpenAI SDK raises
its own type for it (``NotFoundError``, ``BadRequestError``...). The fuzzer in ``test_api_fuzz.py`` checks
the same over generated requests.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import openai
import pytest

from conftest import LiveServer
from ragloop.config import Settings
from ragloop.store.db import session_scope
from ragloop.store.keys import create_key
from ragloop.store.models import Job
from test_lineage import register_adapter
from test_llamacpp import QUESTION, serve, stream_lines
from test_release import truncate_adapter

# The error statuses each operation can answer (see the status codes in serve/app.py's docstring).
EXPECTED: dict[tuple[str, str], set[int]] = {
    ("get", "/healthz"): {500},
    ("post", "/v1/chat/completions"): {400, 401, 403, 404, 413, 500, 502, 503},
    ("get", "/v1/models"): {401, 500},
    ("get", "/api/interactions/{interaction_id}"): {401, 404, 500},
    ("post", "/api/ingest"): {400, 401, 403, 413, 422, 500},
    ("post", "/api/interactions/{interaction_id}/feedback"): {400, 401, 404, 413, 500},
    ("get", "/api/jobs"): {400, 401, 403, 500},
    ("post", "/api/jobs"): {400, 401, 403, 404, 413, 500},
    ("get", "/api/jobs/{job_id}"): {401, 403, 404, 500},
    ("get", "/api/jobs/{job_id}/logs"): {400, 401, 403, 404, 500},
    ("post", "/api/jobs/{job_id}/cancel"): {401, 403, 404, 409, 500},
    ("post", "/api/jobs/{job_id}/resume"): {401, 403, 404, 409, 500},
    ("get", "/api/models/{model_id}"): {401, 403, 404, 500},
    ("post", "/api/models/rollback"): {400, 401, 403, 404, 409, 413, 500, 502},  # 409: embedder not ready
    ("post", "/api/models/{model_id}/promote"): {400, 401, 403, 404, 409, 413, 500, 502},
}
ERROR_BODY = "#/components/schemas/ErrorBody"
# An upload that ingested nothing carries its ingest report beside the error.
INGEST_ERROR_BODY = "#/components/schemas/IngestErrorBody"


def operations(schema: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m, path): op for path, ops in schema["paths"].items() for m, op in ops.items()}


def test_every_operation_declares_its_errors_with_the_error_body(live_server: LiveServer) -> None:
    schema = httpx.get(f"{live_server.url}/openapi.json").json()
    declared = operations(schema)
    assert set(EXPECTED) <= set(declared)
    for key, operation in declared.items():
        responses = operation["responses"]
        errors = {int(status) for status in responses if status[0] in "45"}
        # An operation added since this table was written still declares 500, and 401 if it takes a key.
        assert errors == EXPECTED.get(key, errors), key
        assert 500 in errors and (401 in errors or "security" not in operation), key
        for status in errors:
            content = responses[str(status)]["content"]
            body = INGEST_ERROR_BODY if key[1] == "/api/ingest" and status in (413, 422) else ERROR_BODY
            assert content == {"application/json": {"schema": {"$ref": body}}}, (key, status)
            assert responses[str(status)]["description"], (key, status)
        if 401 in errors:
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"], key
    retry_after = declared["post", "/v1/chat/completions"]["responses"]["503"]["headers"]["Retry-After"]
    assert retry_after["required"] and retry_after["schema"] == {"type": "integer"}

    # FastAPI's own 422 (a validation error body this app never sends) is gone, schema and all.
    assert [key for key, op in declared.items() if "422" in op["responses"]] == [("post", "/api/ingest")]
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components and "ValidationError" not in components
    detail = components["ErrorDetail"]
    assert detail["required"] == ["message", "type", "param", "code"]
    assert components["ErrorBody"]["required"] == ["error"]

    # Success bodies that are not JSON are declared as what they are.
    chat = declared["post", "/v1/chat/completions"]["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}
    logs = declared["get", "/api/jobs/{job_id}/logs"]["responses"]["200"]
    assert set(logs["content"]) == {"text/plain"} and logs["headers"]["X-Next-Offset"]["required"]


def check_declared(
    schema: dict[str, Any], key: tuple[str, str], response: httpx.Response, status: int
) -> None:
    """The response has ``status``, which its operation declares, with the declared body and headers."""
    assert response.status_code == status, (key, response.text)
    declared = operations(schema)[key]["responses"].get(str(status))
    assert declared is not None, f"{key} answered {status}, which it does not declare: {response.text}"
    assert response.headers["content-type"] == "application/json", key
    body_schema = declared["content"]["application/json"]["schema"]
    validator = jsonschema_rs.validator_for({**body_schema, "components": schema["components"]})
    errors = [e.message for e in validator.iter_errors(response.json())]
    assert not errors, (key, status, errors, response.text)
    for header, spec in declared.get("headers", {}).items():
        assert not spec.get("required") or header in response.headers, (key, status, header)


def test_each_kind_of_error_is_declared_valid_and_an_openai_sdk_error(
    kb_home: Settings, start_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    broken = register_adapter(kb_home, tmp_path, 2, name="broken")
    truncate_adapter(broken.adapter_path)
    with session_scope(kb_home.db_url) as s:
        finished = Job(kind="sft", status="succeeded")
        s.add(finished)
        s.flush()
        finished_id = finished.id
    _, admin = create_key(kb_home.db_url, "admin", admin=True)
    _, reader = create_key(kb_home.db_url, "reader", collections=["handbook"])
    server = start_server(
        kb_home,
        server={"auth": "on"},
        limits={"max_request_bytes": 64 * 1024, "max_upload_bytes": 4096},
    )
    schema = httpx.get(f"{server.url}/openapi.json").json()
    question = [{"role": "user", "content": QUESTION}]
    chat = ("post", "/v1/chat/completions")
    ingest = ("post", "/api/ingest")
    with server.client(admin) as client, server.client(reader) as scoped, server.client() as anonymous:
        cases: list[tuple[tuple[str, str], httpx.Response, int]] = [
            (chat, client.post(chat[1], content=b'{"messages": [', headers=JSON), 400),
            (chat, client.post(chat[1], json={"messages": question, "ragloop": {"k": "eight"}}), 400),
            (("get", "/api/jobs"), client.get("/api/jobs", params={"limit": "many"}), 400),
            (("get", "/v1/models"), anonymous.get("/v1/models"), 401),
            (("get", "/api/jobs"), scoped.get("/api/jobs"), 403),
            (chat, scoped.post(chat[1], json={"messages": question, "ragloop": {"collections": ["finance"]}}), 403),
            (("get", "/api/jobs/{job_id}"), client.get("/api/jobs/nope"), 404),
            (chat, client.post(chat[1], json={"messages": question, "model": "gpt-9"}), 404),
            (("post", "/api/jobs/{job_id}/cancel"), client.post(f"/api/jobs/{finished_id}/cancel"), 409),
            (chat, client.post(chat[1], json={"messages": [{"role": "user", "content": "x" * 70_000}]}), 413),
            (ingest, client.post(ingest[1], files=[upload("big.txt", b"words " * 1000)]), 413),
            (ingest, client.post(ingest[1], files=[upload("picture.png", b"\x89PNG\r\n\x1a\n")]), 422),
            (("post", "/api/models/{model_id}/promote"), client.post(f"/api/models/{broken.id}/promote"), 502),
        ]  # fmt: skip
        for key, response, status in cases:
            check_declared(schema, key, response, status)
        ingest_report = cases[-2][1].json()["report"]
        assert ingest_report["errors"][0]["source_path"] == "picture.png", ingest_report

        # A 405 names every method its path takes: Starlette named only the first route's.
        refused = client.delete("/api/jobs")
        assert refused.status_code == 405 and refused.headers["allow"] == "GET, POST", refused.headers
        assert refused.json()["error"]["code"] == "method_not_allowed"

    # The OpenAI SDK reads these into its own error types, with the code, param and message.
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=admin, max_retries=0)
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as found:
            sdk.chat.completions.create(model="gpt-9", messages=question, stream=stream)  # type: ignore[arg-type]
        assert found.value.code == "not_found" and "'gpt-9'" in found.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(
            model="production", messages=question, extra_body={"ragloop": {"k": "eight"}}
        )  # type: ignore[arg-type]
    assert bad.value.param == "ragloop.k" and "ragloop.k" in bad.value.message
    with pytest.raises(openai.AuthenticationError) as unknown:
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="rl-wrong", max_retries=0).models.list()
    assert unknown.value.code == "invalid_api_key" and unknown.value.type == "authentication_error"
    scoped_sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=reader, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        scoped_sdk.chat.completions.create(
            model="production",
            messages=question,
            extra_body={"ragloop": {"collections": ["finance"]}},  # type: ignore[arg-type]
        )
    assert denied.value.code == "permission_denied" and "handbook" in denied.value.message
    with pytest.raises(openai.APIStatusError) as too_large:
        sdk.chat.completions.create(model="production", messages=[{"role": "user", "content": "x" * 70_000}])
    assert too_large.value.status_code == 413 and too_large.value.code == "request_too_large"


@pytest.mark.parametrize("backend", ["llamacpp"])
def test_a_full_engine_503_is_declared_valid_and_an_openai_sdk_error(
    kb_home: Settings, start_server: Callable[..., LiveServer]
) -> None:
    """The 503 only the llama.cpp backend sends (every slot busy, no room in the queue)."""
    server, _ = serve(kb_home, start_server, slots=1, queue=0)
    schema = httpx.get(f"{server.url}/openapi.json").json()
    with server.client() as client:
        busy = stream_lines(client, max_tokens=3000)
        next(busy)  # one long answer holds the only slot
        refused = client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}]}
        )
        check_declared(schema, ("post", "/v1/chat/completions"), refused, 503)
        sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as overloaded:
            sdk.chat.completions.create(model="production", messages=[{"role": "user", "content": QUESTION}])
        busy.close()
    assert overloaded.value.status_code == 503 and overloaded.value.code == "overloaded"
    assert int(overloaded.value.response.headers["retry-after"]) >= 1


JSON = {"Content-Type": "application/json"}


def upload(name: str, data: bytes) -> tuple[str, tuple[str, io.BytesIO, str]]:
    return ("files", (name, io.BytesIO(data), "application/octet-stream"))
