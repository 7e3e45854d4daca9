"""The ``llamacpp`` backend under load and change: a base request after adapter traffic is the base,
adapters and the base served at once each give their own answers, a full engine answers 503 with
Retry-After and records the refusal as an error (no interaction), a client that disconnects frees its slot, and a promotion while answers
stream swaps engines without failing them. Real server on a socket, real llama.cpp engine (xllamacpp) over
a GGUF written from the tiny model, real PEFT adapters converted to GGUF.

(The server, replay, hot-swap and release tests run on this backend too: ``pytest.mark.backends``.)"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from conftest import LiveServer, with_overrides
from ragloop.config import Settings
from ragloop.errors import GenerationError
from ragloop.generation.assistant import Assistant
from ragloop.generation.backends import GenParams
from ragloop.generation.llamacpp import LlamaCppBackend
from ragloop.generation.models import resolve_model
from ragloop.generation.replay import replay
from ragloop.store import aliases
from ragloop.store.db import session_scope
from ragloop.store.models import Interaction, RequestError
from test_lineage import greedy, register_adapter

QUESTION = "How many days of paid vacation do employees receive?"
LONG = 3000  # tokens: the tiny model takes seconds for them, time enough to act while they stream


@pytest.fixture
def backend() -> str:
    return "llamacpp"


def ask(client: httpx.Client, model: str | None = None, **body: Any) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16, **body}
    if model is not None:
        body["model"] = model
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    return {"text": data["choices"][0]["message"]["content"], "usage": data["usage"], **data["ragloop"]}


def serve(settings: Settings, start_server: Any, **generator: Any) -> tuple[LiveServer, LlamaCppBackend]:
    """A server over ``settings`` with some [generator] keys changed, and its llama.cpp backend. Long
    answers are allowed (``LONG`` tokens; the tiny model's context is 4096)."""
    settings = with_overrides(
        settings,
        generator={"ctx_per_slot": 4096, **generator},
        limits={"max_new_tokens": LONG},
    )
    assistant = Assistant(settings)
    backend, _ = assistant.backend_for(aliases.resolve(settings.db_url, "base")[0])
    assert isinstance(backend, LlamaCppBackend)
    return start_server(settings, assistant), backend


def stream_lines(client: httpx.Client, **body: Any) -> Iterator[Any]:
    """Opens a streamed answer; yields the response once the first token has arrived, then its remaining
    ``data:`` payloads. Closing the generator closes the connection (a client going away)."""
    body = {"messages": [{"role": "user", "content": QUESTION}], "stream": True, **body}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        lines = (line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: "))
        for payload in lines:
            event = json.loads(payload)
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                break
        yield response
        yield from (p if p == "[DONE]" else json.loads(p) for p in lines)


def interactions(settings: Settings) -> int:
    with session_scope(settings.db_url) as s:
        return s.scalar(select(func.count()).select_from(Interaction))


def test_a_base_request_after_adapter_traffic_is_the_base(kb_home: Settings, start_server, tmp_path) -> None:
    """One slot, so every request lands where the adapter's requests were: a base request there must
    still be the base model (llama.cpp keeps a slot's adapters when a request does not name them all)."""
    v1 = register_adapter(kb_home, tmp_path, 1)
    server, backend = serve(kb_home, start_server, slots=1)
    with server.client() as client:
        answers = [ask(client, name) for name in ("base", v1.id, "base", v1.id, v1.id, "base")]
    assert backend.loaded_adapters() == (v1.id,)
    base, adapter = answers[0]["text"], answers[1]["text"]
    assert base != adapter  # the adapter really changes the answer, so a leak would show
    assert [a["text"] for a in answers] == [base, adapter, base, adapter, adapter, base]
    # And it is transformers' base answer to the exact recorded prompt.
    base_dir, _ = resolve_model(kb_home.generator.model, kb_home.model_cache_dir)
    prompt = replay(kb_home, answers[-1]["interaction_id"]).prompt
    from transformers import AutoTokenizer

    expected = AutoTokenizer.from_pretrained(str(base_dir)).decode(
        greedy(base_dir, base_dir, prompt), skip_special_tokens=True
    )
    assert answers[-1]["text"] == expected.strip()


def test_two_adapters_and_the_base_at_once_each_get_their_own_answer(
    kb_home: Settings, start_server, tmp_path
) -> None:
    v1 = register_adapter(kb_home, tmp_path, 1)
    v2 = register_adapter(kb_home, tmp_path, 2)
    server, backend = serve(kb_home, start_server)
    with server.client() as client:
        solo = {name: ask(client, name) for name in ("base", v1.id, v2.id)}
        assert len({answer["text"] for answer in solo.values()}) == 3, solo
        order = ["base", v1.id, v2.id] * 3
        with ThreadPoolExecutor(max_workers=len(order)) as pool:
            answers = list(pool.map(lambda name: ask(client, name), order))
    assert set(backend.loaded_adapters()) == {v1.id, v2.id}  # one engine serves both
    for name, answer in zip(order, answers, strict=True):
        assert answer["model_version"] == solo[name]["model_version"]
        assert answer["text"] == solo[name]["text"], (name, answer["text"], solo[name]["text"])


def test_a_full_engine_answers_503_with_retry_after_and_records_the_refusal_as_an_error(
    kb_home: Settings, start_server, caplog: pytest.LogCaptureFixture
) -> None:
    server, backend = serve(kb_home, start_server, slots=1, queue=0)
    caplog.set_level(logging.WARNING, logger="ragloop.generation.llamacpp")
    with server.client() as client:
        busy = stream_lines(client, max_tokens=LONG)
        next(busy)  # one long answer is generating: the one slot is taken, no place to wait
        for stream in (False, True):
            body = {"messages": [{"role": "user", "content": QUESTION}], "stream": stream}
            refused = client.post("/v1/chat/completions", json=body)
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.headers["content-type"] == "application/json"  # not a broken-off stream
            error = refused.json()["error"]
            assert error["code"] == "overloaded" and error["type"] == "server_error"
            assert "slots" in error["message"] and "retry" in error["message"]
        busy.close()  # that client goes away too: its answer is not recorded either
        assert interactions(kb_home) == 0
        answered = ask(client)  # the slot is free again
    assert interactions(kb_home) == 1 and answered["interaction_id"]
    # Each refusal is counted as an error of the version that would have answered (nothing half-written);
    # the client that went away is not an error.
    with session_scope(kb_home.db_url) as s:
        errors = list(s.scalars(select(RequestError)))
    assert [(e.status, e.code, e.model_version, e.source) for e in errors] == [
        (503, "overloaded", answered["model_version"], "api")
    ] * 2
    refusals = [r for r in caplog.records if "refused with 503" in r.getMessage()]
    assert len(refusals) == 2 and all(r.levelno == logging.WARNING for r in refusals)


@pytest.mark.parametrize("streamed", [True, False])
def test_a_client_that_disconnects_frees_its_slot(kb_home: Settings, start_server, streamed: bool) -> None:
    server, backend = serve(kb_home, start_server, slots=1, queue=0)
    with server.client() as client:
        ask(client)  # the engine is warm
        before = backend.metrics()["tokens_predicted_total"]
        if streamed:
            busy = stream_lines(client, max_tokens=LONG)
            next(busy)
            busy.close()  # the client goes away after its first token
        else:  # a client that stops waiting for a whole answer (its timeout) and closes the connection
            # A raw socket, closed once the engine has begun the answer: "gave up while it was generating",
            # whatever the machine's speed (a fixed client timeout let a fast engine get far first).
            body = json.dumps({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": LONG})
            url, decodes = httpx.URL(server.url), backend.metrics()["n_decode_total"]
            with socket.create_connection((url.host, url.port)) as impatient:
                impatient.sendall(
                    f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: "
                    f"application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
                )
                deadline = time.monotonic() + 60
                while backend.metrics()["n_decode_total"] - decodes < 8:  # counted per decode step
                    assert time.monotonic() < deadline, "the answer never started"
                    time.sleep(0.005)
        deadline = time.monotonic() + 10
        while backend.metrics()["requests_processing"] or backend._in_flight:
            assert time.monotonic() < deadline, "the abandoned answer still holds the slot"
            time.sleep(0.02)
        generated = backend.metrics()["tokens_predicted_total"] - before
        assert generated < LONG / 4, generated  # it stopped: it did not run to its 3000 tokens
        ask(client)  # and the one slot takes the next request
    assert interactions(kb_home) == 2  # the abandoned answer was not recorded


def test_a_promotion_while_answers_stream_swaps_engines_without_failing_them(
    kb_home: Settings, start_server, tmp_path
) -> None:
    v1 = register_adapter(kb_home, tmp_path, 1)
    server, backend = serve(kb_home, start_server)
    with server.client() as client, server.client() as admin:
        base = ask(client)
        busy = stream_lines(client, max_tokens=LONG // 2)
        next(busy)  # a base answer is streaming on the engine without adapters
        promoted = admin.post(f"/api/models/{v1.id}/promote", json={})
        assert promoted.status_code == 200, promoted.text
        assert backend.swaps[-1]["adapters"] == [v1.id]
        assert backend.swaps[-1]["draining_requests"] == 1  # the old engine still had that answer
        served = ask(admin)  # new requests go to the new engine
        assert (served["model_version"], served["model_alias"]) == (v1.id, "production")
        assert served["text"] != base["text"]
        events = list(busy)  # the answer that was streaming finishes on the old engine
    assert events[-1] == "[DONE]", events[-3:]
    final = next(e for e in events if isinstance(e, dict) and "ragloop" in e)
    assert final["choices"][0]["finish_reason"] in {"stop", "length"}
    assert final["ragloop"]["model_version"] == base["model_version"]
    assert backend._draining == []  # and that engine was dropped once it had finished


def test_an_adapter_llama_cpp_refuses_leaves_the_engine_serving(kb_home: Settings, tmp_path: Path) -> None:
    """The backend itself, below the release check: a file llama.cpp cannot load raises, and the engine
    that answered before answers the same after. With one adapter allowed, the least recently used goes
    and comes back on use."""
    v1 = register_adapter(kb_home, tmp_path, 1)
    v2 = register_adapter(kb_home, tmp_path, 2)
    settings = with_overrides(kb_home, generator={"max_adapters": 1})
    assistant = Assistant(settings)
    backend, _ = assistant.backend_for(aliases.resolve(settings.db_url, v1.id)[0])
    assert isinstance(backend, LlamaCppBackend)
    messages = [{"role": "user", "content": QUESTION}]
    params = GenParams(max_new_tokens=16)
    before = backend.generate(messages, params, v1.id).text
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(GenerationError, match="could not start"):
        backend.load_adapter("broken", broken)
    assert backend.loaded_adapters() == (v1.id,) and not backend.knows("broken")
    assert backend.generate(messages, params, v1.id).text == before

    assistant.backend_for(aliases.resolve(settings.db_url, v2.id)[0])
    assert backend.loaded_adapters() == (v2.id,)  # v1 was evicted
    other = backend.generate(messages, params, v2.id).text
    assert backend.generate(messages, params, v1.id).text == before  # v1 comes back
    assert backend.loaded_adapters() == (v1.id,)
    assert backend.generate(messages, params, v2.id).text == other
    assistant.close()


def test_a_batch_is_decoded_together_and_answers_as_one_by_one(kb_home: Settings) -> None:
    """Evaluation's batches go to the engine at once (up to ``slots``) and answer as single requests do."""
    assistant = Assistant(with_overrides(kb_home, generator={"slots": 2}))
    backend, _ = assistant.backend_for(aliases.resolve(kb_home.db_url, "base")[0])
    prompts = [[{"role": "user", "content": f"{QUESTION} ({n})"}] for n in range(5)]
    params = GenParams(max_new_tokens=12, temperature=0.7)  # batches are greedy whatever is asked
    greedy = GenParams(max_new_tokens=12)
    batch = backend.generate_batch(prompts, params)
    single = [backend.generate(p, greedy) for p in prompts]
    assert [(g.text, g.completion_tokens, g.prompt_tokens) for g in batch] == [
        (g.text, g.completion_tokens, g.prompt_tokens) for g in single
    ]
    assistant.close()


def test_a_prompt_longer_than_a_slot_is_refused_with_what_to_change(kb_home: Settings, start_server) -> None:
    server, _ = serve(kb_home, start_server, ctx_per_slot=128)
    with server.client() as client:
        response = client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}]}
        )
    assert response.status_code == 400, response.text
    assert "ctx_per_slot" in response.json()["error"]["message"]
    assert interactions(kb_home) == 0
