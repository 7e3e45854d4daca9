"""Serving benchmark (issue 16): ragloop over transformers fp32, over llama.cpp in-process, and the bare engine.

One invocation prints four tables, each with a ratio against a baseline measured in the same run:

1. ``formats``: the base GGUF formats (Q4_1 as packaged, Q8_0, F16, F32 written from the cached safetensors)
   on the bare engine (xllamacpp directly, no ragloop): prefill and decode tokens/s, RSS. Baseline: Q4_1.
2. ``single``: one client, distinct GDPR questions (~1,100-token prompts rendered by ragloop): transformers fp32
   (ragloop over HTTP), the bare engine on the very token ids ragloop sends, ragloop+llamacpp over HTTP.
   TTFT p50, decode tokens/s, end-to-end p50/p95, cached prompt tokens, TTFT against the prefill floor
   (2 x parameters x uncached prompt tokens / the fp32 matmul rate measured in this run). Baseline:
   transformers; the overhead is against the bare engine.
3. ``concurrent``: 8 and 32 clients, half on the base model and half on a registered adapter (a random but
   valid PEFT LoRA, r 16, all-linear), plus the same with every client on the base: aggregate tokens/s,
   p50/p95 overall and per arm, wall time against the prefill-floor bound (uncached prefill of all prompts
   at the matmul rate + every answer token decoded in batches of ``slots`` at the bare engine's
   single-stream decode rate). Baseline: transformers at 8 clients (32 would take ~20 minutes: skipped).
4. ``adapters``: a llamacpp server with ``max_adapters = 10``: a version promoted while 4 clients are
   served (time until the new version answers, peak RSS during the swap), then RSS with 1 and 10 adapters.

Every request asks a different question (nothing is cached beyond the shared template prefix); answers are
greedy, at most ``--new-tokens`` tokens (the HTTP API has no ignore-EOS, so lengths are reported; the bare
engine stops at EOS as ragloop does, so both produce the same tokens). Servers run as separate processes
(``python -m ragloop.serve``) on a temporary home with the GDPR ingested; the bare engine runs in a
subprocess of its own so its RSS is the engine's. Run piecewise with ``--only``; results go to
``bench/out/serving-<stage>.{md,json}``.

    .venv/bin/python bench/serving.py [--only formats,single,concurrent,adapters] [--questions 8]
        [--new-tokens 64] [--clients 8,32] [--slots N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, OUT, pct, sgemm_flops, table, write  # noqa: E402

STAGES = ("formats", "single", "concurrent", "adapters")
FORMATS = ("q4_1", "q8_0", "f16", "f32")  # q4_1 first: the packaged file is the baseline
GDPR_XML = DATA / "gdpr" / "gdpr-consolidated-with-corrected-preamble-en.xml"
TODAY_TPS = 14.5  # transformers, 8 concurrent clients, before issue 16 (docs/benchmarks.md)
TARGET_DECODE, TARGET_OVERHEAD, TARGET_FLOOR = 80.0, 0.10, 1.3
SWAP_CLIENTS = 4
N_ADAPTERS = 10

QUESTIONS = [
    "What is the right to erasure?",
    "When must a personal data breach be notified to the supervisory authority?",
    "What are the conditions for valid consent?",
    "Who must designate a data protection officer?",
    "What fines can be imposed for infringements?",
    "What is a data protection impact assessment?",
    "What rights does the data subject have regarding profiling?",
    "When may personal data be transferred to a third country?",
    "What is pseudonymisation?",
    "What must a controller tell data subjects when collecting their data?",
]


def question_pool() -> list[str]:
    """The hand-written questions, then one per GDPR article title: ~108 distinct questions, so no request
    of a run repeats another's prompt (which the engine would serve from its prompt cache)."""
    titles = re.findall(r"<STI\.ART>(.*?)</STI\.ART>", GDPR_XML.read_text(), re.S)
    pool = list(QUESTIONS)
    for title in titles:
        title = re.sub(r"<[^>]+>", "'", title).replace("''", "'").strip()
        question = f"What does the GDPR say about {title[0].lower() + title[1:]}?"
        if question not in pool:
            pool.append(question)
    return pool


# Process and memory ----------------------------------------------------------------------------------------
def proc_mib(pid: int | str = "self", key: str = "VmRSS") -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """Samples a process's RSS every 10 ms in a thread: the peak of a window (VmHWM is since the start)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, proc_mib(self.pid))
            except (OSError, ValueError):
                return
            self._stop.wait(0.01)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m ragloop.serve`` on the bench home, with settings overridden by RAGLOOP_* variables."""

    def __init__(self, home: Path, log: Path, **generator: object):
        self.port = free_port()
        env = dict(os.environ, RAGLOOP_HOME=str(home))
        env.update({f"RAGLOOP_GENERATOR__{k.upper()}": str(v) for k, v in generator.items()})
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ragloop.serve", "--home", str(home), "--port", str(self.port)]
            + ["--log-level", "warning"],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.base_url = f"http://127.0.0.1:{self.port}"
        client = httpx.Client(base_url=self.base_url, timeout=5)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {log}:\n{tail(log)}")
            try:
                if client.get("/healthz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.close()
        raise RuntimeError(f"the server did not become healthy; see {log}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=900)

    def rss(self) -> float:
        return proc_mib(self.proc.pid)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


# Clients ---------------------------------------------------------------------------------------------------
def ask(base_url: str, question: str, new_tokens: int, model: str | None, arm: str = "") -> dict:
    """One streamed chat request as a client sees it: TTFT (first content delta), time of the last delta,
    end to end (the ragloop object and usage included), the usage and the version that answered."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": new_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
    }
    if model:
        body["model"] = model
    row: dict[str, Any] = {"question": question, "arm": arm, "model": model}
    start = time.perf_counter()
    row["t0"] = start
    first = last = None
    try:
        with (
            httpx.Client(base_url=base_url, timeout=900) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as resp,
        ):
            if resp.status_code != 200:
                resp.read()
                row.update(error=f"{resp.status_code} {resp.text[:200]}", total=time.perf_counter() - start)
                return row
            for line in resp.iter_lines():
                if not line.startswith("data:") or line.endswith("[DONE]"):
                    continue
                event = json.loads(line[5:])
                for choice in event.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        last = time.perf_counter() - start
                        first = last if first is None else first
                if "ragloop" in event:
                    row["model_version"] = event["ragloop"].get("model_version")
                if event.get("usage"):
                    usage = event["usage"]
                    row["prompt_tokens"] = usage.get("prompt_tokens")
                    row["completion_tokens"] = usage.get("completion_tokens", 0)
                    row["cached_tokens"] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                if "error" in event:
                    row["error"] = str(event["error"])[:200]
    except httpx.HTTPError as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["total"] = time.perf_counter() - start
    row["ttft"] = first if first is not None else row["total"]
    row["last"] = last if last is not None else row["total"]
    return row


def run_clients(
    jobs: list[tuple[str, str | None, str]], base_url: str, new_tokens: int
) -> tuple[list, float]:
    """All ``jobs`` (question, model, arm) at once, one client thread each: (rows, wall seconds)."""
    barrier = threading.Barrier(len(jobs))

    def one(job: tuple[str, str | None, str]) -> dict:
        barrier.wait()
        return ask(base_url, job[0], new_tokens, job[1], job[2])

    start = time.perf_counter()
    with ThreadPoolExecutor(len(jobs)) as pool:
        rows = list(pool.map(one, jobs))
    return rows, time.perf_counter() - start


# The bare engine (subprocess) ------------------------------------------------------------------------------
def engine_worker(spec_path: str, out_path: str) -> None:
    """Runs in its own process: xllamacpp with the parameters ragloop's backend uses, the requests of the
    spec one after another (the body ragloop's backend builds), timings and RSS to ``out_path``."""
    spec = json.loads(Path(spec_path).read_text())
    rss_start = proc_mib()
    import xllamacpp as xl

    params = xl.CommonParams()
    params.model.path = spec["gguf"]
    params.n_parallel = spec["slots"]
    params.n_ctx = spec["slots"] * spec["ctx_per_slot"]
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = spec["threads"]
    params.lora_init_without_apply = True
    params.api_keys = [secrets.token_hex(32)]
    params.verbosity = 1
    started = time.perf_counter()
    engine = {"server": xl.Server(params)}  # a dict, so the engine can be dropped before exit
    load_s = time.perf_counter() - started
    rss_loaded = proc_mib()

    def request(ids: list[int], new_tokens: int) -> dict:
        body: dict[str, Any] = {
            "prompt": ids,
            "max_tokens": new_tokens,
            "temperature": 0.0,
            "top_p": 1.0,
            "seed": 0,
            "lora": [],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if spec["ignore_eos"]:
            body["ignore_eos"] = True
        if not spec["cache_prompt"]:
            body["cache_prompt"] = False
        state: dict[str, Any] = {"first": None, "last": None, "usage": {}, "timings": {}}
        start = time.perf_counter()

        def on_chunk(chunk: dict) -> bool:
            now = time.perf_counter() - start
            if any(c.get("text") for c in chunk.get("choices", [])):
                state["last"] = now
                state["first"] = now if state["first"] is None else state["first"]
            state["usage"] = chunk.get("usage") or state["usage"]
            state["timings"] = chunk.get("timings") or state["timings"]
            if "choices" not in chunk:
                state["error"] = str(chunk)[:300]
            return False

        engine["server"].handle_completions(body, on_chunk)
        total = time.perf_counter() - start
        usage, timings = state["usage"], state["timings"]
        return {
            "total": total,
            "ttft": state["first"] if state["first"] is not None else total,
            "last": state["last"] if state["last"] is not None else total,
            "prompt_tokens": usage.get("prompt_tokens", len(ids)),
            "completion_tokens": usage.get("completion_tokens", 0),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
            "timings": timings,
            "error": state.get("error"),
        }

    request(spec["warmup"], 4)
    rows = [request(ids, spec["new_tokens"]) for ids in spec["prompts"]]
    result = {
        "load_s": load_s,
        "rss_start_mib": rss_start,
        "rss_loaded_mib": rss_loaded,
        "rss_after_mib": proc_mib(),
        "rss_peak_mib": proc_mib(key="VmHWM"),
        "rows": rows,
    }
    Path(out_path).write_text(json.dumps(result))
    engine.clear()  # xllamacpp stops an engine when its last reference goes


def bare_engine(
    ctx: Context, gguf: Path, prompts: list[list[int]], *, ignore_eos: bool, cache_prompt: bool
) -> dict:
    """The bare engine on ``prompts`` in a fresh process (its RSS is the engine's, nothing of the bench's)."""
    spec = {
        "gguf": str(gguf),
        "slots": ctx.slots,
        "ctx_per_slot": ctx.gen.ctx_per_slot,
        "threads": ctx.engine_threads,
        "new_tokens": ctx.args.new_tokens,
        "ignore_eos": ignore_eos,
        "cache_prompt": cache_prompt,
        "prompts": prompts,
        "warmup": ctx.warmup_ids,
    }
    spec_path, out_path = ctx.work / f"engine-{secrets.token_hex(4)}.json", ctx.work / "engine-out.json"
    spec_path.write_text(json.dumps(spec))
    log = ctx.work / "engine.log"
    with log.open("ab") as stream:
        done = subprocess.run(
            [sys.executable, __file__, "--engine-worker", str(spec_path), str(out_path)],
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        raise RuntimeError(f"the bare engine failed on {gguf.name}; see {log}:\n{tail(log)}")
    return json.loads(out_path.read_text())


# Shared state ----------------------------------------------------------------------------------------------
class Context:
    """The temporary home with the GDPR ingested, the question pool, rendered prompts, the measured matmul
    rate and the adapters: built once, used by every stage that runs."""

    def __init__(self, args: argparse.Namespace):
        os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from ragloop.config import GeneratorSettings, init_home, load_settings
        from ragloop.generation.assistant import Assistant
        from ragloop.generation.llamacpp import default_threads
        from ragloop.ingest.pipeline import ingest_paths

        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="ragloop-bench-serving-"))
        self.home = init_home(self.work / "home")
        self.settings = load_settings(self.home)
        self.gen = GeneratorSettings()
        self.slots = args.slots or self.gen.slots
        self.engine_threads = self.gen.engine_threads or default_threads()
        t0 = time.perf_counter()
        ingest_paths(self.settings, [GDPR_XML], collection="gdpr")
        print(f"ingested the GDPR in {time.perf_counter() - t0:.0f} s ({self.home})", flush=True)
        self.assistant = Assistant(self.settings)
        self.base_dir = self.assistant.base_dir
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.base_dir))
        self.pool = question_pool()
        self._next = 0
        self.n_params = n_parameters(self.base_dir)
        self.flops = sgemm_flops()
        print(
            f"fp32 matmul: {self.flops / 1e9:.1f} GFLOP/s; parameters: {self.n_params / 1e6:.1f} M",
            flush=True,
        )
        self.warmup_ids = self.prompt_ids("Warm up: what is the GDPR?")
        self.adapters: list[str] = []
        self.single_decode: float | None = None  # the bare engine's single-stream decode rate (tokens/s)
        self.loadavg = [os.getloadavg()]

    def take(self, n: int) -> list[str]:
        """The next ``n`` questions no server of this run was asked yet."""
        if self._next + n > len(self.pool):
            raise SystemExit(
                f"only {len(self.pool)} distinct questions: lower --questions or --clients "
                f"({self._next} used, {n} more asked)"
            )
        self._next += n
        return self.pool[self._next - n : self._next]

    def prompt_ids(self, question: str) -> list[int]:
        """The token ids ragloop sends the engine for ``question``: retrieval, the prompt template, the
        model's chat template (as LlamaCppBackend.encode does)."""
        from ragloop.generation.assistant import retrieval_query

        messages = [{"role": "user", "content": question}]
        hits = self.assistant.retriever.search(retrieval_query(messages), self.settings.retrieval.top_k)
        rendered = self.assistant.template.render(messages, hits)
        encoded = self.tokenizer.apply_chat_template(rendered, add_generation_prompt=True, return_dict=True)
        return list(encoded["input_ids"])

    def floor_s(self, uncached_tokens: float) -> float:
        """The prefill floor: 2 x parameters x tokens at the fp32 matmul rate measured in this run."""
        return 2 * self.n_params * uncached_tokens / self.flops

    def gguf(self, ftype: str) -> Path:
        from ragloop.generation.gguf import base_gguf

        return base_gguf(self.settings, ftype)

    def ensure_adapters(self, n: int) -> list[str]:
        """``n`` registered versions, each a random but valid PEFT LoRA (r 16, alpha 32, all-linear, as
        ragloop's SFT trains; lora_B ~ N(0, 0.02): it changes answers without wrecking them)."""
        if len(self.adapters) >= n:
            return self.adapters[:n]
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from ragloop.training.lineage import register_model

        base = AutoModelForCausalLM.from_pretrained(str(self.base_dir), dtype=torch.float32)
        model = get_peft_model(
            base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        )
        for seed in range(len(self.adapters), n):
            torch.manual_seed(seed)
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "lora_A" in name:
                        param.normal_(0, param.shape[1] ** -0.5)
                    elif "lora_B" in name:
                        param.normal_(0, 0.02)
            out = self.work / f"adapter-{seed}"
            model.save_pretrained(str(out))
            result = {"adapter_dir": str(out), "metrics": {}, "steps": 0, "tokens": 0}
            mv = register_model(self.settings, result, kind="sft", name="serving-bench")
            self.adapters.append(mv.id)
        del model, base
        return self.adapters[:n]

    def bare_decode_rate(self) -> float:
        """The bare engine's single-stream decode tokens/s in the default base format (for the bound)."""
        if self.single_decode is None:
            ids = [self.prompt_ids(q) for q in self.pool[:2]]
            result = bare_engine(
                self, self.gguf(self.gen.base_format), ids, ignore_eos=True, cache_prompt=False
            )
            self.single_decode = engine_rates(result["rows"])[1]
        return self.single_decode

    def server(self, name: str, **generator: object) -> Server:
        print(f"starting the {name} server ...", flush=True)
        return Server(self.home, self.work / f"server-{name}.log", **generator)

    def llamacpp_server(self, name: str, **extra: object) -> Server:
        queue = max([self.gen.queue, *self.args.clients])  # nothing refused: the figures are about speed
        settings = {"backend": "llamacpp", "slots": self.slots, "queue": queue} | extra
        return self.server(name, **settings)


def n_parameters(hf_dir: Path) -> int:
    """Parameters of the model (embeddings included, the tied lm_head once), from the safetensors header."""
    from safetensors import safe_open

    total = 0
    for path in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(str(path), "np") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def engine_rates(rows: list[dict]) -> tuple[float, float]:
    """(prefill, decode) tokens/s from the engine's own timings, summed over requests."""
    t = [r["timings"] for r in rows if r.get("timings")]
    prefill = sum(x["prompt_n"] for x in t) / max(sum(x["prompt_ms"] for x in t) / 1000, 1e-9)
    decode = sum(x["predicted_n"] for x in t) / max(sum(x["predicted_ms"] for x in t) / 1000, 1e-9)
    return prefill, decode


def ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not r.get("error")]


def decode_rate(rows: list[dict]) -> float:
    """Client-side decode tokens/s: tokens after the first over the time from the first delta to the last."""
    rows = [r for r in ok(rows) if r.get("completion_tokens", 0) > 1]
    return sum(r["completion_tokens"] - 1 for r in rows) / max(sum(r["last"] - r["ttft"] for r in rows), 1e-9)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def whole(value: float) -> int | str:
    """A mean token count for a table cell."""
    return "-" if value != value else round(value)


def cached(row: dict) -> int:
    return row.get("cached_tokens") or 0


def mark(good: bool) -> str:
    return "met" if good else "**missed**"


# Stages ----------------------------------------------------------------------------------------------------
def stage_formats(ctx: Context) -> dict:
    questions = ctx.pool[: ctx.args.format_prompts]
    prompts = [ctx.prompt_ids(q) for q in questions]
    results = {}
    for ftype in FORMATS:
        path = ctx.gguf(ftype)
        print(f"formats: {ftype} ({path.stat().st_size / 2**20:.0f} MiB)", flush=True)
        results[ftype] = bare_engine(ctx, path, prompts, ignore_eos=True, cache_prompt=False)
        results[ftype]["file_mib"] = path.stat().st_size / 2**20
        results[ftype]["prefill_tps"], results[ftype]["decode_tps"] = engine_rates(results[ftype]["rows"])
    base = results["q4_1"]
    rows = [
        [
            ftype + (" (packaged)" if ftype == "q4_1" else ""),
            r["file_mib"],
            r["prefill_tps"],
            r["prefill_tps"] / base["prefill_tps"],
            r["decode_tps"],
            r["decode_tps"] / base["decode_tps"],
            round(r["rss_loaded_mib"]),
            round(r["rss_peak_mib"]),
            r["load_s"],
        ]
        for ftype, r in results.items()
    ]
    mean_prompt = mean([len(p) for p in prompts])
    text = "\n".join(
        [
            f"## Base GGUF formats, bare engine ({len(prompts)} GDPR prompts of {mean_prompt:.0f} tokens on "
            f"average, nothing cached, {ctx.args.new_tokens} new tokens with EOS ignored, {ctx.slots} slots x "
            f"{ctx.gen.ctx_per_slot} context, {ctx.engine_threads} threads, F16 KV cache)",
            "",
            table(
                [
                    "base GGUF",
                    "file MiB",
                    "prefill tok/s",
                    "vs Q4_1",
                    "decode tok/s",
                    "vs Q4_1",
                    "RSS loaded MiB",
                    "RSS peak MiB",
                    "load s",
                ],
                rows,
            ),  # fmt: skip
            "",
            "- prefill and decode rates are the engine's own timings (prompt_n / prompt_ms, predicted_n / "
            "predicted_ms) summed over the prompts; RSS is the worker process's (Python + xllamacpp + engine).",
            f"- ragloop's default base_format is {ctx.gen.base_format}.",
        ]
    )
    return {"text": text, "results": results}


def sequential(server: Server, questions: list[str], new_tokens: int) -> list[dict]:
    return [ask(server.base_url, q, new_tokens, "base", "base") for q in questions]


def stage_single(
    ctx: Context, questions: list[str], transformers_rows: list[dict] | None, llamacpp: Server
) -> dict:
    """One request at a time through each path. The servers are shared with the concurrent stage, so the
    transformers rows were measured before (its server is gone: only one model loaded at a time)."""
    prompts = [ctx.prompt_ids(q) for q in questions]
    runs: dict[str, list[dict]] = {}
    if transformers_rows is not None:
        runs["transformers fp32, ragloop HTTP"] = transformers_rows
    print("single: bare engine", flush=True)
    bare = bare_engine(ctx, ctx.gguf(ctx.gen.base_format), prompts, ignore_eos=False, cache_prompt=True)
    runs[f"bare engine ({ctx.gen.base_format})"] = bare["rows"]
    ctx.single_decode = engine_rates(bare["rows"])[1]
    print("single: ragloop+llamacpp", flush=True)
    runs[f"ragloop+llamacpp HTTP ({ctx.gen.base_format})"] = sequential(
        llamacpp, questions, ctx.args.new_tokens
    )
    baseline = next(iter(runs.values()))
    bare_e2e = pct([r["total"] for r in bare["rows"]], 50)
    table_rows, summary = [], {}
    for name, rows in runs.items():
        good = ok(rows)
        e2e = [r["total"] for r in good]
        ttft = [r["ttft"] for r in good]
        ratio_floor = [r["ttft"] / ctx.floor_s(r["prompt_tokens"] - cached(r)) for r in good]
        s = {
            "requests": len(rows),
            "errors": len(rows) - len(good),
            "prompt_tokens": mean([r["prompt_tokens"] for r in good]),
            "cached_tokens": mean([cached(r) for r in good]),
            "completion_tokens": mean([r["completion_tokens"] for r in good]),
            "ttft_p50": pct(ttft, 50),
            "ttft_over_floor_p50": pct(ratio_floor, 50),
            "decode_tps": decode_rate(good),
            "e2e_p50": pct(e2e, 50),
            "e2e_p95": pct(e2e, 95),
        }
        summary[name] = s
        table_rows.append(
            [name, whole(s["prompt_tokens"]), whole(s["cached_tokens"]), whole(s["completion_tokens"]), s["ttft_p50"],
             s["ttft_over_floor_p50"], s["decode_tps"], s["e2e_p50"], s["e2e_p95"],
             pct([r["total"] for r in ok(baseline)], 50) / s["e2e_p50"], s["e2e_p50"] / bare_e2e, s["errors"]]
        )  # fmt: skip
    served = runs[f"ragloop+llamacpp HTTP ({ctx.gen.base_format})"]
    mismatched = sum(1 for r, ids in zip(served, prompts, strict=True) if r.get("prompt_tokens") != len(ids))
    lines = [
        f"## Single stream ({len(questions)} distinct GDPR questions, at most {ctx.args.new_tokens} new tokens, "
        f"greedy; llamacpp: {ctx.slots} slots, {ctx.engine_threads} engine threads)",
        "",
        table(
            [
                "path",
                "prompt tok",
                "cached tok",
                "answer tok",
                "TTFT p50 s",
                "TTFT / floor",
                "decode tok/s",
                "e2e p50 s",
                "e2e p95 s",
                "speed-up vs first row",
                "e2e p50 / bare",
                "errors",
            ],
            table_rows,
        ),  # fmt: skip
        "",
        f"- fp32 matmul rate (torch, this run): {ctx.flops / 1e9:.1f} GFLOP/s; parameters {ctx.n_params / 1e6:.1f} M; "
        f"prefill floor = 2 x parameters x uncached prompt tokens / that rate = {ctx.floor_s(1) * 1000:.3f} ms "
        "per token; TTFT / floor is the median of the per-request ratios.",
        "- decode tok/s: client side, (answer tokens - 1) / (last delta - first delta); e2e includes retrieval "
        "and recording for the HTTP paths.",
        f"- the bare engine gets the same token ids ragloop sends (ragloop's prompt tokens differ on "
        f"{mismatched} of {len(questions)} requests).",
    ]
    name_l = f"ragloop+llamacpp HTTP ({ctx.gen.base_format})"
    if name_l in summary:
        s = summary[name_l]
        overhead = s["e2e_p50"] / bare_e2e - 1
        lines += [
            f"- target decode >= {TARGET_DECODE:.0f} tok/s: {s['decode_tps']:.1f} ({mark(s['decode_tps'] >= TARGET_DECODE)})",
            f"- target overhead over the bare engine <= {TARGET_OVERHEAD:.0%}: {overhead:+.1%} e2e p50 "
            f"({mark(overhead <= TARGET_OVERHEAD)})",
            f"- target TTFT <= {TARGET_FLOOR}x the prefill floor: {s['ttft_over_floor_p50']:.2f}x "
            f"({mark(s['ttft_over_floor_p50'] <= TARGET_FLOOR)})",
        ]
    return {"text": "\n".join(lines), "summary": summary, "runs": runs}


def concurrent_run(ctx: Context, server: Server, n: int, questions: list[str], adapter: str | None) -> dict:
    """``n`` clients at once; with ``adapter`` the odd ones ask it, the even ones the base."""
    jobs = [
        (q, adapter, "adapter") if adapter and i % 2 else (q, "base", "base") for i, q in enumerate(questions)
    ]
    rows, wall = run_clients(jobs, server.base_url, ctx.args.new_tokens)
    good = ok(rows)
    tokens = sum(r["completion_tokens"] for r in good)
    result: dict[str, Any] = {
        "clients": n,
        "wall_s": wall,
        "tokens": tokens,
        "tps": tokens / wall,
        "errors": len(rows) - len(good),
        "error_examples": [r["error"] for r in rows if r.get("error")][:3],
        "cached_tokens": mean([cached(r) for r in good]),
        "prompt_tokens": mean([r.get("prompt_tokens") or 0 for r in good]),
        "rows": rows,
    }
    for arm in ("all", "base", "adapter"):
        arm_rows = [r for r in good if arm == "all" or r["arm"] == arm]
        e2e = [r["total"] for r in arm_rows]
        result[arm] = {
            "p50": pct(e2e, 50),
            "p95": pct(e2e, 95),
            "ttft_p50": pct([r["ttft"] for r in arm_rows], 50),
        }
    prefill = sum(ctx.floor_s((r.get("prompt_tokens") or 0) - cached(r)) for r in good)
    result["prefill_floor_s"] = prefill
    return result


def stage_concurrent(ctx: Context, runs: dict[str, dict]) -> dict:
    """The table of the concurrent runs made by ``main`` (keyed 'backend|clients|mix')."""
    baselines = {k.split("|")[1]: r for k, r in runs.items() if k.startswith("transformers")}
    rate = ctx.bare_decode_rate()
    rows, arm_rows = [], []
    for key, r in runs.items():
        backend, n, mix = key.split("|")
        baseline = baselines.get(n) or baselines.get("8")
        if backend == "llamacpp":
            decode = r["tokens"] / (min(int(n), ctx.slots) * rate)
            r["bound_s"] = r["prefill_floor_s"] + decode
        else:
            r["bound_s"] = float("nan")  # one generation at a time: no batched bound
        rows.append(
            [backend, n, mix, r["wall_s"], r["tokens"], r["tps"],
             r["tps"] / baseline["tps"] if baseline else float("nan"), r["tps"] / TODAY_TPS,
             r["all"]["p50"], r["all"]["p95"], whole(r["cached_tokens"]), r["bound_s"], r["wall_s"] / r["bound_s"],
             r["errors"]]
        )  # fmt: skip
        arm_rows.append(
            [backend, n, mix, r["all"]["ttft_p50"], r["base"]["p50"], r["base"]["p95"], r["base"]["ttft_p50"],
             r["adapter"]["p50"], r["adapter"]["p95"], r["adapter"]["ttft_p50"]]
        )  # fmt: skip
    lines = [
        f"## Concurrent clients (distinct GDPR questions, at most {ctx.args.new_tokens} new tokens; llamacpp: "
        f"{ctx.slots} slots, queue large enough to refuse nothing)",
        "",
        table(
            [
                "backend",
                "clients",
                "base/adapter",
                "wall s",
                "tokens",
                "agg tok/s",
                "vs transformers (same clients, else 8)",
                f"vs {TODAY_TPS}",
                "p50 s",
                "p95 s",
                "cached tok",
                "bound s",
                "wall / bound",
                "errors",
            ],
            rows,
        ),  # fmt: skip
        "",
        table(
            [
                "backend",
                "clients",
                "base/adapter",
                "TTFT p50 s",
                "base p50 s",
                "base p95 s",
                "base TTFT p50 s",
                "adapter p50 s",
                "adapter p95 s",
                "adapter TTFT p50 s",
            ],
            arm_rows,
        ),  # fmt: skip
        "",
        f"- bound = uncached prefill of every prompt at the prefill floor + every answer token decoded in batches "
        f"of min(clients, slots) at the bare engine's single-stream decode rate ({rate:.1f} tok/s, this run). "
        f"Target: wall <= {TARGET_FLOOR}x the bound; aggregate >= 3x {TODAY_TPS} tok/s.",
        f"- adapter arm: registered version {ctx.adapters[0] if ctx.adapters else '-'} (random PEFT LoRA r 16, "
        "all-linear); the 100/0 rows send every client to the base on the same server: the difference is what "
        "the 50/50 mix costs.",
    ]
    if any(int(k.split("|")[1]) > 8 for k in runs):
        lines.append(
            "- transformers runs only up to 8 clients (one generation at a time: 32 would take ~20 minutes); "
            "larger counts are compared with it at 8."
        )
    for key, r in runs.items():
        if key.startswith("llamacpp"):
            lines.append(
                f"- {key.replace('|', ', ')}: aggregate {r['tps'] / TODAY_TPS:.1f}x {TODAY_TPS} tok/s "
                f"({mark(r['tps'] >= 3 * TODAY_TPS)}); wall {r['wall_s'] / r['bound_s']:.2f}x the bound "
                f"({mark(r['wall_s'] <= TARGET_FLOOR * r['bound_s'])})"
            )
    return {"text": "\n".join(lines), "runs": runs}


def stage_adapters(ctx: Context) -> dict:
    adapters = ctx.ensure_adapters(N_ADAPTERS)
    new_tokens = ctx.args.new_tokens
    with ctx.llamacpp_server("adapters", max_adapters=N_ADAPTERS) as server:
        ask(server.base_url, "Warm up: what is the GDPR?", 4, "production")
        time.sleep(1)
        rss_base = server.rss()
        # Promote while SWAP_CLIENTS clients keep asking the production alias.
        stop = threading.Event()
        background: list[dict] = []
        questions = ctx.take(min(len(ctx.pool) - ctx._next, 8))

        def client(i: int) -> None:
            k = i
            while not stop.is_set():
                background.append(
                    ask(server.base_url, questions[k % len(questions)], new_tokens, "production")
                )
                k += SWAP_CLIENTS

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(SWAP_CLIENTS)]
        with RssSampler(server.proc.pid) as sampler:
            for t in threads:
                t.start()
            time.sleep(1.0)  # the clients are generating when the promotion comes
            t0 = time.perf_counter()
            with server.client() as admin:
                promoted = admin.post(f"/api/models/{adapters[0]}/promote")
            promote_s = time.perf_counter() - t0
            promoted.raise_for_status()
            # A client arriving right after the promotion (the looping ones are busy with their requests).
            background.append(ask(server.base_url, questions[-1], new_tokens, "production", "probe"))
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and not any(
                r.get("model_version") == adapters[0] and r["t0"] >= t0 for r in background
            ):
                time.sleep(0.05)
            stop.set()
            for t in threads:
                t.join()
        new = [r for r in background if r.get("model_version") == adapters[0] and r["t0"] >= t0]
        first_answer = min((r["t0"] + r["ttft"] - t0 for r in new), default=float("nan"))
        first_done = min((r["t0"] + r["total"] - t0 for r in new), default=float("nan"))
        during = [r for r in background if r["t0"] < t0 + promote_s and r["t0"] + r["total"] > t0]
        swap = {
            "promote_s": promote_s,
            "first_token_s": first_answer,
            "first_answer_s": first_done,
            "peak_rss_mib": sampler.peak,
            "rss_before_mib": rss_base,
            "background_requests": len(background),
            "background_errors": len([r for r in background if r.get("error")]),
            "max_e2e_overlapping_s": max((r["total"] for r in during), default=float("nan")),
        }
        time.sleep(2)  # the old engine has drained and been dropped
        rss_one = server.rss()
        loads = []
        for version in adapters[1:]:
            t1 = time.perf_counter()
            row = ask(server.base_url, "Warm up: what is the GDPR?", 4, version)
            loads.append(time.perf_counter() - t1)
            if row.get("error"):
                raise RuntimeError(f"{version} did not answer: {row['error']}")
        time.sleep(2)
        rss_ten = server.rss()
        peak_total = proc_mib(server.proc.pid, "VmHWM")
    rows = [
        ["base only (0 adapters)", 0, round(rss_base), 1.0],
        ["after promoting 1 adapter", 1, round(rss_one), rss_one / rss_base],
        [f"{N_ADAPTERS} adapters loaded", N_ADAPTERS, round(rss_ten), rss_ten / rss_base],
        ["peak during the swap", "0 -> 1", round(swap["peak_rss_mib"]), swap["peak_rss_mib"] / rss_base],
        ["peak of the whole stage (VmHWM)", "", round(peak_total), peak_total / rss_base],
    ]
    text = "\n".join(
        [
            f"## Adapters: RSS and swap (llamacpp server, max_adapters = {N_ADAPTERS}, {ctx.slots} slots, "
            f"random PEFT LoRA r 16 all-linear; {SWAP_CLIENTS} clients asking the production alias during the swap)",
            "",
            table(["state", "adapters", "server RSS MiB", "vs base only"], rows),
            "",
            table(
                [
                    "promote call s",
                    "first token of the new version s",
                    "first answer of the new version s",
                    "requests during the swap",
                    "errors",
                    "slowest request overlapping the promote s",
                ],
                [
                    [
                        swap["promote_s"],
                        swap["first_token_s"],
                        swap["first_answer_s"],
                        swap["background_requests"],
                        swap["background_errors"],
                        swap["max_e2e_overlapping_s"],
                    ]
                ],
            ),  # fmt: skip
            "",
            "- swap times run from the start of POST /api/models/{id}/promote (GGUF conversion of the adapter, a "
            "second engine started with it, the alias moved) to the first token / first whole answer of a "
            "request that reached the new version (a client asks as soon as the promote call returns, beside "
            "the looping ones); the old engine drains its requests.",
            f"- loading adapters 2..{N_ADAPTERS} by asking each version once: "
            f"{', '.join(f'{s:.2f}' for s in loads)} s per request (each starts an engine with every loaded adapter).",
            "- RSS is the server process's VmRSS (freed memory the allocator keeps counts too).",
        ]
    )
    return {
        "text": text,
        "swap": swap,
        "rss": {"base": rss_base, "one": rss_one, "ten": rss_ten},
        "loads_s": loads,
    }


# Main ------------------------------------------------------------------------------------------------------
def save(ctx: Context, stage: str, result: dict, started: float) -> None:
    ctx.loadavg.append(os.getloadavg())
    header = (
        f"<!-- bench/serving.py {' '.join(sys.argv[1:])}; {time.strftime('%Y-%m-%d %H:%M')}; stage took "
        f"{time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f} at the end -->"
    )
    write(f"serving-{stage}.md", header + "\n" + result["text"])
    meta = {
        "argv": sys.argv[1:],
        "seconds": time.perf_counter() - started,
        "loadavg_end": os.getloadavg(),
        "cpus": os.cpu_count(),
        "flops": ctx.flops,
        "n_params": ctx.n_params,
        "slots": ctx.slots,
        "engine_threads": ctx.engine_threads,
    }
    data = {k: v for k, v in result.items() if k != "text"} | {"meta": meta}
    (OUT / f"serving-{stage}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=",".join(STAGES), help=f"comma-separated stages: {','.join(STAGES)}"
    )
    parser.add_argument("--questions", type=int, default=8, help="single stream: distinct questions")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--clients", default="8,32", help="concurrent stage: client counts")
    parser.add_argument("--format-prompts", type=int, default=4, help="formats stage: prompts per format")
    parser.add_argument("--slots", type=int, default=None, help="llamacpp slots (default: [generator] slots)")
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers baselines")
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary home and logs")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(sorted(unknown))}; known: {', '.join(STAGES)}")
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ctx = Context(args)
    OUT.mkdir(exist_ok=True)
    try:
        if "formats" in args.only:
            started = time.perf_counter()
            save(ctx, "formats", stage_formats(ctx), started)
        if "single" in args.only or "concurrent" in args.only:
            run_servers(ctx)
        if "adapters" in args.only:
            started = time.perf_counter()
            save(ctx, "adapters", stage_adapters(ctx), started)
    finally:
        if args.keep_home:
            print(f"home and logs kept in {ctx.work}")
        else:
            shutil.rmtree(ctx.work, ignore_errors=True)


def run_servers(ctx: Context) -> None:
    """The single and concurrent stages, which share their servers: transformers first (single, then 8
    clients), then the bare engine, then ragloop+llamacpp (single, then each client count 50/50 and 100/0)."""
    args = ctx.args
    single = "single" in args.only
    conc = "concurrent" in args.only
    started = time.perf_counter()
    questions = ctx.take(args.questions) if single else []
    conc_q = {n: (ctx.take(n), ctx.take(n)) for n in args.clients} if conc else {}
    adapter = ctx.ensure_adapters(1)[0] if conc else None
    runs: dict[str, dict] = {}

    def with_transformers(work: Callable[[Server | None], None]) -> None:
        if args.no_transformers or not (single or any(n <= 8 for n in conc_q)):
            work(None)
            return
        with ctx.server("transformers", backend="transformers") as server:
            ask(server.base_url, "Warm up: what is the GDPR?", 4, "base")
            if adapter:
                ask(server.base_url, "Warm up: what is the GDPR?", 4, adapter)
            work(server)

    def transformers_work(server: Server | None) -> None:
        nonlocal transformers_server_rows
        if server is None:
            return
        if single:
            print("single: transformers", flush=True)
            transformers_server_rows = sequential(server, questions, args.new_tokens)
        for n in (n for n in conc_q if n <= 8):  # more would queue for many minutes behind one generation
            print(f"concurrent: transformers, {n} clients 50/50", flush=True)
            runs[f"transformers|{n}|50/50"] = concurrent_run(ctx, server, n, conc_q[n][0], adapter)

    transformers_server_rows: list[dict] | None = None
    with_transformers(transformers_work)

    with ctx.llamacpp_server("llamacpp") as server:
        if adapter:
            ask(server.base_url, "Warm up: what is the GDPR?", 4, adapter)  # starts the engine with it
        # The template prefix in a slot's cache, as in the bare engine after its warm-up request.
        ask(server.base_url, "Warm up: what is the GDPR?", 4, "base")
        if single:
            save(ctx, "single", stage_single(ctx, questions, transformers_server_rows, server), started)
            started = time.perf_counter()
        for n, (mixed, base_only) in conc_q.items():
            print(f"concurrent: llamacpp, {n} clients 50/50 and 100/0", flush=True)
            runs[f"llamacpp|{n}|50/50"] = concurrent_run(ctx, server, n, mixed, adapter)
            runs[f"llamacpp|{n}|100/0"] = concurrent_run(ctx, server, n, base_only, None)
    if conc:
        save(ctx, "concurrent", stage_concurrent(ctx, runs), started)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--engine-worker":
        engine_worker(sys.argv[2], sys.argv[3])
    else:
        main()
