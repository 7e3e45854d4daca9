"""The claim mechanism (``store.claims``) on SQLite and on PostgreSQL: two claimers never take the same row,
a fenced interrupt loses against a fresh heartbeat, the work of a process killed with SIGKILL is taken
over (training job, eval run, periodic task), a periodic task runs in one of two competing processes per
period, and a running server expires records past ``retention_days`` without a restart.

Every test runs on both databases (``db_url``; the PostgreSQL leg is marked ``postgres`` and fails, never
skips, without RAGLOOP_TEST_POSTGRES_URL): ``SKIP LOCKED`` and the conditional updates under concurrent
transactions are PostgreSQL paths that SQLite, with one writer at a time, never takes.
"""

from __future__ import annotations

import os
import select as io_select
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import sqlalchemy as sa
from alembic import command

from conftest import alembic_step, fresh_database
from ragloop.config import Settings
from ragloop.store import claims
from ragloop.store.db import get_engine, session_scope
from ragloop.store.models import EvalRun, Job, PeriodicTask, utcnow
from ragloop.training import jobs
from test_store import make_interaction


def settings_on(db_url: str, home: Path) -> Settings:
    return Settings(home=home, database_url=db_url)


def add_jobs(db_url: str, n: int) -> list[str]:
    """``n`` queued training jobs, oldest first."""
    start = utcnow() - timedelta(minutes=1)
    with session_scope(db_url) as s:
        rows = [Job(kind="sft", created_at=start + timedelta(milliseconds=i)) for i in range(n)]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def add_eval_run(db_url: str, status: str = "interrupted") -> str:
    with session_scope(db_url) as s:
        run = EvalRun(model_version="base", dataset="qa.jsonl", condition="oracle", status=status,
                      config={"key": "k"}, heartbeat_at=utcnow())  # fmt: skip
        s.add(run)
        s.flush()
        return run.id


# Claiming ------------------------------------------------------------------------------------------------


def test_two_claimers_never_take_the_same_job(db_url: str, tmp_path: Path) -> None:
    """Four workers race for twenty queued jobs through ``jobs.claim_next``: every job is taken exactly once,
    by a claim that records this process as its owner."""
    settings = settings_on(db_url, tmp_path)
    ids = add_jobs(db_url, 20)
    start = threading.Barrier(4)
    taken: list[list[str]] = [[] for _ in range(4)]

    def worker(mine: list[str]) -> None:
        start.wait()
        while (job := jobs.claim_next(settings)) is not None:
            mine.append(job.id)

    threads = [threading.Thread(target=worker, args=(mine,)) for mine in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [job_id for mine in taken for job_id in mine]
    assert sorted(claimed) == sorted(ids)  # all of them, none twice
    with session_scope(db_url) as s:
        rows = s.scalars(sa.select(Job)).all()
        assert {(r.status, r.pid, r.owner["pid"], r.owner["host"]) for r in rows} == {
            ("running", os.getpid(), os.getpid(), claims.me()["host"])
        }


@pytest.mark.postgres
def test_on_postgresql_a_claimer_skips_a_row_being_claimed_instead_of_waiting(tmp_path: Path) -> None:
    """While another worker holds the oldest job's row (mid-claim, its transaction open), ``claim_next``
    takes the next job at once: ``FOR UPDATE SKIP LOCKED``, not a wait on the other's lock."""
    with fresh_database("postgresql", tmp_path) as url:
        first, second = add_jobs(url, 2)
        got: dict[str, Any] = {}
        with get_engine(url).connect() as other:
            tx = other.begin()
            other.execute(sa.select(Job.id).where(Job.id == first).with_for_update())
            claimer = threading.Thread(
                target=lambda: got.setdefault("job", jobs.claim_next(settings_on(url, tmp_path)))
            )
            claimer.start()
            claimer.join(10)
            waited = claimer.is_alive()
            tx.rollback()
        claimer.join(30)
        assert not waited, "claim_next waited for a row another worker had locked"
        assert got["job"].id == second


# A row of each claimable table that waits to be claimed, and the status it waits in.
CLAIMABLE = {
    "jobs": (lambda: Job(id="r", kind="sft"), "queued"),
    "eval_runs": (
        lambda: EvalRun(id="r", model_version="m", dataset="d", condition="oracle", status="interrupted"),
        "interrupted",
    ),  # fmt: skip
    "periodic_tasks": (lambda: PeriodicTask(name="r", status="idle"), "idle"),
}


@pytest.mark.parametrize("table", [Job, EvalRun, PeriodicTask], ids=lambda t: t.__tablename__)
def test_a_fenced_interrupt_loses_against_a_fresh_heartbeat(db_url: str, table: type) -> None:
    """A process that saw a heartbeat, decided the owner was gone and marks the row late changes nothing
    once the owner has beaten since; with the current heartbeat it wins, and a later beat of the old owner
    does not revive the row."""
    make_row, waiting = CLAIMABLE[table.__tablename__]
    with session_scope(db_url) as s:
        s.add(make_row())
    with session_scope(db_url) as s:
        assert claims.claim(s, table, "r", from_status=(waiting,))
        assert not claims.claim(s, table, "r", from_status=(waiting,))  # taken: a second claim fails
    with session_scope(db_url) as s:
        seen = s.get(table, "r").heartbeat_at
    time.sleep(0.002)
    with session_scope(db_url) as s:
        assert claims.heartbeat(s, table, "r")
    with session_scope(db_url) as s:
        assert not claims.mark_interrupted(s, table, "r", seen)
    with session_scope(db_url) as s:
        row = s.get(table, "r")
        assert row.status == "running"
        assert claims.mark_interrupted(s, table, "r", row.heartbeat_at)
    with session_scope(db_url) as s:
        assert not claims.heartbeat(s, table, "r")
        assert s.get(table, "r").status == "interrupted"


# Take-over of a killed owner -------------------------------------------------------------------------------

# Claims a training job, an interrupted eval run and a periodic task (which never ends), prints the job id
# once all three are held, then sleeps until killed.
OWNER = """
import sys, threading, time
from ragloop.config import Settings
from ragloop.store import claims
from ragloop.store.db import session_scope
from ragloop.store.models import EvalRun, PeriodicTask
from ragloop.training import jobs

url, home, run_id = sys.argv[1:4]
job = jobs.claim_next(Settings(home=home, database_url=url))
with session_scope(url) as s:
    assert claims.claim(s, EvalRun, run_id, from_status=("interrupted",))
stuck = claims.Task("stuck", 60, lambda: time.sleep(600))
threading.Thread(target=claims.run_if_due, args=(url, stuck), daemon=True).start()
while True:
    with session_scope(url) as s:
        task = s.get(PeriodicTask, "stuck")
        if task is not None and task.status == "running":
            break
    time.sleep(0.05)
print(job.id, flush=True)
time.sleep(600)
"""


def test_the_work_of_a_killed_owner_is_taken_over(db_url: str, tmp_path: Path) -> None:
    """A real process claims a job, an eval run and a periodic task; while it lives nothing is taken from
    it; once it is killed with SIGKILL (not yet reaped: a zombie is dead too), its job is interrupted
    (resumable), its eval run interrupted and continued here, and its periodic task run here."""
    from ragloop.evaluation.run import _take_over, mark_interrupted

    settings = settings_on(db_url, tmp_path)
    (job_id,) = add_jobs(db_url, 1)
    run_id = add_eval_run(db_url)
    proc = subprocess.Popen([sys.executable, "-c", OWNER, db_url, str(tmp_path), run_id],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        ready, _, _ = io_select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout.readline().strip() == job_id, "the owner process did not claim"
        ran_here: list[bool] = []
        stuck = claims.Task("stuck", 60, lambda: ran_here.append(True))

        # Alive: its claims hold, even with a heartbeat treated as stale at once.
        assert jobs.recover(settings, stale_after_s=0) == []
        assert mark_interrupted(settings) == 0
        assert not claims.run_if_due(db_url, stuck) and not ran_here

        proc.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)

        assert jobs.recover(settings, stale_after_s=0) == [job_id]
        job = jobs.get_job(settings, job_id)
        assert job.status == "interrupted" and "jobs resume" in job.error
        assert mark_interrupted(settings) == 1
        with session_scope(db_url) as s:
            run = s.get(EvalRun, run_id)
            s.expunge(run)
        taken = _take_over(settings, run, [], {"key": "k"})
        assert taken is not None and taken[0].owner == claims.me() and taken[0].status == "running"
        assert claims.run_if_due(db_url, stuck) and ran_here == [True]
        with session_scope(db_url) as s:
            task = s.get(PeriodicTask, "stuck")
            assert (task.status, task.owner, task.last_error) == ("idle", claims.me(), None)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# Periodic tasks ----------------------------------------------------------------------------------------------

# A server's scheduler, reduced to one task that records each run (pid, start, end) in a file. It starts
# scheduling when told to on stdin, so that two of them start at the same instant.
SCHEDULER = """
import os, sys, time
from ragloop.store.claims import Scheduler, Task

url, log, period, duration = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])

def tick():
    began = time.time()
    time.sleep(0.05)  # long enough for an overlapping run to show
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()} {began} {time.time()}\\n")

print("ready", flush=True)
sys.stdin.readline()
scheduler = Scheduler(url, [Task("tick", period, tick)], poll_s=0.01).start()
time.sleep(duration)
scheduler.stop()
"""


def test_a_periodic_task_runs_in_one_of_two_processes_per_period(db_url: str, tmp_path: Path) -> None:
    """Two processes (two servers on one database) schedule the same task, starting at the same instant and
    looking for due work every 10 ms: it runs once per period, never twice at once, never twice within
    one period."""
    get_engine(db_url)  # migrated before the race, so the two processes do not both migrate
    log = tmp_path / "runs.log"
    period, duration = 0.3, 1.6
    procs = [
        subprocess.Popen([sys.executable, "-c", SCHEDULER, db_url, str(log), str(period), str(duration)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    try:
        for proc in procs:
            ready, _, _ = io_select.select([proc.stdout], [], [], 60)
            assert ready and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.wait(60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = [line.split() for line in log.read_text().splitlines()]
    runs = sorted((float(began), float(ended)) for _, began, ended in lines)
    assert 3 <= len(runs) <= duration / period + 1, runs
    for (began, ended), (next_began, _) in zip(runs, runs[1:], strict=False):
        assert next_began >= ended, "two runs overlapped"
        assert next_began - began >= period - 0.02, "ran twice within one period"


def test_retention_expires_an_old_interaction_in_a_running_server(
    db_url: str, home: Settings, start_server: Any
) -> None:
    """A server that runs on and on still expires records as they pass ``retention_days``: an interaction
    older than that, recorded after the server started, is erased within one retention interval; a recent
    one is kept."""
    settings = home.model_copy(update={"database_url": db_url})
    server = start_server(settings, records={"retention_days": 30, "retention_interval_s": 0.2})
    with session_scope(db_url) as s:
        old = make_interaction(conversation_id="old", created_at=utcnow() - timedelta(days=31))
        recent = make_interaction(conversation_id="recent", created_at=utcnow() - timedelta(days=29))
        s.add_all([old, recent])
    with server.client() as client:
        deadline = time.monotonic() + 10
        while client.get(f"/api/interactions/{old.id}").status_code != 404:
            assert time.monotonic() < deadline, "the running server never expired the old interaction"
            time.sleep(0.05)
        assert client.get(f"/api/interactions/{recent.id}").status_code == 200
    with session_scope(db_url) as s:
        task = s.get(PeriodicTask, "retention")
        assert task.last_error is None and task.next_due > task.last_run_at


def test_migration_0004_moves_the_owner_into_its_column(db_url: str) -> None:
    """Homes made before 0004 kept the owner inside each record's JSON; upgrading moves it into ``owner``
    and leaves the rest of the JSON as it was (and a downgrade puts it back)."""
    engine = sa.create_engine(db_url)
    migrate = alembic_step(engine, db_url)

    worker = {"host": "box", "boot_id": "b", "pid": 41}
    migrate(command.upgrade, "0003")
    with engine.begin() as conn:
        tables = sa.MetaData()
        tables.reflect(conn, only=["jobs", "eval_runs"])
        now = utcnow()
        conn.execute(tables.tables["jobs"].insert(), [
            {"id": "j1", "kind": "sft", "status": "running", "config": {}, "created_at": now, "pid": 41,
             "progress": {"worker": worker, "step": 3}, "result": {}, "cancel_requested": False},
            {"id": "j2", "kind": "sft", "status": "queued", "config": {}, "created_at": now, "pid": None,
             "progress": {}, "result": {}, "cancel_requested": False},
        ])  # fmt: skip
        conn.execute(tables.tables["eval_runs"].insert(), [
            {"id": "e1", "created_at": now, "model_version": "m", "dataset": "d", "dataset_hash": "", "condition": "oracle",
             "config": {"owner": worker, "key": "k"}, "metrics": {}, "n_examples": 0, "status": "running", "wall_s": 0.0},
        ])  # fmt: skip
    migrate(command.upgrade, "head")
    with session_scope(db_url) as s:
        j1, j2, e1 = s.get(Job, "j1"), s.get(Job, "j2"), s.get(EvalRun, "e1")
        assert (j1.owner, j1.progress) == (worker, {"step": 3})
        assert (j2.owner, j2.progress) == (None, {})
        assert (e1.owner, e1.config) == (worker, {"key": "k"})
    migrate(command.downgrade, "0003")
    with engine.connect() as conn:
        tables = sa.MetaData()
        tables.reflect(conn, only=["jobs", "eval_runs"])
        jobs_, runs = tables.tables["jobs"], tables.tables["eval_runs"]
        assert conn.scalar(sa.select(jobs_.c.progress).where(jobs_.c.id == "j1")) == {
            "worker": worker,
            "step": 3,
        }
        assert conn.scalar(sa.select(runs.c.config).where(runs.c.id == "e1")) == {"owner": worker, "key": "k"}
    migrate(command.upgrade, "head")
    engine.dispose()
