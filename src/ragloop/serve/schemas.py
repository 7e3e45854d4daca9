"""The JSON the HTTP door speaks: OpenAI's chat-completion shapes plus a ``ragloop`` object of extras.

Request bodies are pydantic models so malformed input fails before it reaches the assistant; responses are
built here from the assistant's ``AnswerResult`` and the store's records, so the field names a client sees
are decided in one place. The ``ragloop`` object itself is the generation stage's ``answer_record``, which
``ragloop ask --json`` prints too. OpenAI clients ignore the ``ragloop`` extras and keep working;
ragloop-aware clients read interaction ids, citations and passages from them.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import inspect

from ragloop.generation.assistant import AnswerResult, answer_record
from ragloop.ingest.pipeline import IngestReport
from ragloop.store.models import Interaction, ModelVersion

# Requests ------------------------------------------------------------------------------------------------


class RagloopOptions(BaseModel):
    """The optional ``ragloop`` object of a chat request (OpenAI clients send it through ``extra_body``)."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: str | None = Field(default=None, max_length=64)
    collections: list[str] | None = Field(
        default=None, description="Narrows the key's scope; never widens it."
    )
    filters: dict[str, Any] | None = None
    k: int | None = Field(default=None, ge=1, le=100, description="How many passages to show the model.")


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat request. Fields ragloop does not use (``top_p``, ``n``, ``tools``...) are accepted
    and ignored so stock clients work; ``messages`` is checked by the assistant, whose errors name the
    offending message."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[Any] = Field(json_schema_extra={"minItems": 1})
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # newer OpenAI clients send this instead of max_tokens
    temperature: float | None = None
    seed: int | None = None
    user: str | None = Field(default=None, max_length=128)
    ragloop: RagloopOptions | None = None


# Responses -----------------------------------------------------------------------------------------------


# Errors ---------------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """What went wrong; the OpenAI SDK reads it into its ``APIStatusError`` (``code``, ``param``...)."""

    message: str = Field(description="What is wrong and what to do about it.")
    type: str = Field(
        description="invalid_request_error (4xx), authentication_error (401), permission_error (403) "
        "or server_error (5xx)."
    )
    param: str | None = Field(description="The request field at fault, dotted (`ragloop.k`), if one is.")
    code: str | None = Field(description="A stable code: not_found, request_too_large, overloaded...")


# Built only by ``error_json``, so what the OpenAPI schema declares is what every handler sends.
class ErrorBody(BaseModel):
    """OpenAI's error shape, which every error response of this API has."""

    error: ErrorDetail


class IngestErrorBody(ErrorBody):
    """An upload of which no file was ingested: the error, and the ingest report naming each file's
    problem (absent when the request was refused before any file was read)."""

    report: dict[str, Any] | None = Field(
        default=None, description="The ingest report, as a 200 carries it; its `errors` list every file."
    )


def error_json(message: str, *, status: int, code: str | None, param: str | None = None) -> dict:
    """OpenAI's error object; ``type`` follows from the status the way OpenAI's own API sets it."""
    if status == 401:
        kind = "authentication_error"
    elif status == 403:
        kind = "permission_error"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    detail = ErrorDetail(message=message, type=kind, param=param, code=code)
    return ErrorBody(error=detail).model_dump()


# Which statuses an operation declares, with what each means to a client. A route lists its own with
# ``responses=errors(...)``, so its OpenAPI entry says what it really answers (schemathesis checks it).
ERROR_STATUSES: dict[int, str] = {
    400: "Malformed or invalid request: not JSON, a wrong type, a value out of range (`param` names it).",
    401: "Missing, wrong or revoked API key (when the server requires keys).",
    403: "The key is valid but may not do this: not an admin key, or a collection outside its scope.",
    404: "No such record, model, alias or job (or none this key may see).",
    409: "The record's state does not allow this (cancel a finished job, resume a running one, start a "
    "second experiment on an alias, stop one that ended).",
    413: "The request body or an uploaded file is over the server's limit (the message names the setting).",
    422: "No uploaded file could be ingested; the report says why for each.",
    500: "Unexpected error; the server log has the details.",
    502: "The generator failed, or the model version does not load.",
    503: "Every generation slot is busy and the queue is full; retry after `Retry-After` seconds.",
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "required": True, "schema": {"type": "string"}}},
    503: {
        "Retry-After": {
            "description": "Seconds to wait before retrying; nothing was generated or recorded.",
            "required": True,
            "schema": {"type": "integer"},
        }
    },
}


def errors(*statuses: int, model: type[ErrorBody] = ErrorBody) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` declaring these error statuses, each with the error body's schema."""
    declared: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        declared[status] = {"model": model, "description": ERROR_STATUSES[status]}
        if status in _ERROR_HEADERS:
            declared[status]["headers"] = _ERROR_HEADERS[status]
    return declared


def usage_json(result: AnswerResult) -> dict:
    usage: dict[str, Any] = {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }
    if result.cached_prompt_tokens is not None:  # OpenAI's field: prompt tokens served from the cache
        usage["prompt_tokens_details"] = {"cached_tokens": result.cached_prompt_tokens}
    return usage


def completion_json(result: AnswerResult, created: int) -> dict:
    """A ``chat.completion`` object; its id carries the interaction id so feedback can name the turn."""
    return {
        "id": f"chatcmpl-{result.interaction_id}",
        "object": "chat.completion",
        "created": created,
        "model": result.model_version,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.answer},
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage_json(result),
        "ragloop": answer_record(result),
    }


def chunk_json(
    stream_id: str, created: int, model: str, delta: dict, finish_reason: str | None = None
) -> dict:
    """One ``chat.completion.chunk`` event of a streamed answer."""
    return {
        "id": stream_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def model_json(version: ModelVersion, aliases: list[str], *, model_id: str | None = None) -> dict:
    """One entry of ``/v1/models``: a version, or (``model_id`` set) an alias pointing at it."""
    entry_id = model_id or version.id
    return {
        "id": entry_id,
        "object": "model",
        "created": int(version.created_at.replace(tzinfo=UTC).timestamp()),
        "owned_by": "ragloop",
        "ragloop": {
            "version": version.id,
            "is_alias": entry_id != version.id,
            "aliases": aliases,
            "base_model": version.base_model,
            "adapter": version.adapter_path,
            "parent_id": version.parent_id,
        },
    }


def _row_json(row: Any, skip: tuple[str, ...] = ()) -> dict:
    out = {}
    for attr in inspect(row).mapper.column_attrs:
        if attr.key in skip:
            continue
        value = getattr(row, attr.key)
        if isinstance(value, datetime):  # stored as naive UTC; say so on the wire
            value = value.replace(tzinfo=UTC).isoformat()
        out[attr.key] = value
    return out


def interaction_json(interaction: Interaction) -> dict:
    """The full recorded interaction with the passages it showed, as stored (load passages in-session)."""
    data = _row_json(interaction)
    data["passages"] = [_row_json(p, skip=("id", "interaction_id")) for p in interaction.passages]
    return data


def ingest_report_json(report: IngestReport, door_errors: list[tuple[str, str]]) -> dict:
    """An ``IngestReport`` as JSON, with the files the door itself refused (over the size limit) listed
    among its per-file errors so the client reads one list."""
    data = dataclasses.asdict(report)
    errors = [*door_errors, *report.errors]
    data["errors"] = [{"source_path": path, "message": message} for path, message in errors]
    data["ok"] = not errors
    return jsonable_encoder(data)
