"""One release path for both doors: ``ragloop models promote|rollback`` and ``POST /api/models/{id}/promote``
and ``/api/models/rollback`` load the version before they move the alias, so a version whose adapter is
broken (here: a truncated ``adapter_model.safetensors``) is refused with a message naming it, the alias
stays where it was, and a running server keeps answering with the version it served. Real server over
HTTP, real tiny model, real PEFT adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from ragloop.config import Settings
from ragloop.store.db import session_scope
from ragloop.store.models import ModelAlias, RegistryEvent
from test_hotswap import ask
from test_lineage import register_adapter, run_cli

WEIGHTS = "adapter_model.safetensors"

pytestmark = pytest.mark.backends("transformers", "llamacpp")  # the same behaviour on both


def truncate_adapter(adapter_path: str) -> None:
    """Cut the adapter's weights file in half, as a full disk or an interrupted copy leaves it."""
    weights = Path(adapter_path) / WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])


def production(settings: Settings) -> str | None:
    with session_scope(settings.db_url) as s:
        alias = s.get(ModelAlias, "production")
        return alias.model_version_id if alias is not None else None


def events(settings: Settings) -> list[tuple[str, str | None, str]]:
    with session_scope(settings.db_url) as s:
        rows = s.scalars(
            select(RegistryEvent).where(RegistryEvent.alias == "production").order_by(RegistryEvent.id)
        )
        return [(e.action, e.previous_version_id, e.model_version_id) for e in rows]


def test_a_truncated_adapter_is_refused_by_both_doors_and_the_server_keeps_serving(
    kb_home: Settings, start_server, tmp_path: Path
) -> None:
    good = register_adapter(kb_home, tmp_path, 1, name="good")
    broken = register_adapter(kb_home, tmp_path, 2, name="broken")
    truncate_adapter(broken.adapter_path)
    server = start_server(kb_home)
    with server.client() as client:
        promoted = client.post(f"/api/models/{good.id}/promote", json={})
        assert promoted.status_code == 200, promoted.text
        before = ask(client)
        assert before["model_version"] == good.id

        # The CLI refuses: it loads the version first, as the server would.
        refused = run_cli(kb_home, "models", "promote", broken.id)
        assert refused.exit_code == 1, refused.output
        message = " ".join(refused.output.split())
        assert broken.id in message and WEIGHTS in message and "production" in message, message
        assert production(kb_home) == good.id
        after = ask(client)  # the running server still answers, with the version it served
        assert (after["model_version"], after["text"]) == (good.id, before["text"])

        # The API refuses the same way.
        refused_api = client.post(f"/api/models/{broken.id}/promote", json={})
        assert refused_api.status_code >= 400, refused_api.text
        error = refused_api.json()["error"]["message"]
        assert broken.id in error and WEIGHTS in error, error
        assert production(kb_home) == good.id
        after = ask(client)
        assert (after["model_version"], after["text"]) == (good.id, before["text"])

    assert events(kb_home) == [("promote", None, good.id)]  # no refused release was recorded as made


def test_a_rollback_to_a_version_that_no_longer_loads_is_refused(
    kb_home: Settings, start_server, tmp_path: Path
) -> None:
    first = register_adapter(kb_home, tmp_path, 1, name="first")
    second = register_adapter(kb_home, tmp_path, 2, name="second")
    server = start_server(kb_home)
    for version in (first.id, second.id):  # both load: the CLI promotes them
        promoted = run_cli(kb_home, "models", "promote", version)
        assert promoted.exit_code == 0, promoted.output
    truncate_adapter(first.adapter_path)  # the rollback target breaks after it was served
    with server.client() as client:
        before = ask(client)
        assert before["model_version"] == second.id

        refused = run_cli(kb_home, "models", "rollback")
        assert refused.exit_code == 1, refused.output
        assert first.id in " ".join(refused.output.split()), refused.output
        refused_api = client.post("/api/models/rollback", json={"alias": "production"})
        assert refused_api.status_code >= 400, refused_api.text
        assert first.id in refused_api.json()["error"]["message"]

        assert production(kb_home) == second.id
        after = ask(client)
        assert (after["model_version"], after["text"]) == (second.id, before["text"])
    assert events(kb_home) == [("promote", None, first.id), ("promote", first.id, second.id)]


def test_a_first_promotion_of_a_broken_adapter_leaves_the_served_base_model_untouched(
    kb_home: Settings, start_server, tmp_path: Path
) -> None:
    """Nothing promoted yet: the server answers with the base model, which loading an adapter wraps. A
    refused load must leave that model as it was, not half-wrapped in the broken adapter's layers."""
    broken = register_adapter(kb_home, tmp_path, 2, name="broken")
    truncate_adapter(broken.adapter_path)
    server = start_server(kb_home)
    with server.client() as client:
        before = ask(client)
        refused = client.post(f"/api/models/{broken.id}/promote", json={})
        assert refused.status_code >= 400, refused.text
        after = ask(client)
        assert (after["model_version"], after["text"]) == (before["model_version"], before["text"])
    assert production(kb_home) is None
