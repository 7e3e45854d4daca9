"""Serving benchmark: end-to-end latency of ragloop's API against bare ``model.generate``.

Same model (the packaged SmolLM2-135M-Instruct, fp32, CPU), same rendered prompts, same greedy decoding, in
the same run: (1) bare transformers ``generate`` on the prompts ragloop rendered; (2) ragloop over HTTP
(retrieve + generate + record), sequential, streaming, so time to first token is seen as a client sees it;
(3) ragloop with 8 concurrent clients. The prefill floor is 2 x parameters x prompt tokens / the fp32
matmul rate measured in this run.

    python bench/serving.py [--questions 8] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, pct, sgemm_flops, table, wait_healthy, write  # noqa: E402

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask_stream(client: httpx.Client, question: str, new_tokens: int) -> dict:
    body = {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": new_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
    }
    start = time.perf_counter()
    first = None
    final = {}
    with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            event = json.loads(line[5:])
            for choice in event.get("choices", []):
                if choice.get("delta", {}).get("content") and first is None:
                    first = time.perf_counter() - start
            if "ragloop" in event:
                final = event["ragloop"]
            if event.get("usage"):
                final["usage"] = event["usage"]
    total = time.perf_counter() - start
    return {"total": total, "ttft": first or total, "final": final}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"

    import torch

    from ragloop import torch_thread
    from ragloop.config import init_home, load_settings
    from ragloop.generation.assistant import Assistant
    from ragloop.generation.backends import TransformersBackend
    from ragloop.ingest.pipeline import ingest_paths
    from ragloop.retrieval.search import Retriever

    questions = QUESTIONS[: args.questions]
    home = init_home(Path(tempfile.mkdtemp(prefix="ragloop-bench-serving-")))
    settings = load_settings(home)
    ingest_paths(
        settings, [DATA / "gdpr" / "gdpr-consolidated-with-corrected-preamble-en.xml"], collection="gdpr"
    )
    assistant = Assistant(settings)
    retriever = Retriever(settings)
    prompts = [
        assistant.template.render([{"role": "user", "content": q}], retriever.search(q)) for q in questions
    ]

    # (1) Bare transformers generate on exactly these prompts.
    bare = TransformersBackend(assistant.base_dir)
    model, tok = bare.model, bare.tokenizer
    n_params = sum(p.numel() for p in model.parameters())
    flops = sgemm_flops()
    bare_rows = []
    for prompt in prompts:
        ids = tok.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )

        def bare_run(
            ids=ids,
        ):  # on the process's torch thread, like the embedding before it (one OpenMP team)
            with torch.inference_mode():
                t0 = time.perf_counter()
                model(**ids)  # prefill alone = time to first token
                ttft = time.perf_counter() - t0
                t0 = time.perf_counter()
                kw = dict(max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
                out = model.generate(**ids, **kw)
                return ttft, time.perf_counter() - t0, out

        ttft, total, out = torch_thread.run(bare_run)
        new = out.shape[1] - ids["input_ids"].shape[1]
        bare_rows.append({"ttft": ttft, "total": total, "new": new, "prompt": ids["input_ids"].shape[1]})
    del bare

    # (2)+(3) ragloop over HTTP, in a separate server process.
    port = free_port()
    env = dict(os.environ, RAGLOOP_HOME=str(home))
    server = subprocess.Popen(
        [sys.executable, "-m", "ragloop.serve", "--home", str(home), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = wait_healthy(port)
        ask_stream(client, "warm up", 4)
        seq = [ask_stream(client, q, args.new_tokens) for q in questions]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            conc = list(
                pool.map(
                    lambda q: ask_stream(
                        httpx.Client(base_url=client.base_url, timeout=600), q, args.new_tokens
                    ),
                    (questions * 2)[: args.concurrency],
                )
            )
        conc_wall = time.perf_counter() - t0
    finally:
        server.kill()

    def toks(rows: list[dict]) -> int:
        return sum(r["final"].get("usage", {}).get("completion_tokens", 0) for r in rows)

    prompt_tokens = sum(r["prompt"] for r in bare_rows) / len(bare_rows)
    floor = 2 * n_params * prompt_tokens / flops
    bare_total = [r["total"] for r in bare_rows]
    bare_ttft = [r["ttft"] for r in bare_rows]
    bare_tps = sum(r["new"] for r in bare_rows) / sum(bare_total)
    seq_total = [r["total"] for r in seq]
    seq_ttft = [r["ttft"] for r in seq]
    seq_tps = toks(seq) / sum(seq_total)
    conc_total = [r["total"] for r in conc]
    rows = [
        [
            "bare model.generate (baseline)",
            pct(bare_total, 50),
            pct(bare_total, 95),
            pct(bare_ttft, 50),
            bare_tps,
            1.0,
        ],
        [
            "ragloop HTTP, sequential",
            pct(seq_total, 50),
            pct(seq_total, 95),
            pct(seq_ttft, 50),
            seq_tps,
            pct(seq_total, 50) / pct(bare_total, 50),
        ],
        [
            f"ragloop HTTP, {args.concurrency} concurrent",
            pct(conc_total, 50),
            pct(conc_total, 95),
            pct([r["ttft"] for r in conc], 50),
            toks(conc) / conc_wall,
            pct(conc_total, 50) / pct(bare_total, 50),
        ],
    ]
    text = "\n".join(
        [
            f"# Serving benchmark ({len(questions)} GDPR questions, {args.new_tokens} new tokens, SmolLM2-135M fp32, "
            f"{torch.get_num_threads()} threads)",
            "",
            table(["path", "p50 s", "p95 s", "TTFT p50 s", "tokens/s", "p50 ratio vs bare"], rows),
            "",
            f"- mean prompt: {prompt_tokens:.0f} tokens; parameters: {n_params / 1e6:.1f} M; measured fp32 matmul: "
            f"{flops / 1e9:.1f} GFLOP/s",
            f"- prefill floor (2 x params x prompt tokens / matmul rate): {floor:.3f} s; ragloop TTFT p50 / floor = "
            f"{pct(seq_ttft, 50) / floor:.2f}; bare prefill / floor = {pct(bare_ttft, 50) / floor:.2f}",
            f"- ragloop sequential overhead over bare generate: {100 * (pct(seq_total, 50) / pct(bare_total, 50) - 1):+.1f} %",
            f"- {args.concurrency} concurrent clients: wall {conc_wall:.1f} s for {toks(conc)} tokens",
        ]
    )
    write("serving.md", text)


if __name__ == "__main__":
    main()
