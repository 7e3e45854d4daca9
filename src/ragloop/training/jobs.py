"""Training jobs: submit, run in the background one at a time, survive crashes, register the result.

A job is a ``Job`` row plus a folder ``<home>/data/jobs/<id>/`` holding its log (``job.log``) and the
trainer's checkpoints (``train/``). One worker per home (a file lock in ``data/``) claims queued jobs one
at a time and runs each in a child process (``python -m ragloop.training.worker --job ID``), so a trainer
that crashes or exhausts memory takes only its job down, and every job starts with fresh memory. The
process running the trainer heartbeats into the row every few seconds and stops at the next step once
``cancel_requested`` is set. A job whose process died with the machine is found by ``recover`` (stale
heartbeat, dead pid) and marked ``interrupted``; ``resume`` queues it again and the trainer continues from
its last checkpoint. On success the adapter is registered as a model version in the same commit that marks
the job ``succeeded``.

``job.config`` (what ``submit`` stores; ``validate_job`` builds it)::

    {"dataset": "ds-…", "base": "packaged" | folder, "base_hash": "…", "from": version | None,
     "reference_adapter": path | None, "name": str | None, "train": {TrainConfig fields}}
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, select, update

from ragloop.config import Settings
from ragloop.errors import ConfigError, NotFound, RagloopError
from ragloop.generation.models import resolve_model
from ragloop.proc import Periodic
from ragloop.store import claims
from ragloop.store.db import session_scope
from ragloop.store.models import DatasetVersion, Job, utcnow

KINDS = ("sft", "dpo", "embedder")  # embedder: retriever tuning (training/embedder.py)
ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
RESUMABLE = ("interrupted", "failed", "cancelled")
HEARTBEAT_S = 2.0
# A running job whose heartbeat is older than this and whose process is gone is interrupted. The margin
# lets a process that just exited record its own outcome first.
STALE_S = 10.0
CANCEL_GRACE_S = 60.0  # a trainer that ignores should_stop this long after a cancel is killed
WORKER_IDLE_EXIT_S = 300.0  # a worker started on demand exits after this long without work
LOCK_NAME = "worker.lock"

Trainer = Callable[..., Any]


class JobError(RagloopError):
    """A job cannot do what was asked in its current state (cancel a finished job, resume a running one)."""

    status = 409
    code = "job_state_conflict"


# Paths and identity ------------------------------------------------------------------------------------


def jobs_dir(settings: Settings) -> Path:
    return settings.data_dir / "jobs"


# Submitting --------------------------------------------------------------------------------------------


def validate_job(settings: Settings, kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """Check everything that can be checked before training starts and return the job's full config.

    ``config`` keys: ``dataset`` (required), ``base`` (model; default the configured generator, for DPO
    the ``from`` version's base), ``from`` (DPO: the version to start from), ``name``, ``config_path``
    (a train.yaml) and ``train`` (overrides of TrainConfig fields). Fails with a message saying what to do
    on an unknown kind, dataset or version, an empty dataset, a bad train config, or a base model that
    cannot be loaded, so a bad request never becomes a job that fails an hour later."""
    if kind not in KINDS:
        raise RagloopError(f"Unknown job kind {kind!r}: use one of {', '.join(KINDS)}.")
    if kind == "embedder":
        from ragloop.training.embedder import validate_embedder_job

        return validate_embedder_job(settings, config)
    config = dict(config or {})
    unknown = set(config) - {"dataset", "base", "from", "name", "config_path", "train"}
    if unknown:
        raise RagloopError(f"Unknown job settings: {', '.join(sorted(unknown))}.")
    dataset_id = config.get("dataset")
    if not dataset_id:
        raise RagloopError(
            "Name the dataset version to train on: --dataset ds-… (see `ragloop dataset list`)."
        )
    from_id = config.get("from")
    if kind == "dpo" and not from_id:
        raise RagloopError(
            "DPO starts from a trained model: --from MODEL_VERSION (see `ragloop models list`)."
        )
    if kind == "sft" and from_id:
        raise RagloopError("--from is for DPO; SFT starts from the base model (--base).")
    name = config.get("name")
    if name is not None:
        from ragloop.training.lineage import NAME

        if not NAME.match(str(name)):
            raise RagloopError(f"Model name {name!r} must be letters, digits, '.', '_' or '-'.")

    base = config.get("base")
    reference_adapter = None
    with session_scope(settings.db_url) as s:
        dv = s.get(DatasetVersion, dataset_id)
        if dv is None:
            raise NotFound(f"No dataset version {dataset_id!r}; see `ragloop dataset list`.")
        if dv.contains_erased:
            raise RagloopError(
                f"Dataset {dataset_id} contains records erased since it was built; rebuild it first: "
                f"{dv.command or 'ragloop dataset build'}"
            )
        if from_id:
            from ragloop.store.aliases import resolve

            parent, _ = resolve(s, from_id)
            from_id = parent.id
            if base and base != parent.base_model:
                raise RagloopError(
                    f"--base {base} differs from the base of {parent.id} ({parent.base_model}); drop --base."
                )
            base = parent.base_model
            reference_adapter = parent.adapter_path
            parent_hash = parent.base_hash
    _check_examples(settings, dataset_id, kind)

    base = base or settings.generator.model
    base_hash = check_base_model(settings, base)
    if from_id and base_hash != parent_hash:
        raise RagloopError(
            f"The base weights of {from_id} changed on this machine; it cannot be trained further."
        )

    from ragloop.training.config import load_train_config

    config_path = config.get("config_path")
    if config_path and not Path(config_path).is_file():
        raise RagloopError(f"Training config {config_path} does not exist.")
    try:
        train = load_train_config(Path(config_path) if config_path else None, **(config.get("train") or {}))
    except ConfigError as exc:  # the request's fault, not the server's: a 400, not ConfigError's 500
        raise RagloopError(str(exc)) from exc
    except (TypeError, ValueError, OSError) as exc:
        raise RagloopError(f"Invalid training config: {exc}") from exc
    return {
        "dataset": dataset_id,
        "base": base,
        "base_hash": base_hash,
        "from": from_id,
        "reference_adapter": reference_adapter,
        "name": name,
        "train": json.loads(json.dumps(asdict(train) if is_dataclass(train) else dict(train), default=str)),
    }


def _check_examples(settings: Settings, dataset_id: str, kind: str) -> None:
    from ragloop.datasets.build import load_examples

    train = load_examples(settings, dataset_id, "train")["train"]
    if not train:
        raise RagloopError(
            f"Dataset {dataset_id} has no training examples; build a bigger one (`ragloop dataset build`)."
        )
    if kind == "dpo":
        from ragloop.datasets.build import dpo_pairs

        if not dpo_pairs(train):
            raise RagloopError(
                f"Dataset {dataset_id} yields no preference pairs (no rejected or misled answers) for DPO."
            )


def check_base_model(settings: Settings, base: str) -> str:
    """The base's content hash, after checking that it is a causal LM whose config and tokenizer load and
    whose folder holds weights (cheap: no weights are read), so a typo or a folder of the wrong kind fails
    at submit time rather than in the worker."""

    def refuse(why: str) -> RagloopError:
        return RagloopError(f"Base model {base!r} cannot be loaded: {why}")

    try:
        model_dir, base_hash = resolve_model(base, settings.model_cache_dir)
    except ConfigError as exc:
        raise refuse(str(exc)) from exc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        cfg = AutoConfig.from_pretrained(str(model_dir))
    except Exception as exc:
        raise refuse(f"its config in {model_dir} does not load ({exc}).") from exc
    if cfg.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise refuse(f"it is a {cfg.model_type!r} model, not a causal language model.")
    if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin")):
        raise refuse(f"{model_dir} holds no weights (*.safetensors or *.bin).")
    try:
        AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:
        raise refuse(f"its tokenizer in {model_dir} does not load ({exc}).") from exc
    return base_hash


def submit(settings: Settings, kind: str, config: dict[str, Any], *, foreground: bool = False) -> Job:
    """Validate and record a training job. Queued for the worker (call ``ensure_worker`` to make sure one
    runs); with ``foreground`` it is claimed by this process instead, for ``run_job`` to run here."""
    full = validate_job(settings, kind, config)
    job = Job(kind=kind, config=full)
    with session_scope(settings.db_url) as s:
        s.add(job)
        s.flush()
        folder = jobs_dir(settings) / job.id
        job.output_dir = str(folder)
        job.log_path = str(folder / "job.log")
        if foreground:
            job.status, job.pid, job.started_at = "running", os.getpid(), utcnow()
            job.heartbeat_at, job.owner = job.started_at, claims.me()  # created claimed by this process
    folder.mkdir(parents=True, exist_ok=True)
    _log(job, f"submitted {kind} job {job.id}: {json.dumps(full, default=str)}")
    return job


# Reading -----------------------------------------------------------------------------------------------


def get_job(settings: Settings, job_id: str) -> Job:
    """A job by id or unambiguous id prefix."""
    with session_scope(settings.db_url) as s:
        job = s.get(Job, job_id)
        if job is not None:
            return job
        matches = list(s.scalars(select(Job).where(Job.id.like(f"{job_id}%")).limit(2))) if job_id else []
        if len(matches) == 1:
            return matches[0]
    raise NotFound(f"No job {job_id!r}; see `ragloop jobs list`.")


def list_jobs(settings: Settings, limit: int = 50, status: str | None = None) -> list[Job]:
    """Jobs, newest first (after ``recover``, so a dead worker's job does not show as running)."""
    recover(settings)
    with session_scope(settings.db_url) as s:
        q = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if status:
            q = q.where(Job.status == status)
        return list(s.scalars(q))


def job_dict(job: Job) -> dict[str, Any]:
    """A job as JSON-ready data (CLI ``--json`` and the HTTP API share it)."""
    data = {c.name: getattr(job, c.name) for c in Job.__table__.columns}
    for key in ("created_at", "started_at", "finished_at", "heartbeat_at"):
        if data[key] is not None:
            data[key] = data[key].isoformat() + "Z"
    return data


def read_log(job: Job, offset: int = 0, tail: int | None = None) -> tuple[str, int]:
    """(text, next offset) of the job's log from ``offset``, or its last ``tail`` bytes."""
    path = Path(job.log_path or "")
    if not path.is_file():
        return "", offset
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        start = max(0, size - tail) if tail is not None else min(offset, size)
        fh.seek(start)
        data = fh.read()
    return data.decode("utf-8", "replace"), start + len(data)


def _log(job: Job, message: str) -> None:
    """Append one timestamped line to the job's log (O_APPEND: safe beside the child's own output)."""
    if not job.log_path:
        return
    path = Path(job.log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f"[{utcnow().isoformat(timespec='seconds')}Z] {message}\n")


# Cancel, recover, resume -------------------------------------------------------------------------------


def cancel(settings: Settings, job_id: str) -> Job:
    """Stop a job: a queued or interrupted one at once; a running one at its trainer's next step (its
    worker kills it if it has not stopped ``CANCEL_GRACE_S`` later). Nothing is registered."""
    job = get_job(settings, job_id)
    with session_scope(settings.db_url) as s:
        now = utcnow()
        done = s.execute(
            update(Job)
            .where(Job.id == job.id, Job.status.in_(("queued", "interrupted")))
            .values(status="cancelled", finished_at=now, cancel_requested=True)
        ).rowcount
        if not done:
            asked = s.execute(
                update(Job).where(Job.id == job.id, Job.status == "running").values(cancel_requested=True)
            ).rowcount
            if not asked:
                raise JobError(f"Job {job.id} already {job.status}; nothing to cancel.")
    job = get_job(settings, job.id)
    _log(job, "cancel requested" if job.status == "running" else "cancelled")
    return job


def recover(settings: Settings, *, stale_after_s: float = STALE_S) -> list[str]:
    """Mark ``interrupted`` every running job whose process is gone: heartbeat older than
    ``stale_after_s`` and a dead pid (same machine, same boot), or a heartbeat silent for
    ``REMOTE_STALE_S`` from another machine (``claims.interrupt_dead``). Returns their ids. Safe to call
    anywhere, any time."""

    def why(job: Job) -> dict[str, Any]:
        return {
            "error": f"Its process (pid {job.pid}) stopped without finishing (crash, kill or reboot); "
            f"`ragloop jobs resume {job.id}` continues from the last checkpoint."
        }

    with session_scope(settings.db_url) as s:
        marked = claims.interrupt_dead(s, Job, stale_after_s=stale_after_s, values=why)
    for job in marked:
        _log(job, f"interrupted: process {job.pid} is gone, last heartbeat {claims.silent_s(job):.0f} s ago")
    return [job.id for job in marked]


def resume(settings: Settings, job_id: str) -> Job:
    """Queue an interrupted (or failed, or cancelled) job again in its own folder: the trainer resumes
    from the last checkpoint there. Call ``ensure_worker`` afterwards to run it."""
    recover(settings)
    job = get_job(settings, job_id)
    with session_scope(settings.db_url) as s:
        changed = s.execute(
            update(Job)
            .where(Job.id == job.id, Job.status.in_(RESUMABLE))
            .values(
                status="queued", cancel_requested=False, error=None, finished_at=None, pid=None, owner=None
            )
        ).rowcount
    if not changed:
        raise JobError(
            f"Job {job.id} is {job.status}; only {', '.join(RESUMABLE)} jobs can be resumed."
            + (" It is still running." if job.status == "running" else "")
        )
    job = get_job(settings, job.id)
    _log(job, "queued again to resume from its last checkpoint")
    return job


# Running one job ---------------------------------------------------------------------------------------


class _Heartbeat:
    """Writes heartbeat and latest progress, and notices a cancel request. ``proc.Periodic`` calls ``beat``
    every ``HEARTBEAT_S`` from a thread of its own, so a long step (loading, evaluation, saving) never looks
    like a dead worker; ``run_job`` also calls it at the end so a cancel during the last step counts."""

    def __init__(self, settings: Settings, job_id: str):
        self.db_url = settings.db_url
        self.job_id = job_id
        self.latest: dict[str, Any] = {}
        self.cancelled = threading.Event()
        self.lock = threading.Lock()

    def beat(self) -> None:
        with self.lock:
            latest = dict(self.latest)
        with session_scope(self.db_url) as s:
            claims.heartbeat(s, Job, self.job_id, {"progress": latest} if latest else None)
            if s.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)):
                self.cancelled.set()

    def update(self, progress: dict[str, Any]) -> None:
        with self.lock:
            self.latest.update(progress)


def _with_eta(progress: dict[str, Any], started: float, first_step: int | None) -> dict[str, Any]:
    """Fill in elapsed and eta seconds when the trainer reports a step and a total but not those."""
    out = dict(progress)
    step, total = progress.get("step"), progress.get("total", progress.get("max_steps"))
    elapsed = time.monotonic() - started
    out.setdefault("elapsed_s", round(elapsed, 1))
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        out.setdefault("total", total)
        done = step - (first_step or 0)
        if step >= total:
            out["eta_s"] = 0.0
        elif done > 0:
            out.setdefault("eta_s", round(elapsed / done * (total - step), 1))
    return out


def _trainer(kind: str) -> Trainer:
    if kind == "embedder":
        from ragloop.training.embedder import train_embedder

        return train_embedder
    if kind == "sft":
        from ragloop.training.sft import train_sft

        return train_sft
    from ragloop.training.dpo import train_dpo

    return train_dpo


def run_job(
    settings: Settings,
    job_id: str,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    trainer: Trainer | None = None,
) -> Job:
    """Run a claimed (``running``) job in this process: heartbeat, train, then register the adapter and
    mark the job ``succeeded`` in one commit, or record ``cancelled`` / ``failed`` / ``interrupted``
    (Ctrl-C or SIGTERM: resumable). ``progress`` also receives every progress dict (the CLI's bar);
    ``trainer`` replaces ``train_sft``/``train_dpo`` (tests of the job machinery only)."""
    job = get_job(settings, job_id)
    if job.status != "running":
        raise JobError(f"Job {job.id} is {job.status}, not claimed for running.")
    with session_scope(settings.db_url) as s:  # the worker hands its claim to this (child) process
        taken = claims.claim(
            s, Job, job.id, from_status=("running",), values={"pid": os.getpid(), "progress": {}}
        )
    if not taken:
        raise JobError(f"Job {job.id} is {get_job(settings, job.id).status}, not claimed for running.")
    cfg = job.config
    heartbeat = _Heartbeat(settings, job.id)
    ticker = Periodic(HEARTBEAT_S, heartbeat.beat, name=f"heartbeat-{job.id[:8]}").start()
    started = time.monotonic()
    first_step: list[int | None] = [None]
    last_logged = [0.0]

    def on_progress(data: dict[str, Any]) -> None:
        if first_step[0] is None and isinstance(data.get("step"), int):
            # a resumed run's rate counts only its own steps; a "start" event names where it starts
            first_step[0] = data["step"] - (0 if data.get("event") == "start" else 1)
        data = _with_eta(data, started, first_step[0])
        heartbeat.update(data)
        now = time.monotonic()
        if now - last_logged[0] >= 1.0 or data.get("event") in ("start", "eval", "checkpoint", "done"):
            last_logged[0] = now
            _log(job, "progress " + json.dumps(data, default=str))
        if progress is not None:
            progress(data)

    out = Path(job.output_dir or jobs_dir(settings) / job.id) / "train"
    attempt = "resuming" if out.exists() and any(out.iterdir()) else "starting"
    _log(job, f"{attempt} {job.kind} training in process {os.getpid()} → {out}")
    try:
        if job.kind == "embedder":
            from ragloop.training.embedder import embedder_config

            train_config = embedder_config(cfg.get("train"))
        else:
            from ragloop.training.config import load_train_config

            train_config = load_train_config(None, **cfg.get("train", {}))
        train = trainer or _trainer(job.kind)
        kwargs: dict[str, Any] = dict(
            base=cfg.get("base"),
            resume=True,
            progress=on_progress,
            should_stop=heartbeat.cancelled.is_set,
        )
        if job.kind == "dpo":
            ref = cfg.get("reference_adapter")
            kwargs["reference_adapter"] = Path(ref) if ref else None
        result = train(settings, cfg["dataset"], out, train_config, **kwargs)
        with contextlib.suppress(Exception):
            heartbeat.beat()  # a cancel that arrived during the last step still counts
        return _finish(settings, job, result, cancelled=heartbeat.cancelled.is_set())
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            heartbeat.beat()
        if heartbeat.cancelled.is_set():  # the worker terminated a trainer that ignored the cancel
            _set_status(settings, job, "cancelled", None)
        else:
            message = f"Stopped by Ctrl-C or SIGTERM; `ragloop jobs resume {job.id}` continues it."
            _set_status(settings, job, "interrupted", message)
        raise
    except BaseException as exc:
        _log(job, "failed:\n" + "".join(traceback.format_exception(exc)))
        with contextlib.suppress(Exception):
            heartbeat.beat()
        if heartbeat.cancelled.is_set():
            return _set_status(settings, job, "cancelled", None)
        message = str(exc) if isinstance(exc, RagloopError) else f"{type(exc).__name__}: {exc}"
        _set_status(settings, job, "failed", f"{message} (see `ragloop jobs logs {job.id}`)")
        if isinstance(exc, Exception):
            return get_job(settings, job.id)
        raise
    finally:
        ticker.stop(timeout=HEARTBEAT_S * 3)


def _result_dict(result: Any) -> dict[str, Any]:
    keys = ("adapter_dir", "metrics", "steps", "tokens", "resumed_from")
    keys += ("model_dir", "dim", "train_s") if hasattr(result, "model_dir") else ()  # an embedder run
    data = {k: getattr(result, k, None) for k in keys}
    return json.loads(json.dumps(data, default=str))


def _finish(settings: Settings, job: Job, result: Any, *, cancelled: bool) -> Job:
    if cancelled:
        _log(job, "cancelled: stopped at the trainer's next step; nothing registered")
        return _set_status(settings, job, "cancelled", None, result=_result_dict(result))
    from ragloop.training.embedder import register_embedder
    from ragloop.training.lineage import register_model

    with session_scope(settings.db_url) as s:
        row = s.get(Job, job.id)
        assert row is not None
        if row.status != "running":  # someone else decided its fate (recover raced a slow exit)
            _log(job, f"finished training but the job is {row.status}; not registering")
            return row
        if row.kind == "embedder":
            mv: Any = register_embedder(settings, row, result, s)
            registered = {"embedder_version": mv.id}
        else:
            mv = register_model(settings, row, result=result, session=s)
            registered = {"model_version": mv.id}
        now = utcnow()
        done = {"finished_at": now, "heartbeat_at": now, "error": None,
                "result": {**_result_dict(result), **registered}}  # fmt: skip
        if not claims.release(s, Job, job.id, "succeeded", done):  # lost the row since the check above
            s.rollback()
            _log(job, "finished training but the job is no longer running; not registering")
            return get_job(settings, job.id)
    _log(job, f"succeeded: registered {'embedder' if job.kind == 'embedder' else 'model'} version {mv.id}")
    return get_job(settings, job.id)


def _set_status(
    settings: Settings, job: Job, status: str, error: str | None, result: dict[str, Any] | None = None
) -> Job:
    values: dict[str, Any] = {"error": error, "finished_at": utcnow() if status in FINISHED else None}
    if result is not None:
        values["result"] = result
    with session_scope(settings.db_url) as s:
        claims.release(s, Job, job.id, status, values)
    _log(job, f"{status}" + (f": {error}" if error else ""))
    return get_job(settings, job.id)


# The worker --------------------------------------------------------------------------------------------


def _lock_path(settings: Settings) -> Path:
    return settings.data_dir / LOCK_NAME


def _try_lock(settings: Settings) -> IO[str] | None:
    """The home's worker lock, or None when another worker holds it. flock is released by the kernel
    when its holder dies, so a crashed worker never blocks the next one."""
    path = _lock_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def worker_pid(settings: Settings) -> int | None:
    """The pid of the worker holding this home's lock, or None when no worker runs."""
    fh = _try_lock(settings)
    if fh is not None:
        fh.close()
        return None
    try:
        return int(_lock_path(settings).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def claim_next(settings: Settings) -> Job | None:
    """Atomically take the oldest queued job for this process (``claims.claim_next``: ``FOR UPDATE SKIP
    LOCKED`` on PostgreSQL plus a conditional update): two workers sharing a database never take the same
    job."""
    with session_scope(settings.db_url) as s:
        job_id = claims.claim_next(
            s,
            Job,
            from_status=("queued",),
            where=(Job.kind.in_(KINDS),),
            order_by=(Job.created_at, Job.id),
            values={
                "pid": os.getpid(),
                "started_at": func.coalesce(Job.started_at, utcnow()),
                "progress": {},
            },
        )
    return None if job_id is None else get_job(settings, job_id)


def _supervise(settings: Settings, job: Job, lock: IO[str]) -> None:
    """Run one claimed job in a child process and wait for it; enforce a cancel the trainer ignores and
    record a crash the child could not record itself."""
    log_path = Path(job.log_path or jobs_dir(settings) / job.id / "job.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "ragloop.training.worker", "--home", str(settings.home), "--job", job.id]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    with log_path.open("ab") as log:
        # The child keeps the home's lock open too, so a worker killed alone cannot let a second worker
        # start another job beside a training that is still running.
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            pass_fds=(lock.fileno(),),
        )
    cancel_seen: float | None = None
    while proc.poll() is None:
        time.sleep(1.0)
        if cancel_seen is None:
            with session_scope(settings.db_url) as s:
                row = s.get(Job, job.id)
                if row is not None and row.cancel_requested:
                    cancel_seen = time.monotonic()
        elif time.monotonic() - cancel_seen > CANCEL_GRACE_S:
            _log(job, f"cancel: the trainer did not stop within {CANCEL_GRACE_S:.0f} s; terminating it")
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _set_status(settings, job, "cancelled", None)
            return
    if proc.returncode != 0:
        row = get_job(settings, job.id)
        if row.status == "running":
            _set_status(
                settings,
                job,
                "failed",
                f"The training process exited with code {proc.returncode}; see the log.",
            )


def _has_queued(settings: Settings) -> bool:
    with session_scope(settings.db_url) as s:
        return s.scalars(select(Job.id).where(Job.status == "queued").limit(1)).first() is not None


def run_worker(
    settings: Settings,
    once: bool = False,
    *,
    poll_s: float = 1.0,
    idle_exit_s: float | None = None,
    lock_fd: int | None = None,
) -> int:
    """Run queued jobs one at a time until stopped; returns how many ran. ``once``: run what is queued,
    then exit. ``idle_exit_s``: exit after that long without work (on-demand workers). ``lock_fd``: the
    home's lock, already taken by ``ensure_worker`` and inherited. Returns 0 at once when another worker
    already serves this home."""
    lock = os.fdopen(lock_fd, "a+") if lock_fd is not None else _try_lock(settings)
    if lock is None:
        return 0
    ran = 0
    try:
        recover(settings)
        idle_since = time.monotonic()
        while True:
            job = claim_next(settings)
            if job is not None:
                _supervise(settings, job, lock)
                ran += 1
                idle_since = time.monotonic()
                continue
            if once:
                break
            if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                # Let go of the lock before the last look: a job submitted after this look finds no
                # worker and starts one; a job submitted before it is seen here.
                lock.close()
                lock = None
                if not _has_queued(settings):
                    break
                lock = _try_lock(settings)
                if lock is None:
                    break
                idle_since = time.monotonic()
                continue
            time.sleep(poll_s)
    finally:
        if lock is not None:
            lock.close()
    return ran


def ensure_worker(settings: Settings, *, idle_exit_s: float = WORKER_IDLE_EXIT_S) -> int | None:
    """Start a detached worker for this home unless one runs; returns the new worker's pid or None.

    The lock is taken here and handed to the worker (an inherited descriptor), so two calls racing each
    other cannot both start one. The worker runs in a session of its own: it outlives the CLI command or
    server that started it, a terminal's Ctrl-C does not reach it, and it exits after ``idle_exit_s``
    without work."""
    lock = _try_lock(settings)
    if lock is None:
        return None
    try:
        folder = jobs_dir(settings)
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "ragloop.training.worker", "--home", str(settings.home),
               "--idle-exit", str(idle_exit_s), "--lock-fd", str(lock.fileno())]  # fmt: skip
        with (folder / "worker.log").open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(lock.fileno(),),
                env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
            )
        lock.seek(0)
        lock.truncate()
        lock.write(str(proc.pid))
        lock.flush()
    finally:
        lock.close()  # the worker's inherited descriptor keeps the lock
    return proc.pid


def wait_for(settings: Settings, job_id: str, timeout_s: float = 600.0, poll_s: float = 0.5) -> Job:
    """Block until a job leaves queued/running (tests, scripts); the job as it ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = get_job(settings, job_id)
        if job.status not in ACTIVE:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"Job {job_id} still {job.status} after {timeout_s:.0f} s.")
        time.sleep(poll_s)


def install_sigterm_handler() -> None:
    """SIGTERM raises KeyboardInterrupt, so a stopped job records itself ``interrupted`` at once."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


__all__ = [
    "JobError",
    "cancel",
    "claim_next",
    "ensure_worker",
    "get_job",
    "job_dict",
    "list_jobs",
    "read_log",
    "recover",
    "resume",
    "run_job",
    "run_worker",
    "submit",
    "validate_job",
    "wait_for",
    "worker_pid",
]
