"""Command-line entry point of one training run, for a job's child process or ``accelerate launch``:

    python -m ragloop.training.run --home HOME --kind sft --dataset ds-… --out DIR [--config train.yaml]
    accelerate launch --num_processes 1 --cpu -m ragloop.training.run --home HOME --kind dpo …
    accelerate launch --multi_gpu --num_processes 8 -m ragloop.training.run --home HOME --kind sft …

SFT runs data-parallel under a launcher with ``--num_processes N`` > 1 (rank 0 prints and writes); DPO
trains in one process.

Progress goes to stdout as one JSON object per line; the result is the last line (``{"event": "result"}``).
Exit code 0 on success, 2 on a ``RagloopError`` (bad input, failed preflight) with its message on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ragloop.errors import RagloopError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ragloop.training.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--home", type=Path, required=True, help="project home (holds ragloop.toml)")
    parser.add_argument("--kind", choices=("sft", "dpo"), default="sft")
    parser.add_argument("--dataset", required=True, help="dataset version id")
    parser.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, adapter, logs)")
    parser.add_argument("--config", type=Path, default=None, help="train.yaml (TrainConfig fields)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--base", default=None, help="base model (default: the home's [generator] model)")
    parser.add_argument(
        "--reference-adapter", type=Path, default=None, help="DPO: the SFT adapter to start from"
    )
    parser.add_argument("--no-resume", action="store_true", help="start over instead of resuming")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one SFT or DPO training and print its progress and result as JSON lines."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and args.kind == "dpo":
        print("error: DPO trains in one process: launch it with --num_processes 1 "
              "(SFT runs data-parallel on several).", file=sys.stderr)  # fmt: skip
        return 2
    main_rank = int(os.environ.get("RANK", "0")) == 0
    import yaml

    from ragloop.config import load_settings
    from ragloop.training.config import load_train_config

    def progress(record: dict) -> None:
        print(json.dumps(record, default=str), flush=True)  # rank 0 only: train_sft reports there

    try:
        overrides = {}
        for pair in args.overrides:
            key, sep, value = pair.partition("=")
            if not sep:
                raise RagloopError(f"--set {pair!r}: write KEY=VALUE")
            overrides[key.strip()] = yaml.safe_load(value)
        settings = load_settings(args.home)
        config = load_train_config(args.config, **overrides)
        common = dict(base=args.base, resume=not args.no_resume, progress=progress)
        if args.kind == "sft":
            from ragloop.training.sft import train_sft

            result = train_sft(settings, args.dataset, args.out, config, **common)
        else:
            from ragloop.training.dpo import train_dpo

            result = train_dpo(
                settings, args.dataset, args.out, config, reference_adapter=args.reference_adapter, **common
            )
    except RagloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()
    if not main_rank:
        return 0
    print(json.dumps({"event": "result", "adapter_dir": str(result.adapter_dir), "steps": result.steps,
                      "tokens": result.tokens, "resumed_from": result.resumed_from,
                      "metrics": result.metrics}, default=str), flush=True)  # fmt: skip
    return 0


def _leave_process_group() -> None:
    """Close the data-parallel process group that ``train_sft`` opened (if any)."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
