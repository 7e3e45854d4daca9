"""An acknowledged answer is never lost: SIGKILL the server in the middle of a burst of chat requests and
every interaction a client received (a 200 response, or the final event of a stream) is in the database
with its passages; the server then starts again on the same home and serves those records."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

import httpx
from sqlalchemy import text

from ragloop.config import Settings
from ragloop.store.db import session_scope
from ragloop.store.models import Interaction

N_REQUESTS = 40
KILL_AFTER = 10  # acknowledged answers before the kill; the rest are in flight or queued
QUESTIONS = [
    "How many days of paid vacation do employees receive?",
    "How often must passwords be rotated?",
    "How high can fines reach?",
    "What should I do with a lost badge?",
]

# One request: (server url, request number) -> (interaction id, passage count) once acknowledged.
Ask = Callable[[str, int], tuple[str, int]]


def ask_plain(url: str, i: int) -> tuple[str, int]:
    body = {"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], "seed": i}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    response.raise_for_status()
    extras = response.json()["ragloop"]
    return extras["interaction_id"], len(extras["passages"])


def ask_streaming(url: str, i: int) -> tuple[str, int]:
    """Acknowledged as soon as the final event arrives, even if ``[DONE]`` never does."""
    body = {
        "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
        "seed": i,
        "stream": True,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[len("data: ") :])
                if "ragloop" in event:
                    return event["ragloop"]["interaction_id"], len(event["ragloop"]["passages"])
    raise ConnectionError("The stream ended without its final event.")


def burst_then_kill(server, ask: Ask) -> list[tuple[str, int]]:
    """Fire ``N_REQUESTS`` concurrent requests, SIGKILL the server once ``KILL_AFTER`` are acknowledged,
    and return every acknowledged (interaction id, passage count), including any that landed meanwhile."""
    acknowledged: list[tuple[str, int]] = []
    lock = threading.Lock()
    enough = threading.Event()

    def one(i: int) -> None:
        try:
            outcome = ask(server.url, i)
        except (httpx.HTTPError, ConnectionError):
            return  # killed before it was acknowledged: nothing was promised
        with lock:
            acknowledged.append(outcome)
            if len(acknowledged) >= KILL_AFTER:
                enough.set()

    with ThreadPoolExecutor(max_workers=N_REQUESTS) as pool:
        futures = [pool.submit(one, i) for i in range(N_REQUESTS)]
        assert enough.wait(timeout=300), f"Too few answers before the deadline:\n{server.log_tail()}"
        server.kill()
        done, pending = wait(futures, timeout=120)
        assert not pending, "Clients still hang after the server was killed"
    with lock:
        return list(acknowledged)


def assert_recorded(settings: Settings, acknowledged: list[tuple[str, int]]) -> None:
    with session_scope(settings.db_url) as session:
        assert session.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        for interaction_id, n_passages in acknowledged:
            interaction = session.get(Interaction, interaction_id)
            assert interaction is not None, f"acknowledged interaction {interaction_id} was lost"
            assert n_passages > 0
            assert len(interaction.passages) == n_passages
            assert all(p.chunk_id and p.text_sha256 for p in interaction.passages)


def test_acknowledged_answers_survive_sigkill(kb_home: Settings, server_process) -> None:
    server = server_process(kb_home)
    plain = burst_then_kill(server, ask_plain)
    assert KILL_AFTER <= len(plain) < N_REQUESTS  # the kill interrupted the burst
    assert_recorded(kb_home, plain)

    # The killed home starts again, serves what was recorded, and survives a kill mid-stream too.
    server = server_process(kb_home)
    record = httpx.get(f"{server.url}/api/interactions/{plain[0][0]}", timeout=30)
    assert record.status_code == 200 and record.json()["passages"]
    streamed = burst_then_kill(server, ask_streaming)
    assert KILL_AFTER <= len(streamed) < N_REQUESTS
    assert_recorded(kb_home, streamed)
