"""Stage 5 of the loop: curation. Pure functions that decide which recorded interactions may become
training data and in what form: citations checked against their passages (``verify``), personal data
pseudonymised (``pii``), repeated and eval-contaminated questions dropped (``dedupe``), refusals found
(``refusal``). No I/O here beyond the optional PII vault; the datasets stage applies these to records.

``ragloop.curation.pii`` is not imported here: Presidio takes seconds to import, and only the stages
that anonymise should pay for it.
"""

from ragloop.curation.dedupe import exact_key, find_duplicates, near_duplicate_of, normalise_question
from ragloop.curation.refusal import ABSTAIN_ANSWER, is_refusal
from ragloop.curation.verify import (
    DEFAULT_THRESHOLD,
    SUPPORT_METHOD,
    Check,
    Verdict,
    verify_answer,
    verify_cited,
    verify_statement,
)

__all__ = [
    "ABSTAIN_ANSWER",
    "DEFAULT_THRESHOLD",
    "SUPPORT_METHOD",
    "Check",
    "Verdict",
    "exact_key",
    "find_duplicates",
    "is_refusal",
    "near_duplicate_of",
    "normalise_question",
    "verify_answer",
    "verify_cited",
    "verify_statement",
]
