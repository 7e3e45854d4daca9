"""Promotion and rollback change what a running server answers with, from the next request, without a
restart; concurrent requests on different versions each get their own adapter; every alias change is a
RegistryEvent. Real server on a socket, real tiny model, real PEFT adapters with random weights."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from ragloop.generation.models import resolve_model
from ragloop.generation.replay import replay
from ragloop.store.db import session_scope
from ragloop.store.models import RegistryEvent
from test_lineage import greedy, register_adapter, run_cli

QUESTION = "How many days of paid vacation do employees receive?"

pytestmark = pytest.mark.backends("transformers", "llamacpp")  # the same behaviour on both


def ask(client: httpx.Client, model: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16}
    if model is not None:
        body["model"] = model
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    return {"text": data["choices"][0]["message"]["content"], **data["ragloop"]}


def test_promote_and_rollback_switch_the_served_model_without_restart(
    kb_home, start_server, tmp_path: Path
) -> None:
    v1 = register_adapter(kb_home, tmp_path, 1, name="v")
    v2 = register_adapter(kb_home, tmp_path, 2, name="v")
    server = start_server(kb_home)
    with server.client() as client:
        solo = {name: ask(client, name) for name in ("base", v1.id, v2.id)}
        assert len({r["text"] for r in solo.values()}) == 3, solo  # three models, three different answers

        # The served v1 answer is what plain PEFT gives for the exact recorded prompt.
        base_dir, _ = resolve_model(kb_home.generator.model, kb_home.model_cache_dir)
        prompt = replay(kb_home, solo[v1.id]["interaction_id"]).prompt
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir)), v1.adapter_path)
        ids = greedy(peft, base_dir, prompt)
        expected = AutoTokenizer.from_pretrained(str(base_dir)).decode(ids, skip_special_tokens=True).strip()
        assert solo[v1.id]["text"] == expected

        assert ask(client)["model_alias"] == "base"  # nothing promoted yet

        promoted = client.post(f"/api/models/{v1.id}/promote", json={"alias": "production"})
        assert promoted.status_code == 200, promoted.text
        assert promoted.json() == {"alias": "production", "model_version": v1.id, "previous": None,
                                   "embedder_version": None, "previous_embedder": None}  # fmt: skip
        answer = ask(client)
        assert (answer["text"], answer["model_version"], answer["model_alias"]) == (
            solo[v1.id]["text"], v1.id, "production",
        )  # fmt: skip

        # Promotion from another process (the CLI) reaches the running server through the registry.
        assert run_cli(kb_home, "models", "promote", v2.id, "--alias", "production").exit_code == 0
        answer = ask(client)
        assert (answer["text"], answer["model_version"]) == (solo[v2.id]["text"], v2.id)

        rolled = client.post("/api/models/rollback", json={"alias": "production"})
        assert rolled.status_code == 200, rolled.text
        assert rolled.json() == {"alias": "production", "from": v2.id, "model_version": v1.id,
                                 "embedder_version": None, "from_embedder": None}  # fmt: skip
        answer = ask(client)
        assert (answer["text"], answer["model_version"]) == (solo[v1.id]["text"], v1.id)

        shown = client.get("/api/models/production")
        assert shown.status_code == 200 and shown.json()["id"] == v1.id
        assert shown.json()["aliases"] == ["production"]
        assert client.post("/api/models/sft-missing/promote", json={}).status_code == 404

    with session_scope(kb_home.db_url) as s:
        events = [(e.action, e.previous_version_id, e.model_version_id)
                  for e in s.scalars(select(RegistryEvent).where(RegistryEvent.alias == "production")
                                     .order_by(RegistryEvent.id))]  # fmt: skip
    assert events == [("promote", None, v1.id), ("promote", v1.id, v2.id), ("rollback", v2.id, v1.id)]


def test_concurrent_requests_on_different_versions_each_get_their_own_adapter(
    kb_home, start_server, tmp_path: Path
) -> None:
    v1 = register_adapter(kb_home, tmp_path, 1)
    v2 = register_adapter(kb_home, tmp_path, 2)
    server = start_server(kb_home)
    with server.client() as client:
        solo = {v: ask(client, v)["text"] for v in (v1.id, v2.id)}
        assert solo[v1.id] != solo[v2.id]
        order = [v1.id, v2.id] * 3
        with ThreadPoolExecutor(max_workers=len(order)) as pool:
            answers = list(pool.map(lambda v: ask(client, v), order))
    for version, answer in zip(order, answers, strict=True):
        assert answer["model_version"] == version
        assert answer["text"] == solo[version], (version, answer["text"], solo[version])


def test_admin_routes_need_an_admin_key_when_auth_is_on(kb_home, start_server, tmp_path: Path) -> None:
    from ragloop.store.keys import create_key

    v1 = register_adapter(kb_home, tmp_path, 1)
    with session_scope(kb_home.db_url) as s:
        _, user = create_key(s, "user")
        _, admin = create_key(s, "ops", admin=True)
    server = start_server(kb_home, server={"auth": "on"})
    for key, status in ((None, 401), (user, 403), (admin, 200)):
        with server.client(key) as client:
            assert client.get(f"/api/models/{v1.id}").status_code == status
            assert client.get("/api/jobs").status_code == status
            assert client.post(f"/api/models/{v1.id}/promote", json={}).status_code == status
