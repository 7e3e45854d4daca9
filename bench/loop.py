"""The loop on its own traffic, end to end, through the doors a user uses (CLI + HTTP API).

1. GDPR questions from `ragloop synth` (the configured SmolLM2 generator; topped up extractively);
   a held-apart share of them (grouped by article) is kept for evaluation.
2. The other questions are asked through the running server (`/v1/chat/completions`).
3. An automatic rater: token F1 of the answer against the synth reference >= THRESHOLD is a thumbs up;
   otherwise a thumbs down with the reference as the correction, citing the reference passage when it was
   shown and otherwise pinning it as evidence (the passage the retriever missed, as a reviewer who knows
   where the answer is would: it becomes the example's gold passage). `--no-evidence`: corrections of
   answers whose passage was not shown carry nothing, and curation drops them.
4. `ragloop dataset build --eval-set heldout` (decontaminated) — how many answers survive curation.
5. `ragloop train sft` on it, then `ragloop eval` of base and tuned on the held-apart questions under live
   retrieval, and `ragloop eval compare`.

    python bench/loop.py [--questions 40] [--threshold 0.4] [--epochs 2] [--learning-rate 2e-4] [--llm-questions 24]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, table, wait_healthy, write  # noqa: E402

RAGLOOP = str(Path(sys.executable).with_name("ragloop"))


def sh(*args: str, home: Path) -> str:
    out = subprocess.run([RAGLOOP, *args, "--home", str(home)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"ragloop {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--heldout", type=float, default=0.3)
    parser.add_argument("--threshold", type=float, default=0.4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=2e-4,
        help="LoRA learning rate (ragloop's default 2e-4; 1e-3 was the RAFT sweep's best at 135M)",
    )
    parser.add_argument(
        "--target",
        default="plain",
        choices=["plain", "reasoning"],
        help="RAFT target of the training examples: the default curation policy with this target. Plain "
        "(answer + citation) is the one that gained at 135M in the RAFT comparison (docs/results.md)",
    )
    parser.add_argument(
        "--no-evidence",
        action="store_true",
        help="the rater does not pin the reference passage when the retriever missed it",
    )
    parser.add_argument(
        "--llm-questions",
        type=int,
        default=24,
        help="questions asked of the LLM synthesiser (SmolLM2 rarely yields a verifiable pair; each try "
        "costs seconds); the rest are extractive",
    )
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from ragloop.datasets.answers import token_f1

    started = time.perf_counter()
    wall: dict[str, float] = {}
    home = Path(tempfile.mkdtemp(prefix="ragloop-loop-"))
    subprocess.run([RAGLOOP, "init", str(home)], check=True, capture_output=True)
    sh(
        "ingest",
        str(DATA / "gdpr" / "gdpr-consolidated-with-corrected-preamble-en.xml"),
        "--collection",
        "gdpr",
        home=home,
    )

    t = time.perf_counter()
    synth = home / "synth.jsonl"
    n_try = min(args.questions, args.llm_questions)
    records = []
    if n_try > 0:
        sh("synth", "--n", str(n_try), "--method", "llm", "--out", str(synth), home=home)
        records = [json.loads(line) for line in synth.read_text().splitlines()]
    n_llm = len(records)
    if len(records) < args.questions:
        extra = home / "synth-extractive.jsonl"
        sh(
            "synth",
            "--n",
            str(args.questions - len(records)),
            "--method",
            "extractive",
            "--seed",
            "1",
            "--out",
            str(extra),
            home=home,
        )
        records += [json.loads(line) for line in extra.read_text().splitlines()]
    wall["synth"] = time.perf_counter() - t
    groups = sorted({r["group"] for r in records})
    random.Random(0).shuffle(groups)
    # Whole groups (a section: no leakage between its questions), taken until the share is reached: groups
    # differ in size, and a share of groups could hold apart most questions.
    sizes = {g: sum(1 for r in records if r["group"] == g) for g in groups}
    held_groups: set[str] = set()
    held = 0
    for g in groups:
        if held >= args.heldout * len(records):
            break
        if held + sizes[g] <= 1.5 * args.heldout * len(records):
            held_groups.add(g)
            held += sizes[g]
    heldout = [r for r in records if r["group"] in held_groups]
    traffic = [r for r in records if r["group"] not in held_groups]
    (home / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout))

    # Serve the traffic questions and rate the answers automatically.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [RAGLOOP, "serve", "--port", str(port), "--home", str(home)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ups = downs = pinned = 0
    try:
        client = wait_healthy(port)
        t = time.perf_counter()
        for r in traffic:
            resp = client.post(
                "/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": r["question"]}],
                    "max_tokens": args.max_tokens,
                },
            ).json()
            answer = resp["choices"][0]["message"]["content"]
            extra = resp["ragloop"]
            reference = r["answers"][0]
            gold_id = r["gold"][0]["id"]
            shown = [p["passage_id"] for p in extra["passages"]]
            if token_f1(re.sub(r"\[\d+\]", "", answer), [reference]) >= args.threshold:
                fb = {"reviewer_id": "auto-rater", "source": "auto", "thumbs": "up"}
                ups += 1
            else:
                fb = {
                    "reviewer_id": "auto-rater",
                    "source": "auto",
                    "thumbs": "down",
                    "corrected_answer": reference,
                }
                if gold_id in shown:
                    n = shown.index(gold_id) + 1
                    fb["corrected_answer"] = f"{reference} [{n}]"
                    fb["gold"] = [n]
                elif not args.no_evidence:
                    fb["evidence"] = [gold_id]
                    pinned += 1
                downs += 1
            client.post(f"/api/interactions/{extra['interaction_id']}/feedback", json=fb).raise_for_status()
        wall["serve + rate"] = time.perf_counter() - t
    finally:
        server.kill()

    t = time.perf_counter()
    from ragloop.curation.policy import Policy

    policy = Policy().to_dict()
    policy["raft"] = {**policy["raft"], "target": args.target}
    (home / "policy.json").write_text(json.dumps(policy))
    build = sh(
        "dataset", "build", "--name", "loop", "--policy", str(home / "policy.json"),
        "--eval-set", str(home / "heldout.jsonl"), home=home,
    )  # fmt: skip
    dataset = re.findall(r"ds-[0-9a-f]{12}", build)[-1]
    kept = re.search(r"examples: train (\d+), val (\d+), test (\d+)", build)
    n_kept = sum(int(x) for x in kept.groups()) if kept else 0
    wall["curate + build"] = time.perf_counter() - t

    t = time.perf_counter()
    sh(
        "train",
        "sft",
        "--dataset",
        dataset,
        "--foreground",
        "--name",
        "loop",
        "--set",
        f"epochs={args.epochs}",
        "--set",
        f"learning_rate={args.learning_rate}",
        "--set",
        "lora_r=8",
        "--set",
        "eval_every=1000",
        home=home,
    )
    wall["train"] = time.perf_counter() - t

    t = time.perf_counter()
    runs = {}
    for model in ("base", "loop-v1"):
        out = sh(
            "eval",
            "--model",
            model,
            "--data",
            str(home / "heldout.jsonl"),
            "--condition",
            "live",
            "--max-new-tokens",
            str(args.max_tokens),
            home=home,
        )
        runs[model] = re.findall(r"\b[0-9a-f]{32}\b", out)[0]
    compare = sh("eval", "compare", runs["base"], runs["loop-v1"], home=home)
    wall["eval"] = time.perf_counter() - t
    metrics = {}
    for model, run in runs.items():
        shown = sh("eval", "show", run, "--json", home=home)
        metrics[model] = json.loads(shown)["metrics"]

    keys = [
        k
        for k in ("f1", "em", "groundedness", "citation_precision", "citation_recall")
        if k in metrics["base"]
    ]
    rows = [[model, *(float(metrics[model].get(k) or 0.0) for k in keys)] for model in runs]
    rows.append(
        [
            "ratio tuned / base",
            *(
                float(metrics["loop-v1"].get(k) or 0) / (float(metrics["base"].get(k) or 0) or float("nan"))
                for k in keys
            ),
        ]
    )
    text = "\n".join(
        [
            f"# The loop on its own traffic (GDPR, {len(records)} synth questions: {n_llm} by SmolLM2, "
            f"{len(records) - n_llm} extractive)",
            "",
            f"- traffic: {len(traffic)} questions served through the API; auto-rater (token F1 >= {args.threshold}): "
            f"{ups} thumbs up, {downs} thumbs down with the reference as correction "
            + (
                "(evidence not pinned: `--no-evidence`)"
                if args.no_evidence
                else f"({pinned} of them pin the reference passage the retriever had not shown as evidence)"
            ),
            f"- survived curation into dataset {dataset}: {n_kept} examples (decontaminated against {len(heldout)} held-apart questions)",
            f"- trained: `ragloop train sft` (LoRA r 8), {args.epochs:g} epochs, lr {args.learning_rate:g}, RAFT target `{args.target}`, "
            "default curation policy otherwise (PII anonymised, citations verified, deduplicated)",
            "",
            "Curation (`ragloop dataset build` output):",
            "",
            "```",
            build.strip()[:2500],
            "```",
            "",
            f"- held-apart evaluation, `live` retrieval, {len(heldout)} questions:",
            "",
            table(["model", *keys], rows),
            "",
            "```",
            compare.strip()[:3000],
            "```",
            "",
            "Wall time: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in wall.items())
            + f"; total {time.perf_counter() - started:.0f} s",
        ]
    )
    write("loop.md", text)


if __name__ == "__main__":
    main()
