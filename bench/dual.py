"""Dual fine-tuning from one feedback stream (issue 20): the generator and the retriever, both tuned from the
loop's own records, measured alone and together, through the doors a user uses (CLI + HTTP API).

1. GDPR ingested; extractive `ragloop synth` questions; whole sections held apart (as bench/loop.py).
2. The other questions asked through the running server; an automatic rater (token F1 against the synth
   reference >= THRESHOLD is a thumbs up, else a thumbs down with the reference as the correction, citing the
   reference passage when it was shown and otherwise pinning it as evidence, as a reviewer does).
3. The generator: `ragloop dataset build` (RAFT, decontaminated against the held-apart questions) and
   `ragloop train sft`.
4. The retriever: `ragloop dataset pairs` from the same records (the rater's evidence is the positive where
   the retriever missed it; the passages really shown are the hard negatives), `ragloop train embedder`,
   `ragloop eval retrieval` (recall@1/5/10, MRR on the held-apart questions), `ragloop kb reembed`.
5. End to end under `live` retrieval on the held-apart questions: base/base, tuned generator alone, tuned
   retriever alone, both; `ragloop eval compare` of both against each alone.

    python bench/dual.py [--questions 140] [--home DIR]   # --home continues a run from where it stopped

Writes bench/out/dual.md and dual.json.
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
GDPR = DATA / "gdpr" / "gdpr-consolidated-with-corrected-preamble-en.xml"


def sh(*args: str, home: Path) -> str:
    out = subprocess.run([RAGLOOP, *args, "--home", str(home)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"ragloop {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def stage(home: Path, name: str, fn, wall: dict):  # type: ignore[no-untyped-def]
    """Run ``fn`` once: its JSON result is kept in the home, so a second run of the script continues."""
    path = home / f"dual-{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    t = time.perf_counter()
    result = fn()
    wall[name] = time.perf_counter() - t
    path.write_text(json.dumps(result))
    return result


def questions(home: Path, n: int, share: float) -> dict:
    synth = home / "synth.jsonl"
    sh("synth", "--n", str(n), "--method", "extractive", "--seed", "1", "--out", str(synth), home=home)
    records = [json.loads(line) for line in synth.read_text().splitlines()]
    groups = sorted({r["group"] for r in records})
    random.Random(0).shuffle(groups)
    sizes = {g: sum(1 for r in records if r["group"] == g) for g in groups}
    held_groups: set[str] = set()
    held = 0
    for g in groups:  # whole sections, until the share is reached (no leakage within a section)
        if held >= share * len(records):
            break
        if held + sizes[g] <= 1.5 * share * len(records):
            held_groups.add(g)
            held += sizes[g]
    heldout = [r for r in records if r["group"] in held_groups]
    traffic = [r for r in records if r["group"] not in held_groups]
    (home / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout))
    return {"traffic": traffic, "n_heldout": len(heldout), "n": len(records)}


def serve_and_rate(home: Path, traffic: list[dict], threshold: float, max_tokens: int) -> dict:
    from ragloop.datasets.answers import token_f1

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
        for r in traffic:
            body = {"messages": [{"role": "user", "content": r["question"]}], "max_tokens": max_tokens}
            resp = client.post("/v1/chat/completions", json=body).json()
            answer, extra = resp["choices"][0]["message"]["content"], resp["ragloop"]
            reference, gold_id = r["answers"][0], r["gold"][0]["id"]
            shown = [p["passage_id"] for p in extra["passages"]]
            if token_f1(re.sub(r"\[\d+\]", "", answer), [reference]) >= threshold:
                fb: dict = {"reviewer_id": "auto-rater", "source": "auto", "thumbs": "up"}
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
                    fb["corrected_answer"], fb["gold"] = f"{reference} [{n}]", [n]
                else:
                    fb["evidence"] = [gold_id]
                    pinned += 1
                downs += 1
            client.post(f"/api/interactions/{extra['interaction_id']}/feedback", json=fb).raise_for_status()
    finally:
        server.kill()
    return {"ups": ups, "downs": downs, "pinned": pinned}


def generator(home: Path, epochs: float, lr: float) -> dict:
    from ragloop.curation.policy import Policy

    policy = Policy().to_dict()
    policy["raft"] = {**policy["raft"], "target": "plain"}
    (home / "policy.json").write_text(json.dumps(policy))
    build = sh("dataset", "build", "--name", "loop", "--policy", str(home / "policy.json"),
               "--eval-set", str(home / "heldout.jsonl"), home=home)  # fmt: skip
    dataset = re.findall(r"ds-[0-9a-f]{12}", build)[-1]
    sh("train", "sft", "--dataset", dataset, "--foreground", "--name", "loop", "--set", f"epochs={epochs}",
       "--set", f"learning_rate={lr}", "--set", "lora_r=8", "--set", "eval_every=1000", home=home)  # fmt: skip
    return {"dataset": dataset, "build": build.strip()[-1500:], "model": "loop-v1"}


def retriever(home: Path) -> dict:
    built = sh(
        "dataset", "pairs", "--name", "gdpr-pairs", "--eval-set", str(home / "heldout.jsonl"), home=home
    )
    pairs = re.findall(r"pairs-[0-9a-f]{12}", built)[-1]
    from ragloop.config import load_settings
    from ragloop.training.embedder import list_embedder_versions

    # An embedder already trained on these pairs (a run that stopped after training) is reused.
    done = [ev.id for ev in list_embedder_versions(load_settings(home).db_url) if ev.dataset_id == pairs]
    if done:
        embedder = done[0]
    else:
        trained = sh("train", "embedder", "--dataset", pairs, "--foreground", "--name", "minilm", home=home)
        embedder = re.findall(r"embedder version\s+(\S+)", trained)[-1]
    t = time.perf_counter()
    reembedded = sh("kb", "reembed", "--embedder", embedder, home=home)
    return {"pairs": pairs, "pairs_build": built.strip()[-1500:], "embedder": embedder,
            "reembed": reembedded.strip(), "reembed_s": time.perf_counter() - t}  # fmt: skip


def recall(home: Path, embedder: str) -> list[dict]:
    out = sh("eval", "retrieval", "--embedder", "base", "--embedder", embedder,
             "--qa", str(home / "heldout.jsonl"), "--json", home=home)  # fmt: skip
    return json.loads(out)


def end_to_end(home: Path, embedder: str, max_tokens: int) -> dict:
    runs = {}
    for model, emb in (("base", None), ("loop-v1", None), ("base", embedder), ("loop-v1", embedder)):
        args = ["eval", "--model", model, "--data", str(home / "heldout.jsonl"), "--condition", "live",
                "--max-new-tokens", str(max_tokens), "--json"]  # fmt: skip
        if emb:
            args += ["--embedder", emb]
        shown = json.loads(sh(*args, home=home))
        runs[f"{model} + {'tuned' if emb else 'base'} retriever"] = {
            "id": shown["run_id"],
            "metrics": shown["metrics"],
        }
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=140)
    parser.add_argument("--heldout", type=float, default=0.25)
    parser.add_argument("--threshold", type=float, default=0.4)
    parser.add_argument("--max-tokens", type=int, default=96, help="answer length in the evaluations")
    parser.add_argument(
        "--serve-tokens",
        type=int,
        default=16,
        help="answer length of the served traffic: the rater corrects nearly every answer of the 135M base "
        "anyway (202 of 209 in docs/results.md), and the records the tuning reads (question, passages "
        "shown, correction, evidence) do not depend on it",
    )
    parser.add_argument("--retriever-only", action="store_true", help="stop after the retrieval measurement")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["COLUMNS"] = "300"  # the CLI's Rich output is parsed: no line wrapped inside an id
    started = time.perf_counter()
    wall: dict[str, float] = {}
    home = args.home or Path(tempfile.mkdtemp(prefix="ragloop-dual-"))
    if not (home / "ragloop.toml").exists():
        subprocess.run([RAGLOOP, "init", str(home)], check=True, capture_output=True)
    sh("ingest", str(GDPR), "--collection", "gdpr", home=home)  # unchanged on a second run: skipped
    print(f"home: {home}", flush=True)
    q = stage(home, "questions", lambda: questions(home, args.questions, args.heldout), wall)
    rated = stage(
        home, "rated", lambda: serve_and_rate(home, q["traffic"], args.threshold, args.serve_tokens), wall
    )
    # The retriever first: its recall is the cheaper half of the measurement.
    ret = stage(home, "retriever", lambda: retriever(home), wall)
    rec = stage(home, "recall", lambda: recall(home, ret["embedder"]), wall)
    if args.retriever_only:
        write(
            "dual-retrieval.json", json.dumps({"rated": rated, "retriever": ret, "recall": rec, "wall": wall})
        )
        return
    gen = stage(home, "generator", lambda: generator(home, args.epochs, args.learning_rate), wall)
    e2e = stage(home, "end_to_end", lambda: end_to_end(home, ret["embedder"], args.max_tokens), wall)
    names = list(e2e)
    both, gen_only, ret_only, base = names[3], names[1], names[2], names[0]
    compares = {
        f"{b} − {a}": sh("eval", "compare", e2e[a]["id"], e2e[b]["id"], home=home).strip()
        for a, b in ((base, both), (gen_only, both), (ret_only, both), (base, gen_only), (base, ret_only))
    }
    keys = [k for k in ("f1", "em", "groundedness", "citation_recall") if k in e2e[base]["metrics"]]
    result = {"home": str(home), "questions": q["n"], "heldout": q["n_heldout"], "rated": rated,
              "generator": gen, "retriever": ret, "recall": rec, "end_to_end": e2e, "wall": wall}  # fmt: skip
    write("dual.json", json.dumps(result, indent=2, default=str))
    lines = [
        f"# Dual fine-tuning on GDPR ({q['n']} extractive synth questions, {q['n_heldout']} held apart)",
        "",
        f"- traffic: {len(q['traffic'])} questions through the API; rater: {rated['ups']} up, {rated['downs']} "
        f"down ({rated['pinned']} pin evidence)",
        f"- generator: dataset {gen['dataset']} → {gen['model']}; retriever: pairs {ret['pairs']} → {ret['embedder']}",
        f"- re-embedding: {ret['reembed']} ({ret['reembed_s']:.0f} s with the CLI start)",
        "",
        "Retrieval on the held-apart questions (`ragloop eval retrieval`, corpus: the knowledge base):",
        "",
        table(
            ["embedder", "mode", "n", "recall@1", "recall@5", "recall@10", "MRR"],
            [
                [
                    r["embedder"],
                    r["mode"],
                    int(r["metrics"]["n"]),
                    *(round(r["metrics"][k], 3) for k in ("recall@1", "recall@5", "recall@10", "mrr")),
                ]
                for r in rec
            ],
        ),  # fmt: skip
        "",
        "End to end under `live` retrieval:",
        "",
        table(
            ["configuration", *keys],
            [[name, *(round(float(e2e[name]["metrics"].get(k) or 0), 3) for k in keys)] for name in names],
        ),  # fmt: skip
        "",
        *[f"### {title}\n\n```\n{text[:2500]}\n```\n" for title, text in compares.items()],
        "Wall time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in wall.items())
        + f"; total {time.perf_counter() - started:.0f} s",
    ]
    write("dual.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
