"""The HTTP door onto training jobs and the model registry (admin key when auth is on).

``GET/POST /api/jobs``, ``GET /api/jobs/{id}``, ``GET /api/jobs/{id}/logs``, ``POST /api/jobs/{id}/cancel``
and ``/resume``; ``GET /api/models/{id}``, ``POST /api/models/{id}/promote``, ``POST /api/models/rollback``;
``GET/POST /api/ab``, ``GET /api/ab/{id}`` (and ``/snapshots``), ``POST /api/ab/{id}/stop`` and ``/promote``;
``GET /api/drift``, ``POST /api/drift/run``, ``GET /api/alerts``, ``POST /api/alerts/{id}/ack`` (those two
groups: unscoped admin keys only). Routes call the same functions as ``ragloop train | jobs | models | ab |
drift | alerts``. A
release (``generation.release``) loads the version *before* moving the alias, so a broken adapter is refused
with the alias untouched; through this server it loads into the serving model, so the first request after a
promotion does not pay the load.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from ragloop.config import Settings
from ragloop.errors import PermissionDenied
from ragloop.generation import release
from ragloop.ingest.embed import embedder_id
from ragloop.monitoring import ab, alerts, drift
from ragloop.serve.auth import OPEN, Caller, authenticate, require_admin
from ragloop.serve.schemas import errors
from ragloop.store import aliases, experiments
from ragloop.training import jobs
from ragloop.training.lineage import model_record

_bearer = HTTPBearer(auto_error=False, description="An admin API key from `ragloop keys create --admin`.")


def admin_caller(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Caller:
    """The caller, who must hold an admin key when the app enforces keys (``app.state.auth``)."""
    if not request.app.state.auth:
        return OPEN
    caller = authenticate(request.app.state.settings.db_url, credentials.credentials if credentials else None)
    require_admin(caller)
    return caller


# Every route checks the admin key first (401, 403) and may fail unexpectedly (500); each adds its own.
router = APIRouter(tags=["admin"], dependencies=[Depends(admin_caller)], responses=errors(401, 403, 500))


def _settings(request: Request) -> Settings:
    return request.app.state.settings


class JobRequest(BaseModel):
    """``POST /api/jobs``: what ``ragloop train sft|dpo`` takes. ``config`` overrides TrainConfig fields."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: str = Field(description="sft or dpo", json_schema_extra={"enum": list(jobs.KINDS)})
    dataset: str = Field(description="dataset version id")
    config: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides")
    from_: str | None = Field(default=None, alias="from", description="DPO: model version to start from")
    base: str | None = None
    name: str | None = None


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = aliases.DEFAULT_ALIAS


class PromoteRequest(AliasRequest):
    embedder: str | None = Field(
        default=None,
        description="embedder version the alias serves with (`base`: the base embedder); omitted: the "
        "alias keeps the embedder it serves",
    )


def _embedder(name: str | None) -> str | None:
    return aliases.KEEP if name is None else embedder_id(name)


# Jobs --------------------------------------------------------------------------------------------------

_LOG_HEADERS = {
    "X-Next-Offset": {
        "description": "The byte offset to ask for next, to follow the log.",
        "required": True,
        "schema": {"type": "integer"},
    },
    "X-Job-Status": {"description": "The job's status.", "required": True, "schema": {"type": "string"}},
}
_LOG_200 = {
    "description": "The log text.",
    "content": {"text/plain": {"schema": {"type": "string"}}},
    "headers": _LOG_HEADERS,
}


@router.get("/api/jobs", responses=errors(400))
def list_jobs(request: Request, status: str | None = None, limit: int = 50) -> dict:
    """Jobs, newest first; a job whose worker died shows as ``interrupted``."""
    rows = jobs.list_jobs(_settings(request), limit=max(1, min(limit, 500)), status=status)
    return {"object": "list", "data": [jobs.job_dict(j) for j in rows]}


@router.post("/api/jobs", status_code=201, responses=errors(400, 404, 413))
async def create_job(body: JobRequest, request: Request) -> dict:
    """Validate (unknown or empty dataset, unknown ``from``, unloadable base: 4xx, nothing queued), queue
    the job and make sure a worker runs it."""
    settings = _settings(request)
    config = {"dataset": body.dataset, "from": body.from_, "base": body.base, "name": body.name}
    config = {k: v for k, v in config.items() if v is not None} | {"train": body.config}

    def submit() -> dict:
        job = jobs.submit(settings, body.kind, config)
        jobs.ensure_worker(settings)
        return jobs.job_dict(job)

    return await anyio.to_thread.run_sync(submit)


@router.get("/api/jobs/{job_id}", responses=errors(404))
def get_job(job_id: str, request: Request) -> dict:
    settings = _settings(request)
    jobs.recover(settings)
    return jobs.job_dict(jobs.get_job(settings, job_id))


@router.get(
    "/api/jobs/{job_id}/logs",
    # Response, not PlainTextResponse: FastAPI would give the errors' schema text/plain too.
    response_class=Response,
    responses={200: _LOG_200} | errors(400, 404),
)
def job_logs(job_id: str, request: Request, offset: int = 0, tail: int | None = None) -> PlainTextResponse:
    """The job's log as text, from byte ``offset`` (or its last ``tail`` bytes); the ``X-Next-Offset``
    header says where to continue, so a client can follow it."""
    job = jobs.get_job(_settings(request), job_id)
    text, next_offset = jobs.read_log(job, offset=max(0, offset), tail=tail)
    return PlainTextResponse(text, headers={"X-Next-Offset": str(next_offset), "X-Job-Status": job.status})


@router.post("/api/jobs/{job_id}/cancel", responses=errors(404, 409))
def cancel_job(job_id: str, request: Request) -> dict:
    return jobs.job_dict(jobs.cancel(_settings(request), job_id))


@router.post("/api/jobs/{job_id}/resume", responses=errors(404, 409))
def resume_job(job_id: str, request: Request) -> dict:
    settings = _settings(request)
    job = jobs.resume(settings, job_id)
    jobs.ensure_worker(settings)
    return jobs.job_dict(job)


# Models ------------------------------------------------------------------------------------------------


@router.get("/api/models/{model_id}", responses=errors(404))
def get_model(model_id: str, request: Request) -> dict:
    """A version (or the version an alias points at) with its lineage, metrics and aliases."""
    return model_record(_settings(request).db_url, model_id)


# Both run in the thread pool (plain ``def``): loading an adapter takes a while and must not block the loop.
@router.post("/api/models/rollback", responses=errors(400, 404, 409, 413, 502))
def rollback(request: Request, body: AliasRequest | None = None) -> dict:
    """Point the alias back at its previous version (served from the next request on), once that version
    is loaded; if it cannot be, the alias does not move."""
    alias = (body or AliasRequest()).alias
    moved = release.rollback(
        _settings(request), alias, note="api", load=request.app.state.assistant.backend_for
    )
    return {
        "alias": alias, "from": moved.previous, "model_version": moved.model_version,
        "embedder_version": moved.embedder_version, "from_embedder": moved.previous_embedder,
    }  # fmt: skip


@router.post("/api/models/{model_id}/promote", responses=errors(400, 404, 409, 413, 502))
def promote(model_id: str, request: Request, body: PromoteRequest | None = None) -> dict:
    """Serve ``model_id`` under the alias (default ``production``) from the next request on, without a
    restart, with the embedder named (else the alias's). The adapter is loaded first, and the embedder
    checked against the knowledge base; if either fails, the alias does not move."""
    body = body or PromoteRequest()
    moved = release.promote(
        _settings(request), model_id, body.alias, note="api", load=request.app.state.assistant.backend_for,
        embedder=_embedder(body.embedder),
    )  # fmt: skip
    return {
        "alias": body.alias, "model_version": moved.model_version, "previous": moved.previous,
        "embedder_version": moved.embedder_version, "previous_embedder": moved.previous_embedder,
    }  # fmt: skip


# A/B experiments ---------------------------------------------------------------------------------------


def unscoped_admin(caller: Caller = Depends(admin_caller)) -> Caller:
    """An experiment changes what every user of an alias is served, whatever collections they read, so an
    admin key scoped to some collections may not start, stop or promote one (nor read its records)."""
    if caller.collections is not None:
        raise PermissionDenied(
            "A/B experiments need an admin key with no collection scope: they change what every user is "
            "served. Create one with `ragloop keys create NAME --admin`."
        )
    return caller


class ABStartRequest(BaseModel):
    """``POST /api/ab``: what ``ragloop ab start`` takes."""

    model_config = ConfigDict(extra="forbid")

    candidate: str = Field(description="model version id (or alias) to try on live traffic")
    candidate_embedder: str | None = Field(
        default=None,
        description="embedder version the candidate serves with (`base`: the base embedder); omitted: "
        "the control's",
    )
    alias: str = Field(default=aliases.DEFAULT_ALIAS, description="the alias whose traffic is split")
    share: float = Field(description="the candidate's share of units, in (0, 1)")
    ramp: list[float] = Field(default_factory=list, description="increasing shares to pass through first")
    primary: str = Field(default="thumbs_up", description="the metric that decides")
    guardrails: list[str] = Field(
        default_factory=lambda: list(experiments.DEFAULT_GUARDRAILS),
        description="metrics whose harm rolls the candidate back",
    )
    min_units: int = Field(default=experiments.DEFAULT_MIN_UNITS, ge=0)
    max_days: float | None = Field(default=None, gt=0)


class ABStopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=2000)


_ab = [Depends(unscoped_admin)]


# Plain ``def``: starting and promoting load the candidate into this server, which takes a while.
@router.post("/api/ab", status_code=201, dependencies=_ab, responses=errors(400, 404, 409, 413, 502))
def start_experiment(body: ABStartRequest, request: Request) -> dict:
    """Start an experiment: the candidate gets ``share`` of the alias's live traffic (sticky per unit)
    from the next request on, once it loads here; refused with nothing changed on bad input."""
    fields = body.model_dump()
    fields["candidate_embedder"] = _embedder(fields["candidate_embedder"])
    return ab.start(_settings(request), **fields, load=request.app.state.assistant.backend_for)


@router.get("/api/ab", dependencies=_ab, responses=errors(400, 404))
def experiment_status(request: Request, alias: str = aliases.DEFAULT_ALIAS) -> dict:
    """The experiment running on ``alias`` (else its latest): per arm and metric, intervals and verdicts."""
    return ab.status(_settings(request), alias=alias, kb=lambda: request.app.state.assistant.kb)


@router.get("/api/ab/{experiment_id}", dependencies=_ab, responses=errors(400, 404))
def experiment_report(experiment_id: str, request: Request) -> dict:
    return ab.status(_settings(request), experiment_id, kb=lambda: request.app.state.assistant.kb)


@router.get("/api/ab/{experiment_id}/snapshots", dependencies=_ab, responses=errors(400, 404))
def experiment_snapshots(experiment_id: str, request: Request, limit: int = 1000) -> dict:
    """The checks' snapshots, oldest first: what the dashboard charts."""
    data = ab.snapshots(_settings(request), experiment_id, limit=max(1, min(limit, 10_000)))
    return {"object": "list", "data": data}


@router.post("/api/ab/{experiment_id}/stop", dependencies=_ab, responses=errors(400, 404, 409, 413))
def stop_experiment(experiment_id: str, request: Request, body: ABStopRequest | None = None) -> dict:
    reason = (body or ABStopRequest()).reason
    return ab.stop(_settings(request), experiment_id, reason=reason or "stopped through the API")


@router.post("/api/ab/{experiment_id}/promote", dependencies=_ab, responses=errors(400, 404, 409, 413, 502))
def promote_candidate(experiment_id: str, request: Request) -> dict:
    """Serve the experiment's candidate under its alias (through the release function, recorded),
    which ends the experiment as ``promoted``."""
    return ab.promote(
        _settings(request), experiment_id, note="api", load=request.app.state.assistant.backend_for
    )


# Drift and alerts --------------------------------------------------------------------------------------


def unscoped_monitor(caller: Caller = Depends(admin_caller)) -> Caller:
    """A drift report quotes live questions of every collection (the uncovered ones, by topic) and alerts
    speak of every alias, so an admin key scoped to some collections may not read or run them."""
    if caller.collections is not None:
        raise PermissionDenied(
            "Drift reports and alerts need an admin key with no collection scope: they cover the questions "
            "of every collection. Create one with `ragloop keys create NAME --admin`."
        )
    return caller


_monitor = [Depends(unscoped_monitor)]


class DriftRunRequest(BaseModel):
    """``POST /api/drift/run``: what ``ragloop drift`` takes (its ``--window 7d|36h|500`` as days or records)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        default=aliases.DEFAULT_ALIAS, description="alias or version id whose drift is checked"
    )
    window_days: float | None = Field(default=None, gt=0, description="live records of the last days")
    last_n: int | None = Field(
        default=None, ge=1, description="else the last N live records (default: the [drift] window)"
    )


@router.get("/api/drift", dependencies=_monitor, responses=errors(400))
def drift_reports(request: Request, alias: str | None = None, limit: int = 50) -> dict:
    """Stored drift reports, newest first (of ``alias`` when given): the server's periodic checks' and
    those run by ``ragloop drift`` or ``POST /api/drift/run``."""
    data = drift.latest_reports(_settings(request), alias=alias, limit=max(1, min(limit, 500)))
    return {"object": "list", "data": data}


# Plain ``def``: a report embeds the window's questions and may retrieve the reference's (seconds).
@router.post("/api/drift/run", status_code=201, dependencies=_monitor, responses=errors(400, 404, 413))
def run_drift_check(request: Request, body: DriftRunRequest | None = None) -> dict:
    """Check drift now: the report is computed, stored and returned; a warn or drift verdict raises an
    alert (once per open condition)."""
    body = body or DriftRunRequest()
    return drift.run_drift(
        _settings(request),
        model_version=body.model,
        window_days=body.window_days,
        last_n=body.last_n,
        kb=lambda: request.app.state.assistant.kb,
        source="api",
    )


@router.get("/api/alerts", dependencies=_monitor, responses=errors(400))
def list_alerts(request: Request, kind: str | None = None, open: bool = False, limit: int = 100) -> dict:
    """Alerts, newest first (of ``kind``; only unacknowledged ones with ``open=true``), with their webhook
    delivery (``delivered_at`` or ``delivery_error``)."""
    rows = alerts.list_alerts(
        _settings(request), limit=max(1, min(limit, 1000)), kind=kind, unacknowledged=open
    )
    return {"object": "list", "data": rows}


@router.post("/api/alerts/{alert_id}/ack", dependencies=_monitor, responses=errors(400, 404))
def acknowledge_alert(alert_id: int, request: Request) -> dict:
    """Mark an alert seen: it leaves the open list, and its condition may raise a new alert."""
    return alerts.acknowledge(_settings(request), alert_id)
