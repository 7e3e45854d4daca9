"""The demo's live traffic: questions sent to a running server while an A/B experiment splits them, each
answer rated by a simulated user, so that `make demo` shows the whole loop (experiment, drift, dashboard)
without a person at the keyboard.

The simulated user is deliberately simple and stated, not tuned to favour either arm: an answer gets a thumbs
up when it cites at least one valid passage and is not a refusal (ragloop's own refusal check), a thumbs down otherwise, and that verdict
is flipped with probability ``--noise`` (seeded), as real raters disagree with themselves. Each question is its
own conversation, so each is one assignment unit. A handful of off-topic questions (IT support, cooking)
stand in for users asking what the knowledge base does not hold: the drift report's coverage gap should name
them.

Usage: python scripts/demo_ab.py PORT [--n 48] [--max-tokens 40] [--workers 4] [--noise 0.15] [--key KEY]
Prints one line per answer (arm, verdict) and a JSON summary on the last line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from ragloop.curation.refusal import is_refusal

GDPR = [
    "What is the right to erasure?",
    "When must a personal data breach be notified to the supervisory authority?",
    "What are the conditions for valid consent?",
    "Who must designate a data protection officer?",
    "What fines can be imposed for infringements of the regulation?",
    "What information must be given to a data subject when data are collected from them?",
    "When is processing of personal data lawful?",
    "What is a data protection impact assessment and when is it required?",
    "Can a child consent to information society services?",
    "What is the right to data portability?",
    "What are special categories of personal data?",
    "When may personal data be transferred to a third country?",
    "What does privacy by design and by default require?",
    "What must a contract between a controller and a processor contain?",
    "What is the right to object to processing?",
    "What are the tasks of a data protection officer?",
    "What records of processing activities must a controller keep?",
    "What is pseudonymisation?",
    "What rights does a data subject have regarding automated decision-making and profiling?",
    "How long may personal data be kept?",
    "What is the role of the European Data Protection Board?",
    "When must a data breach be communicated to the data subject?",
    "What are binding corporate rules?",
    "What is the territorial scope of the regulation?",
    "Who is a joint controller?",
    "What is the right of access by the data subject?",
    "What powers do supervisory authorities have?",
    "What is the right to rectification?",
    "What is the right to restriction of processing?",
    "What security measures must a controller implement?",
    "What principles relating to processing of personal data does the regulation set out?",
    "Can a data subject lodge a complaint with a supervisory authority?",
    "What is a representative of a controller not established in the Union?",
    "How does the regulation treat processing for scientific research purposes?",
    "What are codes of conduct under the regulation?",
    "What is certification under the regulation?",
    "Who is liable for damage caused by processing?",
    "What is the one-stop-shop mechanism?",
    "What does the regulation say about processing of criminal convictions data?",
    "What is meant by the main establishment of a controller?",
]
OFF_TOPIC = [
    "How do I reset my VPN password?",
    "What is the best way to cook risotto?",
    "How do I configure two-factor authentication on my laptop?",
    "Which printer driver should I install for the third floor?",
    "How long should I boil an egg?",
    "How do I book a meeting room for Friday?",
    "What is the Wi-Fi password for guests?",
    "How do I roll back a Kubernetes deployment?",
]


def wait_ready(url: str, headers: dict[str, str]) -> None:
    for _ in range(600):
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not come up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--noise", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--key", default=None)
    args = ap.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    wait_ready(url, headers)
    rng = random.Random(args.seed)
    n_off = max(1, args.n // 6)
    questions = [GDPR[i % len(GDPR)] for i in range(args.n - n_off)] + OFF_TOPIC[:n_off]
    rng.shuffle(questions)
    flips = [rng.random() < args.noise for _ in questions]

    def one(i: int) -> dict:
        body = {
            "model": "production",
            "max_tokens": args.max_tokens,
            "user": f"demo-user-{i}",
            "messages": [{"role": "user", "content": questions[i]}],
        }
        with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
            for _ in range(60):  # a 503 (every slot busy) says when to come back, as the OpenAI SDK honours
                r = client.post("/v1/chat/completions", json=body)
                if r.status_code != 503:
                    break
                time.sleep(float(r.headers.get("retry-after", "1")))
            r.raise_for_status()
            data = r.json()
            rec = data["ragloop"]
            answer = data["choices"][0]["message"]["content"]
            cited = any(c.get("valid") for c in rec["citations"])
            good = cited and not is_refusal(answer)
            if flips[i]:
                good = not good
            client.post(
                f"/api/interactions/{rec['interaction_id']}/feedback",
                json={"thumbs": "up" if good else "down", "reviewer_id": f"demo-user-{i}"},
            ).raise_for_status()
            return {"arm": rec.get("arm") or "-", "model": rec["model_version"], "up": good}

    started = time.monotonic()
    with ThreadPoolExecutor(args.workers) as pool:
        results = list(pool.map(one, range(len(questions))))
    for i, r in enumerate(results):
        print(f"  {r['arm']:>9}  {r['model']:<24} {'👍' if r['up'] else '👎'}  {questions[i][:70]}")
    summary: dict = {"answers": len(results), "seconds": round(time.monotonic() - started, 1), "arms": {}}
    for r in results:
        arm = summary["arms"].setdefault(r["arm"], {"answers": 0, "thumbs_up": 0})
        arm["answers"] += 1
        arm["thumbs_up"] += int(r["up"])
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
