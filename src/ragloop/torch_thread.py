"""One OS thread for every torch computation of a process (embedding and generation).

OpenMP keeps one team of worker threads per calling OS thread. Once two threads of a process have run torch
ops, decoding on this 2-core CPU got ~1.5-1.8x slower (measured: 3.5 s vs 6.4 s for the same 64 tokens),
and a server runs retrieval and generation from many request threads. Funnelling them through this single
thread keeps one team, and serialises CPU-bound work that would only thrash two cores anyway.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_NAME = "ragloop-torch"
_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=_NAME)


def submit(fn: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
    """Run ``fn`` on the torch thread; returns its future (already done when called from that thread)."""
    if threading.current_thread().name.startswith(_NAME):
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future
    return _executor.submit(fn, *args, **kwargs)


def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on the torch thread and wait for its result."""
    return submit(fn, *args, **kwargs).result()
