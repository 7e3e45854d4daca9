"""The command-line door itself: how a stage's error reaches the person (one handler: a red ``error:`` line,
exit code 1, no traceback) and what it prints around the stages' work (the review page it sends a reviewer
to). Commands of one stage are tested with that stage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from ragloop.cli import app
from ragloop.config import ServerSettings, Settings
from ragloop.evaluation.run import EvalConfig, run_eval
from ragloop.feedback.review import review_url
from test_eval_run import FAST, qa_file  # noqa: F401 - qa_file is a fixture

SERVER = {"RAGLOOP_SERVER__HOST": "10.1.2.3", "RAGLOOP_SERVER__PORT": "9123"}


def test_review_messages_point_at_the_configured_server(kb_home: Settings, qa_file: Path) -> None:  # noqa: F811
    home = ["--home", str(kb_home.home)]
    r = CliRunner().invoke(app, ["review", "sample", "--n", "2", *home], env=SERVER)
    assert r.exit_code == 0, r.output
    assert "http://10.1.2.3:9123/review" in r.output and "8000" not in r.output, r.output
    r = CliRunner().invoke(app, ["review", "sample", "--queue", "legal", *home], env=SERVER)
    assert "http://10.1.2.3:9123/review?queue=legal" in r.output, r.output

    run = run_eval(kb_home, EvalConfig(data=str(qa_file), condition="oracle", **FAST))
    r = CliRunner().invoke(app, ["eval", "review", run.id, "--n", "2", *home], env=SERVER)
    assert r.exit_code == 0, r.output
    assert "http://10.1.2.3:9123/review?queue=eval" in " ".join(r.output.split()), r.output


def test_review_url_reaches_a_server_bound_everywhere_through_loopback() -> None:
    assert review_url(ServerSettings(host="0.0.0.0", port=80)) == "http://127.0.0.1:80/review"
    assert review_url(ServerSettings(host="::1"), "a b") == "http://[::1]:8000/review?queue=a+b"


def test_a_stage_error_is_one_line_and_exit_code_1_from_every_entry_point(home: Settings) -> None:
    """Under Typer's test runner (which never calls ``main``) and as ``python -m ragloop`` alike."""
    args = ["feedback", "no-such-interaction", "--thumbs", "up", "--home", str(home.home)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "error: No interaction 'no-such-interaction'" in r.output, r.output
    done = subprocess.run(
        [sys.executable, "-m", "ragloop", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr
    assert "error: No interaction 'no-such-interaction'" in done.stderr and "Traceback" not in done.stderr


def test_plain_forget_applies_the_retention_setting(kb_home: Settings) -> None:
    """`ragloop forget` naming nothing expires what ``[records] retention_days`` says, and only that (the
    default now lives in ``curation.erasure.forget``, not in the door)."""
    from datetime import timedelta

    from ragloop.generation.assistant import AnswerRequest, Assistant
    from ragloop.store.db import session_scope
    from ragloop.store.models import Interaction, utcnow

    assistant = Assistant(kb_home)
    old, recent = (
        assistant.answer(
            AnswerRequest(messages=[{"role": "user", "content": q}], max_tokens=2)
        ).interaction_id
        for q in ("How many vacation days?", "How high can fines be?")
    )
    with session_scope(kb_home.db_url) as s:
        s.get(Interaction, old).created_at = utcnow() - timedelta(days=40)
    home = ["--home", str(kb_home.home)]
    assert CliRunner().invoke(app, ["forget", *home]).exit_code == 1  # no retention set: say what to forget
    r = CliRunner().invoke(app, ["forget", *home], env={"RAGLOOP_RECORDS__RETENTION_DAYS": "30"})
    assert r.exit_code == 0 and "deleted 1 interactions" in r.output, r.output
    with session_scope(kb_home.db_url) as s:
        assert s.get(Interaction, old) is None and s.get(Interaction, recent) is not None


def test_ask_json_prints_the_record_the_api_returns(kb_home: Settings, live_server) -> None:  # type: ignore[no-untyped-def]
    """`ragloop ask --json` and the API's ``ragloop`` object are one shape, built in one place: a script
    reads the same fields from either door (plus ``answer``, which the API carries in ``choices``)."""
    import json

    question = "How many vacation days?"
    r = CliRunner().invoke(app, ["ask", question, "--max-tokens", "4", "--json", "--home", str(kb_home.home)])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    with live_server.client() as client:
        body = {"messages": [{"role": "user", "content": question}], "max_tokens": 4}
        api = client.post("/v1/chat/completions", json=body).json()
    assert set(printed) == {"answer", *api["ragloop"]}
    assert printed["answer"] == api["choices"][0]["message"]["content"]
    assert [set(p) for p in printed["passages"]] == [set(p) for p in api["ragloop"]["passages"]]
    assert [p["passage_id"] for p in printed["passages"]] == [
        p["passage_id"] for p in api["ragloop"]["passages"]
    ]
    assert set(printed["latency_ms"]) == set(api["ragloop"]["latency_ms"])


def test_dataset_command_names_files_absolutely(tmp_path, monkeypatch):
    """A dataset's stored rebuild command runs from any directory: relative file arguments (as typed from a
    project's parent folder) become absolute and the home is named, so drift's retrain advice can be pasted."""
    from ragloop.cli.common import dataset_command

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGLOOP_HOME", "demo-home")
    cmd = dataset_command(
        ["dataset", "build", "--name", "d", "--import", "generic:demo-home/synth.jsonl", "--policy=p.yaml"]
    )
    assert f"generic:{tmp_path}/demo-home/synth.jsonl" in cmd
    assert f"--policy {tmp_path}/p.yaml" in cmd
    assert cmd.endswith(f"--home {tmp_path}/demo-home")
    assert dataset_command(["ask", "x"]) == ""
