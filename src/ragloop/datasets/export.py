"""Export a dataset version in the formats trainers read.

* ``trl-prompt-completion``: ``{"prompt": [messages], "completion": [assistant message]}`` (TRL SFTTrainer)
* ``trl-conversational``: ``{"messages": [... , assistant]}`` (TRL SFTTrainer)
* ``openai``: OpenAI fine-tuning chat JSONL (``{"messages": [...]}``)
* ``hf``: a Hugging Face ``datasets`` folder (``DatasetDict.save_to_disk``), one split per dataset split
* ``dpo``: ``{"prompt", "chosen", "rejected"}`` preference pairs on the same context (TRL DPOTrainer)
"""

from __future__ import annotations

import json
from pathlib import Path

from ragloop.config import Settings
from ragloop.datasets.build import SPLITS, dpo_pairs, load_examples
from ragloop.errors import RagloopError

FORMATS = ("trl-prompt-completion", "trl-conversational", "openai", "hf", "dpo")


def as_prompt_completion(ex: dict) -> dict:
    return {"prompt": ex["prompt"], "completion": [{"role": "assistant", "content": ex["completion"]}]}


def as_messages(ex: dict) -> dict:
    return {"messages": [*ex["prompt"], {"role": "assistant", "content": ex["completion"]}]}


def export_dataset(settings: Settings, dataset_id: str, fmt: str, out: Path) -> dict[str, int]:
    """Write ``out/<split>.jsonl`` (or an HF folder at ``out``); returns rows written per split."""
    if fmt not in FORMATS:
        raise RagloopError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    examples = load_examples(settings, dataset_id)
    rows: dict[str, list[dict]] = {}
    for split in SPLITS:
        exs = examples[split]
        if fmt == "trl-prompt-completion":
            rows[split] = [as_prompt_completion(e) for e in exs]
        elif fmt in ("trl-conversational", "openai"):
            rows[split] = [as_messages(e) for e in exs]
        elif fmt == "dpo":
            rows[split] = dpo_pairs(exs)
        else:
            rows[split] = [
                {**as_prompt_completion(e), **as_messages(e), "id": e["id"], "has_oracle": e["has_oracle"]}
                for e in exs
            ]
    out = Path(out)
    if fmt == "hf":
        from datasets import Dataset, DatasetDict

        DatasetDict({s: Dataset.from_list(r) for s, r in rows.items() if r}).save_to_disk(str(out))
    else:
        out.mkdir(parents=True, exist_ok=True)
        for split, data in rows.items():
            with (out / f"{split}.jsonl").open("w", encoding="utf-8") as fh:
                for row in data:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {s: len(r) for s, r in rows.items()}
