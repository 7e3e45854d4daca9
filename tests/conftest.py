"""Shared fixtures: a tiny real model, throwaway project homes, a small knowledge base, and real servers.

Everything runs offline: the generator is a tiny random Llama built once per session, embeddings come from
the packaged MiniLM, and servers listen on free loopback ports. Tests drive the doors a user drives (HTTP
over a real socket), so fixtures start real servers rather than calling the app in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from ragloop.config import Settings, init_home, load_settings
from ragloop.testing import build_tiny_model

pytest_plugins = ["skip_policy"]  # a skip outside the declared markers fails the run

# The in-process generator backends. A module marked ``pytest.mark.backends(*BACKENDS)`` runs each of its
# tests that uses a home once per backend: the server and replay tests must behave the same on all.
BACKENDS = ("transformers", "llamacpp")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends(*names): run the module's tests that use a home once per generator backend"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", marker.args or BACKENDS)


# Two collections with distinct vocabularies, so a scope leak shows up as a passage from the wrong one.
DOCS: dict[str, list[tuple[str, bytes]]] = {
    "handbook": [
        (
            "vacation.md",
            b"# Vacation policy\n\nEmployees receive twenty-five days of paid vacation per year. "
            b"Unused vacation days expire at the end of March of the following year.\n",
        ),
        (
            "security.txt",
            b"Passwords must be rotated every ninety days. Laptops must use full disk encryption. "
            b"Report a lost badge to the security desk the same day.\n",
        ),
    ],
    "finance": [
        (
            "fines.txt",
            b"Fines can reach 20 000 000 EUR or 4 % of the total worldwide annual turnover, "
            b"whichever is higher. Supervisory authorities set the amount of each fine.\n",
        ),
    ],
}


# Databases ---------------------------------------------------------------------------------------------


@contextmanager
def fresh_database(kind: str, folder: Path) -> Iterator[str]:
    """The URL of an empty database: a SQLite file in ``folder``, or a throwaway database on the
    PostgreSQL of RAGLOOP_TEST_POSTGRES_URL (`make test` starts one), dropped afterwards. A missing
    PostgreSQL fails the test instead of skipping it: production runs on it."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'test.db'}"
        return
    from ragloop.store.db import dispose_all

    base = os.environ.get("RAGLOOP_TEST_POSTGRES_URL")
    if not base:
        pytest.fail(
            "RAGLOOP_TEST_POSTGRES_URL is not set: run the suite with `make test` (it starts PostgreSQL)."
        )
    name = f"ragloop_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        dispose_all()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database; a test using it runs once on SQLite and once on PostgreSQL (marked ``postgres``)."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


def alembic_step(engine: sa.Engine, db_url: str) -> Callable[[Callable[..., None], str], None]:
    """``migrate(command.upgrade, "0005")``: one Alembic step on ``engine``'s connection, committed, for the
    tests that walk a database through its migrations with rows in between."""
    from ragloop.store.db import alembic_config

    cfg = alembic_config(db_url)

    def migrate(step: Callable[..., None], revision: str) -> None:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, revision)

    return migrate


# Models and homes --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama + tokenizer, built once per test session (about a second)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def make_home(folder: Path, model_dir: Path, backend: str = "transformers", **generator: Any) -> Settings:
    """A project home in ``folder`` answering with the model in ``model_dir`` through ``backend``
    (``generator`` sets more ``[generator]`` keys). The overrides are written into its ``ragloop.toml``
    (not passed in-process) so a server started as a subprocess sees them too."""
    root = init_home(folder / "home")
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in generator.items())
    (root / "ragloop.toml").write_text(
        f"model_cache = {json.dumps(str(folder / 'model-cache'))}\n\n"
        "[generator]\n"
        f"backend = {json.dumps(backend)}\n"
        f"model = {json.dumps(str(model_dir))}\n"
        "max_new_tokens = 16\n"
        f"{extra}\n"
        "[retrieval]\n"
        "top_k = 3\n"
    )
    return load_settings(root)


@pytest.fixture
def backend() -> str:
    """The generator backend of ``home``; a module marked ``backends`` runs on each (see BACKENDS)."""
    return "transformers"


@pytest.fixture
def home(tmp_path: Path, tiny_model_dir: Path, backend: str) -> Iterator[Settings]:
    """A fresh, empty project home answering with the tiny model (through ``backend``)."""
    if backend != "llamacpp":
        yield make_home(tmp_path, tiny_model_dir, backend)
        return
    import torch

    from ragloop import torch_thread

    # The llamacpp backend leaves torch one thread (the engine takes the cores): give later tests theirs.
    threads = torch_thread.run(torch.get_num_threads)
    yield make_home(tmp_path, tiny_model_dir, backend)
    torch_thread.run(torch.set_num_threads, threads)


@pytest.fixture(scope="session")
def kb_template(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The ``data/`` folder of a home with ``DOCS`` ingested, built once and copied by ``kb_home``
    (ingesting costs seconds; copying a few small files, milliseconds)."""
    from ragloop.ingest.pipeline import ingest_uploads
    from ragloop.store.db import get_engine

    settings = make_home(tmp_path_factory.mktemp("kb-template"), tiny_model_dir)
    for collection, files in DOCS.items():
        report = ingest_uploads(settings, files, collection=collection)
        assert report.ok, report.errors
    get_engine(settings.db_url).dispose()  # closing the connections checkpoints SQLite's WAL into the file
    return settings.data_dir


@pytest.fixture
def kb_home(home: Settings, kb_template: Path) -> Settings:
    """``home`` with ``DOCS`` ingested: two documents in ``handbook``, one in ``finance``."""
    shutil.copytree(kb_template, home.data_dir, dirs_exist_ok=True)
    return home


def with_overrides(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """A copy of ``settings`` with some fields of some sections changed: ``server={"auth": "on"}``."""
    update = {name: getattr(settings, name).model_copy(update=fields) for name, fields in sections.items()}
    return settings.model_copy(update=update)


# Servers -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """A running server: ``url`` without a trailing slash, the settings it serves with."""

    url: str
    settings: Settings
    stop: Callable[[], None] = field(repr=False)

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 60), **kwargs)


@pytest.fixture
def start_server() -> Iterator[Callable[..., LiveServer]]:
    """Factory: ``start_server(settings, assistant=None, **sections)`` runs ``create_app`` under uvicorn in
    a thread on a free loopback port (a real socket), with its start-up and shut-down (the periodic tasks)
    as ``ragloop serve`` runs them, and stops it after the test. ``sections`` override
    settings as in ``with_overrides``, e.g. ``server={"auth": "on"}, limits={"max_request_bytes": 4096}``."""
    import uvicorn

    from ragloop.serve.app import create_app

    running: list[Callable[[], None]] = []

    def start(settings: Settings, assistant: Any = None, **sections: dict[str, Any]) -> LiveServer:
        settings = with_overrides(settings, **sections) if sections else settings
        app = create_app(settings, assistant)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("The test server did not start.")
            time.sleep(0.02)

        def stop() -> None:
            server.should_exit = True
            thread.join(timeout=15)
            sock.close()
            close = getattr(app.state.assistant, "close", None)
            if close is not None:  # llama.cpp engines stop now rather than whenever they are collected
                close()

        running.append(stop)
        return LiveServer(url=f"http://127.0.0.1:{port}", settings=settings, stop=stop)

    yield start
    for stop in reversed(running):
        stop()


@pytest.fixture
def live_server(kb_home: Settings, start_server: Callable[..., LiveServer]) -> LiveServer:
    """The real app over ``kb_home`` on loopback, auth off (``auto`` on 127.0.0.1)."""
    return start_server(kb_home)


@dataclass
class ServerProcess:
    """``python -m ragloop.serve`` running in its own process (so a test can SIGKILL it)."""

    proc: subprocess.Popen
    url: str
    log_path: Path

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a power cut or the OOM killer."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``server_process(settings, env=None, log_level="warning")`` starts ``python -m
    ragloop.serve`` on the home of ``settings`` and a free loopback port (``env`` adds RAGLOOP_* overrides),
    waits until /healthz answers (model loaded), and kills the process after the test if it still runs.
    Its output goes to ``ServerProcess.log_path``."""
    started: list[ServerProcess] = []

    def start(
        settings: Settings,
        env: dict[str, str] | None = None,
        log_level: str = "warning",
        timeout: float = 180,
    ) -> ServerProcess:
        port = free_port()
        log_path = tmp_path / f"server-{port}.log"
        cmd = [sys.executable, "-m", "ragloop.serve", "--home", str(settings.home), "--host", "127.0.0.1",
               "--port", str(port), "--log-level", log_level]  # fmt: skip
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
        server = ServerProcess(proc=proc, url=f"http://127.0.0.1:{port}", log_path=log_path)
        started.append(server)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"The server exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"The server did not answer /healthz in {timeout} s:\n{server.log_tail()}")
            time.sleep(0.2)

    yield start
    for server in started:
        server.kill()
