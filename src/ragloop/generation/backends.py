"""Generator backends: one small interface, two real implementations.

* ``TransformersBackend`` runs a causal LM in-process (fp32 on CPU), optionally with PEFT LoRA adapters that
  can be added and switched per request without a restart.
* ``OpenAIBackend`` sends the same chat messages to any OpenAI-compatible server (vLLM with multi-LoRA,
  llama.cpp server, OpenAI, another ragloop) through the ``openai`` client: the scale-out path.

Both take the rendered chat messages, so what is recorded is what was sent whichever backend answers.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ragloop import torch_thread
from ragloop.errors import ConfigError, GenerationError, RagloopError
from ragloop.generation.models import file_sha256


@dataclass
class GenParams:
    """Generation parameters, recorded with every interaction."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }


@dataclass
class Generation:
    """What a backend returns after (or at the end of) a generation."""

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    first_token_s: float | None = None
    generate_s: float = 0.0
    extra: dict = field(default_factory=dict)


class Backend(Protocol):
    def generate(self, messages: list[dict], params: GenParams, adapter: str | None = None) -> Generation: ...

    def stream(
        self, messages: list[dict], params: GenParams, adapter: str | None = None
    ) -> Iterator[str | Generation]:
        """Yields text deltas, then one final ``Generation`` with the counts."""
        ...


class TransformersBackend:
    """An in-process Hugging Face causal LM. One generation at a time per loaded model (a lock): on a CPU
    two concurrent generations only thrash the cores, and a shared PEFT model must not switch adapters
    under a running generation."""

    def __init__(self, model_dir: Path, threads: int | None = None, device: str = "auto"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a server log is no place for per-tensor progress bars
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        except Exception as exc:
            raise GenerationError(f"Could not load the generator from {model_dir}: {exc}") from exc
        from ragloop.accel import resolve_device

        self.device = resolve_device(device)  # ConfigError (a RagloopError) for a GPU that is not there
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lock = threading.Lock()
        self.adapters: dict[str, str] = {}  # adapter name -> path
        self._peft = None

    # Adapters --------------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str) -> None:
        """Attach a LoRA adapter under ``name`` (idempotent); later requests pick it per call."""
        if name in self.adapters:
            return
        from peft import PeftModel
        from peft.utils import load_peft_weights

        with self.lock:
            try:
                # Read the weights before the served model is touched: loading injects the LoRA layers
                # first, so a truncated file would otherwise fail with the model already altered.
                load_peft_weights(path, device="cpu")
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(self.model, path, adapter_name=name)
                    self._peft.eval()
                else:
                    self._peft.load_adapter(path, adapter_name=name)
            except Exception as exc:
                raise GenerationError(f"Could not load adapter {path}: {exc}") from exc
            self.adapters[name] = path

    def _model_for(self, adapter: str | None):  # type: ignore[no-untyped-def]
        """The module to run, with the right adapter active. Call under the lock."""
        if adapter is None:
            if self._peft is None:
                return self.model, None
            return self._peft, self._peft.disable_adapter()
        if adapter not in self.adapters:
            raise GenerationError(f"Adapter {adapter!r} is not loaded.")
        self._peft.set_adapter(adapter)
        return self._peft, None

    # Generation ------------------------------------------------------------------------------------
    def encode(self, messages: list[dict]):  # type: ignore[no-untyped-def]
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return ids["input_ids"], ids["attention_mask"]

    def _gen_kwargs(self, params: GenParams) -> dict:
        kwargs = {"max_new_tokens": params.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _run(self, input_ids, attention_mask, params: GenParams, adapter: str | None, streamer=None):  # type: ignore[no-untyped-def]
        """One ``model.generate`` under the lock, with the adapter (or none) active."""
        with self.lock:
            model, ctx = self._model_for(adapter)
            if params.temperature > 0:
                self.torch.manual_seed(params.seed)
            with self.torch.inference_mode(), ctx if ctx is not None else contextlib.nullcontext():
                out = model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention_mask.to(self.device),
                    streamer=streamer,
                    **self._gen_kwargs(params),
                )
            return out.cpu()  # decoding and token counting read it element by element

    def _result(
        self, out, input_ids, params: GenParams, text: str, first: float | None, start: float
    ) -> Generation:  # type: ignore[no-untyped-def]
        new = out[0, input_ids.shape[1] :]
        n_new = int(new.shape[0])
        eos = self.tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        finish = "stop" if (n_new and int(new[-1]) in eos_ids) or n_new < params.max_new_tokens else "length"
        return Generation(
            text=text.strip(),
            prompt_tokens=int(input_ids.shape[1]),
            completion_tokens=n_new,
            finish_reason=finish,
            first_token_s=first,
            generate_s=time.perf_counter() - start,
        )

    def generate(self, messages: list[dict], params: GenParams, adapter: str | None = None) -> Generation:
        """Without streaming: generate in the calling thread, no streamer (the plain ``model.generate`` cost)."""
        input_ids, attention_mask = self.encode(messages)
        start = time.perf_counter()
        try:
            out = torch_thread.run(self._run, input_ids, attention_mask, params, adapter)
        except GenerationError:
            raise
        except Exception as exc:
            raise GenerationError(f"Generation failed: {exc}") from exc
        text = self.tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True)
        return self._result(out, input_ids, params, text, None, start)

    def stream(
        self, messages: list[dict], params: GenParams, adapter: str | None = None
    ) -> Iterator[str | Generation]:
        from transformers import TextIteratorStreamer

        input_ids, attention_mask = self.encode(messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        box: dict = {}

        def work() -> None:
            try:
                box["out"] = self._run(input_ids, attention_mask, params, adapter, streamer)
            except BaseException as exc:  # surfaced in the consumer thread
                box["error"] = exc
                streamer.end()

        start = time.perf_counter()
        done = torch_thread.submit(work)  # one thread for all torch work: see ragloop.torch_thread
        first: float | None = None
        pieces: list[str] = []
        for piece in streamer:
            if not piece:
                continue
            if first is None:
                first = time.perf_counter() - start
            pieces.append(piece)
            yield piece
        done.result()
        if "error" in box:
            raise GenerationError(f"Generation failed: {box['error']}") from box["error"]
        yield self._result(box["out"], input_ids, params, "".join(pieces), first, start)

    def generate_batch(
        self, batch: list[list[dict]], params: GenParams, adapter: str | None = None
    ) -> list[Generation]:
        """Greedy generation for several prompts in one forward pass per step (evaluation's throughput path).

        Prompts are tokenised exactly as ``encode`` does and left-padded, so every row's last prompt token
        sits at the end and generation continues from it; the attention mask hides the padding. Each row
        gets its own token counts and finish reason. ``generate_s`` is the wall time of the whole batch.
        Sampling settings are ignored: batched sampling would not reproduce a one-by-one run."""
        if not batch:
            return []
        torch = self.torch
        encoded = [self.encode(messages)[0][0] for messages in batch]
        width = max(int(ids.shape[0]) for ids in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - ids.shape[0] :] = ids
            attention_mask[row, width - ids.shape[0] :] = 1
        greedy = GenParams(max_new_tokens=params.max_new_tokens, temperature=0.0)
        start = time.perf_counter()
        try:  # on the torch thread like every other generation: see ragloop.torch_thread
            out = torch_thread.run(self._run, input_ids, attention_mask, greedy, adapter)
        except Exception as exc:
            raise GenerationError(f"Batched generation failed: {exc}") from exc
        elapsed = time.perf_counter() - start
        eos = self.tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        results = []
        for row, ids in enumerate(encoded):
            new = [int(t) for t in out[row, width:]]
            # A finished row is filled with padding (often the eos token itself): count up to its first eos.
            stop = next((i + 1 for i, t in enumerate(new) if t in eos_ids), None)
            n_new = stop if stop is not None else len(new)
            results.append(
                Generation(
                    text=self.tokenizer.decode(new[:n_new], skip_special_tokens=True).strip(),
                    prompt_tokens=int(ids.shape[0]),
                    completion_tokens=n_new,
                    finish_reason="stop" if stop is not None or n_new < params.max_new_tokens else "length",
                    first_token_s=None,
                    generate_s=elapsed,
                )
            )
        return results


class OpenAIBackend:
    """Any OpenAI-compatible ``/v1/chat/completions`` server. ``adapter`` becomes the model name (vLLM
    serves each LoRA under its own name); ``load_adapter`` has a vLLM server that allows runtime LoRA
    updates load one (``[generator] runtime_lora``).

    The ``openai`` client does the wire work: SSE parsing, error events inside a stream, and retries with
    backoff on connection errors, timeouts, 408/409/429 and 5xx (``max_retries``). Its errors become
    ragloop's, each saying what to fix: the address, the model name or the key. ``openai`` is imported on
    first use: the 0.4 s it takes is not paid by a home that answers in-process."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 2,
    ):
        import openai

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        # The client insists on a key; servers without one (vLLM, llama.cpp, ragloop on loopback) get no
        # Authorization header at all, as before, rather than a made-up one.
        self._headers = {} if api_key else {"Authorization": openai.Omit()}
        self.client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or "unused",
            # An unroutable address fails after 10 s of connecting, not after a whole answer's time.
            timeout=openai.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            max_retries=max_retries,
        )
        self.adapters: dict[str, str] = {}  # adapter name -> folder, loaded on the server by load_adapter
        self._adapters_lock = threading.Lock()

    # Adapters (vLLM's runtime LoRA loading) ----------------------------------------------------------
    def load_adapter(self, name: str, path: str) -> None:
        """Have the server serve the PEFT adapter in ``path`` as model ``name``: ``POST /load_lora_adapter``
        (vLLM with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``), unless it already does.

        Idempotent across processes: the CLI that promotes and every server of the home call it, so the
        server's ``/models`` is read first, and vLLM's 400 "has already been loaded" (a load that raced
        ours) counts as loaded. A name the server serves from another folder is refused unless its files
        are the same: requests would silently get another adapter. Raises GenerationError (or ConfigError
        for a refused key) with the server's own message."""
        if self.adapters.get(name) == path:
            return
        with self._adapters_lock:
            if self.adapters.get(name) == path:
                return
            if name not in self._served(name, path):
                self._post_load(name, path)
            self.adapters[name] = path

    def _served(self, name: str, path: str) -> set[str]:
        """The names among the server's models that stand for this adapter (``name``, when it serves that
        folder or identical files), or raise when it serves another adapter under ``name``."""
        import openai

        try:
            models = list(self.client.models.list(extra_headers=self._headers))
        except openai.OpenAIError as exc:
            raise self._failure(exc, name) from exc
        root = next((getattr(m, "root", None) for m in models if m.id == name), False)
        if root is False:
            return set()
        if root in (None, path) or _same_adapter(Path(str(root)), Path(path)):
            return {name}
        raise GenerationError(
            f"The generator at {self.base_url} already serves a model named {name!r}, from {root}, not "
            f"this version's adapter ({path}). Unload it there (POST {self.base_url}/unload_lora_adapter "
            f'with {{"lora_name": "{name}"}}) and release the version again.'
        )

    def _post_load(self, name: str, path: str) -> None:
        import openai

        try:
            self.client.post(
                "/load_lora_adapter",
                body={"lora_name": name, "lora_path": path},
                cast_to=str,
                options={"headers": self._headers},
            )
        except openai.APIStatusError as exc:
            message = _server_message(exc)
            if exc.status_code == 400 and "already" in message:
                return  # another process loaded it between our /models and this request
            hint = (
                " Start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (without them it "
                "has no such route), make the folder readable there at this path, or set [generator] "
                "runtime_lora = false and serve the adapter with --lora-modules."
                if exc.status_code == 404
                else ""
            )
            if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
                raise self._failure(exc, name) from exc
            raise GenerationError(
                f"The generator at {self.base_url} did not load the adapter {path} as {name!r} "
                f"({exc.status_code}: {message}).{hint}"
            ) from exc
        except openai.OpenAIError as exc:
            raise self._failure(exc, name) from exc

    def _create(self, messages: list[dict], params: GenParams, adapter: str | None, stream: bool):  # type: ignore[no-untyped-def]
        import openai

        try:
            return self._request(messages, params, adapter, stream)
        except openai.NotFoundError:
            # A vLLM restart forgets the adapters loaded at run time: load it again, once, and retry.
            path = self.adapters.pop(adapter, None) if adapter else None
            if path is None:
                raise
            self.load_adapter(adapter, path)  # type: ignore[arg-type]
            return self._request(messages, params, adapter, stream)

    def _request(self, messages: list[dict], params: GenParams, adapter: str | None, stream: bool):  # type: ignore[no-untyped-def]
        extra = {"stream_options": {"include_usage": True}} if stream else {}
        return self.client.chat.completions.create(
            model=adapter or self.model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stream=stream,
            extra_headers=self._headers,
            **extra,
        )

    def _failure(self, exc: Exception, model: str) -> RagloopError:
        """The ragloop error for what the client raised (after its retries), with the next step to take.
        A refused key or an unknown model is this home's setting to fix (ConfigError), not the API
        caller's: an AuthError or NotFound would tell them their own key or model is wrong."""
        import openai

        where = f"the generator at {self.base_url}"
        tries = f"after {self.max_retries + 1} attempts" if self.max_retries else "with retries off"
        if isinstance(exc, openai.APITimeoutError):
            return GenerationError(
                f"{where.capitalize()} did not answer within {self.timeout_s:g} s ({tries}): check that "
                "it is not overloaded, or raise [generator] timeout_s."
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return GenerationError(
                f"Could not reach {where} ({tries}: {cause}). Start that server, or set [generator] "
                "base_url to the address it listens on (ending in /v1)."
            )
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            what = "needs an API key" if self._headers else "refused the API key"
            return ConfigError(
                f"{where.capitalize()} {what} ({exc.status_code}: {_server_message(exc)}). Put a key it "
                "accepts in the environment variable named by [generator] api_key_env (OPENAI_API_KEY "
                "unless set)."
            )
        if isinstance(exc, openai.NotFoundError):
            return ConfigError(
                f"{where.capitalize()} does not serve the model {model!r} (404: {_server_message(exc)}). "
                "Set [generator] model to a name its /v1/models lists; for vLLM, serve each adapter "
                "under its version id (--lora-modules VERSION=DIR)."
            )
        if isinstance(exc, openai.APIStatusError):
            return GenerationError(
                f"{where.capitalize()} answered {exc.status_code} ({tries}): {_server_message(exc)}"
            )
        if isinstance(exc, openai.APIError):  # an error event inside a stream, or an unreadable body
            return GenerationError(f"{where.capitalize()} failed: {exc.message}")
        # Mid-stream the client lets transport errors through unwrapped (from httpx, or httpx2 in openai
        # 3), so anything else here is a connection that broke off during the answer.
        return GenerationError(f"The connection to {where} broke off during the answer: {exc!r}")

    def generate(self, messages: list[dict], params: GenParams, adapter: str | None = None) -> Generation:
        import openai

        start = time.perf_counter()
        try:
            completion = self._create(messages, params, adapter, stream=False)
        except openai.OpenAIError as exc:
            raise self._failure(exc, adapter or self.model) from exc
        if not completion.choices:
            raise GenerationError(f"The generator at {self.base_url} answered without a choice.")
        choice = completion.choices[0]
        usage = completion.usage
        elapsed = time.perf_counter() - start
        return Generation(
            text=(choice.message.content or "").strip(),
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=choice.finish_reason or "stop",
            first_token_s=elapsed,
            generate_s=elapsed,
        )

    def stream(
        self, messages: list[dict], params: GenParams, adapter: str | None = None
    ) -> Iterator[str | Generation]:
        start = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        prompt_tokens = completion_tokens = 0
        finish: str | None = None
        try:
            with self._create(messages, params, adapter, stream=True) as chunks:
                for chunk in chunks:
                    if chunk.usage:  # the last chunk when include_usage is honoured; absent otherwise
                        prompt_tokens = chunk.usage.prompt_tokens
                        completion_tokens = chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        finish = choice.finish_reason or finish
                        piece = choice.delta.content if choice.delta else None
                        if piece:
                            if first is None:
                                first = time.perf_counter() - start
                            pieces.append(piece)
                            yield piece
        except Exception as exc:  # GeneratorExit, a consumer that went away, is not an Exception
            raise self._failure(exc, adapter or self.model) from exc
        if finish is None:  # every OpenAI-compatible server ends an answer with its finish_reason
            raise GenerationError(
                f"The stream from the generator at {self.base_url} ended before the answer finished "
                "(no finish_reason): the server stopped mid-answer; see its log."
            )
        yield Generation(
            text="".join(pieces).strip(),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish,
            first_token_s=first,
            generate_s=time.perf_counter() - start,
        )


def _same_adapter(a: Path, b: Path) -> bool:
    """Whether two adapter folders hold the same weights and config (both readable from here)."""
    try:
        return all(
            file_sha256(a / name) == file_sha256(b / name)
            for name in ("adapter_config.json", "adapter_model.safetensors")
        )
    except OSError:
        return False


def _server_message(exc: Exception) -> str:
    """The message an OpenAI-shaped error body carries (``{"error": {"message": ...}}``), else the client's."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
    return str(getattr(exc, "message", exc))
