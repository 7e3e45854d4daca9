#!/usr/bin/env bash
# The demo: the whole loop on the GDPR — ingest, cited answers and their records, review, a curated RAFT
# dataset, a LoRA fine-tune, release and rollback, an A/B on live traffic, a drift report, the dashboard.
set -euo pipefail
HOME_DIR="${RAGLOOP_DEMO_HOME:-demo-home}"
RAGLOOP="${RAGLOOP_BIN:-.venv/bin/ragloop}"
DATA="${RAGLOOP_DATA:-../shared/data}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
step() { printf '\n\033[1;36m== %s\033[0m\n' "$*"; }

step "1. A project home (recreated on every run)"
rm -rf "$HOME_DIR"
$RAGLOOP init "$HOME_DIR"
export RAGLOOP_HOME="$HOME_DIR"

step "2. Ingest the GDPR (official consolidated XML): one section per recital and article"
$RAGLOOP ingest "$DATA/gdpr/gdpr-consolidated-with-corrected-preamble-en.xml" --collection gdpr
$RAGLOOP kb versions

step "3. Five questions, answered with citations by SmolLM2-135M-Instruct (in-process, CPU)"
while IFS= read -r q; do
  printf '\n\033[1m? %s\033[0m\n' "$q"
  $RAGLOOP ask "$q" --max-tokens 96
done <<'QUESTIONS'
What is the right to erasure?
When must a personal data breach be notified to the supervisory authority?
What are the conditions for valid consent?
Who must designate a data protection officer?
What fines can be imposed for infringements of the regulation?
QUESTIONS

step "4. Every answer is recorded: passages, scores, KB version, prompt hash, model version, latency"
$RAGLOOP logs
$RAGLOOP logs --export "$HOME_DIR/interactions.jsonl"
first=$(head -n 1 "$HOME_DIR/interactions.jsonl" | .venv/bin/python -c 'import json,sys; print(json.loads(sys.stdin.readline())["id"])')

step "5. Replay the first record: the exact prompt is rebuilt from the record"
$RAGLOOP replay "$first"
step "6. Review: ratings on the demo's answers and one correction (several reviewers are kept apart)"
mapfile -t IDS < <(.venv/bin/python -c 'import json,sys; [print(json.loads(l)["id"]) for l in open(sys.argv[1])]' "$HOME_DIR/interactions.jsonl")
$RAGLOOP feedback "${IDS[0]}" --thumbs up --rating 4 --gold 1 --reviewer alice
$RAGLOOP feedback "${IDS[1]}" --thumbs down --rating 2 --reviewer alice \
  --correction "The controller must notify the supervisory authority without undue delay and, where feasible, not later than 72 hours after becoming aware of the breach [1]."
$RAGLOOP feedback "${IDS[2]}" --rating 3 --reviewer bob --comment "too vague"
$RAGLOOP feedback "${IDS[3]}" --thumbs down --reviewer bob
$RAGLOOP review sample --n 5

step "7. Cold start: question/answer pairs from the GDPR itself (extractive synth, no model needed)"
$RAGLOOP synth --n 40 --method extractive --out "$HOME_DIR/synth.jsonl"

step "8. A curated, anonymised, RAFT-formatted dataset version, topped up from synth, and its exports"
$RAGLOOP dataset build --name gdpr-demo --import "generic:$HOME_DIR/synth.jsonl" --seed 0 | tee "$HOME_DIR/build.log"
DS=$(grep -oE 'ds-[0-9a-f]{12}' "$HOME_DIR/build.log" | tail -n 1)
$RAGLOOP dataset show "$DS" --examples 1
$RAGLOOP dataset export "$DS" --format trl-prompt-completion --out "$HOME_DIR/exports/$DS-trl"
$RAGLOOP dataset export "$DS" --format dpo --out "$HOME_DIR/exports/$DS-dpo"

step "9. Fine-tune: a LoRA on the demo dataset (TRL + PEFT, fp32 on this CPU, a few minutes), registered with lineage"
$RAGLOOP train sft --dataset "$DS" --foreground --name gdpr-demo \
  --set epochs=2 --set learning_rate=5e-4 --set max_length=1024 --set lora_r=8 --set eval_every=1000 --set save_every=20
$RAGLOOP models list
$RAGLOOP models show gdpr-demo-v1

step "10. Release: promote it, ask through the running server, roll back, ask again"
PORT="${RAGLOOP_DEMO_PORT:-8765}"
$RAGLOOP serve --port "$PORT" > "$HOME_DIR/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
ask_server() {
  .venv/bin/python - "$PORT" <<'PY'
import sys, time, httpx
url = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(300):
    try:
        if httpx.get(url + "/healthz").status_code == 200:
            break
    except httpx.HTTPError:
        time.sleep(0.5)
r = httpx.post(url + "/v1/chat/completions", timeout=300, json={
    "model": "production", "max_tokens": 64,
    "messages": [{"role": "user", "content": "What is the right to erasure?"}]}).json()
print(f"model {r['model']} (alias {r['ragloop']['model_alias']}):\n  {r['choices'][0]['message']['content'][:400]}")
PY
}
$RAGLOOP models promote gdpr-demo-v1
ask_server
$RAGLOOP models rollback
ask_server

step "11. A/B on live traffic: the tuned version against the base, half the users each, rated by simulated users"
# 48 questions (8 of them off-topic, which the knowledge base cannot answer), one user each; a simulated user
# rates each answer (scripts/demo_ab.py says how). Minutes of traffic decide nothing: the verdict is shown as
# it stands, inconclusive included; a real experiment runs until its confidence sequence excludes 0.
$RAGLOOP ab start --candidate gdpr-demo-v1 --share 0.5 --min-units 20 --json > "$HOME_DIR/ab.json"
.venv/bin/python scripts/demo_ab.py "$PORT" --n 48 --max-tokens 40 | tee "$HOME_DIR/ab-traffic.log"
$RAGLOOP ab status
$RAGLOOP ab status --json > "$HOME_DIR/ab-status.json"

step "12. Drift: the tuned version's live questions and retrieval scores against its training data and KB"
# A demo has minutes of traffic, not the 7 days a real window holds: judge from 10 records instead of 30.
RAGLOOP_DRIFT__MIN_RECORDS=10 $RAGLOOP drift --model gdpr-demo-v1 || [ $? -eq 3 ]
RAGLOOP_DRIFT__MIN_RECORDS=10 $RAGLOOP drift --model gdpr-demo-v1 --json > "$HOME_DIR/drift.json" || [ $? -eq 3 ]
kill $SERVER; wait $SERVER 2>/dev/null || true; trap - EXIT

step "13. The dashboard and the chat page"
$RAGLOOP keys create demo-user | tee "$HOME_DIR/demo-user.key"
.venv/bin/python - "$HOME_DIR" "$DS" "$SECONDS" <<'PY'
import json, sys
from pathlib import Path
home = Path(sys.argv[1])
ab = json.loads((home / "ab-status.json").read_text())
drift = json.loads((home / "drift.json").read_text())
traffic = json.loads((home / "ab-traffic.log").read_text().strip().splitlines()[-1])
lines = [l for l in (home / "interactions.jsonl").read_text().splitlines() if l.strip()]
arms = ", ".join(
    f"{arm} {v['thumbs_up']}/{v['answers']} up" for arm, v in sorted(traffic["arms"].items())
)
primary = ab.get("primary", {})
rows = [
    ("knowledge base", "GDPR, one section per recital and article"),
    ("answers recorded before tuning", f"{len(lines)} (then {traffic['answers']} A/B answers in {traffic['seconds']} s)"),
    ("dataset", f"{sys.argv[2]} (curated, anonymised, RAFT format)"),
    ("tuned version", "gdpr-demo-v1 (LoRA on SmolLM2-135M-Instruct)"),
    ("A/B", f"{arms}; primary {primary.get('metric')}: {primary.get('verdict')} (units {primary.get('units')})"),
    ("drift", f"{drift['verdict']}; retrain recommended: {drift['recommendation']['retrain']}"),
    ("demo time", f"{int(sys.argv[3]) // 60} min {int(sys.argv[3]) % 60} s"),
]
width = max(len(k) for k, _ in rows)
print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
PY

printf '\nDone. Serve it with: RAGLOOP_HOME=%s %s serve\n' "$HOME_DIR" "$RAGLOOP"
printf '  dashboard:    http://127.0.0.1:8000/dashboard   (sign in with an admin key: %s keys create NAME --admin)\n' "$RAGLOOP"
printf '  chat page:    http://127.0.0.1:8000/chat        (sign in with the demo-user key printed above)\n'
printf '  review queue: http://127.0.0.1:8000/review\n'
