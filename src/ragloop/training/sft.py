"""Supervised fine-tuning: a LoRA adapter trained on a dataset version's RAFT examples.

A compact training loop (nanoGPT style) over PEFT's LoRA model and TRL's padding-free collator, rather
than TRL's ``SFTTrainer``: the behaviour ragloop needs is exactly the part a Trainer subclass would have
to override (token-budget batches of varying size, per-example attention inside packed rows, the LM head
on answer tokens only, a preflight instead of silent truncation, atomic checkpoints that resume to the same
adapter), and the rest fits on one screen. Read top to bottom: load and check everything (nothing is
written if anything is wrong), then the loop, then the checkpoint helpers.

Output folder::

    adapter/            the trained LoRA adapter (PEFT format), written when training completes
    checkpoints/step-N/ adapter + optimizer + scheduler + RNG + data position, every save_every steps
    train_log.jsonl     one JSON line per logging step, evaluation and checkpoint
    preflight.txt       the loss-mask preflight report (truncated/dropped examples, the marked example)
    metrics.json        final metrics (also returned in TrainResult)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ragloop.config import Settings
from ragloop.errors import ConfigError, RagloopError
from ragloop.training.config import TrainConfig
from ragloop.training.preflight import preflight

log = logging.getLogger("ragloop.training")

Progress = Callable[[dict[str, Any]], None]
ShouldStop = Callable[[], bool]


@dataclass
class TrainResult:
    """What a training run produced. ``adapter_dir`` is the final adapter, or, for a run stopped by
    ``should_stop``, the adapter of the checkpoint it stopped at (``metrics["stopped"]`` is True)."""

    adapter_dir: Path
    metrics: dict
    steps: int
    tokens: int
    resumed_from: int | None


# Loading and checking (no writes) ----------------------------------------------------------------------


def load_splits(settings: Settings, dataset_id: str) -> dict[str, list[dict]]:
    """The dataset version's splits; unknown id -> NotFound, empty train split -> RagloopError."""
    from ragloop.datasets.build import load_examples

    splits = load_examples(settings, dataset_id)
    if not splits.get("train"):
        raise RagloopError(
            f"Dataset {dataset_id} has no training examples; build a bigger one (`ragloop dataset build`)."
        )
    return splits


def resolve_base(settings: Settings, base: str | None) -> tuple[Path, str]:
    """(model folder, content hash) of the base model: ``base`` or the configured generator."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ragloop.generation.models import resolve_model

    return resolve_model(base or settings.generator.model, settings.model_cache_dir)


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:
        raise ConfigError(f"The tokenizer of base model {model_dir} cannot be loaded: {exc}") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"Base model {model_dir} has no chat template; ragloop trains chat models only.")
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"Base model {model_dir} has no fast tokenizer (tokenizer.json), needed for the preflight."
        )
    return tokenizer


def load_model(model_dir: Path) -> torch.nn.Module:
    """The base causal LM in fp32 (the CPUs ragloop targets have no fast bf16)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    except Exception as exc:
        raise ConfigError(f"Base model {model_dir} cannot be loaded as a causal LM: {exc}") from exc


def lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def set_threads(config: TrainConfig) -> None:
    per_process = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(config.threads or max(1, per_process))


def show(summary: str, name: str) -> None:
    """Log a preflight summary (INFO, to stderr when nobody configured logging): the marked example is
    the one thing a person should look at before trusting a run."""
    if not log.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    log.info("[%s] %s", name, summary)


def run_fingerprint(
    kind: str, dataset_id: str, base_hash: str, config: TrainConfig, extra: Any = None
) -> str:
    """Identity of a run: a checkpoint resumes only a run with the same data, base and hyperparameters."""
    settings = {k: v for k, v in config.to_dict().items()
                if k not in ("eval_every", "save_every", "logging_every", "keep_checkpoints", "threads", "device")}  # fmt: skip
    blob = json.dumps([kind, dataset_id, base_hash, settings, extra], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sft_fingerprint(dataset_id: str, base_hash: str, config: TrainConfig, report: Any) -> str:
    """An SFT run's identity: ``run_fingerprint`` over the examples the preflight kept. One recipe for the
    trainer (resume, completed run) and for ``completed_run`` (registering a run trained elsewhere)."""
    return run_fingerprint("sft", dataset_id, base_hash, config, [f["id"] for f in report.features])


# Data parallel -----------------------------------------------------------------------------------------


class DataParallel:
    """The processes of one run launched by ``accelerate launch --num_processes N`` (or ``torchrun``).

    Every rank builds the same plan (a pure function of the seed), so a step's micro-batches and its
    number of trained tokens are known everywhere without communication. Rank ``r`` runs micro-batches
    ``r, r + N, …`` of each step; its loss is divided by the step's global trained-token count, and the
    LoRA gradients are summed across ranks (one flat all-reduce), so the update is the one a single
    process makes over the same micro-batches. A rank left without a micro-batch in a step contributes
    zero gradients but still joins the all-reduce. Rank 0 alone writes the output folder.

    One process (``WORLD_SIZE`` 1) is the degenerate case: no communication, and the device is still
    ``device`` (see ``ragloop.accel``), so a single GPU trains without a launcher."""

    def __init__(self, device: str = "auto") -> None:
        import torch.distributed as dist

        from ragloop.accel import resolve_device

        self.dist = dist
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.main = self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def share(self, micro: list[list[int]]) -> list[list[int]]:
        """This rank's micro-batches of a step (all of them in one process)."""
        return micro[self.rank :: self.world] if self.active else micro

    def barrier(self) -> None:
        if self.active:
            self.dist.barrier()

    def reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p)
            offset += n

    def sum(self, value: float) -> float:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t)
        return t.item()

    def broadcast(self, params: list[torch.nn.Parameter]) -> None:
        """Rank 0's trainable weights everywhere (they already agree; this makes it certain)."""
        if self.active:
            for p in params:
                self.dist.broadcast(p.data, src=0)

    def seed_step(self, seed: int, step: int) -> None:
        """Per-rank dropout RNG that a resume reproduces without saving every rank's RNG state."""
        if self.active:
            torch.manual_seed(int(hashlib.sha256(f"{seed}:{step}:{self.rank}".encode()).hexdigest()[:15], 16))


# The loop ----------------------------------------------------------------------------------------------


def train_sft(
    settings: Settings,
    dataset_id: str,
    output_dir: Path,
    config: TrainConfig,
    *,
    base: str | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``dataset_id``'s train split, evaluating on its val split.

    Everything that can fail on bad input fails before ``output_dir`` is touched: unknown dataset, empty
    train split, a base model that does not load, a preflight problem. With ``resume`` (default) a run
    continues from the last checkpoint in ``output_dir`` and ends with the adapter an uninterrupted run
    would have produced; a completed run is returned as is. ``progress`` gets a dict per logging step
    (``step``, ``total``, ``loss``, ``tokens_per_s``, ``eta_s``, …); ``should_stop`` is polled after every
    step and, when it returns True, the run checkpoints and returns (``metrics["stopped"]``).

    Under ``accelerate launch --num_processes N`` (``WORLD_SIZE`` > 1) the run is data-parallel (see
    ``DataParallel``); every rank returns the result, rank 0 alone writes and reports progress."""
    from peft import get_peft_model
    from transformers import get_scheduler

    from ragloop.training.packing import collate, plan_epoch, plan_training, token_nll, use_packed_attention

    output_dir = Path(output_dir)
    ddp = DataParallel(config.device)
    set_threads(config)
    splits = load_splits(settings, dataset_id)
    model_dir, base_hash = resolve_base(settings, base)
    tokenizer = load_tokenizer(model_dir)
    report = preflight(tokenizer, splits["train"], config.max_length, config.truncation)
    if ddp.main:
        show(report.summary(), "train")
    report.raise_for_problems()
    val_report = preflight(tokenizer, splits.get("val") or [], config.max_length, config.truncation)
    val = val_report.features if val_report.ok else []
    fingerprint = sft_fingerprint(dataset_id, base_hash, config, report)
    checkpoints = output_dir / "checkpoints"
    done = _completed(output_dir, fingerprint) if resume else None
    if done is not None:
        return done
    latest = _latest_checkpoint(checkpoints) if resume else None
    if latest is not None and _read_json(latest / "state.json").get("fingerprint") != fingerprint:
        raise RagloopError(
            f"{output_dir} holds checkpoints of a different run (other data, base or settings); "
            "train into a new folder, or pass resume=False to start over there."
        )
    model = load_model(model_dir)

    # Nothing has been written so far; from here on the run owns output_dir.
    ddp.barrier()  # every rank has read the folder before rank 0 changes it
    if ddp.main:
        if not resume:
            for stale in (
                checkpoints,
                output_dir / "adapter",
                output_dir / "metrics.json",
                output_dir / "train_log.jsonl",
            ):
                _remove(stale)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "preflight.txt").write_text(report.summary() + "\n", encoding="utf-8")

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = get_peft_model(model, lora_config(config))
    model.to(ddp.device)
    use_packed_attention(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    features = report.features
    lengths = [len(f["input_ids"]) for f in features]
    trained = [sum(1 for x in f["labels"] if x != -100) for f in features]
    plan = plan_training(lengths, epochs=config.epochs, max_steps=config.max_steps, batch_tokens=config.batch_tokens,
                         seed=config.seed, batch_size=config.batch_size, buffer_size=config.buffer_size,
                         gradient_accumulation_steps=config.gradient_accumulation_steps)  # fmt: skip
    total = len(plan)
    steps_per_epoch = len(plan_epoch(lengths, batch_tokens=config.batch_tokens, seed=config.seed, epoch=0,
                                     batch_size=config.batch_size, buffer_size=config.buffer_size,
                                     gradient_accumulation_steps=config.gradient_accumulation_steps))  # fmt: skip
    scheduler = get_scheduler(
        "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(config.warmup_ratio * total),
        num_training_steps=total,
    )
    state: dict[str, Any] = {
        "step": 0,
        "tokens": 0,
        "trained_tokens": 0,
        "train_seconds": 0.0,
        "fingerprint": fingerprint,
    }
    resumed_from = None
    if latest is not None:
        state = restore_checkpoint(latest, model, optimizer, scheduler)
        resumed_from = state["step"]
    ddp.broadcast(params)
    if ddp.main:
        emit = _emitter(progress, Journal(output_dir / "train_log.jsonl", after_step=state["step"]))
    else:
        emit = _silent
    emit({"event": "start", "step": state["step"], "total": total, "examples": len(features),
          "truncated": len(report.truncated), "dropped": len(report.dropped), "resumed_from": resumed_from,
          "processes": ddp.world, "device": str(ddp.device)})  # fmt: skip

    window = {"loss": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}
    eval_loss = state.get("eval_loss")
    stopped = False
    started = time.perf_counter()
    for step in range(state["step"], total):
        tick = time.perf_counter()
        micro = plan[step]
        n_trained = sum(trained[i] for mb in micro for i in mb)  # the whole step's, on every rank
        step_loss = 0.0
        ddp.seed_step(config.seed, step)
        for mb in ddp.share(micro):
            nll, _ = token_nll(model, collate([features[i] for i in mb]))
            loss = nll.sum() / n_trained  # token mean over the whole step, however it is split
            loss.backward()
            step_loss += loss.item()
        ddp.reduce_grads(params)
        step_loss = ddp.sum(step_loss)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or float("inf")).item()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_tokens = sum(lengths[i] for mb in micro for i in mb)
        seconds = time.perf_counter() - tick
        state.update(step=step + 1, tokens=state["tokens"] + step_tokens,
                     trained_tokens=state["trained_tokens"] + n_trained,
                     train_seconds=state["train_seconds"] + seconds)  # fmt: skip
        for key, value in (("loss", step_loss), ("steps", 1), ("tokens", step_tokens), ("seconds", seconds)):
            window[key] += value
        last = step + 1 == total
        if (step + 1) % config.logging_every == 0 or last:
            done_here = step + 1 - (resumed_from or 0)
            emit({
                "event": "step", "step": step + 1, "total": total, "epoch": round((step + 1) / steps_per_epoch, 3),
                "loss": window["loss"] / window["steps"], "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                "tokens": state["tokens"], "trained_tokens": state["trained_tokens"],
                "tokens_per_s": window["tokens"] / max(window["seconds"], 1e-9),
                "elapsed_s": time.perf_counter() - started,
                "eta_s": (time.perf_counter() - started) / done_here * (total - step - 1),
            })  # fmt: skip
            state["train_loss"] = window["loss"] / window["steps"]
            window = {"loss": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}
        if ddp.main and val and ((step + 1) % config.eval_every == 0 or last):
            eval_loss = evaluate(model, val, config.batch_tokens)
            state["eval_loss"] = eval_loss
            emit({"event": "eval", "step": step + 1, "total": total, "eval_loss": eval_loss})
        stopped = not last and should_stop is not None and should_stop()
        if ddp.active and should_stop is not None:
            stopped = ddp.sum(float(stopped)) > 0  # every rank stops at the same step
        if not last and ((step + 1) % config.save_every == 0 or stopped):
            if ddp.main:
                path = save_checkpoint(
                    checkpoints, model, optimizer, scheduler, state, config.keep_checkpoints
                )
                emit({"event": "checkpoint", "step": step + 1, "total": total, "path": str(path)})
            ddp.barrier()
        if stopped:
            break

    metrics = {
        "train_loss": state.get("train_loss"),
        "eval_loss": eval_loss,
        "steps": state["step"],
        "total_steps": total,
        "tokens": state["tokens"],
        "trained_tokens": state["trained_tokens"],
        "tokens_per_s": state["tokens"] / max(state["train_seconds"], 1e-9),
        "train_seconds": round(state["train_seconds"], 2),
        "examples": len(features),
        "truncated": report.truncated,
        "dropped": report.dropped,
        "val_examples": len(val),
        "stopped": stopped,
        "fingerprint": fingerprint,
        "base_hash": base_hash,
        "dataset": dataset_id,
        "config": config.to_dict(),
    }
    if stopped:
        adapter_dir = _latest_checkpoint(checkpoints) or output_dir
    elif ddp.main:
        adapter_dir = save_adapter(model, output_dir / "adapter")
        _write_json(output_dir / "metrics.json", metrics)
    else:
        adapter_dir = output_dir / "adapter"
    ddp.barrier()
    emit({"event": "done", "step": state["step"], "total": total, "stopped": stopped, "eval_loss": eval_loss})
    return TrainResult(adapter_dir=adapter_dir, metrics=metrics, steps=state["step"], tokens=state["tokens"],
                       resumed_from=resumed_from)  # fmt: skip


def completed_run(settings: Settings, output_dir: Path, base: str | None = None) -> TrainResult:
    """A finished SFT run folder (``python -m ragloop.training.run`` or ``accelerate launch``, on this machine or
    on a GPU box) checked against this home, for ``register_model``.

    Its ``metrics.json`` names the dataset version, the base weights' hash and the hyperparameters. The run
    fingerprint is recomputed here from this home's copy of that dataset, this home's base model and those
    settings, and must equal the recorded one: a registered version's lineage then says what it was really
    trained on, not what its folder claims. Raises RagloopError naming the first thing that differs."""
    from ragloop.training.config import field_names

    output_dir = Path(output_dir)
    metrics = _read_json(output_dir / "metrics.json")
    if not metrics.get("fingerprint") or not (output_dir / "adapter" / "adapter_config.json").is_file():
        raise RagloopError(
            f"{output_dir} is not a finished training run (it needs metrics.json and adapter/); "
            "an unfinished one continues with `python -m ragloop.training.run … --out` on it."
        )
    if metrics.get("stopped"):
        raise RagloopError(
            f"{output_dir} holds a run that was stopped before its last step; finish it first."
        )
    recorded = metrics.get("config") or {}
    # the recorded values as they were (load_train_config would turn an int epochs into a float and so
    # change the fingerprint); a setting this version does not know is left out and shows as a mismatch
    config = TrainConfig(**{k: recorded[k] for k in field_names() if k in recorded})
    dataset_id = str(metrics.get("dataset") or "")
    splits = load_splits(settings, dataset_id)
    model_dir, base_hash = resolve_base(settings, base)
    if base_hash != metrics.get("base_hash"):
        raise RagloopError(
            f"{output_dir} was trained on other base weights (hash {str(metrics.get('base_hash'))[:12]}, "
            f"this home's base is {base_hash[:12]}); pass --base with the model it was trained on."
        )
    report = preflight(load_tokenizer(model_dir), splits["train"], config.max_length, config.truncation)
    fingerprint = sft_fingerprint(dataset_id, base_hash, config, report)
    done = _completed(output_dir, fingerprint)
    if done is None:
        raise RagloopError(
            f"{output_dir} does not match dataset {dataset_id} in this home (fingerprint "
            f"{metrics.get('fingerprint')} recorded, {fingerprint} here): other examples or settings."
        )
    return done


@torch.no_grad()
def evaluate(model: torch.nn.Module, features: list[dict], batch_tokens: int) -> float:
    """Mean loss per trained token over ``features`` (dropout off)."""
    from ragloop.training.packing import collate, pack, token_nll

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    lengths = [len(f["input_ids"]) for f in features]
    for mb in pack(list(range(len(features))), lengths, batch_tokens):
        nll, _ = token_nll(model, collate([features[i] for i in mb]))
        total += nll.sum().item()
        count += nll.numel()
    model.train(was_training)
    return total / max(count, 1)


# Files: journal, checkpoints, adapter ------------------------------------------------------------------


class Journal:
    """Append-only JSONL log. A resumed run first drops the lines past its checkpoint, so the log of an
    interrupted-then-resumed run reads like the log of an uninterrupted one."""

    def __init__(self, path: Path, after_step: int = 0):
        self.path = path
        if path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _line_step(line) <= after_step]  # fmt: skip
            path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": round(time.time(), 3), **record}, default=str) + "\n")


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step") or 0)
    except (ValueError, AttributeError):
        return 0


def _silent(record: dict[str, Any]) -> None:
    """Progress of a rank other than 0: rank 0 reports for the run."""


def _emitter(progress: Progress | None, journal: Journal) -> Progress:
    def emit(record: dict[str, Any]) -> None:
        record = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
        journal.write(record)
        if progress is not None:
            progress(dict(record))

    return emit


def save_checkpoint(root: Path, model: Any, optimizer: Any, scheduler: Any, state: dict, keep: int) -> Path:
    """Write ``root/step-N`` atomically (temp folder, then rename): a kill at any moment leaves either the
    previous checkpoints or a complete new one, never a half one that a resume would trust."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{state['step']:07d}"
    tmp = root / f".tmp-{target.name}-{os.getpid()}"
    _remove(tmp)
    model.save_pretrained(tmp)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
         "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()},
        tmp / "trainer_state.pt",
    )  # fmt: skip
    _write_json(tmp / "state.json", state)
    _remove(target)
    os.replace(tmp, target)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        _remove(old)
    return target


def restore_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict:
    """Load a checkpoint into the run (adapter, optimizer, scheduler, RNG) and return its state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    # on the CPU first: optimizer.load_state_dict moves each state to its parameter's device, so a run
    # checkpointed on a GPU resumes on a CPU and vice versa
    saved = torch.load(path / "trainer_state.pt", weights_only=False, map_location="cpu")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    random.setstate(saved["python_rng"])
    return _read_json(path / "state.json")


def save_adapter(model: Any, target: Path) -> Path:
    """The final adapter folder, written atomically like a checkpoint."""
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    _remove(tmp)
    model.save_pretrained(tmp)
    _remove(target)
    os.replace(tmp, target)
    return target


def _latest_checkpoint(root: Path) -> Path | None:
    found = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file()) if root.is_dir() else []
    return found[-1] if found else None


def _completed(output_dir: Path, fingerprint: str) -> TrainResult | None:
    """The result of a run that already finished in ``output_dir`` with the same fingerprint."""
    metrics = _read_json(output_dir / "metrics.json")
    if (
        metrics.get("fingerprint") != fingerprint
        or not (output_dir / "adapter" / "adapter_config.json").is_file()
    ):
        return None
    return TrainResult(
        output_dir / "adapter", metrics, metrics["steps"], metrics["tokens"], resumed_from=metrics["steps"]
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
