"""What the CPU budget of the RAFT comparison cost: learning rate, epochs and training-set size of RAFT
without reasoning, swept where a GPU makes each training a minute (issue 5: "if RAFT does not beat the
base, find out why: answer extraction, prompt, learning rate, too few steps, the model too small").

bench/raft.py trains each model once, for one epoch, on a sample of 160-300 training questions, because
one HotpotQA training takes 12 minutes on the 2-core CPU. Here each set's model is trained again under a
small grid (epochs up to the issue's 2, a few learning rates) and on every training question its split
allows, with the same code a user has (`python -m ragloop.training.run`, `ragloop train register`,
`ragloop eval`), and scored on the same 100 evaluation questions under the same distractors.

    python bench/sweep.py build  --home H       # here: dataset versions of all the training questions
    python bench/sweep.py run    --home H       # on a GPU (or anywhere): train, register, evaluate each
    python bench/sweep.py report --home H       # the table, from what is stored
    python bench/sweep.py run --no-train --home H   # evaluate here what a GPU trained (then registered)

`run` skips what is stored (a registered version of the config's name, an identical eval run) and resumes
an interrupted training from its checkpoint, so it can be cut into pieces by `--until-minutes`. The
training runs land in H/../sweep-runs/NAME, which `ragloop train register` accepts in any home that has
the same dataset versions: that is how a config trained on a GPU box becomes a version here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import table  # noqa: E402
from raft import LIMIT, SETS, SetSpec, model_version, prepare_data, sweep_run, variants  # noqa: E402

CLI = [sys.executable, "-m", "ragloop"]
# (data, learning rate, epochs): "bench" is bench/raft.py's own dataset version of the set (its
# `raft-plain` model is the CPU-trained reference of the first row), "all" every training question.
# In the order they run, every set's row before the next row: a run cut short by --until-minutes has the
# most telling configs of every set.
GRID = [
    ("all", 1e-3, 2.0),
    ("bench", 5e-4, 1.0),
    ("all", 5e-4, 2.0),
    ("all", 2e-3, 2.0),
    ("bench", 1e-3, 2.0),
]
ALL = 100_000  # n_train that keeps every training question of the split


def name_of(spec: SetSpec, data: str, lr: float, epochs: float) -> str:
    return f"sweep-{spec.name}-{data}-lr{lr:.0e}-ep{epochs:g}"


def cli(args: list[str], home: Path) -> str:
    out = subprocess.run([*CLI, *args, "--home", str(home)], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"ragloop {' '.join(args)}: {out.stdout[-1500:]}{out.stderr[-1500:]}")
    return out.stdout


def dataset_of(home: Path, spec: SetSpec, data: str) -> str | None:
    """The dataset version a grid row trains on (None: not built yet)."""
    from ragloop.config import load_settings
    from ragloop.store.db import session_scope
    from ragloop.store.models import DatasetVersion, ModelVersion

    settings = load_settings(home)
    with session_scope(settings.db_url) as s:
        if data == "bench":
            version = model_version(home, f"raft-plain-{spec.name}")
            return s.get(ModelVersion, version).dataset_id if version else None
        rows = s.query(DatasetVersion).filter(DatasetVersion.name == f"sweep-{spec.name}-all").all()
        return max(rows, key=lambda r: r.created_at).id if rows else None


def build(home: Path, work: Path, specs: list[SetSpec]) -> None:
    """Dataset versions of every training question (bench/raft.py's RAFT w/o reasoning policy)."""
    for spec in specs:
        if dataset_of(home, spec, "all"):
            continue
        full = dataclasses.replace(spec, n_train=ALL)
        train_file, eval_file = prepare_data(full, work / "sweep")
        var = variants(spec)["raft-plain"]
        policy = work / "sweep" / f"policy-{spec.name}.json"
        policy.write_text(json.dumps({
            "name": f"sweep-{spec.name}-all", "version": 1,
            "description": f"RAFT w/o reasoning on every {spec.name} training question",
            "filters": [{"length": {}}, {"dedupe": {"threshold": 0.95}}], "pii": {"enabled": False},
            "split": {"train": 0.95, "val": 0.05, "test": 0.0},
            "raft": {"n_passages": var.n_passages, "p_oracle": 0.8, "policy": "answer", "target": "plain"},
        }))  # fmt: skip
        print(f"== build sweep-{spec.name}-all", flush=True)
        cli(["dataset", "build", "--no-interactions", "--import", f"{spec.fmt}:{train_file}", "--eval-set",
             str(eval_file), "--policy", str(policy), "--name", f"sweep-{spec.name}-all",
             *(["--shared-documents"] if spec.shared_documents else [])], home)  # fmt: skip


def eval_args(spec: SetSpec, model: str, work: Path, limit: int = LIMIT) -> list[str]:
    _, eval_file = prepare_data(spec, work)  # bench/raft.py's evaluation questions, the same 100
    return ["eval", "--model", model, "--data", str(eval_file), "--condition", "distractors", "--distractors",
            str(spec.k), "--limit", str(limit), "--max-new-tokens", str(spec.new_plain), "--reuse", "--json"]  # fmt: skip


def run(
    home: Path,
    work: Path,
    specs: list[SetSpec],
    until: float | None,
    batch: int,
    extra: list[str],
    limit: int,
    no_train: bool = False,
) -> None:
    started = time.perf_counter()
    for data, lr, epochs in GRID:
        for spec in specs:
            if until and time.perf_counter() - started > until * 60:
                print("time is up", flush=True)
                return
            name = name_of(spec, data, lr, epochs)
            dataset = dataset_of(home, spec, data)
            if dataset is None:
                print(f"  skipped {name}: no dataset version ({data}); run `build` first", flush=True)
                continue
            print(f"== {name} ({dataset})", flush=True)
            t0 = time.perf_counter()
            try:
                if model_version(home, name) is None:
                    if no_train:
                        print("  not registered here; skipped (--no-train)", flush=True)
                        continue
                    out = work / "sweep-runs" / name
                    train = subprocess.run([sys.executable, "-m", "ragloop.training.run", "--home", str(home),
                                            "--dataset", dataset, "--out", str(out), "--set", f"learning_rate={lr}",
                                            "--set", f"epochs={epochs}", *[a for x in extra for a in ("--set", x)]],
                                           capture_output=True, text=True)  # fmt: skip
                    if train.returncode != 0:
                        raise RuntimeError(f"training: {train.stderr[-2000:]}")
                    cli(["train", "register", str(out), "--name", name], home)
                trained = time.perf_counter() - t0
                result = json.loads(
                    cli([*eval_args(spec, f"{name}-v1", work, limit), "--batch-size", str(batch)], home)
                )
                print(f"  {spec.metric} {result['metrics'].get(spec.metric)}  train {trained:.0f} s, "
                      f"all {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
            except RuntimeError as exc:  # one failed config must not stop the grid
                print(f"  FAILED: {exc}", flush=True)


def report(home: Path, work: Path, specs: list[SetSpec]) -> str:
    from ragloop.config import load_settings
    from ragloop.store.db import session_scope
    from ragloop.store.models import ModelVersion

    settings = load_settings(home)
    rows = []
    for spec in specs:
        models = [
            (f"raft-plain-{spec.name} (bench/raft.py, CPU)", model_version(home, f"raft-plain-{spec.name}"))
        ]
        models += [(f"{data}, lr {lr:g}, {epochs:g} ep", model_version(home, name_of(spec, data, lr, epochs)))
                   for data, lr, epochs in GRID]  # fmt: skip
        for label, version in models:
            if version is None:
                continue
            found = sweep_run(spec, home, work, version)
            with session_scope(settings.db_url) as s:
                meta = s.get(ModelVersion, version).meta or {}
            m = meta.get("metrics") or {}
            rows.append([spec.name, label, m.get("examples"),
                         meta.get("training", {}).get("steps"), m.get("train_seconds"),
                         round(m["tokens_per_s"]) if m.get("tokens_per_s") else None,
                         round(found.metrics.get(spec.metric, float("nan")), 3) if found else None])  # fmt: skip
    header = ["set", "model", "examples", "steps", "train s", "tokens/s", "score (gold + k distractors)"]
    return table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("build", "run", "report"))
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--only", default=",".join(SETS), help="comma-separated sets")
    parser.add_argument("--until-minutes", type=float, default=None, help="start no config after this")
    parser.add_argument("--batch-size", type=int, default=16, help="eval prompts generated together")
    parser.add_argument("--no-train", action="store_true",
                        help="only evaluate the configs registered here (e.g. trained on a GPU, then registered)")  # fmt: skip
    parser.add_argument("--limit", type=int, default=LIMIT, help="evaluation questions (smoke runs: fewer)")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="one more training setting for every config (e.g. max_steps=2 for a smoke run)")  # fmt: skip
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    work = args.home.parent  # bench/raft.py's layout: its data/ and policies sit beside the home
    specs = [SETS[s] for s in args.only.split(",")]
    if args.what == "build":
        build(args.home, work, specs)
    elif args.what == "run":
        run(
            args.home,
            work,
            specs,
            args.until_minutes,
            args.batch_size,
            args.train_set,
            args.limit,
            args.no_train,
        )
    print(report(args.home, work, specs))


if __name__ == "__main__":
    main()
