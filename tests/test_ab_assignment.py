"""A/B experiments: the records, sticky assignment and serving (issue 17, part A).

Assignment is checked through the pure function (the split over 10,000 units), the store functions on
SQLite and PostgreSQL (the migration, bad input), the assistant on a real database (100 turns of one
conversation, explicit versions, evaluation traffic, releases) and real servers over HTTP (a restart, a stop
seen by another process, both arms served at once). Tiny model, real PEFT adapters, 2 new tokens a turn.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import select

from conftest import alembic_step
from ragloop.config import Settings
from ragloop.errors import Conflict, GenerationError, NotFound, RagloopError
from ragloop.evaluation.run import EvalConfig, run_eval
from ragloop.generation import release
from ragloop.generation.assistant import AnswerRequest, Assistant
from ragloop.store import aliases, experiments
from ragloop.store.db import session_scope
from ragloop.store.experiments import assign, unit_of
from ragloop.store.models import Experiment, Interaction, ModelAlias, ModelVersion, utcnow
from test_lineage import register_adapter

QUESTION = "How many days of paid vacation do employees receive?"
TOKENS = 2  # every answer: the arm is what is checked, not the text


def conversations_in(experiment_id: str, share: float, arm: str, n: int, prefix: str = "c") -> list[str]:
    """``n`` conversation ids that ``assign`` puts in ``arm``: tests pick their units instead of hoping."""
    found = []
    for i in range(10_000):
        cid = f"{prefix}-{i}"
        if assign(experiment_id, unit_of(cid, client_conversation=True, user_id=None), share) == arm:
            found.append(cid)
            if len(found) == n:
                return found
    raise AssertionError(f"no {arm} conversation found")


def ask(assistant: Assistant, **fields: Any) -> Interaction:
    """One turn through the assistant, returned as its committed record. It searches no collection (the
    empty scope skips retrieval): the arm is what is checked, and retrieval is most of a tiny turn's time."""
    fields.setdefault("messages", [{"role": "user", "content": QUESTION}])
    fields.setdefault("collections", [])
    result = assistant.answer(AnswerRequest(max_tokens=TOKENS, **fields))
    with session_scope(assistant.settings.db_url) as s:
        row = s.get(Interaction, result.interaction_id)
    assert (row.experiment_id, row.arm, row.model_version) == (
        result.experiment_id, result.arm, result.model_version,
    )  # fmt: skip
    return row


def post(client: httpx.Client, messages: list[dict], **extra: Any) -> dict[str, Any]:
    body = {"messages": messages, "max_tokens": TOKENS, **extra}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    return {"text": data["choices"][0]["message"]["content"], **data["ragloop"]}


def start_experiment(settings: Settings, candidate: str, share: float, **kwargs: Any) -> Experiment:
    with session_scope(settings.db_url) as s:
        return experiments.create_experiment(s, candidate=candidate, share=share, **kwargs)


# Assignment, pure ------------------------------------------------------------------------------------------


def test_assignment_splits_within_binomial_tolerance_and_is_monotone() -> None:
    n = 10_000
    units = [f"user:u{i}" for i in range(n)]
    for share in (0.05, 0.2, 0.5):
        k = sum(assign("exp-a", u, share) == "candidate" for u in units)
        sd = math.sqrt(n * share * (1 - share))
        assert abs(k - n * share) <= 4 * sd, (share, k)  # fixed units, so no flakiness; a fair split passes
    # Raising the share (a ramp) only moves units into the candidate, never out.
    at5 = {u for u in units if assign("exp-a", u, 0.05) == "candidate"}
    at20 = {u for u in units if assign("exp-a", u, 0.2) == "candidate"}
    assert at5 <= at20
    # Keyed by the experiment: a unit's arms in two experiments are independent (overlap ~ share^2).
    other = {u for u in units if assign("exp-b", u, 0.2) == "candidate"}
    assert abs(len(at20 & other) - n * 0.04) <= 4 * math.sqrt(n * 0.04 * 0.96)
    assert all(assign("exp-a", u, 0.2) == ("candidate" if u in at20 else "control") for u in units[:500])
    # What assignment costs a request is measured by bench/ab.py, not asserted here (no timed tests).


# Records: migration and bad input (SQLite and PostgreSQL) ---------------------------------------------------


def test_migration_0006_adds_experiments_and_the_interaction_columns(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    migrate = alembic_step(engine, db_url)

    def tables() -> dict[str, sa.Table]:
        meta = sa.MetaData()
        meta.reflect(engine)
        return meta.tables

    migrate(command.upgrade, "0005")
    with engine.begin() as conn:
        conn.execute(tables()["interactions"].insert(), [{
            "id": "i1", "created_at": utcnow(), "conversation_id": "c", "turn_index": 0, "source": "api",
            "messages": [], "thread_sha256": "t", "retrieval_query": "q", "template_id": "x",
            "template_version": 1, "prompt_sha256": "p", "model_version": "m", "gen_params": {}, "answer": "a",
            "citations": [], "finish_reason": "stop", "prompt_tokens": 0, "completion_tokens": 0,
            "latency_retrieve_ms": 0, "latency_generate_ms": 0, "latency_total_ms": 0,
        }])  # fmt: skip
    migrate(command.upgrade, "head")
    with session_scope(db_url) as s:
        old = s.get(Interaction, "i1")
        assert (old.experiment_id, old.arm, old.experiment_unit) == (None, None, None)  # served outside any

    def experiment(id_: str, status: str) -> dict[str, Any]:
        now = utcnow()
        return {"id": id_, "created_at": now, "alias": "production", "arms": {}, "share": 0.2, "ramp": [],
                "stage": 0, "unit": "auto", "primary_metric": "thumbs_up", "guardrails": [], "min_units": 0,
                "alpha": 0.05, "status": status, "started_at": now, "config": {}}  # fmt: skip

    table = tables()["experiments"]
    with engine.begin() as conn:  # any number of ended experiments on one alias...
        conn.execute(table.insert(), [experiment("e1", "stopped"), experiment("e2", "rolled_back")])
        conn.execute(table.insert(), [experiment("e3", "running")])
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # ...but one running
        conn.execute(table.insert(), [experiment("e4", "running")])
    with engine.begin() as conn:
        conn.execute(
            tables()["experiment_snapshots"].insert(), [{"experiment_id": "e3", "at": utcnow(), "data": {}}]
        )

    migrate(command.downgrade, "0005")
    assert {"experiments", "experiment_snapshots"}.isdisjoint(tables())
    assert "arm" not in tables()["interactions"].c
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(tables()["interactions"])) == 1
    migrate(command.upgrade, "head")
    engine.dispose()


def test_experiments_refuse_bad_input_and_change_nothing(db_url: str) -> None:
    with session_scope(db_url) as s:
        s.add_all([ModelVersion(id=v, base_model="m") for v in ("base-x", "v1", "v2")])
        s.flush()
        s.add(ModelAlias(name="base", model_version_id="base-x"))

    def count() -> int:
        with session_scope(db_url) as s:
            return len(experiments.list_experiments(s))

    bad: list[tuple[type[Exception], dict[str, Any], str]] = [
        (NotFound, {"candidate": "nope"}, "does not exist"),
        (RagloopError, {"candidate": "base"}, "already serves"),  # production is still the base model
        (RagloopError, {"candidate": "base-x"}, "already serves"),
        (RagloopError, {"share": 0.0}, "between 0 and 1"),
        (RagloopError, {"share": 1.0}, "between 0 and 1"),
        (RagloopError, {"share": 1.5}, "between 0 and 1"),
        (RagloopError, {"ramp": (0.3, 0.1)}, "must increase"),
        (RagloopError, {"ramp": (0.6,)}, "must increase"),
        (RagloopError, {"ramp": (0.0,)}, "between 0 and 1"),
        (RagloopError, {"primary": "clicks"}, "Unknown primary metric"),
        (RagloopError, {"primary": "latency_p95"}, "hard limit"),  # judged by a limit: it could never decide
        (RagloopError, {"guardrails": ("error_rate", "vibes")}, "Unknown guardrail"),
        (RagloopError, {"unit": "session"}, "Unknown assignment unit"),
        (RagloopError, {"alias": "v2"}, "not an alias"),
        (NotFound, {"alias": "staging"}, "does not exist"),
    ]
    for error, override, message in bad:
        with pytest.raises(error, match=message), session_scope(db_url) as s:
            experiments.create_experiment(s, **{"candidate": "v1", "share": 0.5, **override})
    assert count() == 0

    with session_scope(db_url) as s:
        exp = experiments.create_experiment(s, candidate="v1", share=0.5, ramp=(0.05, 0.2), min_units=50)
    assert exp.arms == {"control": {"model_version": "base-x"}, "candidate": {"model_version": "v1"}}
    assert (exp.share, exp.ramp, exp.stage, exp.status, exp.alias) == (
        0.05,
        [0.05, 0.2, 0.5],
        0,
        "running",
        "production",
    )
    assert exp.guardrails == list(experiments.DEFAULT_GUARDRAILS) and exp.min_units == 50
    with pytest.raises(Conflict, match="already running"), session_scope(db_url) as s:
        experiments.create_experiment(s, candidate="v2", share=0.5)
    assert count() == 1

    with session_scope(db_url) as s:
        moved = experiments.set_share(s, exp.id, 0.2, 1)
        assert [st["share"] for st in moved.config["stages"]] == [0.05, 0.2]
        assert experiments.get_experiment(s, exp.id[:6]).id == exp.id
        with pytest.raises(NotFound):
            experiments.get_experiment(s, "zzz")
        stopped = experiments.stop_experiment(
            s, exp.id, status="stopped", decision="stop", reason="r", by="user"
        )
        assert stopped.stopped_at is not None and experiments.running_for(s, "production") is None
    with session_scope(db_url) as s:  # a stop of a stopped experiment changes nothing: the first one stands
        again = experiments.stop_experiment(s, exp.id, status="rolled_back", decision="x", reason="y", by="z")
        assert (again.status, again.reason, again.stopped_by) == ("stopped", "r", "user")
        with pytest.raises(Conflict):
            experiments.set_share(s, exp.id, 0.5, 2)
    with session_scope(db_url) as s:  # the alias is free again
        assert experiments.create_experiment(s, candidate="v2", share=0.5).arms["candidate"] == {
            "model_version": "v2"
        }


# Serving: the assistant on a real database -----------------------------------------------------------------


@pytest.fixture
def ab_home(kb_home: Settings, tmp_path: Path) -> Iterator[tuple[Settings, ModelVersion, Assistant]]:
    """``kb_home`` with an adapter registered and an assistant (which registers the base model): production
    is the base model, the adapter a candidate.

    Torch gets one thread meanwhile (restored after): on a busy 2-core machine the tiny model's turn took
    ~200 ms with two OpenMP threads waiting on each other against ~20 ms with one (measured), and these
    tests take hundreds of turns. Servers started in their own process get the same through ONE_THREAD."""
    import torch

    from ragloop import torch_thread

    threads = torch_thread.run(torch.get_num_threads)
    torch_thread.run(torch.set_num_threads, 1)
    yield kb_home, register_adapter(kb_home, tmp_path, 1), Assistant(kb_home)
    torch_thread.run(torch.set_num_threads, threads)


ONE_THREAD = {"RAGLOOP_GENERATOR__THREADS": "1"}


def test_one_conversation_keeps_its_arm_for_100_turns_and_units_follow_the_rule(ab_home) -> None:
    home, v1, assistant = ab_home
    exp = start_experiment(home, v1.id, 0.5)
    base = exp.arms["control"]["model_version"]
    cand_conv = conversations_in(exp.id, 0.5, "candidate", 1)[0]
    ctrl_conv = conversations_in(exp.id, 0.5, "control", 1)[0]

    served = {"candidate": set(), "control": set()}
    for turn in range(100):
        conv = ctrl_conv if turn % 10 == 9 else cand_conv  # the other arm's conversation interleaved
        row = ask(
            assistant, conversation_id=conv, messages=[{"role": "user", "content": f"{QUESTION} {turn}"}]
        )
        arm = "control" if conv == ctrl_conv else "candidate"
        served[arm].add((row.experiment_id, row.arm, row.model_version, row.model_alias, row.experiment_unit))
    assert served == {
        "candidate": {(exp.id, "candidate", v1.id, "production", f"conversation:{cand_conv}")},
        "control": {(exp.id, "control", base, "production", f"conversation:{ctrl_conv}")},
    }

    # The conversation id comes first; the user id a client sends is the unit when it sends none: one arm
    # across that user's conversations.
    row = ask(assistant, conversation_id=cand_conv, user_id="bob")
    assert (row.arm, row.experiment_unit) == ("candidate", f"conversation:{cand_conv}")
    rows = [
        ask(assistant, user_id="alice", messages=[{"role": "user", "content": f"q{i}"}]) for i in range(3)
    ]
    assert len({r.conversation_id for r in rows}) == 3
    assert {(r.arm, r.experiment_unit) for r in rows} == {(assign(exp.id, "user:alice", 0.5), "user:alice")}

    # A stateless client (no conversation id, no user): the conversation the assistant derives from the
    # thread is the unit, so every turn of a thread has the first turn's arm.
    for opening in ("Is there a vacation policy?", "Who sets fines?"):
        messages = [{"role": "user", "content": opening}]
        arms = set()
        for turn in range(3):
            row = ask(assistant, messages=messages)
            arms.add((row.conversation_id, row.arm, row.experiment_unit))
            messages = [
                *messages,
                {"role": "assistant", "content": row.answer},
                {"role": "user", "content": f"and {turn}?"},
            ]
        assert len(arms) == 1, arms
        ((conv, arm, unit),) = arms
        assert unit == f"conversation:{conv}" and arm == assign(exp.id, unit, 0.5)


def test_explicit_versions_evaluation_and_other_traffic_stay_out(ab_home, tmp_path: Path) -> None:
    home, v1, assistant = ab_home
    exp = start_experiment(home, v1.id, 0.5)
    base = exp.arms["control"]["model_version"]
    conv = conversations_in(exp.id, 0.5, "candidate", 1)[0]

    assert ask(assistant, conversation_id=conv).arm == "candidate"
    assert ask(assistant, conversation_id=conv, model="production").arm == "candidate"
    assert ask(assistant, conversation_id=conv, source="cli").arm == "candidate"
    for version in (base, v1.id):  # naming a version asks for that version
        row = ask(assistant, conversation_id=conv, model=version)
        assert (row.model_version, row.experiment_id, row.arm, row.experiment_unit) == (
            version,
            None,
            None,
            None,
        )
    for source in ("eval", "replay", "synth", "bench"):  # not live traffic: the alias's version, no arm
        row = ask(assistant, conversation_id=conv, source=source)
        assert (row.model_version, row.model_alias, row.experiment_id, row.arm) == (base, "base", None, None)

    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"id": "q", "question": "How many vacation days?", "answers": ["25"], '
                  '"gold": [{"title": "Vacation", "text": "Twenty-five days of paid vacation."}]}\n')  # fmt: skip
    run = run_eval(
        home, EvalConfig(data=str(qa), condition="oracle", max_new_tokens=TOKENS), assistant=assistant
    )
    assert run.model_version == base and run.config["model_alias"] == "base"


def test_a_release_of_the_alias_stops_its_experiment_in_the_same_move(ab_home, tmp_path: Path) -> None:
    home, v1, assistant = ab_home
    v2 = register_adapter(home, tmp_path, 2)
    exp = start_experiment(home, v1.id, 0.5)
    conv = conversations_in(exp.id, 0.5, "candidate", 1)[0]
    assert ask(assistant, conversation_id=conv).model_version == v1.id

    def broken(version: ModelVersion) -> None:
        raise OSError("adapter_model.safetensors: truncated")

    with pytest.raises(GenerationError):  # a release that does not happen stops nothing
        release.promote(home, v2.id, load=broken)
    with session_scope(home.db_url) as s:
        assert s.get(Experiment, exp.id).status == "running"

    release.promote(home, v2.id, note="hotfix", load=assistant.backend_for)
    with session_scope(home.db_url) as s:
        ended = s.get(Experiment, exp.id)
        assert (ended.status, ended.decision, ended.stopped_by) == ("stopped", "stop", "release")
        assert (
            ended.reason
            == f"promote of 'production' from {exp.arms['control']['model_version']} to {v2.id} (hotfix)"
        )
    # Its conversations go on with the alias's version from their next turn, outside any experiment.
    row = ask(assistant, conversation_id=conv)
    assert (row.model_version, row.model_alias, row.experiment_id, row.arm) == (
        v2.id,
        "production",
        None,
        None,
    )

    # Promoting the candidate ends its experiment as promoted; a rollback of the alias stops the next one.
    second = start_experiment(home, v1.id, 0.5)
    release.promote(home, v1.id, load=assistant.backend_for)
    third = start_experiment(home, v2.id, 0.5)
    release.rollback(home, load=assistant.backend_for)
    with session_scope(home.db_url) as s:
        assert (s.get(Experiment, second.id).status, s.get(Experiment, second.id).decision) == (
            "promoted",
            "promote",
        )
        assert s.get(Experiment, third.id).status == "stopped"
        assert s.get(Experiment, third.id).reason == f"rollback of 'production' from {v1.id} to {v2.id}"
        assert experiments.running_for(s, "production") is None

    # `ab promote` read a running experiment, then its guardrails rolled it back: the promotion it goes on
    # with is refused in the move's transaction, and the alias stays.
    fourth = start_experiment(home, v1.id, 0.5)
    with session_scope(home.db_url) as s:
        experiments.stop_experiment(s, fourth.id, status="rolled_back", decision="rollback", reason="harm",
                                    by="guardrail")  # fmt: skip
    before = aliases.resolve(home.db_url, "production")[0].id
    with pytest.raises(Conflict, match="no longer running"):
        release.promote(home, v1.id, load=assistant.backend_for, while_running=fourth.id)
    assert aliases.resolve(home.db_url, "production")[0].id == before != v1.id


# Serving: real servers over HTTP ---------------------------------------------------------------------------


def test_arms_hold_across_a_server_restart_and_a_stop_reaches_another_process(
    ab_home, start_server: Callable[..., Any], server_process: Callable[..., Any]
) -> None:
    """Served by one server, then by another in a new process (a restart: nothing carries over but the
    database), every unit keeps its arm; a stop made in this process reaches that server within 2 s."""
    home, v1, _ = ab_home
    exp = start_experiment(home, v1.id, 0.5)
    base = exp.arms["control"]["model_version"]
    cand, ctrl = (conversations_in(exp.id, 0.5, arm, 1)[0] for arm in ("candidate", "control"))
    expected = {cand: ("candidate", v1.id), ctrl: ("control", base)}
    question = [{"role": "user", "content": QUESTION}]

    def check_turns(client: httpx.Client) -> None:
        for conv, (arm, version) in expected.items():
            for _ in range(2):
                answer = post(client, question, ragloop={"conversation_id": conv})
                assert (answer["experiment_id"], answer["arm"], answer["model_version"]) == (
                    exp.id,
                    arm,
                    version,
                )

    in_thread = start_server(home)
    with in_thread.client() as client:
        check_turns(client)
        opening = [{"role": "user", "content": "What must laptops use?"}]
        first = post(client, opening)  # a stateless client's first turn...
    in_thread.stop()
    server = server_process(home, env=ONE_THREAD)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        check_turns(client)
        follow = [
            *opening,
            {"role": "assistant", "content": first["text"]},
            {"role": "user", "content": "And?"},
        ]
        second = post(client, follow)  # ...and its second, after the restart: the same thread, the same arm
        assert (second["conversation_id"], second["arm"]) == (first["conversation_id"], first["arm"])

        # Stopped from this process, the server (another one) serves the alias's version within its cache's
        # 2 s, and records those turns outside the experiment.
        with session_scope(home.db_url) as s:
            experiments.stop_experiment(
                s, exp.id, status="stopped", decision="stop", reason="test", by="user"
            )
        stopped_at = time.monotonic()
        while (answer := post(client, question, ragloop={"conversation_id": cand}))["arm"] is not None:
            assert answer["model_version"] == v1.id
            assert time.monotonic() - stopped_at < 5, "the server never saw the stop"
            time.sleep(0.2)
        assert (answer["experiment_id"], answer["model_version"]) == (None, base)


def test_one_server_serves_both_arms_at_once_and_records_each(ab_home, start_server) -> None:
    home, v1, _ = ab_home
    exp = start_experiment(home, v1.id, 0.5)
    base = exp.arms["control"]["model_version"]
    convs = {arm: conversations_in(exp.id, 0.5, arm, 4, prefix=arm) for arm in ("candidate", "control")}
    jobs = [(arm, conv, i % 2 == 1) for arm, ids in convs.items() for i, conv in enumerate(ids)]
    server = start_server(home)

    def one(job: tuple[str, str, bool]) -> tuple[str, dict]:
        arm, conv, stream = job
        body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": TOKENS, "stream": stream,
                "ragloop": {"conversation_id": conv}}  # fmt: skip
        with server.client() as client:
            response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        if not stream:
            return arm, response.json()["ragloop"]
        events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        record = next(e["ragloop"] for e in events if "ragloop" in e)
        # every chunk, not only the last, names the version of the arm that answered
        assert {e["model"] for e in events} == {record["model_version"]}, [e["model"] for e in events]
        return arm, record

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(one, jobs))
    version = {"candidate": v1.id, "control": base}
    with session_scope(home.db_url) as s:
        for arm, record in answers:
            row = s.get(Interaction, record["interaction_id"])
            assert (record["experiment_id"], record["arm"], record["model_version"]) == (
                exp.id,
                arm,
                version[arm],
            )
            assert (row.experiment_id, row.arm, row.model_version) == (exp.id, arm, version[arm])
        in_experiment = s.scalars(select(Interaction.arm).where(Interaction.experiment_id == exp.id)).all()
    assert sorted(in_experiment) == ["candidate"] * 4 + ["control"] * 4
