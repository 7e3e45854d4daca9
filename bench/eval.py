"""Evaluation throughput: batched greedy generation (left-padded, batch 8) against one-by-one generation,
on the same 32 HotpotQA dev questions (distractor condition, 2 gold + 4 distractor paragraphs), with the
packaged SmolLM2-135M-Instruct, fp32 on CPU.

Both modes go through ``run_eval`` (the code ``ragloop eval`` runs) in one process on one loaded model, one
after the other, after a warm-up generation; throughput is examples per second of generation wall time
(loading and scoring excluded: scoring is the same in both). Greedy decoding should make the answers the
same: the table says how many predictions agree, and the first differing answer is printed if any.

    python bench/eval.py [--n 32] [--batch 8] [--max-new-tokens 48] [--distractors 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, table, write  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ragloop.config import init_home, load_settings  # noqa: E402
from ragloop.evaluation.run import EvalConfig, run_eval, run_examples  # noqa: E402
from ragloop.generation.assistant import Assistant  # noqa: E402
from ragloop.generation.backends import GenParams  # noqa: E402
from ragloop.generation.models import resolve_model  # noqa: E402
from ragloop.store import registry  # noqa: E402
from ragloop.store.db import session_scope  # noqa: E402

HOTPOT_DEV = DATA / "hotpotqa_distractor" / "dev.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--distractors", type=int, default=4)
    args = parser.parse_args()

    # The packaged model, converted once into the machine's shared cache (never downloaded).
    model_dir, _ = resolve_model("packaged", Path.home() / ".cache" / "ragloop" / "models")
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(init_home(Path(tmp) / "home"))
        assistant = Assistant(settings)
        with session_scope(settings.db_url) as s:
            version, _ = registry.resolve(s, None)
        backend, adapter = assistant.backend_for(version)
        warm = [{"role": "user", "content": "Say hello."}]
        backend.generate(warm, GenParams(max_new_tokens=8), adapter)
        backend.generate_batch([warm, warm], GenParams(max_new_tokens=8), adapter)

        runs = {}
        for mode, batch in (("one by one", 1), (f"batched ({args.batch})", args.batch)):
            config = EvalConfig(data=str(HOTPOT_DEV), condition="distractors", n_distractors=args.distractors,
                                limit=args.n, max_new_tokens=args.max_new_tokens, batch_size=batch)  # fmt: skip
            runs[mode] = run_eval(settings, config, assistant=assistant)
            print(f"{mode}: {runs[mode].n_examples} examples in {runs[mode].wall_s:.1f} s", flush=True)
        outputs = {
            mode: {e.example_id: e for e in run_examples(settings, run.id)} for mode, run in runs.items()
        }

    (one_mode, one), (batch_mode, batched) = runs.items()
    a, b = outputs[one_mode], outputs[batch_mode]
    same_pred = sum(1 for k in a if a[k].prediction == b[k].prediction)
    same_out = sum(1 for k in a if a[k].output == b[k].output)
    rows = []
    for mode, run in runs.items():
        m = run.metrics
        rows.append([mode, run.n_examples, run.wall_s, m["examples_per_s"], run.wall_s / runs[one_mode].wall_s,
                     m["examples_per_s"] / one.metrics["examples_per_s"], m.get("prompt_tokens_mean"),
                     m.get("completion_tokens_mean"), m.get("f1"), m.get("em")])  # fmt: skip
    text = "\n".join(
        [
            "# Evaluation throughput: batched vs one-by-one generation",
            "",
            f"SmolLM2-135M-Instruct (packaged, fp32, CPU, {os.cpu_count()} cores, model {Path(model_dir).name[:12]}); "
            f"{args.n} HotpotQA dev questions, distractors condition (2 gold + {args.distractors} distractor "
            f"paragraphs), greedy, max_new_tokens {args.max_new_tokens}; generation wall time only.",
            "",
            table(
                [
                    "mode",
                    "examples",
                    "wall s",
                    "examples/s",
                    "time ratio",
                    "speed-up",
                    "prompt tok",
                    "completion tok",
                    "F1",
                    "EM",
                ],
                rows,
            ),  # fmt: skip
            "",
            f"Same predictions (greedy): {same_pred}/{len(a)}; byte-identical outputs: {same_out}/{len(a)}.",
        ]
    )
    for k in a:
        if a[k].output != b[k].output:
            text += f"\n\nFirst differing output ({k}):\n- one by one: {a[k].output[:200]!r}\n- batched: {b[k].output[:200]!r}"
            break
    write("eval.md", text)


if __name__ == "__main__":
    main()
