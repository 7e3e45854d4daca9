"""Integration: the real packaged models (MiniLM embeddings, SmolLM2-135M-Instruct) on the real GDPR text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragloop.cli import app
from ragloop.config import init_home, load_settings
from ragloop.generation.assistant import AnswerRequest, Assistant
from ragloop.generation.replay import replay
from ragloop.retrieval.search import Retriever

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GDPR_XML = DATA / "gdpr" / "gdpr-consolidated-with-corrected-preamble-en.xml"

# question -> the article that must be retrieved in the top 4
QUESTIONS = {
    "What is the right to erasure?": "Article 17",
    "When must a personal data breach be notified to the supervisory authority?": "Article 33",
    "Who must designate a data protection officer?": "Article 37",
}


@pytest.fixture(scope="module")
def gdpr_home(tmp_path_factory):
    assert GDPR_XML.is_file(), f"missing demo corpus {GDPR_XML}"
    home = init_home(tmp_path_factory.mktemp("gdpr"))
    r = CliRunner().invoke(app, ["ingest", str(GDPR_XML), "--collection", "gdpr", "--home", str(home)])
    assert r.exit_code == 0, r.output
    return load_settings(home)


def test_gdpr_articles_are_retrieved(gdpr_home):
    retriever = Retriever(gdpr_home)
    for question, article in QUESTIONS.items():
        sections = [h.section for h in retriever.search(question, 4)]
        assert any(article + " " in s or s.endswith(article) or f"{article}  " in s for s in sections), (
            question,
            sections,
        )


def test_real_model_answers_are_recorded_and_replayable(gdpr_home):
    assistant = Assistant(gdpr_home)
    result = assistant.answer(
        AnswerRequest(
            messages=[{"role": "user", "content": "What is the right to erasure?"}],
            max_tokens=24,
            source="cli",
        )
    )
    assert result.answer.strip() and result.completion_tokens > 0
    assert result.model_version.startswith("base-")
    assert any("Article 17" in p.section for p in result.passages)
    assert replay(gdpr_home, result.interaction_id).identical
    r = CliRunner().invoke(app, ["logs", "--export", "-", "--home", str(gdpr_home.home)])
    assert r.exit_code == 0
    assert result.interaction_id in {json.loads(line)["id"] for line in r.stdout.splitlines() if line.strip()}
