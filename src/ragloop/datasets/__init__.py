"""Stage 6 of the loop: QA data in, RAFT training examples out.

``qa`` defines the record every dataset becomes, ``importers`` reads public QA formats into it, ``raft``
builds training examples from it, and ``answers`` holds the one answer-extraction rule and the scores that
training targets and evaluation share.
"""

from ragloop.datasets.answers import (
    ABSTAIN_ANSWER,
    api_call_match,
    exact_match,
    extract_answer,
    normalise_answer,
    token_f1,
)
from ragloop.datasets.importers import FORMATS, read_api_docs, read_qa_file
from ragloop.datasets.qa import QAItem, QAPassage, passage_id
from ragloop.datasets.raft import RaftConfig, RaftExample, build_raft_examples, misled_answer, to_dpo_pair

__all__ = [
    "ABSTAIN_ANSWER",
    "FORMATS",
    "QAItem",
    "QAPassage",
    "RaftConfig",
    "RaftExample",
    "api_call_match",
    "build_raft_examples",
    "exact_match",
    "extract_answer",
    "misled_answer",
    "normalise_answer",
    "passage_id",
    "read_api_docs",
    "read_qa_file",
    "to_dpo_pair",
    "token_f1",
]
