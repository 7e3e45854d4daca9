"""How close llama.cpp + a converted GGUF LoRA adapter stays to transformers+PEFT, per base format and KV
cache type, on the packaged SmolLM2-135M (the figures of docs/benchmarks.md, "GGUF conversion").

A strong random all-linear LoRA (r=16, alpha=32, lora_B ~ N(0, 0.05), 4x that on q/k) answers 20 chat
prompts greedily in transformers; llama.cpp is then teacher-forced on those answers with the adapter
converted by ragloop.generation.gguf, over each base GGUF (f32, f16, q8_0 written from the cached
safetensors; q4_1 the packaged file) with an F32 and an F16 KV cache. Also: the same adapter converted
without the rotary permutation (what a wrong converter scores), and the base alone (how much the adapter
changes). The measuring helpers are the test's (tests/test_gguf.py), so the bench measures what the test
asserts. About 4 minutes on 2 cores.

    .venv/bin/python bench/gguf_agreement.py [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ragloop.config import Settings  # noqa: E402
from ragloop.generation.gguf import base_gguf, convert_lora  # noqa: E402
from ragloop.generation.models import resolve_model  # noqa: E402
from test_gguf import answer_agreement, engine, peft_model, random_lora, smollm_reference  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gguf-agreement-"))
    settings = Settings(home=work)
    base_dir, _ = resolve_model("packaged", settings.model_cache_dir)
    adapter = random_lora(base_dir, work / "adapter", sigma=0.05, qk=4.0, r=16, lora_alpha=32)
    convert_lora(adapter, base_dir, work / "ok.gguf")
    convert_lora(adapter, base_dir, work / "noperm.gguf", _permute=False)
    reference = smollm_reference(peft_model(base_dir, adapter), base_dir, args.new_tokens)
    positions = sum(len(ids) - start for ids, start in reference)
    print(f"{len(reference)} prompts, {positions} answer positions\n")
    print("| base GGUF | KV cache | adapter | without permutation | base alone | seconds |")
    print("|---|---|---|---|---|---|")
    for ftype in ("f32", "f16", "q8_0", "q4_1"):
        model = base_gguf(settings, ftype)
        for kv in ("f32", "f16"):
            server = engine(model, [work / "ok.gguf", work / "noperm.gguf"], slots=4, kv=kv)
            started = time.perf_counter()
            cells = []
            # the two controls once, on the most exact pair: they say how sharp the measure is
            controls = (ftype, kv) == ("f32", "f32")
            for scales in ((1.0, 0.0), (0.0, 1.0), (0.0, 0.0)) if controls else ((1.0, 0.0),):
                lora = [{"id": i, "scale": s} for i, s in enumerate(scales)]
                cells.append(f"{answer_agreement(server, reference, lora, workers=4):.1%}")
            cells += ["" for _ in range(3 - len(cells))]
            print(
                f"| {ftype} | {kv} | {' | '.join(cells)} | {time.perf_counter() - started:.0f} |", flush=True
            )
            del server


if __name__ == "__main__":
    main()
