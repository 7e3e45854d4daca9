"""Preference tuning (DPO) with TRL's ``DPOTrainer``, starting from a trained version.

The reference model is the ``--from`` version itself: its SFT adapter is merged into the base, and a fresh
LoRA is trained on top. With PEFT, TRL computes the reference by disabling the trainable adapter, which
leaves exactly the merged SFT model, never the bare base by accident. The result is written as one adapter
on the bare base (the SFT and DPO LoRAs concatenated, an exact sum of the two updates at rank r1 + r2), so
a DPO version is served like any other: base + one adapter.

Pairs come from ``ragloop.datasets.build.dpo_pairs`` (prompt / chosen / rejected on the same context,
TRL's conversational preference format); each is fitted to ``max_length`` by the same left-context policy
as SFT (the prompt loses distractor passages; neither answer is ever cut) and every cut or drop is reported.

Output folder: ``adapter/`` (the registered adapter, on the bare base), ``dpo-delta/`` (the DPO LoRA alone,
on the merged reference), ``checkpoints/`` (TRL's, resumable), ``train_log.jsonl``, ``preflight.txt``,
``metrics.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from ragloop.accel import resolve_device
from ragloop.config import Settings
from ragloop.errors import RagloopError
from ragloop.training.config import TrainConfig
from ragloop.training.preflight import fit_example, preflight, special_token_ids
from ragloop.training.sft import (
    Journal,
    Progress,
    ShouldStop,
    TrainResult,
    _completed,
    _emitter,
    _remove,
    _write_json,
    load_model,
    load_splits,
    load_tokenizer,
    lora_config,
    resolve_base,
    run_fingerprint,
    save_adapter,
    set_threads,
    show,
)


@dataclass
class DPORun:
    """A DPO trainer ready to ``train()``, with what ``train_dpo`` needs to finish the run."""

    trainer: Any
    model_dir: Path
    fingerprint: str
    summary: str
    pairs: int
    truncated: list[str]
    dropped: list[str]
    hooks: Any


def fit_pairs(
    tokenizer: Any, examples: list[dict], max_length: int, truncation: str
) -> tuple[list[dict], list[str], list[str], dict[str, str]]:
    """(TRL preference rows, truncated ids, dropped ids, reasons) for the examples that yield a pair."""
    from ragloop.datasets.build import dpo_pairs

    special = special_token_ids(tokenizer)
    rows, truncated, dropped, details = [], [], [], {}
    for i, ex in enumerate(examples):
        pairs = dpo_pairs([ex])
        if not pairs:
            continue
        pair, ex_id = pairs[0], str(ex.get("id") or f"#{i}")
        answers = [pair["chosen"][0]["content"], pair["rejected"][0]["content"]]
        fitted = fit_example(tokenizer, ex, answers, max_length, truncation, special)
        if fitted.problem or fitted.dropped:
            dropped.append(ex_id)
            details[ex_id] = fitted.problem or fitted.dropped or ""
            continue
        if fitted.cut:
            truncated.append(ex_id)
            details[ex_id] = f"cut distractor passage(s) {sorted(fitted.cut)}"
        rows.append({"prompt": fitted.prompt, "chosen": pair["chosen"], "rejected": pair["rejected"]})
    return rows, truncated, dropped, details


def build_dpo_trainer(
    settings: Settings,
    dataset_id: str,
    output_dir: Path,
    config: TrainConfig,
    *,
    reference_adapter: Path | None,
    base: str | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> DPORun:
    """Check the inputs (nothing is written if they are bad) and build TRL's DPOTrainer on the merged
    reference with a fresh LoRA."""
    from datasets import Dataset

    set_threads(config)
    splits = load_splits(settings, dataset_id)
    model_dir, base_hash = resolve_base(settings, base)
    tokenizer = load_tokenizer(model_dir)
    report = preflight(tokenizer, splits["train"], config.max_length, config.truncation)
    report.raise_for_problems()  # a broken chat template breaks DPO's masks the same way
    rows, truncated, dropped, details = fit_pairs(
        tokenizer, splits["train"], config.max_length, config.truncation
    )
    if not rows:
        raise RagloopError(
            f"Dataset {dataset_id} yields no preference pairs that fit max_length {config.max_length} "
            "(no rejected or misled answers, or every pair dropped)."
        )
    val_rows = fit_pairs(tokenizer, splits.get("val") or [], config.max_length, config.truncation)[0]
    if reference_adapter is not None and not (Path(reference_adapter) / "adapter_config.json").is_file():
        raise RagloopError(
            f"Reference adapter {reference_adapter} has no adapter_config.json; is it a LoRA folder?"
        )
    model = load_model(model_dir)
    if reference_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(reference_adapter)).merge_and_unload()
    summary = "\n".join(
        [f"dpo preflight: {len(rows)} preference pairs, {len(truncated)} truncated, {len(dropped)} dropped"]
        + [f"  {i}: {details[i]}" for i in truncated + dropped]
        + ["example as trained (chosen):", report.rendered]
    )
    fingerprint = run_fingerprint("dpo", dataset_id, base_hash, config, [str(reference_adapter), len(rows)])

    hooks = _Hooks(progress, should_stop)
    args = DPOConfig(
        output_dir=str(Path(output_dir) / "checkpoints"),
        bf16=False,  # TRL turns bf16 on by default; ragloop's CPUs have no fast bf16
        gradient_checkpointing=False,
        per_device_train_batch_size=config.dpo_batch_size,
        per_device_eval_batch_size=config.dpo_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        lr_scheduler_type="constant_with_warmup"
        if config.lr_scheduler == "constant"
        else config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        data_seed=config.seed,
        beta=config.dpo_beta,
        loss_type=[config.dpo_loss],
        max_length=None,  # pairs are already fitted; TRL would otherwise cut answers silently
        logging_steps=config.logging_every,
        save_strategy="steps",
        save_steps=config.save_every,
        save_total_limit=config.keep_checkpoints,
        eval_strategy="steps" if val_rows else "no",
        eval_steps=config.eval_every,
        report_to="none",
        disable_tqdm=True,
        use_cpu=resolve_device(config.device).type == "cpu",  # a GPU when there is one (ragloop.accel)
        dataloader_num_workers=0,
    )
    trainer = _CountingDPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(val_rows) if val_rows else None,
        processing_class=tokenizer,
        peft_config=lora_config(config),
        callbacks=[hooks],
    )
    hooks.trainer = trainer
    return DPORun(trainer, model_dir, fingerprint, summary, len(rows), truncated, dropped, hooks)


def train_dpo(
    settings: Settings,
    dataset_id: str,
    output_dir: Path,
    config: TrainConfig,
    *,
    reference_adapter: Path | None,
    base: str | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> TrainResult:
    """DPO on ``dataset_id``'s preference pairs against ``reference_adapter`` merged into the base (or the
    bare base when it is None, i.e. starting from the base version). Same contract as ``train_sft``:
    bad input fails before anything is written, ``resume`` continues from the last complete checkpoint,
    ``should_stop`` checkpoints and returns."""
    output_dir = Path(output_dir)
    run = build_dpo_trainer(settings, dataset_id, output_dir, config, reference_adapter=reference_adapter,
                            base=base, progress=progress, should_stop=should_stop)  # fmt: skip
    show(run.summary, "dpo")
    checkpoints = output_dir / "checkpoints"
    done = _completed(output_dir, run.fingerprint) if resume else None
    if done is not None:
        return done
    if not resume:
        for stale in (checkpoints, output_dir / "adapter", output_dir / "dpo-delta", output_dir / "metrics.json",
                      output_dir / "train_log.jsonl"):  # fmt: skip
            _remove(stale)
    latest = _last_complete_checkpoint(checkpoints) if resume else None
    resumed_from = _read_step(latest) if latest else None
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "preflight.txt").write_text(run.summary + "\n", encoding="utf-8")
    journal = Journal(output_dir / "train_log.jsonl", after_step=resumed_from or 0)
    run.hooks.emit = _emitter(progress, journal)
    run.hooks.resumed_from = resumed_from or 0

    trainer = run.trainer
    trainer.train(resume_from_checkpoint=str(latest) if latest else None)
    state = trainer.state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    evals = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
    stopped = run.hooks.stopped
    metrics = {
        "train_loss": losses[-1] if losses else None,
        "eval_loss": evals[-1] if evals else None,
        "reward_accuracy": next(
            (
                h["eval_rewards/accuracies"]
                for h in reversed(state.log_history)
                if "eval_rewards/accuracies" in h
            ),
            None,
        ),  # fmt: skip
        "steps": state.global_step,
        "total_steps": state.max_steps,
        "tokens": trainer.useful_tokens,
        "tokens_per_s": trainer.useful_tokens / max(trainer.train_seconds, 1e-9),
        "pairs": run.pairs,
        "truncated": run.truncated,
        "dropped": run.dropped,
        "reference": str(reference_adapter) if reference_adapter else None,
        "stopped": stopped,
        "fingerprint": run.fingerprint,
        "dataset": dataset_id,
        "config": config.to_dict(),
    }
    if stopped:
        adapter_dir = _last_complete_checkpoint(checkpoints) or output_dir
    else:
        delta = save_adapter(trainer.model, output_dir / "dpo-delta")
        adapter_dir = output_dir / "adapter"
        if reference_adapter is None:
            _remove(adapter_dir)
            shutil.copytree(delta, adapter_dir)
        else:
            combine_adapters(run.model_dir, Path(reference_adapter), delta, adapter_dir)
        _write_json(output_dir / "metrics.json", metrics)
    run.hooks.emit({"event": "done", "step": state.global_step, "total": state.max_steps, "stopped": stopped})
    return TrainResult(adapter_dir=adapter_dir, metrics=metrics, steps=state.global_step,
                       tokens=trainer.useful_tokens, resumed_from=resumed_from)  # fmt: skip


def combine_adapters(model_dir: Path, first: Path, second: Path, target: Path) -> Path:
    """One LoRA equal to applying ``first`` then ``second``: their A and B matrices concatenated (PEFT's
    ``cat`` combination), so W + B1·A1·s1 + B2·A2·s2 exactly, at rank r1 + r2."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(model_dir), str(first), adapter_name="first")
    model.load_adapter(str(second), adapter_name="second")
    model.add_weighted_adapter(["first", "second"], [1.0, 1.0], "combined", combination_type="cat")
    model.set_adapter("combined")
    model.delete_adapter("first")
    model.delete_adapter("second")
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    _remove(tmp)
    model.save_pretrained(tmp)  # a named adapter lands in tmp/<name>/
    _remove(target)
    os.replace(tmp / "combined", target)
    _remove(tmp)
    return target


def _last_complete_checkpoint(root: Path) -> Path | None:
    """TRL writes ``trainer_state.json`` last, so a checkpoint without a readable one was cut by a kill:
    it is removed and the previous one is used."""
    if not root.is_dir():
        return None
    found = sorted((p for p in root.glob("checkpoint-*") if p.is_dir()), key=_read_step_from_name)
    for path in reversed(found):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return path
        except (OSError, ValueError):
            _remove(path)
    return None


def _read_step_from_name(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[-1])


def _read_step(path: Path) -> int:
    return int(json.loads((path / "trainer_state.json").read_text())["global_step"])


class _CountingDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer, counting useful (non-padding) tokens and training time for tokens/s."""

    useful_tokens = 0
    train_seconds = 0.0

    def training_step(self, model: Any, inputs: dict, *args: Any, **kwargs: Any) -> Any:
        tick = time.perf_counter()
        if "attention_mask" in inputs:
            self.useful_tokens += int(inputs["attention_mask"].sum())
        out = super().training_step(model, inputs, *args, **kwargs)
        self.train_seconds += time.perf_counter() - tick
        return out


class _Hooks(TrainerCallback):
    """Progress per logging step (same keys as SFT), JSONL log, and a clean stop on ``should_stop``."""

    def __init__(self, progress: Progress | None, should_stop: ShouldStop | None):
        self.emit: Progress = progress or (lambda record: None)
        self.should_stop = should_stop
        self.stopped = False
        self.trainer: Any = None
        self.resumed_from = 0
        self.started = time.perf_counter()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        step, total = state.global_step, state.max_steps
        if "eval_loss" in logs:
            self.emit({"event": "eval", "step": step, "total": total, "eval_loss": logs["eval_loss"],
                       "reward_accuracy": logs.get("eval_rewards/accuracies")})  # fmt: skip
        elif "loss" in logs:
            trainer = self.trainer
            elapsed = time.perf_counter() - self.started
            done = max(step - self.resumed_from, 1)
            self.emit({
                "event": "step", "step": step, "total": total, "loss": logs["loss"],
                "lr": logs.get("learning_rate"), "reward_accuracy": logs.get("rewards/accuracies"),
                "tokens": trainer.useful_tokens if trainer else None,
                "tokens_per_s": trainer.useful_tokens / max(trainer.train_seconds, 1e-9) if trainer else None,
                "elapsed_s": elapsed, "eta_s": elapsed / done * (total - step),
            })  # fmt: skip

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.emit({"event": "checkpoint", "step": state.global_step, "total": state.max_steps})

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.should_stop is not None and state.global_step < state.max_steps and self.should_stop():
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
