"""Training jobs end to end: submit → a real worker process trains the tiny model → the adapter is registered
with its lineage; cancel; a worker killed with SIGKILL leaves a job that ``recover`` marks interrupted and
``resume`` finishes from its checkpoint; bad input is refused up front and registers nothing.

The job machinery's own states (progress, cancel at the next step) are also driven in-process with a
trivial trainer passed to ``run_job``, so they are tested without the cost of real training.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from ragloop.config import Settings
from ragloop.errors import NotFound, RagloopError
from ragloop.generation.models import resolve_model
from ragloop.store.db import session_scope
from ragloop.store.models import DatasetVersion, Job, ModelVersion
from ragloop.training import jobs
from test_lineage import FakeResult, make_adapter, make_dataset, run_cli

# One example per step (batch_size 1) over many epochs, so max_steps alone sets the length; small enough
# for seconds on two CPU cores, and checkpointing often, so a kill always leaves a checkpoint to resume from.
TINY_TRAIN: dict[str, Any] = {"max_steps": 6, "epochs": 50, "batch_size": 1, "save_every": 2, "eval_every": 3,
                              "logging_every": 1, "max_length": 512, "batch_tokens": 512, "lora_r": 4}  # fmt: skip
LONG_TRAIN: dict[str, Any] = {**TINY_TRAIN, "max_steps": 60, "eval_every": 30}


def count(settings: Settings, model: type) -> int:
    """Rows of a table; for ModelVersion only trained ones (a server registers the base model on start)."""
    q = select(func.count()).select_from(model)
    if model is ModelVersion:
        q = q.where(ModelVersion.adapter_path.is_not(None))
    with session_scope(settings.db_url) as s:
        return s.scalar(q) or 0


def flat(text: str) -> str:
    """CLI output with the terminal's line wrapping undone."""
    return " ".join(text.split())


def wait_until(condition: Any, timeout: float = 180.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def kill_group(pid: int) -> None:
    """SIGKILL the worker's whole process group (it and its training child), like a power cut."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    with pytest.raises(ChildProcessError):
        while True:  # reap our own child so it does not linger as a zombie
            os.waitpid(pid, 0)


@pytest.fixture(autouse=True)
def no_stray_worker(home: Settings) -> Any:
    """Whatever a test started, no worker of its home outlives it."""
    yield
    pid = jobs.worker_pid(home)
    if pid:
        kill_group(pid)


# In-process: the job machinery around a trivial trainer ------------------------------------------------


def fake_trainer(steps: int = 3, block: threading.Event | None = None) -> Any:
    """A trainer with train_sft's signature that writes a random adapter; with ``block`` it loops, reporting
    progress, until asked to stop (or ``block`` is set)."""

    def train(settings: Settings, dataset_id: str, output_dir: Path, config: Any, **kw: Any) -> FakeResult:
        base_dir, _ = resolve_model(kw["base"] or settings.generator.model, settings.model_cache_dir)
        step = 0
        while step < steps or (block is not None and not block.is_set()):
            if kw["should_stop"]():
                break
            step += 1
            kw["progress"]({"step": step, "total": steps, "loss": 3.0 / step, "tokens_per_s": 100.0})
            time.sleep(0.05 if block is None else 0.2)
        adapter = make_adapter(base_dir, output_dir / "adapter", seed=step)
        return FakeResult(adapter, {"train_loss": 1.0}, steps=step, tokens=10 * step)

    return train


def test_foreground_job_registers_its_adapter_with_lineage(home: Settings) -> None:
    dataset_id = make_dataset(home)
    seen: list[dict] = []
    job = jobs.submit(
        home, "sft", {"dataset": dataset_id, "name": "hand", "train": TINY_TRAIN}, foreground=True
    )
    assert job.status == "running" and job.pid == os.getpid()
    job = jobs.run_job(home, job.id, progress=seen.append, trainer=fake_trainer())

    assert job.status == "succeeded", job.error
    assert [p["step"] for p in seen] == [1, 2, 3] and seen[-1]["eta_s"] == 0.0
    assert job.result["model_version"] == "hand-v1" and job.result["steps"] == 3
    with session_scope(home.db_url) as s:
        mv = s.get(ModelVersion, "hand-v1")
        dv = s.get(DatasetVersion, dataset_id)
        assert mv.dataset_id == dataset_id and mv.meta["job_id"] == job.id
        assert mv.meta["dataset"]["content_hash"] == dv.content_hash
        assert mv.meta["hyperparameters"] == job.config["train"]
        assert mv.meta["hyperparameters"]["max_steps"] == TINY_TRAIN["max_steps"]
    log, _ = jobs.read_log(job)
    assert "progress" in log and "registered model version hand-v1" in log
    refused = run_cli(home, "jobs", "resume", job.id)
    assert refused.exit_code == 1 and "only interrupted, failed, cancelled" in flat(refused.output)
    shown = run_cli(home, "jobs", "show", job.id, "--json")
    assert json.loads(shown.output)["result"]["model_version"] == "hand-v1"


def test_foreground_cli_trains_for_real_and_registers(home: Settings) -> None:
    dataset_id = make_dataset(home)
    sets = [f"--set={k}={v}" for k, v in TINY_TRAIN.items()]
    result = run_cli(home, "train", "sft", "--dataset", dataset_id, "--foreground", "--name", "fg", *sets)
    assert result.exit_code == 0, result.output
    assert "model version fg-v1" in result.output
    with session_scope(home.db_url) as s:
        mv = s.get(ModelVersion, "fg-v1")
        assert mv.meta["metrics"]["steps"] == TINY_TRAIN["max_steps"] and mv.meta["metrics"]["eval_loss"]
        assert mv.meta["hyperparameters"]["lora_r"] == 4
        job = s.scalars(select(Job)).one()
        assert job.status == "succeeded" and job.pid == os.getpid()


def test_cancel_stops_a_running_job_at_its_next_step_and_registers_nothing(
    home: Settings, start_server
) -> None:
    job = jobs.submit(home, "sft", {"dataset": make_dataset(home), "train": TINY_TRAIN}, foreground=True)
    release = threading.Event()
    outcome: dict[str, Job] = {}
    runner = threading.Thread(
        target=lambda: outcome.setdefault("job", jobs.run_job(home, job.id, trainer=fake_trainer(2, release)))
    )
    runner.start()
    server = start_server(home)
    try:
        with server.client() as client:
            wait_until(lambda: client.get(f"/api/jobs/{job.id}").json()["progress"].get("step", 0) >= 2, 30)
            asked = client.post(f"/api/jobs/{job.id}/cancel")
            assert asked.status_code == 200 and asked.json()["status"] == "running"  # stops at its next step
            runner.join(timeout=30)
            assert client.get(f"/api/jobs/{job.id}").json()["status"] == "cancelled"
            again = client.post(f"/api/jobs/{job.id}/cancel")
            assert again.status_code == 409 and "already cancelled" in again.json()["error"]["message"]
    finally:
        release.set()
        runner.join()
    assert outcome["job"].status == "cancelled"
    assert count(home, ModelVersion) == 0

    queued = jobs.submit(home, "sft", {"dataset": make_dataset(home, seed=1), "train": TINY_TRAIN})
    result = run_cli(home, "jobs", "cancel", queued.id[:8])  # an id prefix is enough
    assert result.exit_code == 0 and "cancelled" in result.output  # never started: cancelled at once
    assert jobs.claim_next(home) is None


def test_bad_input_fails_up_front_and_registers_nothing(home: Settings, tmp_path: Path) -> None:
    good = make_dataset(home)
    empty = make_dataset(home, n_train=0, name="empty")
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text(json.dumps({"model_type": "t5"}))

    cases = [
        (("sft", {"dataset": "ds-nope"}), NotFound, "No dataset version"),
        (("sft", {"dataset": empty}), RagloopError, "no training examples"),
        (("dpo", {"dataset": good, "from": "sft-nope"}), NotFound, "does not exist"),
        (("dpo", {"dataset": good}), RagloopError, "--from"),
        (("sft", {"dataset": good, "base": str(tmp_path / "missing")}), RagloopError, "cannot be loaded"),
        (("sft", {"dataset": good, "base": str(not_a_model)}), RagloopError, "cannot be loaded"),
        (("sft", {"dataset": good, "train": {"no_such_knob": 1}}), RagloopError, "no_such_knob"),
        (("rlhf", {"dataset": good}), RagloopError, "Unknown job kind"),
    ]
    for (kind, config), error, message in cases:
        with pytest.raises(error, match=message):
            jobs.submit(home, kind, config)

    for args, message in [
        (["train", "sft", "--dataset", "ds-nope"], "No dataset version"),
        (["train", "sft", "--dataset", empty], "no training examples"),
        (["train", "dpo", "--dataset", good, "--from", "sft-nope"], "does not exist"),
        (["train", "sft", "--dataset", good, "--base", str(not_a_model)], "cannot be loaded"),
    ]:
        result = run_cli(home, *args)
        assert result.exit_code == 1, result.output
        assert message in flat(result.output), result.output
    assert count(home, Job) == 0 and count(home, ModelVersion) == 0
    assert jobs.worker_pid(home) is None  # nothing was started either


# Real worker processes ---------------------------------------------------------------------------------


def test_worker_trains_registers_and_a_dpo_job_continues_from_it(home: Settings, start_server) -> None:
    dataset_id = make_dataset(home)
    server = start_server(home)
    with server.client() as client:
        refused = client.post("/api/jobs", json={"kind": "sft", "dataset": "ds-nope"})
        assert refused.status_code == 404, refused.text
        typo = client.post(
            "/api/jobs", json={"kind": "sft", "dataset": dataset_id, "config": {"learning_rte": 1}}
        )
        assert typo.status_code == 400 and "learning_rte" in typo.json()["error"]["message"]
        created = client.post("/api/jobs", json={"kind": "sft", "dataset": dataset_id, "config": TINY_TRAIN})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        worker = wait_until(lambda: jobs.worker_pid(home), 30, "the worker the server started")
        try:
            job = jobs.wait_for(home, job_id, timeout_s=300)
            assert job.status == "succeeded", (job.error, jobs.read_log(job)[0][-3000:])
            listed = client.get("/api/jobs").json()["data"]
            assert [j["id"] for j in listed] == [job_id] and listed[0]["status"] == "succeeded"
            logs = client.get(f"/api/jobs/{job_id}/logs")
            assert logs.status_code == 200 and "registered model version" in logs.text
            sft_version = job.result["model_version"]
            shown = client.get(f"/api/models/{sft_version}").json()
            assert shown["dataset_id"] == dataset_id and shown["meta"]["job_id"] == job_id
            assert shown["meta"]["metrics"] and shown["meta"]["hyperparameters"]["max_steps"] == 6

            # DPO from the SFT version: lineage points back at it.
            dpo = client.post(
                "/api/jobs",
                json={"kind": "dpo", "dataset": dataset_id, "from": sft_version, "config": TINY_TRAIN},
            )
            assert dpo.status_code == 201, dpo.text
            job = jobs.wait_for(home, dpo.json()["id"], timeout_s=300)
            assert job.status == "succeeded", (job.error, jobs.read_log(job)[0][-3000:])
            with session_scope(home.db_url) as s:
                child = s.get(ModelVersion, job.result["model_version"])
                assert child.parent_id == sft_version and child.meta["kind"] == "dpo"
        finally:
            kill_group(worker)

    listed = run_cli(home, "jobs", "list")
    assert listed.exit_code == 0 and job_id[:12] in listed.output, listed.output
    as_json = run_cli(home, "jobs", "list", "--json")
    assert [j["status"] for j in json.loads(as_json.output)] == ["succeeded", "succeeded"]
    logs = run_cli(home, "jobs", "logs", job_id)
    assert logs.exit_code == 0 and "succeeded" in logs.output


def test_killed_worker_leaves_an_interrupted_job_that_resumes_from_its_checkpoint(home: Settings) -> None:
    job = jobs.submit(home, "sft", {"dataset": make_dataset(home), "train": LONG_TRAIN})
    worker = jobs.ensure_worker(home)
    assert worker is not None and jobs.ensure_worker(home) is None  # one worker per home
    checkpoints = Path(job.output_dir) / "train" / "checkpoints"
    try:
        # The file system, not the heartbeat (seconds behind), says when: kill right after a checkpoint.
        wait_until(lambda: any(checkpoints.glob("step-*")), 300, "a first checkpoint")
    finally:
        kill_group(worker)

    assert jobs.get_job(home, job.id).status == "running"  # nobody has noticed yet
    assert jobs.recover(home, stale_after_s=60) == []  # a fresh heartbeat is not proof of death
    time.sleep(jobs.STALE_S + 1)
    assert jobs.recover(home) == [job.id]
    job = jobs.get_job(home, job.id)
    assert job.status == "interrupted" and "jobs resume" in job.error
    assert count(home, ModelVersion) == 0

    resumed = run_cli(home, "jobs", "resume", job.id)
    assert resumed.exit_code == 0, resumed.output
    worker = jobs.worker_pid(home) or wait_until(lambda: jobs.worker_pid(home), 30, "a worker")
    try:
        job = jobs.wait_for(home, job.id, timeout_s=600)
    finally:
        kill_group(worker)
    assert job.status == "succeeded", (job.error, jobs.read_log(job)[0][-3000:])
    assert job.result["resumed_from"], job.result
    assert count(home, ModelVersion) == 1
    log, _ = jobs.read_log(job)
    assert "interrupted" in log and "resuming" in log
