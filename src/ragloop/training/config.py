"""Training configuration: every knob of the SFT and DPO stages in one documented dataclass.

A ``train.yaml`` holds any subset of these fields (``load_train_config``); the CLI's ``--set KEY=VALUE``
and a job's recorded config override them. The dataclass is recorded with every model version, so the
same file (and the same dataset version) retrains the same adapter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ragloop.accel import valid_device
from ragloop.errors import ConfigError

TRUNCATION_POLICIES = ("left-context", "drop")
SCHEDULERS = ("cosine", "linear", "constant")


@dataclass
class TrainConfig:
    r"""Configuration of ``train_sft`` and ``train_dpo``.

    > Model (LoRA; the base model's weights stay frozen)

        lora_r: rank of each LoRA update.
        lora_alpha: LoRA scaling numerator (the update is scaled by ``lora_alpha / lora_r``).
        lora_dropout: dropout on the LoRA input during training.
        target_modules: modules that get an adapter; ``"all-linear"`` is every linear layer but the LM head.

    > Data

        max_length: longest training sequence in tokens (prompt + answer + end-of-turn token).
        truncation: what happens to an example longer than ``max_length``. ``"left-context"`` keeps the
            answer whole and cuts retrieved passages from the prompt, uncited ones first, last first; an
            example that still does not fit (or cites passages it cannot spare) is dropped. ``"drop"`` drops
            every over-long example. Either way the preflight lists each truncated or dropped example: none
            is silently cut, unlike TRL, which truncates answers past ``max_length``.
        batch_tokens: token budget of one packed micro-batch (a forward + backward). Examples are packed
            padding-free into one row up to this many tokens, so it bounds peak memory, not the batch size.
        batch_size: examples per optimizer step. ``None`` (default): a step is ``gradient_accumulation_steps``
            micro-batches of ``batch_tokens`` each, grouped from similar lengths. Set it to compare with a
            trainer that counts examples (the benchmark does): each step then holds exactly that many
            examples, split into as many micro-batches as ``batch_tokens`` requires.
        buffer_size: examples sorted by length together before packing: larger packs tighter, smaller keeps
            the order more random.

    > Training

        learning_rate: peak AdamW learning rate (LoRA tolerates ~10x a full fine-tune's rate).
        epochs: passes over the training split (fractions allowed).
        max_steps: stop after this many optimizer steps even if ``epochs`` is not done (smoke runs, benches).
        gradient_accumulation_steps: micro-batches per optimizer step when ``batch_size`` is not set.
        warmup_ratio: share of the steps with a linear warm-up of the learning rate.
        weight_decay: AdamW weight decay on the LoRA weights.
        max_grad_norm: gradient clipping (0 disables it).
        lr_scheduler: ``cosine``, ``linear`` or ``constant`` after warm-up.
        seed: LoRA initialisation, dropout and data order; the same seed retrains the same adapter.
        threads: torch CPU threads; ``None`` uses every core.
        device: ``auto`` (a CUDA GPU when torch sees one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
            Like ``threads`` it is not part of a run's identity: a run started on a GPU resumes on a CPU.

    > Bookkeeping

        eval_every: validation loss every this many steps (and at the end).
        save_every: checkpoint (adapter, optimizer, scheduler, RNG, data position) every this many steps.
        logging_every: progress callback and JSONL log line every this many steps.
        keep_checkpoints: checkpoints kept on disk (older ones are deleted).

    > DPO

        dpo_beta: strength of the KL anchor to the reference model (TRL's ``beta``).
        dpo_loss: TRL's ``loss_type`` (``sigmoid`` is the original DPO loss).
        dpo_batch_size: preference pairs per micro-batch (TRL pads each pair to the longest).
    """

    # Model
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    # Data
    max_length: int = 1024
    truncation: str = "left-context"
    batch_tokens: int = 2048  # ~7 GiB peak for SmolLM2-135M fp32; 4096 ~14 GiB
    batch_size: int | None = None
    buffer_size: int = 256
    # Training
    learning_rate: float = 2e-4
    epochs: float = 2.0
    max_steps: int | None = None
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_scheduler: str = "cosine"
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    # Bookkeeping
    eval_every: int = 50
    save_every: int = 50
    logging_every: int = 5
    keep_checkpoints: int = 2
    # DPO
    dpo_beta: float = 0.1
    dpo_loss: str = "sigmoid"
    dpo_batch_size: int = 2

    def __post_init__(self) -> None:
        problems = []
        if self.truncation not in TRUNCATION_POLICIES:
            problems.append(
                f"truncation must be one of {', '.join(TRUNCATION_POLICIES)}, not {self.truncation!r}"
            )
        if self.lr_scheduler not in SCHEDULERS:
            problems.append(f"lr_scheduler must be one of {', '.join(SCHEDULERS)}, not {self.lr_scheduler!r}")
        positive = ["lora_r", "max_length", "batch_tokens", "buffer_size", "gradient_accumulation_steps",
                    "eval_every", "save_every", "logging_every", "keep_checkpoints", "dpo_batch_size"]  # fmt: skip
        problems += [
            f"{name} must be a positive integer"
            for name in positive
            if not _positive_int(getattr(self, name))
        ]
        for name in ("batch_size", "max_steps", "threads"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                problems.append(f"{name} must be a positive integer or null")
        if not valid_device(str(self.device)):
            problems.append(f"device must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        if not self.epochs > 0:
            problems.append("epochs must be > 0")
        if not self.learning_rate > 0:
            problems.append("learning_rate must be > 0")
        if not 0 <= self.lora_dropout < 1 or not 0 <= self.warmup_ratio < 1:
            problems.append("lora_dropout and warmup_ratio must be in [0, 1)")
        if self.batch_tokens < self.max_length:
            problems.append(
                f"batch_tokens ({self.batch_tokens}) must be at least max_length ({self.max_length}): "
                "a micro-batch has to hold the longest example"
            )
        if problems:
            raise ConfigError("Invalid training config: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready data (recorded in checkpoints, metrics and model cards)."""
        return asdict(self)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def load_train_config(path: Path | None, **overrides: Any) -> TrainConfig:
    """A ``TrainConfig`` from a YAML file (any subset of the fields) with keyword overrides on top.

    An unknown key is an error naming the valid ones, not silently ignored: a typo such as
    ``learning_rte`` would otherwise train with the default and nobody would notice. ``None`` overrides
    are skipped, so a CLI can pass every option it has."""
    values: dict[str, Any] = {}
    if path is not None:
        import yaml

        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"Cannot read training config {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"Training config {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"Training config {path} must be a mapping of field: value.")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = set(field_names())
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"Unknown training setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}."
        )
    for name in ("learning_rate", "epochs", "lora_dropout", "warmup_ratio", "weight_decay", "dpo_beta",
                 "max_grad_norm"):  # fmt: skip
        if isinstance(values.get(name), str | int) and not isinstance(values.get(name), bool):
            try:  # YAML reads "2e-4" as a string
                values[name] = float(values[name])
            except ValueError as exc:
                raise ConfigError(f"Training setting {name} must be a number, not {values[name]!r}.") from exc
    return TrainConfig(**values)
