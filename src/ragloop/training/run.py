"""Command-line entry point of one training run, for a job's child process or ``accelerate launch``:

    python -m ragloop.training.run --home HOME --kind sft --dataset ds-… --out DIR [--config train.yaml]
    accelerate launch --num_processes 1 --cpu -m ragloop.training.run --home HOME --kind dpo …

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
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("ragloop trains in one process: launch with --num_processes 1.", file=sys.stderr)
        return 2
    import yaml

    from ragloop.config import load_settings
    from ragloop.training.config import load_train_config

    def progress(record: dict) -> None:
        print(json.dumps(record, default=str), flush=True)

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
    print(json.dumps({"event": "result", "adapter_dir": str(result.adapter_dir), "steps": result.steps,
                      "tokens": result.tokens, "resumed_from": result.resumed_from,
                      "metrics": result.metrics}, default=str), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
