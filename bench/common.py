"""Helpers shared by the benchmarks: a measured fp32 matmul rate, percentiles, Markdown tables."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "out"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def sgemm_flops(n: int = 1024, repeats: int = 20) -> float:
    """Achieved fp32 matmul FLOP/s of torch on this machine, measured now (the 'floor' denominators)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def table(headers: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write(name: str, text: str) -> None:
    OUT.mkdir(exist_ok=True)
    (OUT / name).write_text(text + "\n")
    print(text)


def wait_healthy(port: int, tries: int = 600):  # type: ignore[no-untyped-def]
    """An httpx client for the server on ``port`` once its /healthz answers (it loads models first)."""
    import httpx

    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
    for _ in range(tries):
        try:
            if client.get("/healthz").status_code == 200:
                return client
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the server on port {port} did not become healthy")
