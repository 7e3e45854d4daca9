"""The ``llamacpp`` generator backend: llama.cpp's server engine in this process (``xllamacpp``), with
continuous batching over several slots, prompt caching, and LoRA adapters chosen per request.

What the engine does, measured on the build pyproject pins (issue 16's research), and what follows here:

* Adapters are launch parameters of an engine. Serving a version the engine lacks means starting a second
  engine with the new adapter set (about a second), sending new requests there, and dropping the old one
  once its last request has finished. At most ``max_adapters`` are loaded; the least recently used goes.
* An adapter loaded without a scale starts at 1.0, and a request whose ``lora`` list is absent or empty gets
  every adapter at its load-time scale; worse, that choice sticks to the slot. So adapters are loaded at
  scale 0 and every request names every loaded adapter: the base is all zeros.
* A non-streamed in-process call cannot be stopped; a streamed one stops when its callback returns True. So
  every request streams internally, and a consumer that goes away (a client that disconnected) stops its
  generation at the next token and frees its slot.
* Each engine also opens llama-server's HTTP port on loopback. It is locked with a random API key that
  nothing ever sends, so the engine answers only through this module.

The prompt is tokenised here with the model's own Hugging Face tokenizer and chat template, exactly as the
transformers backend does, and sent as token ids: both backends feed the model the same tokens for the same
recorded messages, and replay rebuilds them whichever backend answered.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import secrets
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragloop.errors import GenerationError, Overloaded, RagloopError
from ragloop.generation.backends import Generation, GenParams

log = logging.getLogger("ragloop.generation.llamacpp")

_END = object()  # the worker's last item on a request's queue


def default_threads() -> int:
    """Every core this process may run on: the engine's share when ``[generator] engine_threads`` is unset."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(eq=False)
class _Engine:
    """One ``xllamacpp.Server`` and the adapters it was started with (their ids are positions here)."""

    server: Any
    adapters: tuple[str, ...]
    active: int = 0  # requests admitted and not finished
    retired: bool = False  # a newer engine takes new requests; this one is dropped once idle
    started_s: float = 0.0

    def lora(self, adapter: str | None) -> list[dict]:
        """The full ``lora`` list of a request: every loaded adapter, ``adapter`` at 1 and the rest at 0."""
        return [{"id": i, "scale": 1.0 if name == adapter else 0.0} for i, name in enumerate(self.adapters)]

    def close(self) -> None:
        # xllamacpp has no close method: dropping the last reference stops the engine's loop and joins it.
        server, self.server = self.server, None
        del server


@dataclass
class _Request:
    """A generation in flight: the worker thread feeds ``items``; ``cancel`` makes its callback stop."""

    items: queue.Queue = field(default_factory=queue.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)


class LlamaCppBackend:
    """Answers through llama.cpp engines started in this process. Thread-safe; any number of threads may
    generate at once: up to ``slots`` decode together, up to ``queue`` more wait, and past that a request
    is refused with ``Overloaded`` (HTTP 503) before anything is generated or recorded."""

    def __init__(
        self,
        base_gguf: Path,
        tokenizer_dir: Path,
        *,
        slots: int = 4,
        ctx_per_slot: int = 4096,
        max_adapters: int = 4,
        queue: int = 16,
        threads: int | None = None,
    ):
        # OpenMP waits as libgomp does by default (spin briefly, then sleep). Measured on the idle 2-core
        # machine (bench/serving.py, single stream): passive waiting halved ragloop's decode (34 against
        # 61 tokens/s); where the cores are shared with other busy processes, OMP_WAIT_POLICY=passive helps.
        try:
            import xllamacpp
        except ImportError as exc:  # pragma: no cover - install problem
            raise RagloopError(
                "[generator] backend = 'llamacpp' needs the xllamacpp package: `pip install xllamacpp`."
            ) from exc
        from transformers import AutoTokenizer

        self._xl = xllamacpp
        self.base_gguf = Path(base_gguf)
        self.slots, self.ctx_per_slot = slots, ctx_per_slot
        self.max_adapters, self.queue = max_adapters, queue
        self.threads = threads or default_threads()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        except Exception as exc:
            raise GenerationError(f"Could not load the tokenizer from {tokenizer_dir}: {exc}") from exc
        # A fast tokenizer raises "Already borrowed" when two threads use it at once.
        self._tokenizer_lock = threading.Lock()
        self._lock = threading.Lock()  # the engines, the counts, the adapters' paths and last use
        self._swap_lock = threading.Lock()  # one engine start at a time
        self._paths: dict[str, Path] = {}  # every adapter ever loaded, so an evicted one can come back
        self._used: dict[str, float] = {}  # adapter -> last request (monotonic), for LRU eviction
        self._in_flight = 0
        self._generate_s = 1.0  # running mean of a generation's wall time: the Retry-After hint
        self._closed = False
        self._engine = self._start(())
        self._draining: list[_Engine] = []
        # Each engine start after the first: its adapters, seconds, and the requests the old engine still
        # had (bench/serving.py reads them).
        self.swaps: list[dict] = []

    # Engines ---------------------------------------------------------------------------------------------
    def _start(self, adapters: tuple[str, ...]) -> _Engine:
        """A new engine over the base with ``adapters`` (all at scale 0); GenerationError if any fails."""
        xl = self._xl
        params = xl.CommonParams()
        params.model.path = str(self.base_gguf)
        params.n_parallel = self.slots
        params.n_ctx = self.slots * self.ctx_per_slot  # llama.cpp's n_ctx is the total, split over slots
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        params.lora_init_without_apply = True
        params.lora_adapters = [xl.CommonAdapterLoraInfo(str(self._paths[name]), 0.0) for name in adapters]
        params.api_keys = [secrets.token_hex(32)]  # locks the engine's own HTTP port: see the module doc
        params.verbosity = 1  # errors only: llama.cpp's per-request info lines would flood the server log
        params.endpoint_metrics = True
        started = time.perf_counter()
        try:
            server = xl.Server(params)
            # Returns once the engine's loop runs. An engine dropped before its loop has started never
            # stops (its destructor waits forever: seen with xllamacpp 2026.10), so none leaves here earlier.
            server.handle_metrics()
        except Exception as exc:  # xllamacpp says only "Failed to init server"; llama.cpp's log says why
            what = f"adapter(s) {', '.join(adapters)}" if adapters else "no adapter"
            raise GenerationError(
                f"llama.cpp could not start on {self.base_gguf.name} with {what} ({exc}); the lines "
                "llama.cpp printed just before this say which file it could not load."
            ) from exc
        return _Engine(server, adapters, started_s=time.perf_counter() - started)

    def metrics(self) -> dict[str, float]:
        """llama.cpp's counters of the engine that takes new requests (tokens predicted, prompt tokens
        processed and cached, decode calls...), by their Prometheus names without the ``llamacpp:``."""
        with self._lock:
            server = self._engine.server
        if server is None:
            return {}
        values = {}
        for line in server.handle_metrics().splitlines():
            if line.startswith("llamacpp:"):
                name, _, value = line.partition(" ")
                values[name.removeprefix("llamacpp:")] = float(value)
        return values

    def knows(self, name: str) -> bool:
        """Whether adapter ``name`` was loaded once (it may have been evicted since: it comes back on use)."""
        with self._lock:
            return name in self._paths

    def loaded_adapters(self) -> tuple[str, ...]:
        """The adapters of the engine that takes new requests."""
        with self._lock:
            return self._engine.adapters

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Make GGUF LoRA adapter ``path`` servable as ``name`` (idempotent). A new adapter starts a new
        engine with it and the most recently used others (up to ``max_adapters``); the old engine finishes
        its requests and is then dropped. Raises GenerationError, leaving the serving engine as it was, if
        the adapter does not load."""
        with self._swap_lock:
            with self._lock:
                if self._closed:
                    raise GenerationError("The llama.cpp backend is closed.")
                if name in self._engine.adapters and self._paths.get(name) == Path(path):
                    self._used[name] = time.monotonic()
                    return
                others = [a for a in self._engine.adapters if a != name]
                others.sort(key=lambda a: self._used.get(a, 0.0), reverse=True)
                adapters = (*others[: self.max_adapters - 1], name)
                previous = self._paths.get(name)
                self._paths[name] = Path(path)
            started = time.perf_counter()
            try:
                engine = self._start(adapters)
            except GenerationError:
                with self._lock:
                    if previous is None:
                        self._paths.pop(name, None)
                    else:
                        self._paths[name] = previous
                raise
            with self._lock:
                old, self._engine = self._engine, engine
                self._used[name] = time.monotonic()
                old.retired = True
                idle = old.active == 0
                if not idle:
                    self._draining.append(old)
                self.swaps.append(
                    {
                        "adapters": list(adapters),
                        "seconds": time.perf_counter() - started,
                        "draining_requests": old.active,  # the old engine finishes these, then goes
                    }
                )
            if idle:
                old.close()
            log.info(
                "llama.cpp engine started with %d adapter(s) in %.2f s (%s)",
                len(adapters),
                engine.started_s,
                "old engine dropped" if idle else "old engine drains its requests",
            )

    def close(self) -> None:
        """Stop every engine now; later requests raise GenerationError."""
        with self._lock:
            self._closed = True
            engines = [self._engine, *self._draining]
            self._draining = []
        for engine in engines:
            engine.retired = True
            if engine.active == 0:
                engine.close()

    # Admission -------------------------------------------------------------------------------------------
    def _admit(self, adapter: str | None) -> _Engine:
        """The engine for one request, counted in; Overloaded when slots and queue are all taken."""
        while True:
            with self._lock:
                if self._closed:
                    raise GenerationError("The llama.cpp backend is closed.")
                if self._in_flight >= self.slots + self.queue:
                    retry = max(1, math.ceil(self._generate_s))
                    log.warning(
                        "llama.cpp engine full (%d generating or waiting, [generator] slots = %d, queue = %d): "
                        "request refused with 503, Retry-After %d s",
                        self._in_flight,
                        self.slots,
                        self.queue,
                        retry,
                    )
                    raise Overloaded(
                        f"All {self.slots} generation slots are busy and {self.queue} requests are already "
                        f"waiting; retry in {retry} s. (An operator can raise [generator] slots or queue.)",
                        retry_after=retry,
                    )
                engine = self._engine
                if adapter is None or adapter in engine.adapters:
                    engine.active += 1
                    self._in_flight += 1
                    if adapter is not None:
                        self._used[adapter] = time.monotonic()
                    return engine
                path = self._paths.get(adapter)
            if path is None:
                raise GenerationError(f"Adapter {adapter!r} is not loaded.")
            self.load_adapter(adapter, path)  # evicted since it was loaded: bring it back

    def _release(self, engine: _Engine, seconds: float | None) -> None:
        with self._lock:
            engine.active -= 1
            self._in_flight -= 1
            if seconds is not None:
                self._generate_s = 0.8 * self._generate_s + 0.2 * seconds
            drop = engine.retired and engine.active == 0
            if drop and engine in self._draining:
                self._draining.remove(engine)
        if drop:
            engine.close()

    # Generation ------------------------------------------------------------------------------------------
    def encode(self, messages: list[dict]) -> list[int]:
        """The prompt's token ids, as the transformers backend builds them (the model's chat template)."""
        with self._tokenizer_lock:
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_dict=True
            )
        return list(encoded["input_ids"])

    def _body(self, ids: list[int], params: GenParams, engine: _Engine, adapter: str | None) -> dict:
        body: dict[str, Any] = {
            "prompt": ids,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,  # 0: greedy
            "top_p": params.top_p,
            "seed": params.seed,
            "lora": engine.lora(adapter),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.temperature > 0:
            # Sample as transformers does from temperature and top_p alone: llama.cpp's default chain also
            # cuts to the top 40 tokens and by min_p 0.05.
            body.update(top_k=0, min_p=0.0)
        return body

    def stream(
        self, messages: list[dict], params: GenParams, adapter: str | None = None
    ) -> Iterator[str | Generation]:
        """Yields text deltas, then one final ``Generation``. Tokenising and admission happen in this call,
        before the first item, so a full engine raises Overloaded here; closing the iterator (a client that
        went away) stops the generation at its next token."""
        ids = self.encode(messages)
        start = time.perf_counter()
        engine = self._admit(adapter)
        request = _Request()
        try:
            body = self._body(ids, params, engine, adapter)
            worker = threading.Thread(
                target=self._work, args=(engine, body, request, start), name="ragloop-llamacpp", daemon=True
            )
            worker.start()
        except BaseException:
            self._release(engine, None)
            raise
        items = self._items(request, ids, start)
        # An iterator dropped unstarted never runs its ``finally``: stop the generation when it is collected.
        weakref.finalize(items, request.cancel.set)
        return items

    def _work(self, engine: _Engine, body: dict, request: _Request, start: float) -> None:
        """The worker thread of one request: the engine call blocks it (without the GIL) until the answer
        ends or the callback asks to stop."""

        def on_chunk(chunk: dict) -> bool:
            request.items.put(chunk)
            return request.cancel.is_set()

        seconds = None
        try:
            engine.server.handle_completions(body, on_chunk)
            seconds = time.perf_counter() - start
        except BaseException as exc:
            request.items.put(exc)
        finally:
            self._release(engine, seconds)
            request.items.put(_END)

    def _items(self, request: _Request, ids: list[int], start: float) -> Iterator[str | Generation]:
        first: float | None = None
        pieces: list[str] = []
        finish: str | None = None
        usage: dict = {}
        timings: dict = {}
        try:
            while True:
                item = request.items.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise GenerationError(f"llama.cpp failed: {item}") from item
                if "error" in item or "choices" not in item:
                    raise _engine_error(item)
                usage = item.get("usage") or usage
                timings = item.get("timings") or timings
                for choice in item["choices"]:
                    finish = choice.get("finish_reason") or finish
                    piece = choice.get("text")
                    if piece:
                        if first is None:
                            first = time.perf_counter() - start
                        pieces.append(piece)
                        yield piece
        finally:
            request.cancel.set()  # a consumer that stopped early stops the engine at its next token
        if finish is None:
            raise GenerationError("llama.cpp ended the answer without a finish reason (see its log).")
        details = usage.get("prompt_tokens_details") or {}
        yield Generation(
            text="".join(pieces).strip(),
            prompt_tokens=usage.get("prompt_tokens", len(ids)),
            completion_tokens=usage.get("completion_tokens", 0),
            finish_reason=finish,
            first_token_s=first,
            generate_s=time.perf_counter() - start,
            # Prompt tokens the engine found in a slot's cache (a shared system prompt, earlier turns)
            # and did not prefill again; the engine's own timings ride along for the benchmarks.
            extra={"cached_prompt_tokens": details.get("cached_tokens"), "engine_timings": timings},
        )

    def generate(self, messages: list[dict], params: GenParams, adapter: str | None = None) -> Generation:
        """The streamed generation, collected (a non-streamed engine call could not be stopped)."""
        final: Generation | None = None
        for item in self.stream(messages, params, adapter):
            if isinstance(item, Generation):
                final = item
        assert final is not None
        return final

    def generate_batch(
        self, batch: list[list[dict]], params: GenParams, adapter: str | None = None
    ) -> list[Generation]:
        """Greedy answers to several prompts, decoded together in the engine's slots (evaluation's
        throughput path; greedy like the transformers backend's batches). At most ``slots`` are sent at
        once, so a batch never fills the queue; each keeps its own timings."""
        greedy = GenParams(max_new_tokens=params.max_new_tokens, temperature=0.0)
        with ThreadPoolExecutor(max_workers=max(1, min(len(batch), self.slots))) as pool:
            return list(pool.map(lambda messages: self.generate(messages, greedy, adapter), batch))


def _engine_error(chunk: dict) -> RagloopError:
    """The ragloop error for an error object llama.cpp answered with."""
    error = chunk.get("error", chunk)
    message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    if isinstance(error, dict) and error.get("type") == "exceed_context_size_error":
        return RagloopError(
            f"The prompt is too long for one generation slot: {message}. Send fewer or shorter messages, "
            "ask for fewer passages (ragloop.k), or raise [generator] ctx_per_slot."
        )
    return GenerationError(f"llama.cpp refused the request: {message}")
