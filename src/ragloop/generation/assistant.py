"""The assistant: retrieve, render, generate, parse citations, and record the interaction.

One ``Assistant`` per process serves every door (HTTP, ``ragloop ask``, evaluation). The interaction is
committed to the database before the answer is handed back (before the final event when streaming), so an
acknowledged answer is never lost; it holds what ``replay`` needs to rebuild the exact prompt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragloop.config import Settings
from ragloop.errors import RagloopError
from ragloop.generation.backends import Backend, Generation, GenParams, OpenAIBackend, TransformersBackend
from ragloop.generation.citations import parse_citations
from ragloop.generation.llamacpp import LlamaCppBackend
from ragloop.generation.models import resolve_model
from ragloop.generation.prompts import get_template, prompt_sha256
from ragloop.store import aliases, experiments
from ragloop.store.db import session_scope
from ragloop.store.models import Interaction, KBVersion, ModelVersion, Passage, RequestError

log = logging.getLogger("ragloop.assistant")

if TYPE_CHECKING:
    from ragloop.ingest.kb import KnowledgeBase
    from ragloop.retrieval.search import Hit, Retriever

ROLES = {"system", "user", "assistant"}
FOLLOW_UP = re.compile(
    r"^(and|but|also|what about|how about|why|so)\b|\b(it|its|they|them|their|this|that|these|those|he|she|his|her)\b",
    re.IGNORECASE,
)


@dataclass
class AnswerRequest:
    """One turn as a door received it. ``collections`` is the caller's scope: None means every collection."""

    messages: list[dict]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int = 0
    k: int | None = None
    collections: list[str] | None = None
    filters: dict | None = None
    conversation_id: str | None = None
    user_id: str | None = None
    api_key_id: str | None = None
    source: str = "api"


@dataclass
class AnswerResult:
    interaction_id: str
    conversation_id: str
    turn_index: int
    answer: str
    citations: list[dict]
    passages: list[Hit]
    model_version: str
    model_alias: str | None
    kb_version: int | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    latency: dict[str, float | None] = field(default_factory=dict)
    cached_prompt_tokens: int | None = None  # prompt tokens the engine did not prefill again (llamacpp)
    experiment_id: str | None = None  # the A/B experiment that served this turn, and its arm
    arm: str | None = None
    embedder_version: str | None = None  # the embedder that retrieved the passages; None: the base one


class AnswerStream:
    """A streamed answer: text deltas, then its ``AnswerResult``; ``model_version`` is the version answering,
    known before the first delta. ``close()`` stops the generation (a client that went away)."""

    def __init__(self, items: Iterator[str | AnswerResult], model_version: str):
        self._items = items
        self.model_version = model_version

    def __iter__(self) -> AnswerStream:
        return self

    def __next__(self) -> str | AnswerResult:
        return next(self._items)

    def close(self) -> None:
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


def passage_record(rank: int, hit: Hit) -> dict:
    """A passage as the model saw it, numbered like its [n] citations."""
    return {
        "rank": rank,
        "passage_id": hit.chunk_id,
        "doc_id": hit.doc_id,
        "collection": hit.collection,
        "source_path": hit.source_path,
        "title": hit.title,
        "section": hit.section,
        "text": hit.text,
        "score": hit.score,
        "score_dense": hit.score_dense,
        "score_fulltext": hit.score_fulltext,
    }


def answer_record(result: AnswerResult) -> dict:
    """An answered turn as JSON, the same from every door: the ``ragloop`` object of an API response (or of
    a stream's final event) and what ``ragloop ask --json`` prints. It holds what a client needs to show
    sources and to send feedback on this turn."""
    return {
        "interaction_id": result.interaction_id,
        "conversation_id": result.conversation_id,
        "turn_index": result.turn_index,
        "kb_version": result.kb_version,
        "model_version": result.model_version,
        "model_alias": result.model_alias,
        "embedder_version": result.embedder_version,
        "experiment_id": result.experiment_id,
        "arm": result.arm,
        "citations": result.citations,
        "passages": [passage_record(rank, hit) for rank, hit in enumerate(result.passages, start=1)],
        "latency_ms": {
            name.removesuffix("_ms"): None if value is None else round(value, 1)
            for name, value in result.latency.items()
        },
    }


@dataclass
class _Prepared:
    req: AnswerRequest
    messages: list[dict]
    query: str
    version: ModelVersion
    alias: str | None
    backend: Backend
    adapter: str | None
    hits: list[Hit]
    kb_version: int | None
    prompt: list[dict]
    params: GenParams
    conversation_id: str
    turn_index: int
    started: float
    retrieve_s: float
    # The A/B experiment serving this request, the arm its unit is assigned to and the unit; None outside.
    experiment_id: str | None = None
    arm: str | None = None
    unit: str | None = None
    embedder: str | None = None  # the embedder version that retrieved ``hits``; None: the base embedder


def normalise_messages(messages: Any, max_messages: int) -> list[dict]:
    """OpenAI-style messages -> [{"role", "content": str}]; clear errors for anything else."""
    if not isinstance(messages, list) or not messages:
        raise RagloopError("`messages` must be a non-empty list of {role, content} objects.")
    if len(messages) > max_messages:
        raise RagloopError(f"Too many messages ({len(messages)} > {max_messages}).")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RagloopError(f"messages[{i}] needs a role among {sorted(ROLES)}.")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(
                p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
            )
        if not isinstance(content, str):
            raise RagloopError(f"messages[{i}].content must be a string or a list of text parts.")
        out.append({"role": m["role"], "content": content})
    if out[-1]["role"] != "user" or not out[-1]["content"].strip():
        raise RagloopError("The last message must be a non-empty user message (the question).")
    return out


def retrieval_query(messages: list[dict]) -> str:
    """The last user turn, with the previous user turn prepended when the last one reads as a follow-up
    ("and for children?", "what does it say about fines?") and so cannot be searched on its own."""
    users = [m["content"].strip() for m in messages if m["role"] == "user"]
    last = users[-1]
    if len(users) > 1 and (len(last.split()) <= 6 or FOLLOW_UP.search(last)):
        return f"{users[-2]} {last}"
    return last


def thread_sha256(messages: list[dict]) -> str:
    """Identity of a conversation so far (user and assistant turns, whitespace-trimmed)."""
    turns = [[m["role"], m["content"].strip()] for m in messages if m["role"] in ("user", "assistant")]
    return hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode()).hexdigest()


class Assistant:
    """Serves answers for one project home. Thread-safe: the server calls it from a thread pool."""

    def __init__(
        self, settings: Settings, kb: KnowledgeBase | None = None, retriever: Retriever | None = None
    ):
        self.settings = settings
        self._kb, self._retriever = kb, retriever
        self._open_lock = threading.Lock()
        self.template = get_template(settings.prompt.template)
        self._lock = threading.Lock()
        self._backends: dict[str, Backend] = {}
        self._tagged: set[int] = set()
        gen = settings.generator
        if gen.backend == "openai":
            if not gen.base_url:
                raise RagloopError("[generator] backend = 'openai' needs base_url.")
            self.base_name = f"{gen.base_url}#{gen.model}"
            self.base_hash = hashlib.sha256(self.base_name.encode()).hexdigest()
            self.base_dir = None
        elif gen.backend in ("transformers", "llamacpp"):
            # The same base either way (llamacpp serves a GGUF written from this folder), so versions
            # trained on it are served by both.
            self.base_dir, self.base_hash = resolve_model(gen.model, settings.model_cache_dir)
            self.base_name = gen.model
        else:
            raise RagloopError(
                f"Unknown generator backend {gen.backend!r}: use 'transformers', 'llamacpp' or 'openai'."
            )
        with session_scope(settings.db_url) as s:
            self.base_version_id = aliases.ensure_base_version(s, self.base_name, self.base_hash).id
        # A/B experiments are read from the database at most every 2 s, not on each request: assignment
        # stays a dict lookup and a hash, and a start or stop elsewhere reaches this process in 2 s.
        self.experiments = experiments.RunningExperiments(settings.db_url)

    # Models ----------------------------------------------------------------------------------------
    # The knowledge base opens on first use: an evaluation with its own passages (every condition but
    # live) never reads it, and so runs where LanceDB has no index, or is not even installed.
    @property
    def kb(self) -> KnowledgeBase:
        if self._kb is None:
            with self._open_lock:
                if self._kb is None:
                    from ragloop.ingest.kb import KnowledgeBase

                    self._kb = KnowledgeBase(self.settings)
        return self._kb

    @property
    def retriever(self) -> Retriever:
        if self._retriever is None:
            kb = self.kb
            with self._open_lock:
                if self._retriever is None:
                    from ragloop.retrieval.search import Retriever

                    self._retriever = Retriever(self.settings, kb)
        return self._retriever

    def _backend(self, base_hash: str) -> Backend:
        with self._lock:
            backend = self._backends.get(base_hash)
            if backend is None:
                if base_hash != self.base_hash:
                    raise RagloopError(
                        "This model version was trained on another base model than the one configured."
                    )
                gen = self.settings.generator
                if gen.backend == "openai":
                    import os

                    backend = OpenAIBackend(
                        gen.base_url or "",
                        gen.model,
                        os.environ.get(gen.api_key_env),
                        gen.timeout_s,
                        gen.max_retries,
                    )
                elif gen.backend == "llamacpp":
                    backend = self._llamacpp()
                else:
                    backend = TransformersBackend(self.base_dir, threads=gen.threads, device=gen.device)  # type: ignore[arg-type]
                self._backends[base_hash] = backend
            return backend

    def _llamacpp(self) -> LlamaCppBackend:
        """The llama.cpp engine over the base GGUF in ``base_format``, written once into the model cache.

        The cores are split so: the engine's threads take every core (``engine_threads``) because decoding
        is where a request spends its time, and torch, which here only embeds the query (a few ms per
        request on one core), gets one thread unless ``[generator] threads`` says otherwise, so it takes
        at most one core from the engine for those milliseconds instead of contending for all of them."""
        import torch

        from ragloop import torch_thread
        from ragloop.generation.gguf import base_gguf

        gen = self.settings.generator
        torch_thread.run(torch.set_num_threads, gen.threads or 1)  # all torch work runs on that thread
        return LlamaCppBackend(
            base_gguf(self.settings, gen.base_format),
            self.base_dir,  # type: ignore[arg-type]
            slots=gen.slots,
            ctx_per_slot=gen.ctx_per_slot,
            max_adapters=gen.max_adapters,
            queue=gen.queue,
            threads=gen.engine_threads,
        )

    def backend_for(self, version: ModelVersion) -> tuple[Backend, str | None]:
        """The loaded backend and adapter name for a model version (adapters are loaded on first use:
        a newly promoted version is served without a restart)."""
        gen = self.settings.generator
        remote_lora = gen.backend == "openai" and gen.runtime_lora
        # The remote server's base weights cannot be hashed from here: serving the version's base there is
        # the operator's part (docs/training.md); an adapter of another shape is refused by its load.
        backend = self._backend(self.base_hash if remote_lora and version.adapter_path else version.base_hash)
        if not version.adapter_path:
            return backend, None
        if isinstance(backend, TransformersBackend) or (remote_lora and isinstance(backend, OpenAIBackend)):
            backend.load_adapter(version.id, version.adapter_path)
        elif isinstance(backend, LlamaCppBackend) and not backend.knows(version.id):
            from ragloop.generation.gguf import gguf_adapter_for

            backend.load_adapter(version.id, gguf_adapter_for(self.settings, version))
        return backend, version.id

    def close(self) -> None:
        """Stop the engines this assistant started (llamacpp); a later request starts them again."""
        with self._lock:
            backends = list(self._backends.values())
            self._backends.clear()
        for backend in backends:
            close = getattr(backend, "close", None)
            if close is not None:
                close()

    def warm_up(self) -> None:
        """Load the default model now rather than on the first request."""
        with session_scope(self.settings.db_url) as s:
            version, alias = aliases.resolve(s, None)
            embedder = aliases.served_pair(s, alias).embedder_version if alias else None
        self.backend_for(version)
        self.retriever.embed_query("warm up", embedder)  # loads the embedding model the alias serves too

    # Answering -------------------------------------------------------------------------------------
    def _tag(self, version: int) -> None:
        """Protect a KB version that a record refers to from compaction and cleanup."""
        if version in self._tagged:
            return
        tag = self.kb.tag(version)
        with session_scope(self.settings.db_url) as s:
            row = s.get(KBVersion, version)
            if row is not None and row.tag != tag:
                row.tag = tag
        self._tagged.add(version)

    def _prepare(self, req: AnswerRequest) -> _Prepared:
        started = time.perf_counter()
        limits = self.settings.limits
        messages = normalise_messages(req.messages, limits.max_messages)
        gen = self.settings.generator
        max_tokens = req.max_tokens if req.max_tokens is not None else gen.max_new_tokens
        if not 1 <= max_tokens <= limits.max_new_tokens:
            raise RagloopError(f"max_tokens must be between 1 and {limits.max_new_tokens}.")
        temperature = req.temperature if req.temperature is not None else gen.temperature
        if not 0 <= temperature <= 2:
            raise RagloopError("temperature must be between 0 and 2.")
        params = GenParams(max_new_tokens=max_tokens, temperature=temperature, seed=req.seed)

        with session_scope(self.settings.db_url) as s:
            version, alias = aliases.resolve(s, req.model)
            # An alias serves a pair (model, embedder); a version named directly, the base embedder.
            embedder = aliases.served_pair(s, alias).embedder_version if alias is not None else None
            conversation_id, turn_index = self._conversation(s, req, messages)
            experiment_id: str | None = None
            arm: str | None = None
            unit: str | None = None
            assigned = self._arm(req, alias, conversation_id)
            if assigned is not None:
                running, arm, unit = assigned
                served = s.get(ModelVersion, running.model_version(arm))
                if served is None:  # the arm's version was removed: serve the alias, outside the experiment
                    arm = unit = None
                else:
                    version, alias, experiment_id = served, running.alias, running.id
                    embedder = running.embedder_version(arm)
        backend, adapter = self.backend_for(version)

        query = retrieval_query(messages)
        t0 = time.perf_counter()
        for _ in range(3):  # re-run if an ingest moved the KB under us, so the recorded version is exact
            kb_version = self.kb.version or None
            hits = self.retriever.search(
                query,
                req.k or self.settings.retrieval.top_k,
                collections=req.collections,
                filters=req.filters,
                embedder=embedder,
            )
            if (self.kb.version or None) == kb_version:
                break
        retrieve_s = time.perf_counter() - t0
        if kb_version is not None and hits:
            self._tag(kb_version)
        prompt = self.template.render(messages, hits)
        return _Prepared(
            req,
            messages,
            query,
            version,
            alias,
            backend,
            adapter,
            hits,
            kb_version,
            prompt,
            params,
            conversation_id,
            turn_index,
            started,
            retrieve_s,
            experiment_id,
            arm,
            unit,
            embedder,
        )

    def _arm(
        self, req: AnswerRequest, alias: str | None, conversation_id: str
    ) -> tuple[experiments.ExperimentView, str, str] | None:
        """The running experiment on the alias a request resolved through, the arm its unit is assigned to
        and the unit; None for a request naming a version id (it asked for that version), for traffic that is not live
        (evaluation, replay, benchmarks) and for an alias without a running experiment."""
        if alias is None or req.source not in experiments.LIVE_SOURCES:
            return None
        # The name asked for, not the alias it resolved to: before its first promotion `production` resolves
        # to `base`, and an experiment on production must still see that traffic.
        running = self.experiments.for_alias(req.model or aliases.DEFAULT_ALIAS)
        if running is None:
            return None
        unit = experiments.unit_of(
            conversation_id, client_conversation=bool(req.conversation_id), user_id=req.user_id
        )
        return running, running.arm_for(unit), unit

    def _conversation(self, session, req: AnswerRequest, messages: list[dict]) -> tuple[str, int]:  # type: ignore[no-untyped-def]
        turn_index = sum(1 for m in messages if m["role"] == "user") - 1
        if req.conversation_id:
            return req.conversation_id[:64], turn_index
        if turn_index > 0:
            from sqlalchemy import select

            # Two conversations can hold the same thread (the same opening, the same answer): the oldest
            # one is taken, so a thread's next turns always join the same conversation (and A/B unit).
            # A request naming its user looks among that user's turns only: two people who opened with
            # the same question and got the same answer (greedy decoding gives it) stay two
            # conversations, so erasing one person's conversation never takes the other's turns.
            parents = select(Interaction.conversation_id).where(
                Interaction.thread_sha256 == thread_sha256(messages[:-1])
            )
            if req.user_id:
                parents = parents.where(Interaction.user_id == req.user_id)
            parent = session.scalars(parents.order_by(Interaction.created_at, Interaction.id)).first()
            if parent:
                return parent, turn_index
        return uuid.uuid4().hex, turn_index

    def _record(self, p: _Prepared, gen: Generation) -> AnswerResult:
        citations = parse_citations(gen.text, p.hits)
        total_s = time.perf_counter() - p.started
        interaction = Interaction(
            conversation_id=p.conversation_id,
            turn_index=p.turn_index,
            user_id=p.req.user_id,
            api_key_id=p.req.api_key_id,
            source=p.req.source,
            messages=p.messages,
            thread_sha256=thread_sha256([*p.messages, {"role": "assistant", "content": gen.text}]),
            retrieval_query=p.query,
            collections=p.req.collections,
            filters=p.req.filters,
            kb_version=p.kb_version,
            template_id=self.template.id,
            template_version=self.template.version,
            prompt_sha256=prompt_sha256(p.prompt),
            model_version=p.version.id,
            model_alias=p.alias,
            experiment_id=p.experiment_id,
            arm=p.arm,
            experiment_unit=p.unit,
            embedder_version=p.embedder,
            gen_params=p.params.to_dict(),
            answer=gen.text,
            citations=citations,
            finish_reason=gen.finish_reason,
            prompt_tokens=gen.prompt_tokens,
            completion_tokens=gen.completion_tokens,
            latency_retrieve_ms=p.retrieve_s * 1000,
            latency_generate_ms=gen.generate_s * 1000,
            latency_first_token_ms=None
            if gen.first_token_s is None
            else (p.retrieve_s + gen.first_token_s) * 1000,
            latency_total_ms=total_s * 1000,
            passages=[
                Passage(
                    rank=rank,
                    chunk_id=h.chunk_id,
                    doc_id=h.doc_id,
                    collection=h.collection,
                    source_path=h.source_path,
                    title=h.title,
                    section=h.section,
                    text_sha256=h.text_sha256,
                    kb_version=p.kb_version or 0,
                    score=h.score,
                    score_dense=h.score_dense,
                    score_fulltext=h.score_fulltext,
                    rank_dense=h.rank_dense,
                    rank_fulltext=h.rank_fulltext,
                )
                for rank, h in enumerate(p.hits, start=1)
            ],
        )
        with session_scope(self.settings.db_url) as s:
            s.add(interaction)
        return AnswerResult(
            interaction_id=interaction.id,
            conversation_id=p.conversation_id,
            turn_index=p.turn_index,
            answer=gen.text,
            citations=citations,
            passages=p.hits,
            model_version=p.version.id,
            model_alias=p.alias,
            kb_version=p.kb_version,
            prompt_tokens=gen.prompt_tokens,
            completion_tokens=gen.completion_tokens,
            finish_reason=gen.finish_reason,
            cached_prompt_tokens=gen.extra.get("cached_prompt_tokens"),
            experiment_id=interaction.experiment_id,
            arm=interaction.arm,
            embedder_version=p.embedder,
            latency={
                "retrieve_ms": interaction.latency_retrieve_ms,
                "generate_ms": interaction.latency_generate_ms,
                "first_token_ms": interaction.latency_first_token_ms,
                "total_ms": interaction.latency_total_ms,
            },
        )

    def answer(self, req: AnswerRequest) -> AnswerResult:
        """Answer one turn and return once it is recorded."""
        p = self._prepare(req)
        try:
            gen = p.backend.generate(p.prompt, p.params, p.adapter)
        except BaseException as exc:
            self._record_error(p, exc)
            raise
        return self._record(p, gen)

    def _record_error(self, p: _Prepared, exc: BaseException) -> None:
        """Count a resolved request that failed on the server's side (every slot busy: 503; the engine
        failed: 502; anything unexpected: 500) with the version and arm that would have answered: refusals
        are visible, and an A/B arm's error rate is read from these rows. A client's own mistake (4xx) and
        a stopped process are not the server failing and are not counted. Never raises: the caller is
        already handling an error."""
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            return
        status = exc.status if isinstance(exc, RagloopError) else 500
        if status < 500:
            return
        try:
            with session_scope(self.settings.db_url) as s:
                s.add(RequestError(
                    source=p.req.source, status=status,
                    code=exc.code if isinstance(exc, RagloopError) else "server_error",
                    conversation_id=p.conversation_id, user_id=p.req.user_id, api_key_id=p.req.api_key_id,
                    model_version=p.version.id, model_alias=p.alias, experiment_id=p.experiment_id, arm=p.arm,
                    unit=p.unit, latency_ms=(time.perf_counter() - p.started) * 1000,
                ))  # fmt: skip
        except Exception:  # the database is the likely cause of the failure itself: the error stands alone
            log.warning("could not record a failed request", exc_info=True)

    def stream(self, req: AnswerRequest) -> AnswerStream:
        """Yield text deltas, then the ``AnswerResult`` once the interaction is committed.

        Validation and retrieval happen before the first yield, so a bad request fails before any
        streaming response has started; the returned stream already knows the version that answers (an
        A/B arm's, not necessarily the alias's), so a door can label every chunk with it."""
        p = self._prepare(req)
        # Opened here, not at the first item: a full engine (llamacpp) refuses now, so the door answers
        # 503 instead of breaking off a stream it has started.
        try:
            items = p.backend.stream(p.prompt, p.params, p.adapter)
        except BaseException as exc:
            self._record_error(p, exc)
            raise
        return AnswerStream(self._stream(p, items), p.version.id)

    def _stream(self, p: _Prepared, items: Iterator[str | Generation]) -> Iterator[str | AnswerResult]:
        final: Generation | None = None
        try:
            for item in items:
                if isinstance(item, Generation):
                    final = item
                else:
                    yield item
        except BaseException as exc:  # broke off mid-stream: the client saw an error event
            self._record_error(p, exc)
            raise
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a consumer that stopped stops the generation (llamacpp frees the slot)
                close()
        assert final is not None
        yield self._record(p, final)
