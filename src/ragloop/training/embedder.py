"""Retriever tuning: fine-tune the embedding model on a pairs dataset (``datasets/pairs.py``) and register the
result as an embedder version with its lineage (issue 20).

It runs as a job of kind ``embedder`` through the same machinery as SFT (``training/jobs.py``: a worker's
child process, heartbeat, progress, cancel at the next step, resume from the last checkpoint). The trainer
is sentence-transformers' own ``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss`` over
(question, positive, hard negatives...) rows and the no-duplicates batch sampler, as its docs recommend for
in-batch-negative losses: two pairs of one question (HotpotQA has two gold paragraphs) never share a batch,
where one's positive would be the other's false negative. fp32 on the CPU by default.

Texts are embedded exactly as ingestion embeds a chunk (``passage_text``: title and heading path, then the
text), so the tuned model learns the input it will see at serve time.

The base embedder has no ``EmbedderVersion`` row: ``embedder_version`` None means the configured base.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ragloop.config import Settings
from ragloop.datasets.build import get_dataset
from ragloop.datasets.pairs import is_pairs_dataset, load_pairs
from ragloop.errors import ConfigError, NotFound, PairsFormatError, RagloopError, TooFewPairs
from ragloop.generation.models import file_sha256
from ragloop.ingest.embed import resolve_embedding_path
from ragloop.ingest.pipeline import passage_text
from ragloop.store.db import SessionOrUrl, session_of
from ragloop.store.models import EmbedderVersion, Job, RegistryEvent

log = logging.getLogger("ragloop.training")

Progress = Callable[[dict[str, Any]], None]
ShouldStop = Callable[[], bool]

EMBEDDERS_DIR = "embedders"
CARD = "ragloop-embedder.json"  # the lineage, written into the saved model's folder
MIN_TRAIN_PAIRS = 8  # fewer cannot fill one contrastive batch
BASE_ID = "base"  # how reports name the configured base embedder (it has no row)


@dataclass
class EmbedderTrainConfig:
    """Every knob of one embedder fine-tune.

    Training: ``epochs``, ``batch_size`` (pairs per step; every other pair's positive and negatives are
    in-batch negatives, so larger is harder), ``learning_rate``, ``warmup_ratio``, ``scale`` (MNRL's inverse
    temperature), ``seed``. Data: ``negatives`` hard negatives per pair (a pair with fewer is topped up with
    random passages of its split; 0 trains on in-batch negatives only), ``max_seq_length`` (None: the
    model's own). Run: ``save_steps`` (checkpoint every N steps: what a resume continues from),
    ``logging_steps``, ``threads`` (torch threads; None: torch's default).
    """

    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    scale: float = 20.0
    seed: int = 0
    negatives: int = 3
    max_seq_length: int | None = None
    save_steps: int = 50
    logging_steps: int = 5
    threads: int | None = None

    def __post_init__(self) -> None:
        if (self.epochs <= 0 or self.batch_size < 2 or self.learning_rate <= 0 or self.negatives < 0
                or not 0 <= self.warmup_ratio < 1):  # fmt: skip
            raise RagloopError(
                "Embedder training needs epochs > 0, batch_size >= 2 (in-batch negatives), learning_rate > 0 "
                "negatives >= 0 and 0 <= warmup_ratio < 1."
            )


def embedder_config(overrides: dict[str, Any] | None) -> EmbedderTrainConfig:
    """An ``EmbedderTrainConfig`` from ``--set key=value`` overrides; unknown keys and bad values are the
    request's fault (RagloopError), said before a job exists."""
    known = {f.name: f for f in fields(EmbedderTrainConfig)}
    values: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise RagloopError(f"Unknown embedder training setting {key!r}: use one of {', '.join(known)}.")
        values[key] = value
    try:
        defaults = EmbedderTrainConfig()
        for key, value in values.items():  # "--set epochs=2" arrives as a string
            if isinstance(value, str):
                kind = type(getattr(defaults, key)) if getattr(defaults, key) is not None else int
                values[key] = None if value.lower() == "none" else kind(value)
        return EmbedderTrainConfig(**values)
    except (TypeError, ValueError) as exc:
        raise RagloopError(f"Invalid embedder training setting: {exc}") from exc


@dataclass
class EmbedderTrainResult:
    """What a run produced: the saved sentence-transformers folder (None when stopped before the end)."""

    model_dir: Path | None
    metrics: dict
    steps: int
    resumed_from: int | None
    dim: int = 0
    train_s: float = 0.0
    pairs: int = 0
    extra: dict = field(default_factory=dict)


# The base embedder -------------------------------------------------------------------------------------


def folder_digest(folder: Path) -> str:
    """One hash of a model folder's files (recursively: sentence-transformers keeps modules in subfolders)."""
    files = {
        str(f.relative_to(folder)): file_sha256(f)
        for f in sorted(folder.rglob("*"))
        if f.is_file()
        and f.name != CARD
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    }
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def resolve_base(settings: Settings, base: str | None) -> tuple[str, Path, str]:
    """(name, folder, hash) of the embedder to start from: a registered embedder version's id (tuning it
    further), ``packaged`` or a local sentence-transformers folder; default the configured one."""
    name = base or settings.embedding.model
    with session_of(settings.db_url) as s:
        ev = s.get(EmbedderVersion, name)
    if ev is not None:
        folder = Path(ev.path)
    else:
        try:
            folder = resolve_embedding_path(name)
        except ConfigError as exc:
            raise RagloopError(f"Base embedder {name!r} cannot be loaded: {exc}") from exc
    if not ((folder / "modules.json").is_file() or (folder / "config_sentence_transformers.json").is_file()):
        raise RagloopError(
            f"Base embedder {name!r}: {folder} is not a sentence-transformers folder (no modules.json)."
        )
    return name, folder, folder_digest(folder)


# Submitting (called by jobs.validate_job) --------------------------------------------------------------


def validate_embedder_job(settings: Settings, config: dict[str, Any]) -> dict[str, Any]:
    """Check an embedder job before it exists (dataset is retriever pairs, enough of them, base loads, the
    settings are valid) and return its full config, so a bad request never becomes a failed job."""
    config = dict(config or {})
    unknown = set(config) - {"dataset", "base", "name", "train"}
    if unknown:
        raise RagloopError(f"Unknown embedder job settings: {', '.join(sorted(unknown))}.")
    dataset_id = config.get("dataset")
    if not dataset_id:
        raise RagloopError(
            "Name the pairs dataset to train on: --dataset pairs-… (see `ragloop dataset list`)."
        )
    dv = get_dataset(settings.db_url, dataset_id)
    if not is_pairs_dataset(dv):
        raise PairsFormatError(
            f"Dataset {dataset_id} is a generator dataset (source {dv.source!r}), not retriever pairs; build "
            "one with `ragloop dataset pairs`."
        )
    if dv.contains_erased:
        raise RagloopError(
            f"Dataset {dataset_id} contains records erased since it was built; rebuild it first: "
            f"{dv.command or 'ragloop dataset pairs'}"
        )
    n = len(load_pairs(settings, dataset_id, "train")["train"])
    if n < MIN_TRAIN_PAIRS:
        raise TooFewPairs(
            f"Dataset {dataset_id} has {n} training pairs; at least {MIN_TRAIN_PAIRS} are needed. Build a bigger "
            "one (`ragloop dataset pairs --import …`)."
        )
    train = embedder_config(config.get("train"))
    base, _, base_hash = resolve_base(settings, config.get("base"))
    name = config.get("name")
    if name is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$", str(name)):
        raise RagloopError(f"Embedder name {name!r} must be letters, digits, '.', '_' or '-'.")
    return {"dataset": dataset_id, "base": base, "base_hash": base_hash, "name": name, "train": asdict(train)}


# Training ----------------------------------------------------------------------------------------------


def training_rows(pairs: list[dict], negatives: int, seed: int) -> dict[str, list[str]]:
    """Columns anchor, positive, negative_1..n (texts as ingestion embeds them). MNRL needs the same number
    of negatives in every row: a pair with more gets a seeded random sample of them (distractors, shown
    and mined alike), a pair with fewer is topped up with random passages of the same split that
    are neither its positive nor its negatives (the split's own passages: no other split's gold leaks in)."""

    def text(p: dict) -> str:
        return passage_text(_Passage(p.get("title", ""), p.get("section", ""), p["text"]))  # type: ignore[arg-type]

    pool = list(dict.fromkeys(text(p) for row in pairs for p in (row["positive"], *row.get("negatives", []))))
    rng = random.Random(seed)
    columns: dict[str, list[str]] = {"anchor": [], "positive": []}
    for k in range(negatives):
        columns[f"negative_{k + 1}"] = []
    for row in pairs:
        positive = text(row["positive"])
        negs = [t for t in dict.fromkeys(text(p) for p in row.get("negatives", [])) if t != positive]
        negs = rng.sample(negs, min(negatives, len(negs)))  # a mix of every kind the pair has
        while len(negs) < negatives and len(pool) > len(negs) + 1:
            pick = rng.choice(pool)
            if pick != positive and pick not in negs:
                negs.append(pick)
        if len(negs) < negatives:
            raise TooFewPairs("Too few distinct passages in the split to give every pair its negatives.")
        columns["anchor"].append(row["question"])
        columns["positive"].append(positive)
        for k, t in enumerate(negs):
            columns[f"negative_{k + 1}"].append(t)
    return columns


@dataclass
class _Passage:
    title: str
    section: str
    text: str


def run_fingerprint(dataset_id: str, base_hash: str, config: EmbedderTrainConfig) -> str:
    """Identity of a run: a checkpoint resumes only a run with the same data, base and hyperparameters."""
    data = {"dataset": dataset_id, "base": base_hash, "config": {k: v for k, v in asdict(config).items()
                                                                 if k not in ("threads", "logging_steps")}}  # fmt: skip
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _latest_checkpoint(folder: Path) -> Path | None:
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def train_embedder(
    settings: Settings,
    dataset_id: str,
    output_dir: Path,
    config: EmbedderTrainConfig,
    *,
    base: str | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> EmbedderTrainResult:
    """Fine-tune the base embedder on the pairs dataset's train split into ``output_dir/model``.

    Checkpoints go to ``output_dir/checkpoints`` every ``save_steps``; with ``resume`` a run with the same
    fingerprint continues from the latest one (and a finished run is returned as it is). ``progress``
    receives {event, step, total, loss, epoch}; ``should_stop`` is polled after every step, and a stop saves
    a checkpoint there so a resume loses nothing."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    emit = progress or (lambda _data: None)
    _, base_dir, base_hash = resolve_base(settings, base)
    fingerprint = run_fingerprint(dataset_id, base_hash, config)
    output_dir.mkdir(parents=True, exist_ok=True)
    run_file, done_file = output_dir / "run.json", output_dir / "done.json"
    if run_file.exists() and json.loads(run_file.read_text()).get("fingerprint") != fingerprint:
        if not resume:
            shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
            done_file.unlink(missing_ok=True)
        else:
            raise RagloopError(
                f"{output_dir} holds a run with other data, base or settings; train into a new folder."
            )
    run_file.write_text(
        json.dumps({"fingerprint": fingerprint, "dataset": dataset_id, "base_hash": base_hash})
    )
    if resume and done_file.exists():
        done = json.loads(done_file.read_text())
        return EmbedderTrainResult(Path(done["model_dir"]), done["metrics"], done["steps"], done["steps"],
                                   done["dim"], done["train_s"], done["pairs"])  # fmt: skip

    pairs = load_pairs(settings, dataset_id, "train")["train"]
    if len(pairs) < MIN_TRAIN_PAIRS:
        raise TooFewPairs(
            f"Dataset {dataset_id} has {len(pairs)} training pairs; at least {MIN_TRAIN_PAIRS}."
        )
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = SentenceTransformer(str(base_dir), device="cpu")
    if config.max_seq_length:
        model.max_seq_length = config.max_seq_length
    dataset = Dataset.from_dict(training_rows(pairs, config.negatives, config.seed))
    checkpoints = output_dir / "checkpoints"
    latest = _latest_checkpoint(checkpoints) if resume else None
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,  # below 1: a share of the steps (transformers 5)
        seed=config.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=config.logging_steps,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    state = {"loss": None, "stopped": False}

    class Reporter(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args, st, control, **kw):  # type: ignore[no-untyped-def]
            emit({"event": "start", "step": st.global_step, "total": st.max_steps, "pairs": len(pairs)})

        def on_log(self, args, st, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            if logs and "loss" in logs:
                state["loss"] = float(logs["loss"])
                emit({"event": "log", "step": st.global_step, "total": st.max_steps, "loss": state["loss"],
                      "epoch": round(float(st.epoch or 0), 3)})  # fmt: skip

        def on_step_end(self, args, st, control, **kw):  # type: ignore[no-untyped-def]
            if should_stop is not None and st.global_step < st.max_steps and should_stop():
                state["stopped"] = True
                control.should_save = True  # a checkpoint at the stop: the resume continues from here
                control.should_training_stop = True
            return control

        def on_save(self, args, st, control, **kw):  # type: ignore[no-untyped-def]
            emit({"event": "checkpoint", "step": st.global_step, "total": st.max_steps})

    loss = MultipleNegativesRankingLoss(model, scale=config.scale)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[Reporter()]
    )
    resumed_from = int(latest.name.split("-")[-1]) if latest else None
    t0 = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=str(latest) if latest else None)
    train_s = time.perf_counter() - t0
    steps = int(trainer.state.global_step)
    dim = int(model.get_embedding_dimension() or 0)
    metrics = {"train_loss": float(out.training_loss), "last_loss": state["loss"], "stopped": state["stopped"],
               "epochs": config.epochs}  # fmt: skip
    if state["stopped"]:
        emit({"event": "stopped", "step": steps, "total": trainer.state.max_steps})
        return EmbedderTrainResult(None, metrics, steps, resumed_from, dim, train_s, len(pairs))
    model_dir = output_dir / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    model.save(str(model_dir))
    done = {"model_dir": str(model_dir), "metrics": metrics, "steps": steps, "dim": dim, "train_s": train_s,
            "pairs": len(pairs)}  # fmt: skip
    done_file.write_text(json.dumps(done))
    emit({"event": "done", "step": steps, "total": trainer.state.max_steps, "loss": state["loss"]})
    return EmbedderTrainResult(model_dir, metrics, steps, resumed_from, dim, train_s, len(pairs))


# Registering -------------------------------------------------------------------------------------------


def embedders_dir(settings: Settings) -> Path:
    return settings.data_dir / EMBEDDERS_DIR


def _label(base: str) -> str:
    if base == "packaged":
        return "minilm"
    stem = Path(base).name if "/" in base or Path(base).is_dir() else base.split("-tuned-")[0]
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:40] or "embedder"


def register_embedder(
    settings: Settings, job: Job, result: EmbedderTrainResult, session: Session
) -> EmbedderVersion:
    """Record a trained embedder (copied under ``<home>/data/embedders/<id>``) with its lineage, in the
    caller's transaction: the job worker marks the job succeeded in the same commit. Registering the same
    weights twice returns the existing version."""
    from ragloop.training.lineage import code_version

    if result.model_dir is None or not (Path(result.model_dir) / "modules.json").is_file():
        raise RagloopError(f"No sentence-transformers model to register at {result.model_dir}.")
    cfg = job.config or {}
    digest = folder_digest(Path(result.model_dir))
    embedder_id = f"{cfg.get('name') or _label(cfg.get('base') or 'packaged')}-tuned-{digest[:8]}"
    existing = session.get(EmbedderVersion, embedder_id)
    if existing is not None:
        return existing
    _, _, base_hash = resolve_base(settings, cfg.get("base"))
    if cfg.get("base_hash") not in (None, base_hash):
        raise RagloopError(f"The base embedder {cfg.get('base')!r} changed while the job ran; retrain.")
    dv = get_dataset(session, cfg["dataset"])
    target = embedders_dir(settings) / embedder_id
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(result.model_dir, target)
    meta = {
        "job": job.id,
        "hyperparameters": cfg.get("train"),
        "code": code_version(),
        "dataset_hash": dv.content_hash,
        "dataset_source": dv.source,
        "dataset_kb_version": dv.kb_version,
        "negatives": (dv.counts or {}).get("negatives"),
        "metrics": result.metrics,
        "steps": result.steps,
        "pairs": result.pairs,
        "train_s": round(result.train_s, 1),
        "weights_sha256": digest,
    }
    ev = EmbedderVersion(id=embedder_id, base=cfg.get("base") or "packaged", base_hash=base_hash,
                         path=str(target), dim=result.dim, dataset_id=cfg["dataset"], meta=meta, kb_versions=[])  # fmt: skip
    (target / CARD).write_text(json.dumps({"id": embedder_id, "base": ev.base, "base_hash": base_hash,
                                           "dataset_id": ev.dataset_id, **meta}, indent=2, default=str))  # fmt: skip
    session.add(ev)
    session.add(RegistryEvent(action="register", embedder_version=embedder_id, note=f"embedder job {job.id}"))
    session.flush()
    return ev


def get_embedder_version(db: SessionOrUrl, embedder_id: str) -> EmbedderVersion:
    with session_of(db) as s:
        ev = s.get(EmbedderVersion, embedder_id)
    if ev is None:
        raise NotFound(f"No embedder version {embedder_id!r}; see `ragloop jobs list` for embedder jobs.")
    return ev


def list_embedder_versions(db: SessionOrUrl) -> list[EmbedderVersion]:
    with session_of(db) as s:
        return list(s.scalars(select(EmbedderVersion).order_by(EmbedderVersion.created_at.desc())))
