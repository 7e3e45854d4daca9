#!/usr/bin/env bash
# The demo: a project home, the GDPR as knowledge base, five cited answers, and their records.
set -euo pipefail
HOME_DIR="${RAGLOOP_DEMO_HOME:-demo-home}"
RAGLOOP="${RAGLOOP_BIN:-.venv/bin/ragloop}"
DATA="${RAGLOOP_DATA:-../shared/data}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
step() { printf '\n\033[1;36m== %s\033[0m\n' "$*"; }

step "1. A project home"
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
printf '\nDone. Serve it with: RAGLOOP_HOME=%s %s serve\n' "$HOME_DIR" "$RAGLOOP"
