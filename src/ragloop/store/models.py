"""Every record ragloop keeps, defined once.

The Interaction (with the Passages it showed) is the unit of training data: it holds everything needed to
rebuild the exact prompt (passage ids and text hashes at a tagged KB version, template id and version,
generation parameters, model version), so later stages never guess what the model saw.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Document(Base):
    """One ingested source file (or one record of a JSON/JSONL file). Its chunks live in LanceDB."""

    __tablename__ = "documents"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    collection: Mapped[str] = mapped_column(String(128), index=True)
    source_path: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text, default="")
    content_hash: Mapped[str] = mapped_column(String(64))
    n_chunks: Mapped[int] = mapped_column(Integer)
    kb_version: Mapped[int] = mapped_column(Integer)  # the version that last changed it
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class KBVersion(Base):
    """A knowledge-base version: one LanceDB table version, made by one ingest or remove."""

    __tablename__ = "kb_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # LanceDB version
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    change: Mapped[dict[str, Any]] = mapped_column(
        JSON, default=dict
    )  # {"added": [...], "replaced": [...], "removed": [...]}
    n_chunks: Mapped[int] = mapped_column(Integer, default=0)
    tag: Mapped[str | None] = mapped_column(
        String(64), nullable=True
    )  # LanceDB tag protecting it from cleanup


class ModelVersion(Base):
    """A generator release: a base model, optionally with a LoRA adapter. Trained versions add lineage."""

    __tablename__ = "model_versions"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    base_model: Mapped[str] = mapped_column(Text)
    base_hash: Mapped[str] = mapped_column(String(64), default="")
    adapter_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    parent_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    dataset_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    contains_erased: Mapped[bool] = mapped_column(Boolean, default=False)
    erased_note: Mapped[str | None] = mapped_column(Text, nullable=True)


class EmbedderVersion(Base):
    """A fine-tuned retriever embedder (a saved sentence-transformers folder) with its lineage (0010). The
    base embedder has no row: ``embedder_version`` None anywhere means the configured base embedder, so every
    record made before embedders were versioned reads correctly."""

    __tablename__ = "embedder_versions"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # e.g. "minilm-tuned-<hash8>"
    base: Mapped[str] = mapped_column(Text)  # "packaged" or the base model's folder
    base_hash: Mapped[str] = mapped_column(String(64), default="")
    path: Mapped[str] = mapped_column(Text)  # the saved model's folder, under the home
    dim: Mapped[int] = mapped_column(Integer)
    dataset_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # the pairs
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # hyperparameters, code, metrics, time
    kb_versions: Mapped[list[Any]] = mapped_column(JSON, default=list)  # KB versions embedded with it


class ModelAlias(Base):
    """A movable name (``production``, ``candidate``...) pointing at a model version."""

    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # the embedder this alias serves with (0010); None: the base embedder
    embedder_version: Mapped[str | None] = mapped_column(String(128), nullable=True)


class ApiKey(Base):
    """An API key, stored only as its sha256. ``collections`` None means every collection."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings so a person can tell keys apart
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    collections: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Interaction(Base):
    """One answered turn, committed before the answer is acknowledged."""

    __tablename__ = "interactions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    conversation_id: Mapped[str] = mapped_column(String(64), index=True)
    turn_index: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    api_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    source: Mapped[str] = mapped_column(String(32), default="api")  # api | cli | eval | synth
    messages: Mapped[list[Any]] = mapped_column(JSON)  # the conversation as the client sent it
    # sha256 of the conversation including this answer: the next turn of a stateless client names its
    # parent by sending exactly these messages back.
    thread_sha256: Mapped[str] = mapped_column(String(64), index=True)
    retrieval_query: Mapped[str] = mapped_column(Text)
    collections: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)  # scope retrieval ran under
    filters: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    kb_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    template_id: Mapped[str] = mapped_column(String(64))
    template_version: Mapped[int] = mapped_column(Integer)
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(128), index=True)
    model_alias: Mapped[str | None] = mapped_column(String(128), nullable=True)
    gen_params: Mapped[dict[str, Any]] = mapped_column(JSON)
    answer: Mapped[str] = mapped_column(Text)
    citations: Mapped[list[Any]] = mapped_column(JSON)
    finish_reason: Mapped[str] = mapped_column(String(32), default="stop")
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_retrieve_ms: Mapped[float] = mapped_column(Float, default=0.0)
    latency_generate_ms: Mapped[float] = mapped_column(Float, default=0.0)
    latency_first_token_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_total_ms: Mapped[float] = mapped_column(Float, default=0.0)
    # The A/B experiment this turn was served under (0006), the arm that served it (control | candidate)
    # and the assignment unit hashed to pick it (``store.experiments.unit_of``): the analysis unit.
    # All None outside an experiment (no running one, an explicit version, evaluation traffic).
    experiment_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    arm: Mapped[str | None] = mapped_column(String(16), nullable=True)
    experiment_unit: Mapped[str | None] = mapped_column(String(160), nullable=True)
    # The answer's automatic signals (0009), written after the fact by ``monitoring.signals`` because
    # verifying citations belongs to the curation stage, which generation may not import; the dashboard and
    # drift checks then aggregate them in SQL. None until computed (``signals_at``); ``verified`` also None
    # for an abstention, which claims nothing.
    verified: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    abstained: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    signals_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    # The embedder that retrieved the passages (0010); None: the base embedder, as for every older record.
    embedder_version: Mapped[str | None] = mapped_column(String(128), nullable=True)

    passages: Mapped[list[Passage]] = relationship(
        back_populates="interaction", cascade="all, delete-orphan", order_by="Passage.rank"
    )

    def to_dict(self) -> dict[str, Any]:
        """The whole record as JSON-ready data (the API's and ``ragloop logs --export``'s shape)."""
        data = {c.name: getattr(self, c.name) for c in self.__table__.columns}
        data["created_at"] = self.created_at.isoformat() + "Z"
        data["passages"] = [p.to_dict() for p in self.passages]
        return data


class Passage(Base):
    """A passage as shown in one interaction: which chunk, at which rank, with which scores."""

    __tablename__ = "passages"
    __table_args__ = (UniqueConstraint("interaction_id", "rank"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    interaction_id: Mapped[str] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"), index=True)
    rank: Mapped[int] = mapped_column(Integer)  # 1-based, the [n] the model was shown
    chunk_id: Mapped[str] = mapped_column(String(64), index=True)
    doc_id: Mapped[str] = mapped_column(String(64), index=True)
    collection: Mapped[str] = mapped_column(String(128))
    source_path: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text, default="")
    section: Mapped[str] = mapped_column(Text, default="")
    text_sha256: Mapped[str] = mapped_column(String(64))
    kb_version: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)  # fused
    score_dense: Mapped[float | None] = mapped_column(Float, nullable=True)
    score_fulltext: Mapped[float | None] = mapped_column(Float, nullable=True)
    rank_dense: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rank_fulltext: Mapped[int | None] = mapped_column(Integer, nullable=True)

    interaction: Mapped[Interaction] = relationship(back_populates="passages")

    def to_dict(self) -> dict[str, Any]:
        return {
            c.name: getattr(self, c.name)
            for c in self.__table__.columns
            if c.name not in ("id", "interaction_id")
        }


class Feedback(Base):
    """One reviewer's judgement of one interaction. Append-only: a reviewer's later submission is a new row
    (the latest per reviewer counts), so several reviewers are kept apart and nothing is overwritten."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    interaction_id: Mapped[str] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    source: Mapped[str] = mapped_column(String(32), default="human")  # human | auto | eval
    thumbs: Mapped[int | None] = mapped_column(Integer, nullable=True)  # +1 / -1
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 1..5
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    corrected_answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    gold_ranks: Mapped[list[Any] | None] = mapped_column(
        JSON, nullable=True
    )  # ranks of shown passages marked relevant
    irrelevant_ranks: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    tags: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    # Knowledge-base passages the retriever did NOT show that support the answer (the reviewer found them):
    # [{chunk_id, kb_version, text_sha256}], pinned like the shown passages of the interaction.
    evidence: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)

    def to_dict(self) -> dict[str, Any]:
        data = {c.name: getattr(self, c.name) for c in self.__table__.columns}
        data["created_at"] = self.created_at.isoformat() + "Z"
        return data


class ReviewItem(Base):
    """An entry of the expert review queue: an interaction (or, later, an eval answer) sampled for review."""

    __tablename__ = "review_items"
    __table_args__ = (UniqueConstraint("interaction_id", "queue"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    queue: Mapped[str] = mapped_column(String(64), default="default")
    interaction_id: Mapped[str] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"), index=True)
    reason: Mapped[str] = mapped_column(String(32))  # thumbs_down | low_score | random | eval
    priority: Mapped[float] = mapped_column(Float, default=0.0)  # lower first
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | done | skipped
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class DatasetVersion(Base):
    """A built, immutable training dataset: its examples live in ``path``; everything that determined them
    (policy, sources, KB version, seed) is recorded so the same inputs rebuild the same content hash."""

    __tablename__ = "dataset_versions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    content_hash: Mapped[str] = mapped_column(String(64))
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(256))  # interactions | import:<file> | synth | mixed
    kb_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    path: Mapped[str] = mapped_column(Text)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # per split, per filter drops
    command: Mapped[str] = mapped_column(Text, default="")  # the command that rebuilds it
    contains_erased: Mapped[bool] = mapped_column(Boolean, default=False)
    erased_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    # ragloop.curation.pii.RECOGNIZER_VERSION when PII was replaced; None with PII off, or for a version
    # built before it was recorded (migration 0005), i.e. with version 1.
    pii_recognizer: Mapped[int | None] = mapped_column(Integer, nullable=True)


class DatasetSource(Base):
    """Lineage: which interactions a dataset version was built from (erasure follows these links)."""

    __tablename__ = "dataset_sources"

    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="CASCADE"), primary_key=True
    )
    interaction_id: Mapped[str] = mapped_column(String(32), primary_key=True, index=True)


class Job(Base):
    """A background job (training, evaluation), claimed and heartbeated through ``store.claims``: a job
    whose worker died with the machine is found by its stale heartbeat and dead ``owner``, marked
    ``interrupted`` and can be resumed from its checkpoint."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))  # sft | dpo | eval
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    # queued | running | succeeded | failed | cancelled | interrupted
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    owner: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # claims: host, boot_id, pid
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # step, total, loss, tokens/s, eta
    log_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    output_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # model_version id, metrics
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)


class RegistryEvent(Base):
    """Every change of an alias (promote, rollback, alias) is itself recorded, so a rollback can find the
    previous target and an auditor can see who served what when."""

    __tablename__ = "registry_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    action: Mapped[str] = mapped_column(String(32))  # alias | promote | rollback | register
    alias: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    model_version_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    previous_version_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    embedder_version: Mapped[str | None] = mapped_column(String(128), nullable=True)  # 0010; None: base


class EvalRun(Base):
    """One evaluation of one model version on one QA set under one retrieval condition."""

    __tablename__ = "eval_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    model_version: Mapped[str] = mapped_column(String(128), index=True)
    dataset: Mapped[str] = mapped_column(Text)  # dataset version id or file path
    dataset_hash: Mapped[str] = mapped_column(String(64), default="")
    condition: Mapped[str] = mapped_column(String(32))  # oracle | distractors | no-gold | closed-book | live
    n_distractors: Mapped[int | None] = mapped_column(Integer, nullable=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    n_examples: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="running")
    wall_s: Mapped[float] = mapped_column(Float, default=0.0)
    # written every few seconds while running: fences `interrupted` and proves a remote run dead (0002)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    owner: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # claims: host, boot_id, pid


class EvalExample(Base):
    """One question of an eval run: what was shown, what the model said, how it scored."""

    __tablename__ = "eval_examples"
    __table_args__ = (UniqueConstraint("run_id", "example_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"), index=True)
    example_id: Mapped[str] = mapped_column(String(128))
    question: Mapped[str] = mapped_column(Text)
    answers: Mapped[list[Any]] = mapped_column(JSON)  # gold answers
    passage_ids: Mapped[list[Any]] = mapped_column(JSON)  # shown, in order
    gold_ids: Mapped[list[Any]] = mapped_column(JSON)
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    output: Mapped[str] = mapped_column(Text)
    prediction: Mapped[str] = mapped_column(Text)  # extracted answer
    scores: Mapped[dict[str, Any]] = mapped_column(
        JSON
    )  # em, f1, label_correct, citation_p/r, grounded, abstained...
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    # expert review of eval answers goes through the review queue via a shadow Interaction
    interaction_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class PeriodicTask(Base):
    """A task every server of one database runs in turn, once per period (retention; A/B guardrails and
    drift checks later): claimed through ``store.claims`` like a job, so exactly one process runs it when
    it is due, and a process that dies while running it is taken over."""

    __tablename__ = "periodic_tasks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="idle")  # idle | running | interrupted
    owner: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    next_due: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # None: due now
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # when the last run began
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)  # None when the last run went well


class Experiment(Base):
    """An A/B experiment on live traffic of one alias: which serving configuration each arm gets (frozen at
    start), the candidate's share, what decides it, and how it ended. At most one runs per alias (a partial
    unique index). ``store.experiments`` creates, assigns and stops them; ``monitoring`` judges them."""

    __tablename__ = "experiments"
    __table_args__ = (
        Index(
            "uq_experiments_running_alias",
            "alias",
            unique=True,
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    alias: Mapped[str] = mapped_column(String(128), default="production", index=True)
    # An arm is a serving configuration: {"control": {"model_version": ...}, "candidate": {...}}; later
    # keys (embedder, kb_version) extend an arm without a migration.
    arms: Mapped[dict[str, Any]] = mapped_column(JSON)
    share: Mapped[float] = mapped_column(Float)  # the candidate's share now; 0 once rolled back
    ramp: Mapped[list[Any]] = mapped_column(JSON, default=list)  # shares stage by stage; [] = fixed share
    stage: Mapped[int] = mapped_column(Integer, default=0)  # index into ramp
    unit: Mapped[str] = mapped_column(String(32), default="auto")  # how a request's unit is chosen
    primary_metric: Mapped[str] = mapped_column(String(64))
    guardrails: Mapped[list[Any]] = mapped_column(JSON, default=list)
    min_units: Mapped[int] = mapped_column(Integer, default=0)
    max_days: Mapped[float | None] = mapped_column(Float, nullable=True)
    alpha: Mapped[float] = mapped_column(Float, default=0.05)
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    # running | stopped | rolled_back | promoted
    decision: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    stopped_by: Mapped[str | None] = mapped_column(String(64), nullable=True)  # user | guardrail | release
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # tuning n, hard limits, stages

    def to_dict(self) -> dict[str, Any]:
        data = {c.name: getattr(self, c.name) for c in self.__table__.columns}
        for name in ("created_at", "started_at", "stopped_at"):
            if data[name] is not None:
                data[name] = data[name].isoformat() + "Z"
        return data


class ExperimentSnapshot(Base):
    """The state of an experiment at one check (per arm, per metric: n, mean, interval, verdict; SRM), kept
    as a history so its charts can be drawn and a decision traced to what was known then."""

    __tablename__ = "experiment_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class RequestError(Base):
    """A live request that was resolved to a model and then failed (every slot busy: 503; the engine
    failed: 502). Not an interaction — nothing was answered — but counted: an A/B arm's error rate and the
    server's refusals are read from here. No message text: the request's content stays out of it."""

    __tablename__ = "request_errors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    source: Mapped[str] = mapped_column(String(32), default="api")
    status: Mapped[int] = mapped_column(Integer)  # the HTTP status answered
    code: Mapped[str] = mapped_column(String(64))  # the error code answered (overloaded, generation_error...)
    conversation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    api_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    model_version: Mapped[str] = mapped_column(String(128), index=True)
    model_alias: Mapped[str | None] = mapped_column(String(128), nullable=True)
    experiment_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    arm: Mapped[str | None] = mapped_column(String(16), nullable=True)
    unit: Mapped[str | None] = mapped_column(String(160), nullable=True)  # the A/B assignment unit
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)


class DriftReport(Base):
    """One drift check of one served model version (issue 18): every signal with its statistic, threshold
    and verdict, the knowledge-base changes since the version's training, and the recommendation. Kept as a
    history so a dashboard can draw each signal over time and an auditor can see what was known when."""

    __tablename__ = "drift_reports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    alias: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    model_version: Mapped[str] = mapped_column(String(128), index=True)
    embedder: Mapped[str] = mapped_column(String(128), default="")  # reference and window embedded with it
    window: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # since, until, last_n, n
    verdict: Mapped[str] = mapped_column(String(16))  # ok | warn | drift | not enough data
    retrain: Mapped[bool] = mapped_column(Boolean, default=False)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source: Mapped[str] = mapped_column(String(16), default="cli")  # cli | server | api


class Alert(Base):
    """Something a person should look at: a drift verdict, a guardrail rollback. Raised once per open
    condition (``dedupe_key``), shown on the dashboard, and posted to the configured webhook; delivery
    failures are kept with the alert instead of being lost in a log."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)  # drift | guardrail | ...
    severity: Mapped[str] = mapped_column(String(16), default="warn")  # info | warn | critical
    subject: Mapped[str] = mapped_column(String(160), default="")  # the alias, version or experiment
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    delivery_error: Mapped[str | None] = mapped_column(Text, nullable=True)
