"""A/B experiments, part C: metrics, decisions and the doors (issue 17).

The automatic rollback runs through a real server: its periodic check (``[ab] check_interval_s``) reads
the records, finds the candidate worse on the ``citation_verified`` guardrail and ends the experiment while
requests keep coming, none of them failing. The generator is an OpenAI-compatible server at the machine's
edge (``FakeGenerator``) that answers the control model with a sentence of the first passage it was shown,
cited, and the candidate with the same sentence uncited: the candidate really is worse, by the verifier
curation uses. Everything else is real: the ragloop server over HTTP, the CLI, the database, the knowledge
base, the PEFT adapters. The decisions that need many requests (hard limits, ramp stages, the sample-ratio
check, the maximum duration) are checked on records written straight into a real database.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from conftest import LiveServer, with_overrides
from ragloop.config import Settings
from ragloop.monitoring import ab
from ragloop.store import aliases, experiments
from ragloop.store.db import session_scope
from ragloop.store.keys import create_key
from ragloop.store.models import (
    Experiment,
    ExperimentSnapshot,
    Feedback,
    Interaction,
    ModelAlias,
    ModelVersion,
    RegistryEvent,
    RequestError,
)
from test_lineage import register_adapter, run_cli
from test_vllm_release import BASE, openai_home

QUESTION = "How many days of paid vacation do employees receive?"


# The machine's edge: an OpenAI-compatible generator ---------------------------------------------------------


def first_sentence(prompt: str) -> str:
    """The first sentence of passage [1] in a ``cited-answer`` prompt (its header line, then its text)."""
    text = re.search(r"\[1\] [^\n]*\n(.*?)\n\n(?:\[2\] |Question: )", prompt, re.S).group(1)
    pieces = re.split(r"(?<=[.!?])\s+|\n+", text)
    return next(p for p in pieces if len(p.split()) >= 4 and not p.startswith("#")).rstrip(".")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeGenerator

    def _send(self, status: int, payload: Any) -> None:
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(payload, str) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # the adapters it serves (the openai backend asks before loading one)
        cards = [{"id": BASE, "object": "model", "root": BASE}]
        cards += [{"id": n, "object": "model", "root": p} for n, p in self.server.loaded.items()]
        self._send(200, {"object": "list", "data": cards})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.endswith("/load_lora_adapter"):
            self.server.loaded[body["lora_name"]] = body["lora_path"]
            self._send(200, "Success")
            return
        model = body["model"]
        self.server.models.append(model)
        sentence = first_sentence(body["messages"][-1]["content"])
        # The control cites the passage it copies; the candidate copies it without saying where from.
        answer = f"{sentence} [1]." if model == BASE else f"{sentence}."
        usage = {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}
        head = {"id": "c-1", "created": 0, "model": model}
        if not body.get("stream"):
            message = {"role": "assistant", "content": answer}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            self._send(200, {**head, "object": "chat.completion", "choices": [choice], "usage": usage})
            return
        # HTTP/1.0: the end of the body is the end of the connection, so the stream needs no framing.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for delta, finish in (({"role": "assistant", "content": answer}, None), ({}, "stop")):
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            chunk = {**head, "object": "chat.completion.chunk", "choices": [choice]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        last = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        self.wfile.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())

    def log_message(self, *args: object) -> None:
        pass


class FakeGenerator(http.server.ThreadingHTTPServer):
    """``models``: the model of every chat request, in arrival order; ``loaded``: adapters it was asked to
    serve (name -> folder)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.models: list[str] = []
        self.loaded: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def generator() -> Iterator[FakeGenerator]:
    server = FakeGenerator()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def ab_home(kb_home: Settings, tmp_path: Path, generator: FakeGenerator) -> tuple[Settings, Any, Any, str]:
    """``kb_home`` answering through ``generator`` (the openai backend, adapters served by name), with two
    adapter versions registered: (settings, v1, v2, the base version that production serves)."""
    v1, v2 = (
        register_adapter(kb_home, tmp_path, 1, name="v"),
        register_adapter(kb_home, tmp_path, 2, name="v"),
    )
    settings = openai_home(kb_home, generator.url)
    return settings, v1, v2, base_version(settings)


def base_version(settings: Settings) -> str:
    """What production serves before any promotion: the base version of this home's generator."""
    from ragloop.generation.assistant import Assistant

    return Assistant(settings).base_version_id


def ask(client: httpx.Client, conversation: str) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": QUESTION}], "ragloop": {"conversation_id": conversation}}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text  # no request fails, before, during or after a rollback
    return response.json()["ragloop"]


# Automatic rollback through the running server --------------------------------------------------------------


def test_a_worse_candidate_is_rolled_back_by_the_servers_check_and_no_request_fails(
    ab_home, generator: FakeGenerator, start_server: Callable[..., LiveServer]
) -> None:
    settings, v1, _, base = ab_home
    server = start_server(settings, ab={"check_interval_s": 0.2})
    with server.client() as client:
        started = client.post("/api/ab", json={"candidate": v1.id, "share": 0.5})
        assert started.status_code == 201, started.text
        exp = started.json()
        assert exp["arms"] == {"control": {"model_version": base}, "candidate": {"model_version": v1.id}}
        assert exp["guardrails"] == ["error_rate", "latency_p95", "citation_verified"]
        assert generator.loaded == {v1.id: v1.adapter_path}  # the candidate was loaded before it served

    # Live traffic, four clients at once, one conversation (unit) per request, until the check acts.
    records: list[dict] = []
    deadline = time.monotonic() + 60

    def traffic(worker: int) -> None:
        with server.client() as client:
            for i in range(100):
                records.append(ask(client, f"w{worker}-{i}"))
                if time.monotonic() > deadline or experiment(settings, exp["id"]).status != "running":
                    return

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(traffic, range(4)))

    ended = experiment(settings, exp["id"])
    assert (ended.status, ended.decision, ended.stopped_by, ended.share) == (
        "rolled_back",
        "rollback",
        "guardrail",
        0.0,
    )
    assert ended.reason.startswith("guardrail: citation_verified"), ended.reason
    arms = {r["arm"] for r in records if r["experiment_id"] == exp["id"]}
    assert arms == {"control", "candidate"}
    served_candidate = [r for r in records if r["arm"] == "candidate"]
    assert all(r["model_version"] == v1.id for r in served_candidate)

    # From the next request on, every unit is served the control, outside the experiment: the candidate's
    # own conversations too.
    n_before = len(generator.models)
    with server.client() as client:
        again = [ask(client, r["conversation_id"]) for r in served_candidate[:5]]
        fresh = [ask(client, f"after-{i}") for i in range(5)]
    assert {(r["model_version"], r["experiment_id"], r["arm"]) for r in again + fresh} == {(base, None, None)}
    assert set(generator.models[n_before:]) == {BASE}

    # The decision is traced to what the check saw: a snapshot per check, the last one the rollback.
    with server.client() as client:
        status = client.get("/api/ab").json()
        history = client.get(f"/api/ab/{exp['id']}/snapshots").json()["data"]
    verified = status["metrics"]["citation_verified"]
    assert (verified["control"]["mean"], verified["candidate"]["mean"], verified["verdict"]) == (
        1.0,
        0.0,
        "worse",
    )
    assert verified["interval"]["hi"] < 0 and verified["guardrail"] == "sequence"
    assert status["metrics"]["cites"]["candidate"]["mean"] == 0.0
    assert len(history) >= 2 and [h["action"] for h in history[:-1]] == [None] * (len(history) - 1)
    assert (history[-1]["action"], history[-1]["status"], history[-1]["share"]) == (
        "rollback",
        "rolled_back",
        0.0,
    )
    assert history[-1]["metrics"]["citation_verified"]["verdict"] == "worse"


def experiment(settings: Settings, experiment_id: str) -> Experiment:
    with session_scope(settings.db_url) as s:
        return s.get(Experiment, experiment_id)


# The doors: bad input, keys, start / status / stop / promote ------------------------------------------------


def experiments_now(settings: Settings) -> list[tuple]:
    with session_scope(settings.db_url) as s:
        rows = s.scalars(select(Experiment).order_by(Experiment.created_at))
        return [(e.id, e.status, e.share, e.decision) for e in rows]


def test_the_doors_refuse_bad_input_and_scoped_keys_and_start_stop_promote(
    ab_home, start_server: Callable[..., LiveServer]
) -> None:
    settings, v1, v2, base = ab_home
    server = start_server(settings, server={"auth": "on"})
    with session_scope(settings.db_url) as s:
        _, admin = create_key(s, "ops", admin=True)
        _, scoped = create_key(s, "handbook-admin", admin=True, collections=["handbook"])
        _, reader = create_key(s, "reader")

    refused = [
        ({"candidate": "nope", "share": 0.5}, 404, "'nope' does not exist"),
        ({"candidate": base, "share": 0.5}, 400, "already serves"),
        ({"candidate": v1.id, "share": 0}, 400, "between 0 and 1"),
        ({"candidate": v1.id, "share": 1.5}, 400, "between 0 and 1"),
        ({"candidate": v1.id, "share": 0.2, "primary": "vibes"}, 400, "Unknown primary metric 'vibes'"),
        (
            {"candidate": v1.id, "share": 0.2, "guardrails": ["latency_p95", "vibes"]},
            400,
            "Unknown guardrail",
        ),
    ]
    with server.client(admin) as client:
        for body, status, message in refused:
            response = client.post("/api/ab", json=body)
            assert response.status_code == status, (body, response.text)
            assert message in response.json()["error"]["message"], response.text
        assert experiments_now(settings) == []
        for key, message in ((scoped, "no collection scope"), (reader, "needs an admin API key")):
            with server.client(key) as other:
                response = other.post("/api/ab", json={"candidate": v1.id, "share": 0.2})
                assert response.status_code == 403 and message in response.json()["error"]["message"]
                assert other.get("/api/ab").status_code == 403
        assert experiments_now(settings) == []

        first = client.post("/api/ab", json={"candidate": v1.id, "share": 0.2})
        assert first.status_code == 201, first.text
        exp = first.json()
        second = client.post("/api/ab", json={"candidate": v2.id, "share": 0.2})
        assert second.status_code == 409 and "already running" in second.json()["error"]["message"]
        with server.client(scoped) as other:
            assert other.post(f"/api/ab/{exp['id']}/stop").status_code == 403
            assert other.post(f"/api/ab/{exp['id']}/promote").status_code == 403
        assert experiments_now(settings) == [(exp["id"], "running", 0.2, None)]

        # The CLI: the same refusals in words, and the same report.
        for args, message in [
            (["--candidate", v2.id, "--share", "0.2"], "already running"),
            (["--candidate", v2.id, "--share", "0.2", "--alias", "nothing"], "'nothing' does not exist"),
        ]:
            out = run_cli(settings, "ab", "start", *args)
            assert out.exit_code == 1 and message in out.output, out.output
        shown = run_cli(settings, "ab", "status", "--json")
        assert shown.exit_code == 0, shown.output
        report = json.loads(shown.output)
        assert report["experiment"]["id"] == exp["id"] and set(report["metrics"]) == experiments.KNOWN_METRICS
        assert report == {**client.get("/api/ab").json(), "at": report["at"]}
        assert run_cli(settings, "ab", "status").exit_code == 0

        # Stop through the API; a second stop is refused, nothing changed.
        stopped = client.post(f"/api/ab/{exp['id']}/stop", json={"reason": "enough"})
        assert stopped.status_code == 200 and stopped.json()["status"] == "stopped", stopped.text
        assert client.post(f"/api/ab/{exp['id']}/stop").status_code == 409
        assert (
            out := run_cli(settings, "ab", "stop")
        ).exit_code == 1 and "No experiment running" in out.output
        assert experiments_now(settings) == [(exp["id"], "stopped", 0.2, "stop")]

        # Promote from the CLI: the release function moves production and ends the experiment, recorded.
        out = run_cli(settings, "ab", "start", "--candidate", v1.id, "--share", "0.3", "--json")
        assert out.exit_code == 0, out.output
        second_id = json.loads(out.output)["id"]
        out = run_cli(settings, "ab", "promote")
        assert out.exit_code == 0, out.output
        assert production(settings) == v1.id
        assert experiments_now(settings)[-1] == (second_id, "promoted", 0.3, "promote")
        with session_scope(settings.db_url) as s:
            event = s.scalars(select(RegistryEvent).order_by(RegistryEvent.id.desc())).first()
            assert (event.action, event.model_version_id) == ("promote", v1.id)
            assert second_id in event.note

        # And from the API, against the new production.
        third = client.post("/api/ab", json={"candidate": v2.id, "share": 0.5, "guardrails": []}).json()
        assert third["arms"]["control"]["model_version"] == v1.id
        promoted = client.post(f"/api/ab/{third['id']}/promote")
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["release"] == {
            "alias": "production",
            "model_version": v2.id,
            "previous": v1.id,
            "embedder_version": None,  # the candidate served the base embedder (issue 20)
        }
        assert production(settings) == v2.id and experiment(settings, third["id"]).status == "promoted"
        assert client.post(f"/api/ab/{third['id']}/promote").status_code == 409


def production(settings: Settings) -> str | None:
    with session_scope(settings.db_url) as s:
        alias = s.get(ModelAlias, "production")
        return alias.model_version_id if alias else None


# Decisions on records: hard limits, ramp stages, sample ratio, maximum duration --------------------------------


@pytest.fixture
def versions_home(home: Settings, db_url: str) -> Settings:
    """A home on SQLite and on PostgreSQL (``db_url``) whose production is version ``control`` and that knows
    a version ``cand``, without models: the check reads records only."""
    home = home.model_copy(update={"database_url": db_url})
    with session_scope(home.db_url) as s:
        for vid in ("control", "cand"):
            s.add(ModelVersion(id=vid, base_model="m", base_hash="h"))
        s.flush()
        aliases.set_alias(s, "production", "control", action="promote")
    return home


def start(settings: Settings, **kwargs: Any) -> str:
    kwargs.setdefault("share", 0.5)
    return ab.start(settings, candidate="cand", load=lambda version: None, **kwargs)["id"]


def serve(settings: Settings, exp_id: str, arm: str, units: range | list[str], *, latency: float = 100.0,
          answer: str = "Twenty-five days.", turns: int = 1) -> list[str]:  # fmt: skip
    """Interactions as the assistant records them, ``turns`` per unit, served by ``arm``."""
    ids = []
    with session_scope(settings.db_url) as s:
        for unit in units:
            for turn in range(turns):
                i = Interaction(
                    conversation_id=f"{arm}-{unit}", turn_index=turn, messages=[{"role": "user", "content": "q"}],
                    thread_sha256="t", retrieval_query="q", template_id="cited-answer", template_version=1,
                    prompt_sha256="p", model_version="cand" if arm == "candidate" else "control",
                    model_alias="production", gen_params={}, answer=answer, citations=[],
                    latency_total_ms=latency, experiment_id=exp_id, arm=arm,
                    experiment_unit=f"conversation:{arm}-{unit}",
                )  # fmt: skip
                s.add(i)
                s.flush()
                ids.append(i.id)
    return ids


def test_hard_limits_roll_back_only_on_enough_requests(versions_home: Settings) -> None:
    settings = versions_home
    exp = start(settings, guardrails=["latency_p95"])
    serve(settings, exp, "control", range(120), latency=100.0)
    serve(settings, exp, "candidate", range(99), latency=400.0)
    result = ab.check(settings, exp)
    assert (
        result["action"] is None and result["metrics"]["latency_p95"]["breaks"] is False
    )  # 99 < 100 requests
    serve(settings, exp, "candidate", ["one-more"], latency=400.0)
    result = ab.check(settings, exp)
    assert result["action"] == "rollback" and result["metrics"]["latency_p95"]["limit"] == pytest.approx(
        150.0
    )
    row = experiment(settings, exp)
    assert (row.status, row.stopped_by, row.share) == ("rolled_back", "guardrail", 0.0)
    assert row.reason.startswith(
        "guardrail: latency_p95: the candidate's p95 latency 400 ms over 100 requests"
    )

    # The error rate: failed requests of the candidate, against the control's rate plus the margin, once
    # the control has enough requests to have a rate (one early control answer must not set the bar).
    exp = start(settings, guardrails=["error_rate"])
    serve(settings, exp, "control", range(1))
    serve(settings, exp, "candidate", range(100))
    with session_scope(settings.db_url) as s:
        for n in range(20):
            s.add(RequestError(status=502, code="generation_error", model_version="cand", experiment_id=exp,
                               arm="candidate", unit=f"conversation:early-{n}", conversation_id=f"early-{n}"))  # fmt: skip
    early = ab.check(settings, exp)
    assert early["action"] is None and early["metrics"]["error_rate"]["breaks"] is False
    ab.stop(settings, exp)
    exp = start(settings, guardrails=["error_rate"])
    serve(settings, exp, "control", range(100))
    serve(settings, exp, "candidate", range(100))
    assert ab.check(settings, exp)["action"] is None
    with session_scope(settings.db_url) as s:
        for n in range(5):
            s.add(RequestError(status=503, code="overloaded", model_version="cand", experiment_id=exp,
                               arm="candidate", unit=f"conversation:candidate-{n}", conversation_id=f"candidate-{n}"))  # fmt: skip
    result = ab.check(settings, exp)
    assert result["arms"]["candidate"]["errors"] == 5 and result["action"] == "rollback", result["reason"]
    assert "error_rate: the candidate's error rate 0.048" in result["reason"]
    with session_scope(settings.db_url) as s:
        kinds = s.execute(select(ExperimentSnapshot.experiment_id, func.count()).group_by(ExperimentSnapshot.experiment_id)).all()  # fmt: skip
    assert sorted(n for _, n in kinds) == [1, 2, 2]


def test_ramp_advances_when_a_stage_is_served_and_a_sample_ratio_mismatch_holds_it(
    versions_home: Settings,
) -> None:
    settings = with_overrides(versions_home, ab={"stage_units": 10})
    # 10 % of units expected in the candidate at stage 0; 30 of 60 is a broken split: flagged, no ramp.
    exp = start(settings, share=0.5, ramp=[0.1])
    serve(settings, exp, "control", range(30))
    serve(settings, exp, "candidate", range(30))
    result = ab.check(settings, exp)
    assert result["srm"]["flagged"] and result["srm"]["stages"][0]["p"] < 1e-6 and result["action"] is None
    assert experiment(settings, exp).share == 0.1
    ab.stop(settings, exp)

    exp = start(settings, share=0.5, ramp=[0.1])
    serve(settings, exp, "control", range(90))
    serve(settings, exp, "candidate", range(9))
    assert ab.check(settings, exp)["action"] is None  # 9 of the 10 candidate units the stage needs
    serve(settings, exp, "candidate", ["tenth"])
    result = ab.check(settings, exp)
    assert result["action"] == "ramp" and not result["srm"]["flagged"]
    row = experiment(settings, exp)
    assert (row.share, row.stage, row.status) == (0.5, 1, "running")
    # Units first seen from now on are checked against the new share.
    serve(settings, exp, "control", [f"late-{n}" for n in range(5)])
    stages = ab.check(settings, exp)["srm"]["stages"]
    assert [(s["share"], s["control"], s["candidate"]) for s in stages] == [(0.1, 90, 10), (0.5, 5, 0)]


def test_metrics_are_per_unit_and_the_maximum_duration_ends_an_experiment(versions_home: Settings) -> None:
    settings = versions_home
    exp = start(settings, primary="thumbs_up", guardrails=[], max_days=1, min_units=4)
    # One control unit with ten liked turns weighs as much as one with a single disliked turn.
    liked = serve(settings, exp, "control", ["a"], turns=10)
    disliked = serve(settings, exp, "control", ["b"])
    corrected = serve(settings, exp, "candidate", ["c"], answer="I don't know.")
    with session_scope(settings.db_url) as s:
        for iid in liked:
            s.add(Feedback(interaction_id=iid, reviewer_id="r", thumbs=1, rating=5))
        s.add(Feedback(interaction_id=disliked[0], reviewer_id="r", thumbs=-1, rating=2))
        s.add(Feedback(interaction_id=corrected[0], reviewer_id="r", thumbs=-1, corrected_answer="25 days."))
    report = ab.status(settings)
    m = report["metrics"]
    assert (m["thumbs_up"]["control"]["mean"], m["thumbs_up"]["control"]["units"]) == (0.5, 2)
    assert m["rating"]["control"]["mean"] == 3.5 and m["correction_rate"]["candidate"]["mean"] == 1.0
    assert m["abstention"]["candidate"]["mean"] == 1.0 and m["citation_verified"]["candidate"]["units"] == 0
    assert report["primary"] == {"metric": "thumbs_up", "verdict": "inconclusive", "units": 3, "min_units": 4,
                                 "held": False}  # fmt: skip
    assert ab.check(settings, exp)["action"] is None
    with session_scope(settings.db_url) as s:
        row = s.get(Experiment, exp)
        row.started_at -= timedelta(days=1, seconds=1)
    result = ab.check(settings, exp)
    assert result["action"] == "stop" and result["reason"].startswith("ran its maximum of 1 days")
    assert (experiment(settings, exp).status, experiment(settings, exp).stopped_by) == ("stopped", "max_days")
