"""An A/B experiment on the GDPR loop's own traffic: the tuned adapter against the base, through the running
server, rated by bench/loop.py's automatic rater, capped in units and minutes.

1. A copy of a home where `python bench/loop.py` ran (`--home`; default: the newest
   $TMPDIR/ragloop-loop-*): the GDPR ingested, the tuned version (`--candidate`, default loop-v1) and the
   held-apart synth questions (heldout.jsonl), which neither the training data nor the traffic saw.
2. `python -m ragloop.serve` on it, the A/B check every `--check-interval` seconds.
3. Assignment overhead, same run, same server: `--overhead` questions without any experiment, then the same
   questions with an experiment running, on units the hash puts in the control arm (so the same base model
   answers both times: the difference is what the experiment costs a request); and the assignment itself
   in-process (the cached read + the sha256), per call. This runs on an alias of its own (`ab-overhead`,
   the base), so its hand-picked control units stay out of the experiment on production and its SRM check.
4. The experiment (`POST /api/ab`: share `--share`, primary thumbs_up, guardrails error_rate, latency_p95,
   citation_verified): held-apart questions, cycled, one new conversation (unit) each, until `--units` units
   or `--minutes` minutes. Each answer is rated as bench/loop.py rates traffic: token F1 against the synth
   reference >= `--threshold` is a thumbs up, else a thumbs down with the reference as the correction.
5. The report as it stands (`GET /api/ab/{id}`): units reached, each metric's interval and verdict, the
   primary verdict (inconclusive is an honest answer at these sizes), guardrails, sample-ratio check, and
   whether the server's check rolled the candidate back. Tables in bench/out/ab.md and ab.json.

    python bench/ab.py [--home DIR] [--units 400] [--minutes 20] [--share 0.5] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import pct, table, wait_healthy, write  # noqa: E402


def loop_home(given: str | None) -> Path:
    if given:
        return Path(given)
    found = [Path(p) for p in glob.glob(os.path.join(tempfile.gettempdir(), "ragloop-loop-*"))]
    found = [p for p in found if (p / "heldout.jsonl").is_file() and (p / "ragloop.toml").is_file()]
    if not found:
        raise SystemExit("No home of bench/loop.py found: run `python bench/loop.py` first, or pass --home.")
    return max(found, key=lambda p: p.stat().st_mtime)


def copy_home(source: Path) -> Path:
    """The bench's own home: the source's config, data and held-apart questions; its experiments and
    traffic stay out of the source (adapters are read where they were registered)."""
    home = Path(tempfile.mkdtemp(prefix="ragloop-bench-ab-"))
    shutil.copy2(source / "ragloop.toml", home / "ragloop.toml")
    shutil.copy2(source / "heldout.jsonl", home / "heldout.jsonl")
    shutil.copytree(source / "data", home / "data")
    return home


def ask(client, question: str, conversation: str, max_tokens: int, model: str | None = None):  # type: ignore[no-untyped-def]
    """(the answer's JSON, client-side latency in ms) of one turn of a new conversation."""
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "ragloop": {"conversation_id": conversation}, **({"model": model} if model else {})}  # fmt: skip
    t = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body)
    elapsed = (time.perf_counter() - t) * 1000
    response.raise_for_status()
    return response.json(), elapsed


OVERHEAD_ALIAS = "ab-overhead"


def post(client, path: str, body: dict, status: int) -> dict:  # type: ignore[no-untyped-def]
    response = client.post(path, json=body)
    if response.status_code != status:
        raise SystemExit(f"POST {path} answered {response.status_code}: {response.text}")
    return response.json()


def assignment_cost(db_url: str, calls: int = 20_000) -> float:
    """Microseconds per call of what a request pays to be assigned: the cached read of the running
    experiments and the hash of its unit."""
    from ragloop.store.experiments import RunningExperiments, unit_of

    cache = RunningExperiments(db_url)
    cache.for_alias("production")  # the one database read, amortised over ttl_s
    t = time.perf_counter()
    for i in range(calls):
        running = cache.for_alias("production")
        if running is not None:
            running.arm_for(unit_of(f"c{i}", client_conversation=True, user_id=None))
    return (time.perf_counter() - t) / calls * 1e6


def control_conversations(experiment_id: str, share: float) -> Iterator[str]:
    """Conversation ids the experiment's hash assigns to the control arm (tests pick units the same way)."""
    from ragloop.store.experiments import assign, unit_of

    for i in itertools.count():
        conversation = f"on-{i}"
        if (
            assign(experiment_id, unit_of(conversation, client_conversation=True, user_id=None), share)
            == "control"
        ):
            yield conversation


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=None, help="a home where bench/loop.py ran (copied)")
    parser.add_argument("--candidate", default="loop-v1")
    parser.add_argument("--units", type=int, default=400, help="stop after this many units (conversations)")
    parser.add_argument("--minutes", type=float, default=20.0, help="stop after this many minutes")
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument(
        "--threshold", type=float, default=0.4, help="the rater's token-F1 bar (bench/loop.py)"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--overhead", type=int, default=20, help="requests per overhead block")
    parser.add_argument("--check-interval", type=float, default=5.0)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from ragloop.config import load_settings
    from ragloop.datasets.answers import token_f1

    source = loop_home(args.home)
    home = copy_home(source)
    settings = load_settings(home)
    questions = [
        json.loads(line) for line in (home / "heldout.jsonl").read_text().splitlines() if line.strip()
    ]
    random.Random(0).shuffle(questions)
    print(f"home {source} copied to {home}; {len(questions)} held-apart questions")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAGLOOP_AB__CHECK_INTERVAL_S": str(args.check_interval)}
    server = subprocess.Popen(
        [sys.executable, "-m", "ragloop.serve", "--home", str(home), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    started = time.perf_counter()
    try:
        client = wait_healthy(port)
        for i in range(3):  # warm-up: model, embedder, caches
            ask(client, questions[i % len(questions)]["question"], f"warm-{i}", args.max_tokens)

        # 3. Overhead, on an alias of its own (the base model under another name) so that its units, all
        # picked in the control arm, stay out of the experiment on production and its sample-ratio check.
        block = [questions[i % len(questions)]["question"] for i in range(args.overhead)]
        post(client, "/api/models/base/promote", {"alias": OVERHEAD_ALIAS}, 200)
        off = [ask(client, q, f"off-{i}", args.max_tokens, OVERHEAD_ALIAS) for i, q in enumerate(block)]
        side = post(client, "/api/ab", {"candidate": args.candidate, "alias": OVERHEAD_ALIAS,
                                        "share": args.share, "guardrails": []}, 201)  # fmt: skip
        control = control_conversations(side["id"], args.share)
        on = [ask(client, q, next(control), args.max_tokens, OVERHEAD_ALIAS) for q in block]
        assert all(r["ragloop"]["arm"] == "control" for r, _ in on), (
            "an overhead request left the control arm"
        )
        post(client, f"/api/ab/{side['id']}/stop", {"reason": "overhead measured"}, 200)
        exp = post(client, "/api/ab", {"candidate": args.candidate, "share": args.share, "primary": "thumbs_up",
                                       "guardrails": ["error_rate", "latency_p95", "citation_verified"]}, 201)  # fmt: skip
        per_call_us = assignment_cost(settings.db_url)  # production now has a running experiment

        # 4. The experiment: one new unit per question, rated, until a cap.
        t0, ups = time.perf_counter(), 0
        arms = {"control": 0, "candidate": 0, "outside": 0}  # outside: served after the check ended it
        for n in range(args.units):
            if time.perf_counter() - t0 > args.minutes * 60:
                break
            record = questions[n % len(questions)]
            data, _ = ask(client, record["question"], f"unit-{n}", args.max_tokens)
            extra = data["ragloop"]
            arms[extra["arm"] if extra["experiment_id"] == exp["id"] else "outside"] += 1
            answer = data["choices"][0]["message"]["content"]
            reference = record["answers"][0]
            if token_f1(re.sub(r"\[\d+\]", "", answer), [reference]) >= args.threshold:
                fb = {"reviewer_id": "auto-rater", "source": "auto", "thumbs": "up"}
                ups += 1
            else:
                fb = {"reviewer_id": "auto-rater", "source": "auto", "thumbs": "down",
                      "corrected_answer": reference}  # fmt: skip
            client.post(f"/api/interactions/{extra['interaction_id']}/feedback", json=fb).raise_for_status()
        minutes = (time.perf_counter() - t0) / 60
        report = client.get(f"/api/ab/{exp['id']}").json()
    finally:
        server.kill()
        server.wait()

    write("ab.md", render(args, source, exp, report, arms, ups, minutes, off, on, per_call_us, started))
    (Path(__file__).parent / "out" / "ab.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "report": report,
                "served": arms,
                "thumbs_up": ups,
                "overhead": {
                    "off_ms": [t for _, t in off],
                    "on_ms": [t for _, t in on],
                    "assignment_us_per_call": per_call_us,
                },
            },
            indent=2,
        )  # fmt: skip
    )


def _f(x: object) -> str:
    return "–" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))


def render(args, source, exp, report, arms, ups, minutes, off, on, per_call_us, started) -> str:  # type: ignore[no-untyped-def]
    e = report["experiment"]
    served = sum(arms.values())
    lines = [
        f"# A/B: {args.candidate} against the base on held-apart GDPR synth questions ({time.strftime('%Y-%m-%d')})",
        "",
        f"- home: a copy of {source} (bench/loop.py); experiment {exp['id']} on production, share {args.share}, "
        f"primary thumbs_up, guardrails error_rate, latency_p95, citation_verified; caps {args.units} units or "
        f"{args.minutes:g} minutes, {args.max_tokens} new tokens; the server's check every {args.check_interval:g} s",
        f"- served {served} units in {minutes:.1f} min (one request each): {arms['control']} control, "
        f"{arms['candidate']} candidate, {arms['outside']} after the experiment ended; rater (token F1 >= "
        f"{args.threshold}): {ups} thumbs up of {served}",
        f"- status **{e['status']}**" + (f", decision {e['decision']} by {e['stopped_by']}: {e['reason']}" if e["decision"] else ""),
        "",
        table(["arm", "version", "units", "interactions", "errors"],
              [[a, v["model_version"], v["units"], v["interactions"], v["errors"]] for a, v in report["arms"].items()]),
        "",
    ]  # fmt: skip
    rows = []
    for name, m in report["metrics"].items():
        role = "primary" if m["primary"] else (m["guardrail"] or "")
        iv = m["interval"] or {}
        rows.append([name, role, _f(m["control"].get("value", m["control"]["mean"])),
                     _f(m["candidate"].get("value", m["candidate"]["mean"])), _f(iv.get("estimate")),
                     f"[{_f(iv.get('lo'))}, {_f(iv.get('hi'))}]" if iv else f"limit {_f(m.get('limit'))}",
                     _f(m["alpha"]), m["verdict"]])  # fmt: skip
    lines += [
        table(["metric", "role", "control", "candidate", "Δ", "interval", "alpha", "verdict"], rows),
        "",
    ]
    primary = report["primary"]
    lines.append(
        f"Primary {primary['metric']}: **{primary['verdict']}** over {primary['units']} rated units."
    )
    lines += [f"- guardrail: {h}" for h in report["guardrails"]["harm"]] or ["- no guardrail shows harm"]
    for st in report["srm"]["stages"]:
        lines.append(f"- SRM stage {st['stage']} (share {st['share']}): {st['control']} / {st['candidate']} units, "
                     f"p {_f(st['p'])}{' FLAGGED' if st['flagged'] else ''}")  # fmt: skip
    off_ms, on_ms = [t for _, t in off], [t for _, t in on]
    server_off = [r["ragloop"]["latency_ms"]["total"] for r, _ in off]
    server_on = [r["ragloop"]["latency_ms"]["total"] for r, _ in on]
    lines += [
        "",
        f"Assignment overhead ({len(off)} requests each, the same questions, the base model answering both):",
        "",
        table(
            ["", "client p50 ms", "client p95 ms", "server total p50 ms"],
            [
                ["no experiment", pct(off_ms, 50), pct(off_ms, 95), pct(server_off, 50)],
                ["experiment running (control arm)", pct(on_ms, 50), pct(on_ms, 95), pct(server_on, 50)],
                [
                    "difference",
                    pct(on_ms, 50) - pct(off_ms, 50),
                    pct(on_ms, 95) - pct(off_ms, 95),
                    pct(server_on, 50) - pct(server_off, 50),
                ],
            ],
        ),  # fmt: skip
        "",
        f"In-process, the assignment itself (cached read of the running experiments + sha256 of the unit): "
        f"{per_call_us:.1f} µs per request (target <= 1 ms).",
        "",
        f"Wall time {time.perf_counter() - started:.0f} s.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
