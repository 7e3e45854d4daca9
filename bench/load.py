"""Load and failure benchmark: many short chat requests from concurrent clients against a real server.

A server (``python -m ragloop.serve``, in its own process, on loopback) answers GDPR questions over a work
home. Short prompts: one passage (``--k 1``, ~300 prompt tokens with the cited-answer template) and 16 new
tokens. First a baseline in the same run (one client, a few requests: the latency nobody waits behind),
then the load (``--requests`` from ``--clients`` concurrent clients, or ``--minutes``, whichever ends
first). Printed: errors, latency p50/p95/p99, throughput, each against the baseline, and the records
check: every acknowledged answer (a 200 with its interaction id) is in the database, and the rows
recorded for the run equal the requests acknowledged.

``--kill`` SIGKILLs the server when half the requests are acknowledged and starts it again on the same
home and port; clients whose request broke off retry it on the new server. Meanwhile a writer ingests a
small document and moves a ``canary`` alias between the base and a random adapter version every second,
so the kill can land mid-write. After the restart: every acknowledged answer and every acknowledged
write is in the database, every recorded knowledge-base version is readable in LanceDB with the chunk
count recorded for it, and every alias points where its last registry event says (the others where they
were before the load).

    python bench/load.py                          # 2,000 requests (or 10 minutes), 32 clients
    python bench/load.py --kill                   # the same, with a SIGKILL and restart in the middle
    python bench/load.py --backend llamacpp       # any [generator] backend; --set SECTION.KEY=VALUE for
    python bench/load.py --home DIR               #   the rest; --home: a copy of DIR's config and data

The work home is a temporary copy: the kill never touches a home of yours.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, pct, table, wait_healthy, write  # noqa: E402

GDPR = DATA / "gdpr" / "gdpr-consolidated-with-corrected-preamble-en.xml"
TOPICS = [
    "the right to erasure",
    "notifying a personal data breach",
    "valid consent",
    "the data protection officer",
    "administrative fines",
    "data protection impact assessments",
    "profiling",
    "transfers to third countries",
    "pseudonymisation",
    "the information given to data subjects",
    "the right of access",
    "processing of children's data",
]
HEADERS = ["run", "requests", "acknowledged", "errors", "p50 s", "p95 s", "p99 s", "req/s", "tokens/s",
           "p50 / baseline", "req/s / baseline"]  # fmt: skip
FORMS = ["What does the GDPR say about {}?", "Who is responsible for {}?", "When does {} apply?"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def question(i: int) -> str:
    return FORMS[(i // len(TOPICS)) % len(FORMS)].format(TOPICS[i % len(TOPICS)])


# The server ----------------------------------------------------------------------------------------------


class Server:
    """``python -m ragloop.serve`` on the work home, restartable on the same port."""

    def __init__(self, home: Path, port: int, env: dict[str, str], log: Path):
        self.home, self.port, self.env, self.log = home, port, env, log
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "ragloop.serve", "--home", str(self.home), "--host", "127.0.0.1",
               "--port", str(self.port), "--log-level", "warning"]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        wait_healthy(self.port).close()

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a power cut or the OOM killer."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# The clients ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One attempt of one request. ``ack``: the interaction id of an answer the client received."""

    i: int
    attempt: int
    latency: float
    ack: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retry_after: float | None = None  # a 503's Retry-After: the client waits and asks again


REFUSED = "HTTP 503, retried"
MAX_ATTEMPTS = 60  # per request: 503s waited out, and retries after a kill  # an overloaded server's refusal the client honoured; not a failure


@dataclass
class Run:
    name: str
    tag: str  # every attempt's ``user`` is "<tag>-<i>-<attempt>": the run's rows in the database
    outcomes: list[Outcome] = field(default_factory=list)
    wall: float = 0.0

    @property
    def acked(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ack]

    def errors(self) -> Counter:
        """Requests that failed for good (a 503 the client waited out and asked again is not one)."""
        return Counter(o.error for o in self.outcomes if o.error and o.error != REFUSED)

    @property
    def refusals(self) -> int:
        return sum(1 for o in self.outcomes if o.error == REFUSED)


def ask(client: httpx.Client, tag: str, i: int, attempt: int, args: argparse.Namespace) -> Outcome:
    body = {
        "messages": [{"role": "user", "content": question(i)}],
        "max_tokens": args.new_tokens,
        "temperature": 0,
        "user": f"{tag}-{i}-{attempt}",
        "ragloop": {"k": args.k},
    }
    start = time.perf_counter()
    try:
        response = client.post("/v1/chat/completions", json=body)
    except httpx.HTTPError as exc:
        return Outcome(i, attempt, time.perf_counter() - start, error=type(exc).__name__)
    latency = time.perf_counter() - start
    if response.status_code == 503 and "retry-after" in response.headers:
        return Outcome(i, attempt, latency, error=REFUSED, retry_after=float(response.headers["retry-after"]))
    if response.status_code != 200:
        return Outcome(i, attempt, latency, error=f"HTTP {response.status_code}")
    data = response.json()
    usage = data.get("usage") or {}
    return Outcome(
        i,
        attempt,
        latency,
        ack=data["ragloop"]["interaction_id"],
        prompt_tokens=usage.get("prompt_tokens", 0),
        completion_tokens=usage.get("completion_tokens", 0),
    )


def load(
    server: Server,
    run: Run,
    n: int,
    clients: int,
    deadline: float,
    args: argparse.Namespace,
    up: threading.Event,
    on_ack: Callable[[], None] | None = None,
) -> Run:
    """``clients`` threads, each with its own kept-alive connection, take request numbers until ``n`` are
    taken or ``deadline`` passes. A request that broke off while the server was down (``up`` cleared) is
    retried once it is back, as a new attempt (the old one may have been recorded without an answer)."""
    lock = threading.Lock()
    taken = [0]

    def take() -> int | None:
        with lock:
            if taken[0] >= n or time.monotonic() > deadline:
                return None
            taken[0] += 1
            return taken[0] - 1

    def client_loop() -> None:
        # As the OpenAI SDK does, a client waits out an overloaded server's 503 (its Retry-After) and asks
        # again; the latency of an acknowledged answer runs from its first attempt (what its user waited).
        with httpx.Client(base_url=server.url, timeout=args.timeout) as client:
            while (i := take()) is not None:
                first = time.perf_counter()
                for attempt in range(MAX_ATTEMPTS):
                    outcome = ask(client, run.tag, i, attempt, args)
                    if outcome.ack:
                        outcome.latency = time.perf_counter() - first
                    with lock:
                        run.outcomes.append(outcome)
                        if outcome.ack and on_ack is not None:
                            on_ack()
                    if outcome.error == REFUSED and attempt + 1 < MAX_ATTEMPTS:
                        time.sleep(outcome.retry_after or 1.0)
                        continue
                    if outcome.ack or not args.kill or (outcome.error or "").startswith("HTTP"):
                        break
                    up.wait(timeout=600)  # the server was killed: retry on the restarted one

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client_loop) for _ in range(clients)]:
            future.result()  # a bug in a client is raised here, not lost
    run.wall = time.perf_counter() - start
    return run


# The writer (--kill): KB and registry writes the kill can land in ------------------------------------------


class Writer(threading.Thread):
    """Every ``period`` s: upload a small document, then promote the next of ``versions`` as ``canary``.
    Keeps what the server acknowledged: KB versions and (alias move number, version)."""

    def __init__(self, server: Server, versions: list[str], period: float = 1.0):
        super().__init__(daemon=True)
        self.server, self.versions, self.period = server, versions, period
        self.stop = threading.Event()
        self.kb_versions: list[int] = []
        self.promotions: list[str] = []
        self.errors: Counter = Counter()

    def run(self) -> None:
        n = 0
        with httpx.Client(base_url=self.server.url, timeout=120) as client:
            while not self.stop.wait(self.period):
                n += 1
                text = f"Bench note {n}: the canteen opens at {7 + n % 3} and closes at {14 + n % 5}."
                try:
                    files = [("files", (f"note-{n}.txt", text.encode()))]
                    r = client.post("/api/ingest", files=files, data={"collection": "bench-writes"})
                    if r.status_code == 200:
                        self.kb_versions.append(r.json()["kb_version"])
                    else:
                        self.errors[f"ingest HTTP {r.status_code}"] += 1
                    version = self.versions[n % len(self.versions)]
                    r = client.post(f"/api/models/{version}/promote", json={"alias": "canary"})
                    if r.status_code == 200:
                        self.promotions.append(version)
                    else:
                        self.errors[f"promote HTTP {r.status_code}"] += 1
                except httpx.HTTPError as exc:
                    self.errors[type(exc).__name__] += 1


def random_adapter(base_dir: Path, out: Path) -> Path:
    """A LoRA adapter with random weights on the base (what a version looks like to the server)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, config).save_pretrained(str(out))
    return out


# Checks ---------------------------------------------------------------------------------------------------


def records_check(settings, run: Run) -> dict:  # type: ignore[no-untyped-def]
    """Acknowledged answers missing from the database (must be none) and the run's rows."""
    from sqlalchemy import func, select

    from ragloop.store.db import session_scope
    from ragloop.store.models import Interaction

    acked = {o.ack for o in run.acked}
    with session_scope(settings.db_url) as s:
        rows = set(s.scalars(select(Interaction.id).where(Interaction.user_id.like(f"{run.tag}-%"))))
        n_rows = s.scalar(
            select(func.count()).select_from(Interaction).where(Interaction.user_id.like(f"{run.tag}-%"))
        )
    return {
        "acknowledged": len(acked),
        "recorded": n_rows,
        "lost": len(acked - rows),
        "recorded_not_acknowledged": len(rows - acked),
    }


def registry_snapshot(db) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """alias -> version, from a database URL or an open session."""
    from sqlalchemy import select

    from ragloop.store.db import session_of
    from ragloop.store.models import ModelAlias

    with session_of(db) as s:
        return {a.name: a.model_version_id for a in s.scalars(select(ModelAlias))}


def integrity_check(settings, before: dict[str, str], writer: Writer | None) -> list[str]:  # type: ignore[no-untyped-def]
    """What is not intact after the kill and restart (empty: all is)."""
    from sqlalchemy import select, text

    from ragloop.generation.release import adapter_damage
    from ragloop.ingest.kb import KnowledgeBase
    from ragloop.ingest.pipeline import kb_versions
    from ragloop.store.db import session_scope
    from ragloop.store.models import ModelVersion, RegistryEvent

    problems = []
    with session_scope(settings.db_url) as s:
        sqlite = settings.db_url.startswith("sqlite")
        if sqlite and (check := s.execute(text("PRAGMA integrity_check")).scalar()) != "ok":
            problems.append(f"SQLite integrity_check: {check}")
        for version in s.scalars(select(ModelVersion)):  # every registered adapter, served or not
            if damage := adapter_damage(version):
                problems.append(f"{version.id}: {'; '.join(damage)}")
        events = [
            (e.alias, e.model_version_id) for e in s.scalars(select(RegistryEvent).order_by(RegistryEvent.id))
        ]
        for name, version_id in registry_snapshot(s).items():
            if s.get(ModelVersion, version_id) is None:
                problems.append(f"alias {name} points at {version_id}, which does not exist")
            last = [version for alias, version in events if alias == name][-1:]
            if last and last[0] != version_id:
                problems.append(f"alias {name} is {version_id} but its last event says {last[0]}")
            if name != "canary" and before.get(name, version_id) != version_id:
                problems.append(f"alias {name} moved from {before[name]} to {version_id} (nobody moved it)")
    if writer is not None:  # every acknowledged move is recorded, in order (unacknowledged ones may be too)
        moved = iter(version for alias, version in events if alias == "canary")
        # Promoting the version an alias already serves changes nothing and records nothing: when the
        # promotion between two acknowledged ones of the same version failed (the server was down), the
        # second is such a no-op. Consecutive repeats are one move.
        acked = [v for i, v in enumerate(writer.promotions) if i == 0 or writer.promotions[i - 1] != v]
        if not all(any(m == a for m in moved) for a in acked):
            problems.append("an acknowledged canary promotion is missing from the registry events")
    kb = KnowledgeBase(settings)
    recorded = kb_versions(settings.db_url)
    for row in recorded:
        try:
            if (n := kb.count(row.version)) != row.n_chunks:
                problems.append(f"KB version {row.version}: {n} chunks in LanceDB, {row.n_chunks} recorded")
        except Exception as exc:  # a version the database promises must open
            problems.append(f"KB version {row.version} is unreadable: {exc}")
    if recorded and kb.version != recorded[-1].version and kb.committed_version != kb.version:
        problems.append(f"LanceDB is at version {kb.version}, the last recorded is {recorded[-1].version}")
    if writer is not None:
        missing = set(writer.kb_versions) - {row.version for row in recorded}
        if missing:
            problems.append(f"acknowledged KB versions missing from the database: {sorted(missing)}")
    return problems


# Main ------------------------------------------------------------------------------------------------------


def work_home(args: argparse.Namespace) -> Path:
    """A temporary home: a copy of ``--home`` (config and data), or a fresh one with ``--corpus`` ingested."""
    from ragloop.config import init_home, load_settings
    from ragloop.ingest.pipeline import ingest_paths

    home = Path(tempfile.mkdtemp(prefix="ragloop-bench-load-"))
    if args.home:
        shutil.copy2(Path(args.home) / "ragloop.toml", home / "ragloop.toml")
        shutil.copytree(Path(args.home) / "data", home / "data")
        return home
    init_home(home)
    t0 = time.perf_counter()
    report = ingest_paths(load_settings(home), [Path(args.corpus)], collection="gdpr")
    print(f"ingested {args.corpus} ({len(report.added)} documents) in {time.perf_counter() - t0:.0f} s")
    return home


def overrides(args: argparse.Namespace) -> dict[str, str]:
    env = {}
    if args.backend:
        env["RAGLOOP_GENERATOR__BACKEND"] = args.backend
    for item in args.set:
        key, _, value = item.partition("=")
        env["RAGLOOP_" + key.upper().replace(".", "__")] = value
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--baseline", type=int, default=16, help="requests of the one-client baseline")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--k", type=int, default=1, help="passages per prompt (1: ~300 prompt tokens)")
    parser.add_argument("--backend", default=None, help="[generator] backend (default: the home's)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any other setting, e.g. generator.model=DIR or generator.slots=8",
    )
    parser.add_argument("--home", default=None, help="copy this home's config and data instead of ingesting")
    parser.add_argument("--corpus", default=str(GDPR), help="document ingested into a fresh home")
    parser.add_argument("--kill", action="store_true", help="SIGKILL and restart the server mid-load")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a client waits for an answer")
    parser.add_argument("--keep", action="store_true", help="keep the work home (its path is printed)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.update(overrides(args))  # this process reads the same settings as the server

    from ragloop.config import load_settings

    home = work_home(args)
    settings = load_settings(home)
    if (settings.database_url and "RAGLOOP_DATABASE_URL" not in os.environ) or settings.lancedb_path:
        shutil.rmtree(home)
        sys.exit(
            "The home's database or LanceDB lives outside it (database_url, lancedb_path): the bench would "
            "load (and kill) that one. Pass --set database_url=<a scratch database> (and no lancedb_path)."
        )
    server = Server(home, free_port(), dict(os.environ), home / "server.log")
    writer: Writer | None = None
    try:
        if args.kill:  # a second version to move an alias to; registered before the server starts
            from ragloop.generation.models import resolve_model
            from ragloop.training.lineage import register_model

            versions = []
            if settings.generator.backend != "openai":  # a remote server's base is not here to adapt
                base_dir, _ = resolve_model(settings.generator.model, settings.model_cache_dir)
                adapter = random_adapter(base_dir, home / "bench-adapter")
                versions = [register_model(settings, {"adapter_dir": adapter}, name="bench").id]
        t0 = time.perf_counter()
        server.start()
        print(
            f"server up in {time.perf_counter() - t0:.0f} s ({settings.generator.backend}, "
            f"{settings.generator.model}); log: {server.log}"
        )
        up = threading.Event()
        up.set()
        with httpx.Client(base_url=server.url, timeout=args.timeout) as client:  # warm-up
            ask(client, "warmup", 0, 0, args)
        stamp = f"{int(time.time())}"
        base = load(
            server, Run("1 client (baseline)", f"base{stamp}"), args.baseline, 1, float("inf"), args, up
        )

        before = registry_snapshot(settings.db_url)
        acked = [0]
        half = threading.Event()

        def on_ack() -> None:  # called under the clients' lock
            acked[0] += 1
            if acked[0] >= args.requests // 2:
                half.set()

        start = time.monotonic()
        deadline = start + args.minutes * 60
        run = Run(f"{args.clients} clients" + (", SIGKILL + restart" if args.kill else ""), f"load{stamp}")
        killed_for = killed_at = None
        if args.kill:
            writer = Writer(server, [before["base"], *versions])
            writer.start()
        with ThreadPoolExecutor(1) as pool:
            result = pool.submit(load, server, run, args.requests, args.clients, deadline, args, up, on_ack)
            if args.kill:  # in the middle: half the requests answered, or half the time gone
                while not half.wait(0.5) and time.monotonic() < (start + deadline) / 2:
                    if result.done():
                        break
                up.clear()
                killed_at = acked[0]
                server.kill()
                t0 = time.perf_counter()
                server.start()
                killed_for = time.perf_counter() - t0
                up.set()
            result.result()
        if writer is not None:
            writer.stop.set()
            writer.join()
        records = records_check(settings, run)
        problems = integrity_check(settings, before, writer) if args.kill else []
        report(args, settings, base, run, records, problems, writer, (killed_at, killed_for))
    finally:
        server.stop()
        if args.keep:
            print(f"work home kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def report(  # type: ignore[no-untyped-def]
    args, settings, base: Run, run: Run, records: dict, problems: list[str], writer, killed
) -> None:
    """Print and write the table (bench/out/load.md, load-kill.md); exit 1 if a record check failed."""

    def row(r: Run) -> list[object]:
        lat = [o.latency for o in r.acked]
        tokens = sum(o.completion_tokens for o in r.acked)
        return [
            r.name,
            len({o.i for o in r.outcomes}),
            len(r.acked),
            sum(r.errors().values()),
            pct(lat, 50),
            pct(lat, 95),
            pct(lat, 99),
            len(r.acked) / r.wall,
            tokens / r.wall,
        ]

    b, r = row(base), row(run)
    b += [1.0, 1.0]
    r += [r[4] / b[4], r[7] / b[7]]  # p50 latency and requests/s, each over the baseline's
    prompt = [o.prompt_tokens for o in run.acked]
    lines = [
        f"# Load ({settings.generator.backend}, {settings.generator.model}; {args.new_tokens} new tokens, "
        f"k = {args.k}; {os.cpu_count()} cores)",
        "",
        table(HEADERS, [b, r]),
        "",
        f"- command: `python bench/load.py {' '.join(sys.argv[1:])}`",
        f"- mean prompt: {sum(prompt) / max(1, len(prompt)):.0f} tokens; wall {run.wall:.0f} s",
        f"- errors: {dict(run.errors()) or 'none'}; 503 refusals waited out and asked again (Retry-After): "
        f"{run.refusals} (server: [generator] slots {settings.generator.slots}, queue {settings.generator.queue})",
        f"- records: {records['acknowledged']} acknowledged, {records['recorded']} recorded, "
        f"{records['lost']} acknowledged but not recorded (must be 0), "
        f"{records['recorded_not_acknowledged']} recorded without reaching their client"
        + ("" if args.kill else " (must be 0 without a kill)"),
    ]
    if args.kill:
        retried = sum(
            1 for o in run.outcomes if o.error and o.error != REFUSED and not o.error.startswith("HTTP")
        )
        lines += [
            f"- SIGKILL after {killed[0]} acknowledged; restart took {killed[1]:.1f} s; "
            f"{retried} requests retried on the restarted server",
            f"- writer: {len(writer.kb_versions)} ingests and {len(writer.promotions)} canary promotions "
            f"acknowledged; errors {dict(writer.errors) or 'none'}",
            f"- integrity after restart: {'intact' if not problems else '; '.join(problems)}",
        ]
    write("load-kill.md" if args.kill else "load.md", "\n".join(lines))
    ok = records["lost"] == 0 and not problems and (args.kill or records["recorded_not_acknowledged"] == 0)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
