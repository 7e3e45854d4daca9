"""Storage tests, run on SQLite and on PostgreSQL (the ``db_url`` fixture of conftest.py;
RAGLOOP_TEST_POSTGRES_URL, which `make test` starts). A missing PostgreSQL fails these tests instead of
skipping them: production runs on it.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from ragloop.errors import AuthError, NotFound
from ragloop.store import aliases
from ragloop.store.db import get_engine, session_scope
from ragloop.store.keys import create_key, hash_key, revoke_key, verify_key
from ragloop.store.models import ApiKey, Interaction, ModelVersion, Passage, utcnow
from ragloop.store.queries import iter_interactions


def make_interaction(**overrides) -> Interaction:
    fields = dict(
        conversation_id="c1",
        turn_index=0,
        messages=[{"role": "user", "content": "What is the right to erasure?"}],
        thread_sha256="t" * 64,
        retrieval_query="What is the right to erasure?",
        kb_version=3,
        template_id="cited-answer",
        template_version=1,
        prompt_sha256="p" * 64,
        model_version="base-abc",
        gen_params={"max_new_tokens": 64, "temperature": 0.0},
        answer="The data subject may obtain erasure [1].",
        citations=[{"n": 1, "valid": True}],
        passages=[
            Passage(
                rank=1,
                chunk_id="k1",
                doc_id="d1",
                collection="gdpr",
                source_path="gdpr.xml",
                title="GDPR",
                section="Article 17",
                text_sha256="h" * 64,
                kb_version=3,
                score=0.03,
                score_dense=0.8,
                score_fulltext=7.1,
                rank_dense=1,
                rank_fulltext=2,
            ),
            Passage(
                rank=2,
                chunk_id="k2",
                doc_id="d1",
                collection="gdpr",
                source_path="gdpr.xml",
                title="GDPR",
                section="Article 16",
                text_sha256="i" * 64,
                kb_version=3,
                score=0.02,
            ),
        ],
    )
    fields.update(overrides)
    return Interaction(**fields)


def test_migrations_create_schema(db_url):
    engine = get_engine(db_url)
    tables = set(sa.inspect(engine).get_table_names())
    assert {
        "interactions",
        "passages",
        "documents",
        "kb_versions",
        "api_keys",
        "model_versions",
        "model_aliases",
        "alembic_version",
    } <= tables
    get_engine(db_url)  # idempotent


def test_migrations_match_the_models(db_url):
    """A model change without its migration would work on a fresh test database built from the models and
    break every existing home: the migrated schema must equal the models, column for column."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from ragloop.store.models import Base

    with get_engine(db_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_interaction_round_trip_keeps_every_field(db_url):
    with session_scope(db_url) as s:
        s.add(make_interaction())
    with session_scope(db_url) as s:
        (row,) = s.scalars(sa.select(Interaction)).all()
        data = row.to_dict()
    assert data["messages"][0]["content"] == "What is the right to erasure?"
    assert [p["chunk_id"] for p in data["passages"]] == ["k1", "k2"]
    assert data["passages"][0]["score_fulltext"] == pytest.approx(7.1)
    assert data["gen_params"] == {"max_new_tokens": 64, "temperature": 0.0}


def test_failed_transaction_leaves_nothing(db_url):
    with pytest.raises(RuntimeError), session_scope(db_url) as s:
        s.add(make_interaction())
        s.flush()
        raise RuntimeError("crash mid-write")
    with session_scope(db_url) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Interaction)) == 0
        assert s.scalar(sa.select(sa.func.count()).select_from(Passage)) == 0


def test_keys_are_stored_hashed_and_verified(db_url):
    with session_scope(db_url) as s:
        key, secret = create_key(s, "ops", admin=True, collections=["gdpr"])
    with session_scope(db_url) as s:
        stored = s.get(ApiKey, key.id)
        assert stored.key_hash == hash_key(secret) and secret not in (stored.key_hash, stored.prefix)
        assert verify_key(s, secret).collections == ["gdpr"]
        with pytest.raises(AuthError):
            verify_key(s, secret + "x")
        with pytest.raises(AuthError):
            verify_key(s, None)
        revoke_key(s, key.id)
    with session_scope(db_url) as s, pytest.raises(AuthError):
        verify_key(s, secret)


def test_lineage_resolves_aliases_and_versions(db_url):
    with session_scope(db_url) as s:
        base = aliases.ensure_base_version(s, "packaged", "f" * 64)
        assert aliases.resolve(s, None)[0].id == base.id  # no production alias yet: base
        assert aliases.resolve(s, "base") == (base, "base")
        assert aliases.resolve(s, base.id) == (base, None)
        assert aliases.resolve(s, "production") == (base, "base")  # unpromoted production = base
        s.add(ModelVersion(id="v1", base_model="packaged", base_hash="f" * 64, adapter_path="/a"))
        aliases.promote(s, "v1")
        assert aliases.resolve(s, None) == (s.get(ModelVersion, "v1"), "production")
        assert aliases.rollback(s) == ("v1", base.id)  # the first promotion rolls back to base
        assert aliases.resolve(s, "production")[0].id == base.id
        with pytest.raises(NotFound):
            aliases.rollback(s)
        with pytest.raises(NotFound, match="Known models"):
            aliases.resolve(s, "gpt-4")
        with pytest.raises(NotFound):
            aliases.set_alias(s, "candidate", "nope")


def test_log_queries_filter_by_date_model_and_text(db_url):
    now = utcnow()
    with session_scope(db_url) as s:
        s.add(make_interaction(created_at=now - timedelta(days=3), model_version="v1"))
        s.add(
            make_interaction(
                created_at=now,
                model_version="v2",
                answer="Fines up to 4 % [1].",
                retrieval_query="fines 100%_off",
            )
        )
    with session_scope(db_url) as s:
        assert len(list(iter_interactions(s))) == 2
        assert [i.model_version for i in iter_interactions(s, since=now - timedelta(days=1))] == ["v2"]
        assert [i.model_version for i in iter_interactions(s, model="v1")] == ["v1"]
        assert [i.model_version for i in iter_interactions(s, text="FINES")] == ["v2"]
        assert [i.model_version for i in iter_interactions(s, text="100%_")] == [
            "v2"
        ]  # wildcards are literal
        assert [i.model_version for i in iter_interactions(s, text="%")] == ["v2"]  # literal, not match-all
        assert len(list(iter_interactions(s, limit=1))) == 1
