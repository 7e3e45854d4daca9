"""Precise exceptions, each message saying what to do next.

Doors (CLI, HTTP) translate these into exit codes and OpenAI-shaped JSON errors; stages raise them and
never print.
"""


class RagloopError(Exception):
    """Base class: anything ragloop raises on purpose. ``status`` is the HTTP status the API answers."""

    status = 400
    code = "invalid_request_error"


class ConfigError(RagloopError):
    """The project home or a setting is missing or invalid."""

    status = 500
    code = "config_error"


class IngestError(RagloopError):
    """One file could not be ingested (corrupt, unsupported, empty, over the limit)."""

    status = 422
    code = "ingest_error"


class NotFound(RagloopError):
    """A record, model version or document that does not exist."""

    status = 404
    code = "not_found"


class AuthError(RagloopError):
    """Missing or wrong API key."""

    status = 401
    code = "invalid_api_key"


class PermissionDenied(RagloopError):
    """The key is valid but may not do this (admin endpoint, collection outside its scope)."""

    status = 403
    code = "permission_denied"


class GenerationError(RagloopError):
    """The generator failed or could not be loaded."""

    status = 502
    code = "generation_error"


class ReplayMismatch(RagloopError):
    """A recorded prompt could not be rebuilt byte for byte."""

    status = 409
    code = "replay_mismatch"


class Overloaded(RagloopError):
    """Every generation slot is busy and the waiting line is full; ``retry_after`` says (in seconds) when
    to try again. Nothing was generated or recorded for the refused request."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class Conflict(RagloopError):
    """The request clashes with the records' current state (a second running experiment on one alias)."""

    status = 409
    code = "conflict"


class TooFewPairs(RagloopError):
    """Too few (question, positive passage) pairs to build a retriever-tuning dataset or train on it."""

    code = "too_few_pairs"


class PairsFormatError(RagloopError):
    """A pairs file (or a dataset used as one) is not in the pairs format; the message names the line."""

    code = "pairs_format_error"


class DimensionMismatch(RagloopError):
    """An embedder's vectors do not have the dimension of the knowledge-base column it would be compared
    with; nothing is searched or written."""

    status = 409
    code = "dimension_mismatch"
