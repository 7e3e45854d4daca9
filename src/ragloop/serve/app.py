"""The HTTP door: an OpenAI-compatible chat API over the assistant, file upload into the knowledge base,
and read access to recorded interactions.

Routes only translate HTTP into calls on ``Assistant`` and ``ingest_uploads`` and back, and apply API keys
(``serve.auth``). The assistant is synchronous and CPU-bound, so it runs in worker threads of its own and
the event loop stays free for health checks and other requests while answers are generated. A streamed
answer's final event is sent only after the assistant has committed the interaction, as is a non-streamed
response, so every answer a client received is on disk.

Status codes: 400 malformed or invalid input, 401 missing or wrong key, 403 not admin or outside the key's
collections, 404 unknown model or record, 409 a job's state forbids it, 413 body or file too large, 422 an
upload of which no file could be ingested, 500 anything unexpected (details go to the server log, never to
the client), 502 the generator failed or a version does not load, 503 with ``Retry-After`` when the
generator's slots and queue are full (llamacpp backend; nothing is recorded). Each route declares the ones
it can answer (``schemas.errors``), so the OpenAPI schema says what the app does (docs/api.md).
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragloop.config import Settings
from ragloop.curation.erasure import retention_task
from ragloop.errors import NotFound, Overloaded, RagloopError
from ragloop.feedback.service import MAX_EVIDENCE, MAX_TEXT, add_feedback
from ragloop.generation.assistant import AnswerRequest, AnswerResult, Assistant, answer_record
from ragloop.ingest.pipeline import IngestReport, ingest_uploads, reconcile
from ragloop.monitoring.ab import check_task
from ragloop.monitoring.drift import drift_task
from ragloop.monitoring.signals import signals_task
from ragloop.serve import schemas
from ragloop.serve.auth import (
    CSRF_HEADER,
    SESSION_COOKIE,
    Caller,
    auth_required,
    may_read_interaction,
    narrow_scope,
    request_caller,
    require_admin,
    require_collection,
)
from ragloop.serve.chat import chat_router
from ragloop.serve.dashboard import dashboard_router
from ragloop.serve.ui import ui_router
from ragloop.store import aliases, queries
from ragloop.store.claims import Scheduler

log = logging.getLogger("ragloop.serve")

# Answers queue for worker threads of their own, so a burst of chat requests (which a local model answers
# one at a time anyway) cannot take every thread from model listings, record reads and auth checks.
ASSISTANT_THREADS = 32
# One upload holds at most this many files; with the per-file limit it bounds the whole request body.
UPLOAD_MAX_FILES = 16
UPLOAD_MAX_FIELD_BYTES = 64 * 1024
_MULTIPART_OVERHEAD = 64 * 1024


class RequestTooLarge(RagloopError):
    """A request body or uploaded file over the configured limit."""

    status = 413
    code = "request_too_large"


class BodyLimit:
    """Refuse request bodies over a limit: at once when ``Content-Length`` announces one, and otherwise as
    soon as the bytes received pass it, so a 10 GB body is never read into memory.

    The refused body is read and dropped first, up to ``DRAIN_BYTES`` past the limit (``DRAIN_S`` at most):
    a connection closed with unread bytes in it is reset, and the reset can destroy the 413 before the
    client reads it (an OpenAI client on a kept-alive connection saw "connection reset" more often than
    not, for a 2 MB body). Far bigger bodies are refused unread, the connection closed at once.

    (Starlette's own limit answers in plain text, and replaces any response to an over-long request with
    it; clients of this API expect OpenAI's error shape.)"""

    DRAIN_BYTES = 16 * 1024 * 1024
    DRAIN_S = 5.0

    def __init__(self, app: ASGIApp, default: int, per_path: dict[str, tuple[int, str]]):
        self.app = app
        self.default = (default, "limits.max_request_bytes")
        self.per_path = per_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.per_path.get(scope["path"], self.default)
        message = f"The request body is over this server's limit of {limit:,} bytes ({setting})."
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            if int(declared) <= limit + self.DRAIN_BYTES:
                await self._drain(receive, int(declared))
            body = schemas.error_json(message, status=413, code=RequestTooLarge.code)
            await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    if event.get("more_body", False):
                        await self._drain(receive, limit + self.DRAIN_BYTES - received)
                    # An HTTPException passes FastAPI's body parsing untouched and reaches the handler.
                    raise StarletteHTTPException(413, detail=message, headers={"Connection": "close"})
            return event

        await self.app(scope, limited_receive, send)

    async def _drain(self, receive: Receive, budget: int) -> None:
        """Read and drop up to ``budget`` more bytes of the body, for ``DRAIN_S`` at most."""
        with anyio.move_on_after(self.DRAIN_S):
            while budget > 0:
                event = await receive()
                if event["type"] != "http.request":
                    return
                budget -= len(event.get("body", b""))
                if not event.get("more_body", False):
                    return


def create_app(settings: Settings, assistant: Assistant | None = None) -> FastAPI:
    """The API for one project home. Auth follows ``settings.server`` (``auto`` looks at its host, so
    ``run_server`` puts the bound host there); pass ``assistant`` to share one already loaded."""
    assistant = assistant or Assistant(settings)
    auth_on = auth_required(settings.server)
    limits = settings.limits
    db_url = settings.db_url
    answer_threads = anyio.CapacityLimiter(ASSISTANT_THREADS)
    health_threads = anyio.CapacityLimiter(2)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Periodic tasks: each due one runs in one process among all servers on this database.
        # A/B experiments read the answers' passages through the serving knowledge base.
        ab_check = check_task(settings, kb=lambda: assistant.kb)
        # Answer signals (verified citations, abstentions) stored for the dashboard's and drift's SQL.
        answer_signals = signals_task(settings, kb=lambda: assistant.kb)
        # Drift of each watched alias ([drift] aliases), a stored report and an alert when it drifts.
        drift_check = drift_task(settings, kb=lambda: assistant.kb)
        tasks = [retention_task(settings), ab_check, answer_signals, drift_check]
        scheduler = Scheduler(db_url, tasks).start()
        yield
        scheduler.stop()

    app = FastAPI(
        lifespan=lifespan,
        title="ragloop",
        summary="Cited answers over your documents, every interaction recorded for fine-tuning.",
        version="1",
    )
    app.state.settings = settings
    app.state.assistant = assistant
    app.state.auth = auth_on
    _install_error_handlers(app)
    # Every body is capped at max_request_bytes except uploads, whose files are checked one by one as they
    # stream in (``_read_upload``) within an overall cap of UPLOAD_MAX_FILES full-size files.
    upload_cap = limits.max_upload_bytes * UPLOAD_MAX_FILES + _MULTIPART_OVERHEAD
    app.add_middleware(
        BodyLimit,
        default=limits.max_request_bytes,
        per_path={"/api/ingest": (upload_cap, "limits.max_upload_bytes")},
    )

    bearer = HTTPBearer(auto_error=False, description="An API key from `ragloop keys create`.")

    def caller(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> Caller:
        # A key in the header, else the chat page's session cookie (with its CSRF header; serve.auth).
        return request_caller(
            db_url,
            auth_on,
            credentials.credentials if credentials else None,
            request.cookies.get(SESSION_COOKIE),
            request.headers.get(CSRF_HEADER),
        )

    # Health ------------------------------------------------------------------------------------------
    def health() -> dict:
        try:
            model = aliases.resolve(db_url, None)[0].id
        except NotFound:
            model = None
        return {"status": "ok", "kb_version": assistant.kb.version or None, "model": model}

    @app.get("/healthz", tags=["health"], responses=schemas.errors(500))
    async def healthz() -> dict:
        """Open without a key, for load balancers; answers even while every answer thread is busy."""
        return await anyio.to_thread.run_sync(health, limiter=health_threads)

    # Chat --------------------------------------------------------------------------------------------
    @app.post(
        "/v1/chat/completions",
        tags=["openai"],
        responses={200: _CHAT_200} | schemas.errors(400, 401, 403, 404, 413, 500, 502, 503),
    )
    async def chat_completions(
        body: schemas.ChatCompletionRequest, request: Request, who: Caller = Depends(caller)
    ) -> Response:
        """OpenAI's chat completions, answered from the knowledge base with [n] citations; the
        ``ragloop`` object of the response (or of the final stream event) names the recorded turn."""
        options = body.ragloop or schemas.RagloopOptions()
        req = AnswerRequest(
            messages=body.messages,
            model=body.model,
            max_tokens=body.max_tokens if body.max_tokens is not None else body.max_completion_tokens,
            temperature=body.temperature,
            seed=body.seed or 0,
            k=options.k,
            collections=narrow_scope(who, options.collections),
            filters=options.filters,
            conversation_id=options.conversation_id,
            # A browser session's user is its key's name: a page cannot claim another user's id.
            user_id=who.name if who.session else body.user,
            api_key_id=who.key_id,
            source="api",
        )
        created = int(time.time())
        if not body.stream:
            # Generated as a stream and collected: between pieces the connection is checked, so a client
            # that gives up (its timeout, a closed socket) stops its generation and frees its slot, as a
            # streaming one does, instead of holding the engine for an answer nobody will read.
            stream = await anyio.to_thread.run_sync(assistant.stream, req, limiter=answer_threads)
            result = await _collect(stream, request, answer_threads)
            if result is None:
                log.info("chat completion abandoned by its client: generation stopped, nothing recorded")
                return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
            return JSONResponse(schemas.completion_json(result, created))

        def start() -> tuple[Iterator[str | AnswerResult], str]:
            # Validation and retrieval happen here, before any byte is sent: a bad request gets a JSON
            # error, not a broken stream. Every chunk names the version that answers (an A/B arm's
            # version, not necessarily the alias's).
            stream = assistant.stream(req)
            model = getattr(stream, "model_version", None) or aliases.resolve(db_url, req.model)[0].id
            return stream, model

        stream, model = await anyio.to_thread.run_sync(start, limiter=answer_threads)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _sse_events(stream, model, created, include_usage, answer_threads)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # Models ------------------------------------------------------------------------------------------
    @app.get("/v1/models", tags=["openai"], responses=schemas.errors(401, 500))
    def list_models(who: Caller = Depends(caller)) -> dict:
        """Every model version and every alias (``production``, ``base``...), each usable as ``model``."""
        data = []
        for version, names in aliases.list_models(db_url):
            data.append(schemas.model_json(version, names))
            data.extend(schemas.model_json(version, names, model_id=alias) for alias in names)
        return {"object": "list", "data": data}

    # Records -----------------------------------------------------------------------------------------
    @app.get("/api/interactions/{interaction_id}", tags=["records"], responses=schemas.errors(401, 404, 500))
    def get_interaction(interaction_id: str, who: Caller = Depends(caller)) -> dict:
        """One recorded turn with its passages. A non-admin key reads only the turns it created; others'
        answer 404, as if absent, so ids cannot be probed."""
        may_read = functools.partial(may_read_interaction, who)
        return schemas.interaction_json(queries.visible_interaction(db_url, interaction_id, may_read))

    # Ingest ------------------------------------------------------------------------------------------
    @app.post(
        "/api/ingest",
        tags=["admin"],
        openapi_extra=_UPLOAD_OPENAPI,
        responses=schemas.errors(400, 401, 403, 500)
        | schemas.errors(413, 422, model=schemas.IngestErrorBody),
    )
    async def ingest(request: Request, who: Caller = Depends(caller)) -> JSONResponse:
        """Add or update documents from uploaded files (admin). Answers 200 when at least one file was
        ingested (per-file errors listed), 413 when every file was over the size limit, 422 when no file
        could be ingested; the body is the ingest report in every case."""
        require_admin(who)
        upload = await _read_upload(request, limits.max_upload_bytes)
        collection = (upload.fields.get("collection") or "").strip() or settings.ingest.default_collection
        require_collection(who, collection)
        if not upload.files and not upload.errors:
            raise RagloopError("No file received: send one or more files in the multipart field `files`.")
        report = IngestReport()
        if upload.files:
            report = await anyio.to_thread.run_sync(
                functools.partial(ingest_uploads, settings, upload.files, collection=collection)
            )
        body = schemas.ingest_report_json(report, upload.errors)
        if report.added or report.replaced or report.unchanged:
            return JSONResponse(body)
        status = 413 if upload.errors and not report.errors else 422  # 413: only the size check failed
        summary = " ".join(e["message"] for e in body["errors"][:5])
        error = schemas.error_json(
            f"No file could be ingested. {summary}", status=status, code="ingest_error", param="files"
        )
        return JSONResponse({**error, "report": body}, status_code=status)

    # Feedback ----------------------------------------------------------------------------------------
    @app.post(
        "/api/interactions/{interaction_id}/feedback",
        tags=["records"],
        status_code=201,
        openapi_extra=_FEEDBACK_OPENAPI,
        responses=schemas.errors(400, 401, 404, 413, 500),
    )
    async def post_feedback(interaction_id: str, request: Request, who: Caller = Depends(caller)) -> dict:
        """Thumbs, rating, comment, correction, gold/irrelevant passage numbers, evidence (chunk ids of
        passages the retriever missed), tags. Admins review any turn; other keys only their own. Several reviewers are kept apart (``reviewer_id``, default: the key)."""
        try:
            data = await request.json()
        except ValueError:
            raise RagloopError("The request body is not valid JSON.") from None
        if isinstance(data, dict) and not data.get("reviewer_id") and who.key_id:
            data["reviewer_id"] = who.key_id
        if isinstance(data, dict) and (who.session or not who.admin):
            # A user's feedback on their own answers, never a reviewer's: curation's policy says how far
            # an end user's correction is trusted (``end_user_corrections``).
            data["source"] = "end_user"
            if who.session:
                data["reviewer_id"] = who.key_id

        def save() -> dict:
            return add_feedback(
                db_url,
                interaction_id,
                data,
                kb=assistant.kb,
                readable=who.collections,
                may_read=functools.partial(may_read_interaction, who),
            ).to_dict()

        return await anyio.to_thread.run_sync(save, limiter=health_threads)

    # Web UI (review queue, interactions) -------------------------------------------------------------
    app.mount("/static", StaticFiles(directory=str(Path(__file__).parent / "static")), name="static")
    app.include_router(ui_router(settings, auth_on))
    app.include_router(dashboard_router(settings))  # the dashboard: overview, models, interactions
    app.include_router(chat_router(settings, auth_on))

    # Training jobs and the model registry: routes of their own in serve/admin.py ---------------------
    from ragloop.serve.admin import router as admin_router

    app.include_router(admin_router)
    # Dashboard: experiments and drift (unscoped admin keys; forms CSRF-checked), serve/dashboard_ab.py.
    from ragloop.serve.dashboard_ab import router as dashboard_ab_router

    app.include_router(dashboard_ab_router)
    _declare_only_our_errors(app)
    return app


def _declare_only_our_errors(app: FastAPI) -> None:
    """Drop the 422 FastAPI declares on every route with parameters or a body: this app turns validation
    errors into 400 with the OpenAI error body (``validation_error``), so that 422 and its
    ``HTTPValidationError`` schema would describe a response never sent. A 422 a route declares itself
    (``/api/ingest``) has the error body's schema and stays."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    refused = operation["responses"].get("422", {})
                    ref = refused.get("content", {}).get("application/json", {}).get("schema", {})
                    if ref.get("$ref", "").endswith("/HTTPValidationError"):
                        del operation["responses"]["422"]
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def run_server(settings: Settings, host: str, port: int, *, log_level: str = "info") -> None:
    """Serve until interrupted (``ragloop serve``, ``python -m ragloop.serve``).

    The model is loaded before the socket opens, so a passing health check means answers are ready."""
    import uvicorn

    server = settings.server.model_copy(update={"host": host, "port": port})
    settings = settings.model_copy(update={"server": server})
    reconcile(settings)  # a crash between a KB write and its database commit is undone before serving
    assistant = Assistant(settings)
    assistant.warm_up()
    app = create_app(settings, assistant)
    log.info(
        "ragloop serving %s on %s:%d, API keys %s",
        settings.home,
        host,
        port,
        "required" if app.state.auth else "off (loopback only)",
    )
    # uvicorn's access log records method, path and status only: never keys nor message contents.
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False)


# Streaming -------------------------------------------------------------------------------------------------


def _sse(payload: dict | str) -> str:
    data = (
        payload
        if isinstance(payload, str)
        else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    )
    return f"data: {data}\n\n"


async def _collect(
    stream: Iterator[str | AnswerResult], request: Request, limiter: anyio.CapacityLimiter
) -> AnswerResult | None:
    """The recorded result of a non-streamed answer, or None when its client went away first (the
    generation is then stopped and nothing is recorded, as for a streaming client)."""
    try:
        while True:
            item = await anyio.to_thread.run_sync(next, stream, None, limiter=limiter)
            if item is None:  # the assistant always ends with its result: this one was not recorded
                raise RuntimeError("The answer was not recorded.")
            if isinstance(item, AnswerResult):
                return item
            if await request.is_disconnected():
                return None
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


async def _sse_events(
    stream: Iterator[str | AnswerResult],
    model: str,
    created: int,
    include_usage: bool,
    limiter: anyio.CapacityLimiter,
) -> AsyncIterator[str]:
    """chat.completion.chunk events: the role, the text deltas, then (after the commit) the finish reason
    with the ``ragloop`` object, the usage if asked, and ``[DONE]``. A failure mid-answer ends the stream
    with an error event and no ``[DONE]``, so a client never mistakes a partial answer for a recorded one."""
    stream_id = f"chatcmpl-{uuid.uuid4().hex}"
    yield _sse(schemas.chunk_json(stream_id, created, model, {"role": "assistant", "content": ""}))
    result: AnswerResult | None = None
    try:
        while True:
            item = await anyio.to_thread.run_sync(next, stream, None, limiter=limiter)
            if item is None:
                break
            if isinstance(item, AnswerResult):
                result = item
            elif item:
                yield _sse(schemas.chunk_json(stream_id, created, model, {"content": item}))
    except Exception as exc:
        status, code, message = _describe(exc)
        yield _sse(schemas.error_json(message, status=status, code=code))
        return
    finally:
        close = getattr(stream, "close", None)
        if close is not None:  # a client that went away stops the answer; nothing was acknowledged
            close()
    if result is None:  # the assistant always ends with its result; a stream without one was not recorded
        yield _sse(schemas.error_json("The answer was not recorded.", status=500, code="internal_error"))
        return
    final = schemas.chunk_json(stream_id, created, result.model_version, {}, result.finish_reason)
    final["ragloop"] = answer_record(result)
    yield _sse(final)
    if include_usage:
        usage = schemas.chunk_json(stream_id, created, result.model_version, {})
        usage["choices"] = []
        usage["usage"] = schemas.usage_json(result)
        yield _sse(usage)
    yield _sse("[DONE]")


# Uploads ---------------------------------------------------------------------------------------------------


@dataclass
class _Upload:
    files: list[tuple[str, bytes]] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)  # files refused at the door


async def _read_upload(request: Request, max_file_bytes: int) -> _Upload:
    """Parse a multipart upload as it arrives, keeping at most ``max_file_bytes`` of any one file in memory:
    a file that grows past the limit is dropped on the spot and reported, and the rest of the upload goes
    on. The route's body limit stops the request as a whole (413) before it is read when its declared
    length is over, or as soon as the bytes received are."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise RagloopError("Send the files as multipart/form-data, in the field `files`.")
    upload = _Upload()
    part: dict[str, Any] = {}
    header_name = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        part.clear()
        part.update(headers={}, data=bytearray(), size=0, over=False)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        part["headers"][bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, options = parse_options_header(part["headers"].get(b"content-disposition", b""))
        part["name"] = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        # The name is passed on as sent: the pipeline reduces it to a safe label (it is never a path).
        part["filename"] = None if filename is None else filename.decode("utf-8", "replace")
        if part["filename"] is not None and len(upload.files) + len(upload.errors) >= UPLOAD_MAX_FILES:
            raise RequestTooLarge(f"Too many files in one upload: at most {UPLOAD_MAX_FILES}.")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part["size"] += end - start
        if part["filename"] is None:
            if part["size"] > UPLOAD_MAX_FIELD_BYTES:
                raise RequestTooLarge(f"The form field {part['name']!r} is too large.")
        elif part["size"] > max_file_bytes:
            part["over"] = True
            part["data"] = bytearray()  # free it now; the rest of this file is skipped as it arrives
            return
        part["data"].extend(data[start:end])

    def on_part_end() -> None:
        name = part["filename"]
        if name is None:
            upload.fields[part["name"]] = part["data"].decode("utf-8", "replace")
        elif part["over"]:
            upload.errors.append(
                (
                    name,
                    f"{name}: over the upload limit of {max_file_bytes:,} bytes; split the file, or raise "
                    "[limits] max_upload_bytes in ragloop.toml.",
                )
            )
        elif name or part["size"]:  # a browser sends an empty, unnamed part when no file was chosen
            upload.files.append((name or "upload", bytes(part["data"])))

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except RagloopError:
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise RagloopError(f"Malformed multipart upload: {exc}") from exc
    return upload


_CHAT_200: dict[str, Any] = {
    "description": "A `chat.completion` object; with `stream: true`, server-sent `chat.completion.chunk` "
    "events ending in `data: [DONE]` (a failure mid-answer ends the stream with an `error` event instead).",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}

# The feedback body is read as raw JSON so the feedback stage gives its own messages (``validate_feedback``);
# the schema still tells clients (and the fuzzer) what it takes.
_FEEDBACK_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "thumbs": {"enum": ["up", "down", 1, -1]},
                        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                        "comment": {"type": "string", "maxLength": MAX_TEXT},
                        "corrected_answer": {"type": "string", "maxLength": MAX_TEXT},
                        "gold": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                        "irrelevant": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                        "evidence": {
                            "type": "array",
                            "maxItems": MAX_EVIDENCE,
                            "items": {"type": "string", "minLength": 1, "maxLength": 64},
                        },
                        "tags": {"type": "array", "items": {"type": "string", "maxLength": 64}},
                        "reviewer_id": {"type": "string", "maxLength": 128},
                        "source": {"enum": ["human", "auto", "eval", "end_user"]},
                    },
                }
            }
        },
    }
}

_UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "format": "binary"},
                        },
                        "collection": {"type": "string"},
                    },
                }
            }
        },
    }
}


# Errors ----------------------------------------------------------------------------------------------------


def _describe(exc: Exception) -> tuple[int, str, str]:
    """(status, code, message) for any exception; internals of unexpected ones stay in the log."""
    if isinstance(exc, RagloopError):
        return exc.status, exc.code, str(exc)
    log.error("Unexpected error: %s", type(exc).__name__, exc_info=exc)
    return 500, "internal_error", "Internal server error; the server log has the details."


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    if first.get("type") == "json_invalid":
        return (
            f"The request body is not valid JSON: {first.get('ctx', {}).get('error', 'decode error')}.",
            None,
        )
    param = ".".join(loc) or None
    message = first.get("msg", "invalid value")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return (f"{param}: {message}" if param else message), param


def _allowed_methods(request: Request) -> str:
    """Every method some route answers at this path, for a 405's ``Allow``. Starlette names only the first
    route whose path matches, so ``DELETE /api/jobs`` was told ``Allow: GET`` though POST works too."""
    routes = [route for route in request.app.router.routes if not isinstance(route, Mount)]
    allowed = []
    for method in ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"):
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in routes):
            allowed.append(method)
    return ", ".join(allowed)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape, ``{"error": {message, type, param, code}}``."""

    @app.exception_handler(RagloopError)
    async def ragloop_error(_: Request, exc: RagloopError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if isinstance(exc, Overloaded):  # every generation slot busy and the queue full
            headers = {"Retry-After": str(exc.retry_after)}
        body = schemas.error_json(
            str(exc), status=exc.status, code=exc.code, param=getattr(exc, "param", None)
        )
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(
            schemas.error_json(message, status=400, code="invalid_request_error", param=param),
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
        message = str(exc.detail)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405 and (allowed := _allowed_methods(request)):
            headers = {**(headers or {}), "Allow": allowed}
        return JSONResponse(
            schemas.error_json(message, status=exc.status_code, code=code),
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        status, code, message = _describe(exc)
        return JSONResponse(schemas.error_json(message, status=status, code=code), status_code=status)


__all__ = ["RequestTooLarge", "create_app", "run_server"]
