"""The assistant records every answered turn, and replay rebuilds the exact prompt from the record,
also after the document was re-ingested and the table compacted."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ragloop.cli import app
from ragloop.generation.assistant import AnswerRequest, AnswerResult, Assistant
from ragloop.generation.prompts import get_template, prompt_sha256
from ragloop.generation.replay import replay
from ragloop.ingest.kb import KnowledgeBase
from ragloop.ingest.pipeline import ingest_uploads
from ragloop.store.db import session_scope
from ragloop.store.models import Interaction, KBVersion

Q = [{"role": "user", "content": "How many days of paid vacation do employees receive?"}]

pytestmark = pytest.mark.backends("transformers", "llamacpp")  # the same behaviour on both


def test_answer_is_recorded_with_everything_replay_needs(kb_home):
    assistant = Assistant(kb_home)
    result = assistant.answer(AnswerRequest(messages=Q, max_tokens=8, user_id="u1"))
    with session_scope(kb_home.db_url) as s:
        rec = s.get(Interaction, result.interaction_id)
        passages = [p.to_dict() for p in rec.passages]
        assert rec.retrieval_query == Q[0]["content"]
        assert rec.template_id == "cited-answer" and rec.template_version == 1
        assert rec.model_version == result.model_version and rec.model_version.startswith("base-")
        assert rec.gen_params["max_new_tokens"] == 8 and rec.completion_tokens <= 8
        assert rec.prompt_tokens > 0 and rec.latency_total_ms >= rec.latency_generate_ms > 0
        assert rec.user_id == "u1" and rec.turn_index == 0
        assert rec.kb_version == KnowledgeBase(kb_home).version
        tag = s.get(KBVersion, rec.kb_version).tag
    assert tag, "a KB version a record refers to must be tagged"
    assert [p["rank"] for p in passages] == [1, 2, 3]
    assert passages[0]["source_path"] == "vacation.md"  # the vacation doc ranks first
    assert all(p["text_sha256"] and p["chunk_id"] and p["score"] > 0 for p in passages)
    assert passages[0]["score_dense"] is not None and passages[0]["score_fulltext"] is not None

    rebuilt = replay(kb_home, result.interaction_id)
    assert rebuilt.identical and not rebuilt.problems
    hits = assistant.retriever.search(Q[0]["content"], 3)
    assert rebuilt.sha256 == prompt_sha256(get_template("cited-answer").render(Q, hits))


def test_replay_survives_reingest_and_compaction(kb_home):
    assistant = Assistant(kb_home)
    result = assistant.answer(AnswerRequest(messages=Q, max_tokens=4))
    changed = b"# Vacation policy\n\nEmployees now receive thirty days of paid vacation per year.\n"
    report = ingest_uploads(kb_home, [("vacation.md", changed)], collection="handbook")
    assert report.replaced == ["vacation.md"]
    KnowledgeBase(kb_home).compact()
    rebuilt = replay(kb_home, result.interaction_id)
    assert rebuilt.identical, rebuilt.problems
    assert "twenty-five days" in rebuilt.prompt[-1]["content"]  # the text as it was shown, not as it is now
    fresh = assistant.answer(AnswerRequest(messages=Q, max_tokens=4))
    assert fresh.kb_version > result.kb_version
    assert replay(kb_home, fresh.interaction_id).identical


def test_streaming_records_before_the_final_item_and_follow_ups_join_the_conversation(kb_home):
    assistant = Assistant(kb_home)
    items = list(assistant.stream(AnswerRequest(messages=Q, max_tokens=6)))
    final = items[-1]
    assert isinstance(final, AnswerResult) and all(isinstance(i, str) for i in items[:-1])
    assert "".join(items[:-1]).strip() == final.answer
    follow = [
        *Q,
        {"role": "assistant", "content": final.answer},
        {"role": "user", "content": "And when do they expire?"},
    ]
    second = assistant.answer(AnswerRequest(messages=follow, max_tokens=4))
    assert second.conversation_id == final.conversation_id and second.turn_index == 1
    with session_scope(kb_home.db_url) as s:
        assert s.get(Interaction, second.interaction_id).retrieval_query.startswith("How many days")


def test_scope_limits_what_the_assistant_sees(kb_home):
    assistant = Assistant(kb_home)
    result = assistant.answer(
        AnswerRequest(
            messages=[{"role": "user", "content": "How high can fines be?"}],
            max_tokens=4,
            collections=["handbook"],
        )
    )
    assert result.passages and all(p.collection == "handbook" for p in result.passages)


def test_cli_ask_logs_export_and_replay(kb_home, tmp_path):
    runner = CliRunner()
    home = ["--home", str(kb_home.home)]
    r = runner.invoke(app, ["ask", "How many vacation days?", "--max-tokens", "4", "--json", *home])
    assert r.exit_code == 0, r.output
    iid = json.loads(r.stdout)["interaction_id"]
    r = runner.invoke(app, ["logs", *home])
    assert r.exit_code == 0 and iid[:12] in r.stdout
    out = tmp_path / "export.jsonl"
    r = runner.invoke(app, ["logs", "--export", str(out), "--text", "vacation", *home])
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [rec["id"] for rec in records] == [iid] and records[0]["passages"]
    assert runner.invoke(app, ["logs", "--export", str(out), "--text", "no such words", *home]).exit_code == 0
    assert out.read_text() == ""
    r = runner.invoke(app, ["replay", iid, *home])
    assert r.exit_code == 0 and "identical" in r.stdout
    r = runner.invoke(app, ["replay", "nope", *home])
    assert r.exit_code != 0
