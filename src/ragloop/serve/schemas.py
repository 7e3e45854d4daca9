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
    messages: list[Any]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # newer OpenAI clients send this instead of max_tokens
    temperature: float | None = None
    seed: int | None = None
    user: str | None = Field(default=None, max_length=128)
    ragloop: RagloopOptions | None = None


# Responses -----------------------------------------------------------------------------------------------


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
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


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
