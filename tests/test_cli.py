"""The command-line door itself: what it prints around the stages' work (the review page it sends a reviewer
to). Commands of one stage are tested with that stage."""

from __future__ import annotations

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
