"""Could the model's own confidence decide when to abstain? A probe on two stored eval runs of one model:
one with the gold passages shown (``distractors``), one without (``no-gold``).

For every stored answer, the prompt the run showed is rebuilt byte for byte (``evaluation.run.prepare``,
checked against the stored prompt sha256) and the answer is scored token by token under teacher forcing with
the run's own model version and adapter (greedy decoding, so these are the probabilities it generated with).
Three confidences per answer: the mean and the minimum token log-probability, and the first token's.

The table gives, per confidence, the AUROC of telling a gold-shown context from a gold-missing one (what
abstaining under `no-gold` needs) and of telling a right answer from a wrong one among the gold-shown questions
(what selective answering needs), and the share of gold-shown questions a threshold would silence if it
abstained on half the gold-missing ones. An AUROC of 0.5 is chance.

    python bench/abstain_probe.py --home HOME RUN_WITH_GOLD RUN_WITHOUT_GOLD [--limit 100]

Each answer's confidences are appended to ``bench/out/abstain_probe/RUN.jsonl`` as they are computed, so a
probe stopped halfway (a shared CPU, a session's end) continues where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, table, write  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ragloop.config import load_settings  # noqa: E402
from ragloop.errors import RagloopError  # noqa: E402
from ragloop.evaluation.review import _config  # noqa: E402
from ragloop.evaluation.run import get_run, prepare, run_examples  # noqa: E402
from ragloop.generation.assistant import Assistant  # noqa: E402
from ragloop.store import aliases  # noqa: E402
from ragloop.store.db import session_scope  # noqa: E402

FEATURES = ("mean", "min", "first")


def confidences(settings, assistant: Assistant, run_id: str, limit: int) -> list[dict]:  # type: ignore[no-untyped-def]
    """Teacher-forced token log-probabilities of each stored answer of a run, under its own model."""
    import torch

    run = get_run(settings, run_id)
    examples = run_examples(settings, run.id)[:limit]
    cases = {
        c.item.id: c
        for c in prepare(settings, _config(run.config), only_ids={e.example_id for e in examples}).cases
    }
    with session_scope(settings.db_url) as s:
        version, _ = aliases.resolve(s, run.model_version)
    backend, adapter = assistant.backend_for(version)
    model, ctx = backend._model_for(adapter)
    cache = OUT / "abstain_probe" / f"{run.id}.jsonl"
    cache.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line cut short by a kill is computed again
                row = json.loads(line)
                done[row["example_id"]] = row
    rows = []
    for e in examples:
        if e.example_id in done:
            rows.append(done[e.example_id])
            continue
        case = cases[e.example_id]
        if case.prompt_sha256 != e.prompt_sha256:
            raise SystemExit(f"{run.id}: the prompt of {e.example_id} could not be rebuilt byte for byte")
        prompt, _ = backend.encode(case.prompt)
        answer = backend.tokenizer(e.output, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if answer.shape[1] == 0:
            continue
        with torch.inference_mode(), ctx if ctx is not None else contextlib.nullcontext():
            logits = model(input_ids=torch.cat([prompt, answer], 1).to(backend.device)).logits[0].cpu()
        logp = torch.log_softmax(logits[prompt.shape[1] - 1 : -1].float(), -1).gather(1, answer[0][:, None])[
            :, 0
        ]
        rows.append({"example_id": e.example_id, "condition": run.condition, "right": (e.scores or {}).get("correct"),
                     "mean": logp.mean().item(), "min": logp.min().item(), "first": logp[0].item()})  # fmt: skip
        with cache.open("a") as fh:
            fh.write(json.dumps(rows[-1]) + "\n")
        print(f"{run.condition} {len(rows)}/{len(examples)}", end="\r", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("with_gold", help="eval run id with the gold passages shown (distractors or oracle)")
    ap.add_argument("without_gold", help="eval run id of the same model under no-gold")
    ap.add_argument("--limit", type=int, default=100, help="answers per run")
    args = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    settings = load_settings(args.home)
    assistant = Assistant(settings)
    started = time.perf_counter()
    try:
        shown = confidences(settings, assistant, args.with_gold, args.limit)
        missing = confidences(settings, assistant, args.without_gold, args.limit)
    except RagloopError as exc:  # an unknown run id, a changed QA file: say so, without a traceback
        raise SystemExit(f"abstain_probe: {exc}") from None
    wall = time.perf_counter() - started
    right = [r for r in shown if r["right"] is not None]
    out = []
    for f in FEATURES:
        gold_auc = roc_auc_score([1] * len(shown) + [0] * len(missing), [r[f] for r in shown + missing])
        right_auc = (roc_auc_score([int(bool(r["right"])) for r in right], [r[f] for r in right])
                     if 0 < sum(bool(r["right"]) for r in right) < len(right) else float("nan"))  # fmt: skip
        cut = statistics.median(r[f] for r in missing)  # abstain below it: half the gold-missing questions
        silenced = sum(r[f] < cut for r in shown) / len(shown)
        out.append([f, round(gold_auc, 3), round(right_auc, 3), f"{silenced:.0%}"])
    text = table(["confidence (token log-prob)", "AUROC gold shown vs missing", "AUROC right vs wrong (gold shown)",
                  "gold-shown questions silenced at 50% no-gold abstention"], out)  # fmt: skip
    text += (f"\n\n{len(shown)} answers with the gold ({args.with_gold[:8]}), {len(missing)} without "
             f"({args.without_gold[:8]}); {sum(bool(r['right']) for r in right)} of {len(right)} right; {wall:.0f} s")  # fmt: skip
    write("abstain_probe.md", text)


if __name__ == "__main__":
    main()
