"""Registering what training produced: a trained adapter becomes a ModelVersion with its full lineage.

A version must answer "what exactly is this model?" long after the job that made it is gone: which base
weights (and their hash), which dataset version (and its content hash, curation policy, KB version), which
hyperparameters, which code, what metrics. The adapter is copied into ``<home>/data/models/<id>/`` so a
cleaned-up job folder never breaks a served model. Export and diff read the same record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

import ragloop
from ragloop.config import Settings
from ragloop.errors import ConfigError, NotFound, RagloopError
from ragloop.generation.models import file_sha256, resolve_model
from ragloop.store.aliases import resolve
from ragloop.store.db import SessionOrUrl, session_of, session_scope
from ragloop.store.models import DatasetVersion, Job, ModelAlias, ModelVersion, RegistryEvent, utcnow

MODELS_DIR = "models"
CARD = "ragloop-model.json"  # the lineage, written next to the adapter so a copied folder explains itself
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")


def models_dir(settings: Settings) -> Path:
    return settings.data_dir / MODELS_DIR


# Lineage -----------------------------------------------------------------------------------------------


def code_version() -> dict[str, str | bool | None]:
    """ragloop's version, the commit of the code that runs and whether its tracked files differ from that
    commit, so a model can be traced to the code that trained it. ``git_commit`` and ``git_dirty`` are None
    where that cannot be known (installed from an index or a plain folder, or no git)."""
    package = Path(ragloop.__file__).resolve().parent
    commit, dirty = _checkout_revision(package)
    if commit is None:
        commit, dirty = _installed_revision(package)
    return {"ragloop": ragloop.__version__, "git_commit": commit, "git_dirty": dirty}


# The git binary rather than reading .git by hand: git alone knows every layout (worktrees, packed refs,
# reftable, SHA-256 object names) and can say whether the work tree differs from HEAD; dulwich would be
# another dependency for the same two answers. Without git, or outside a checkout, ask the install itself.
GIT_TIMEOUT_S = 5.0


def _git(folder: Path, *args: str) -> str | None:
    """git's output run in ``folder``, or None when git is missing, fails or hangs (a stale network mount)."""
    # The running package's repository, whatever a calling hook's GIT_DIR or GIT_WORK_TREE point at.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args],  # never takes index.lock from someone committing
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _checkout_revision(package: Path) -> tuple[str | None, bool | None]:
    """(HEAD, dirty) when the running package is tracked in a git checkout. A copy that merely sits inside
    one (a virtual environment in a project folder) is not that repository's code: (None, None)."""
    if _git(package, "ls-files", "--error-unmatch", "--", "__init__.py") is None:
        return None, None
    commit = _git(package, "rev-parse", "--verify", "HEAD")
    # Tracked files only, as `git describe --dirty` counts: an untracked note does not change the code.
    status = _git(package, "status", "--porcelain", "--untracked-files=no")
    return commit, None if commit is None or status is None else bool(status)


def _installed_revision(package: Path) -> tuple[str | None, bool | None]:
    """The commit pip recorded for an install from a VCS URL (PEP 610 ``direct_url.json``); pip built it
    from a clean checkout of that commit. Only when that distribution holds the running files."""
    try:
        dist = importlib.metadata.distribution("ragloop")
        if Path(str(dist.locate_file("ragloop/__init__.py"))).resolve() != package / "__init__.py":
            return None, None
        direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
        commit = (direct_url.get("vcs_info") or {}).get("commit_id")
    except (importlib.metadata.PackageNotFoundError, OSError, ValueError, AttributeError):
        return None, None
    return (commit, False) if isinstance(commit, str) and commit else (None, None)


def adapter_files(adapter_dir: Path) -> dict[str, str]:
    """sha256 of each file of an adapter folder: its identity, and what a later integrity check compares."""
    return {
        f.name: file_sha256(f)
        for f in sorted(adapter_dir.iterdir())
        if f.is_file() and f.name != CARD and not f.name.startswith(".")
    }


def adapter_digest(files: dict[str, str]) -> str:
    """One hash of an adapter's files (``adapter_files``): a version's ``adapter_sha256``."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def registered_as(db: SessionOrUrl, adapter_dir: Path) -> str | None:
    """The version already holding exactly this adapter, if any (registering twice is then a no-op)."""
    digest = adapter_digest(adapter_files(adapter_dir))
    with session_of(db) as session:
        for mv in session.scalars(select(ModelVersion)):
            if (mv.meta or {}).get("adapter_sha256") == digest:
                return mv.id
        return None


def _as_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return dict(config)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _version_id(session: Session, kind: str, name: str | None, digest: str, when: datetime) -> str:
    """``<name>-vN`` when the person named the model, else ``<kind>-<yyyymmdd-hhmm>-<hash>``: sortable by
    time and tied to the adapter's content."""
    if name:
        if not NAME.match(name):
            raise RagloopError(
                f"Model name {name!r} must be letters, digits, '.', '_' or '-' (at most 81 characters)."
            )
        taken = set(session.scalars(select(ModelVersion.id).where(ModelVersion.id.like(f"{name}-v%"))))
        n = 1
        while f"{name}-v{n}" in taken:
            n += 1
        return f"{name}-v{n}"
    candidate = f"{kind}-{when:%Y%m%d-%H%M}-{digest[:8]}"
    n = 2
    unique = candidate
    while session.get(ModelVersion, unique) is not None:
        unique = f"{candidate}-{n}"
        n += 1
    return unique


def register_model(
    settings: Settings,
    job_or_result: Job | Any,
    *,
    result: Any = None,
    kind: str | None = None,
    dataset_id: str | None = None,
    train_config: Any = None,
    base: str | None = None,
    parent_id: str | None = None,
    name: str | None = None,
    session: Session | None = None,
) -> ModelVersion:
    """Record a trained adapter as a new model version (not promoted: ``promote`` decides what is served).

    ``job_or_result`` is a finished training Job (its config supplies kind, dataset, base, parent, name and
    hyperparameters; pass the trainer's ``result`` too, or it is read from ``job.result``) or a bare
    ``TrainResult`` with those given as keywords. Pass ``session`` to register in the caller's
    transaction: the job worker marks the job succeeded in the same commit, so a crash never leaves a
    version without its job or a succeeded job without its version."""
    job = job_or_result if isinstance(job_or_result, Job) else None
    if job is not None:
        cfg = job.config or {}
        kind = kind or job.kind
        dataset_id = dataset_id or cfg.get("dataset")
        train_config = train_config if train_config is not None else cfg.get("train")
        base = base or cfg.get("base")
        parent_id = parent_id or cfg.get("from")
        name = name or cfg.get("name")
        if result is None:
            result = job.result
    else:
        result = job_or_result if result is None else result
    if result is None:
        raise RagloopError("Nothing to register: the job has no training result.")

    adapter_dir = (
        result.get("adapter_dir") if isinstance(result, dict) else getattr(result, "adapter_dir", None)
    )
    adapter_src = Path(str(adapter_dir or ""))
    if not (adapter_src / "adapter_config.json").is_file():
        raise RagloopError(f"No adapter to register at {adapter_src} (adapter_config.json is missing).")
    kind = kind or "sft"
    base_name = base or settings.generator.model
    base_dir, base_hash = resolve_model(base_name, settings.model_cache_dir)
    if job is not None and job.config.get("base_hash") not in (None, base_hash):
        raise RagloopError(
            f"The base model {base_name!r} changed while the job ran (hash {job.config['base_hash'][:12]} → "
            f"{base_hash[:12]}); its adapter would be served on other weights. Retrain."
        )

    if session is None:
        with session_scope(settings.db_url) as s:
            return _register(settings, s, job, result, kind, dataset_id, train_config, base_name, base_hash,
                             base_dir, adapter_src, parent_id, name)  # fmt: skip
    return _register(settings, session, job, result, kind, dataset_id, train_config, base_name, base_hash,
                     base_dir, adapter_src, parent_id, name)  # fmt: skip


def _register(
    settings: Settings,
    s: Session,
    job: Job | None,
    result: Any,
    kind: str,
    dataset_id: str | None,
    train_config: Any,
    base_name: str,
    base_hash: str,
    base_dir: Path,
    adapter_src: Path,
    parent_id: str | None,
    name: str | None,
) -> ModelVersion:
    def field(key: str, default: Any = None) -> Any:
        return result.get(key, default) if isinstance(result, dict) else getattr(result, key, default)

    dv = s.get(DatasetVersion, dataset_id) if dataset_id else None
    if dataset_id and dv is None:
        raise NotFound(f"No dataset version {dataset_id!r}; see `ragloop dataset list`.")
    parent = s.get(ModelVersion, parent_id) if parent_id else None
    if parent_id and parent is None:
        raise NotFound(f"Parent model version {parent_id!r} does not exist; see `ragloop models list`.")
    # Scalar metrics (losses, tokens/s, counts) are what diff and show compare; the trainer's copy of the
    # config is already recorded as the hyperparameters.
    raw_metrics = dict(field("metrics") or {})
    metrics = {k: v for k, v in raw_metrics.items() if v is None or isinstance(v, int | float | str | bool)}
    files = adapter_files(adapter_src)
    digest = adapter_digest(files)
    now = utcnow()
    version_id = _version_id(s, kind, name, digest, now)
    meta = _jsonable(
        {
            "kind": kind,
            "name": name,
            "job_id": job.id if job is not None else None,
            "base": {"model": base_name, "hash": base_hash, "dir": str(base_dir)},
            "dataset": None
            if dv is None
            else {
                "id": dv.id,
                "name": dv.name,
                "content_hash": dv.content_hash,
                "source": dv.source,
                "seed": dv.seed,
                "examples": (dv.counts or {}).get("examples"),
                "command": dv.command,
            },
            "curation_policy": dv.policy if dv is not None else None,
            "kb_version": dv.kb_version if dv is not None else None,
            "hyperparameters": _as_dict(train_config),
            "code": code_version(),
            "metrics": metrics,
            "training": {
                "steps": field("steps"),
                "tokens": field("tokens"),
                "resumed_from": field("resumed_from"),
                # which examples the trainer had to cut or leave out (ids), part of what the model saw
                "truncated": raw_metrics.get("truncated"),
                "dropped": raw_metrics.get("dropped"),
            },
            "adapter_files": files,
            "adapter_sha256": digest,
        }
    )
    # Erasure marks models by their dataset; a DPO child of an SFT model trained on erased data inherits
    # the mark here, since its weights descend from that data too.
    erased_note = None
    if dv is not None and dv.contains_erased:
        erased_note = dv.erased_note
    elif parent is not None and parent.contains_erased:
        erased_note = f"Parent {parent.id} was trained on erased data: {parent.erased_note or ''}".strip()
    target = _copy_adapter(adapter_src, models_dir(settings) / version_id, meta | {"id": version_id})
    try:
        mv = ModelVersion(
            id=version_id,
            base_model=base_name,
            base_hash=base_hash,
            adapter_path=str(target),
            parent_id=parent_id,
            dataset_id=dataset_id,
            created_at=now,
            meta=meta,
            contains_erased=erased_note is not None,
            erased_note=erased_note,
        )
        s.add(mv)
        note = f"job {job.id}" if job is not None else None
        s.add(RegistryEvent(action="register", model_version_id=version_id, note=note))
        s.flush()
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return mv


def _copy_adapter(src: Path, target: Path, card: dict[str, Any]) -> Path:
    """Copy atomically (temp folder + rename): a crash leaves no half adapter where a version points."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for f in src.iterdir():
            if f.is_file() and f.name != CARD:
                shutil.copy2(f, tmp / f.name)
        (tmp / CARD).write_text(json.dumps(card, indent=2, ensure_ascii=False))
        if target.exists():  # left by a registration whose commit failed: nothing points at it
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# Reading -----------------------------------------------------------------------------------------------


def get_model(db: SessionOrUrl, name: str) -> ModelVersion:
    """A version by id or alias."""
    return resolve(db, name)[0]


def model_dict(mv: ModelVersion, aliases: list[str] | None = None) -> dict[str, Any]:
    """A version as JSON-ready data: what ``ragloop models show`` prints and ``GET /api/models/{id}`` returns."""
    data = {c.name: getattr(mv, c.name) for c in ModelVersion.__table__.columns}
    data["created_at"] = mv.created_at.isoformat() + "Z"
    data["aliases"] = sorted(aliases or [])
    return data


def model_record(db: SessionOrUrl, name: str) -> dict[str, Any]:
    """A version (by id or alias) with its aliases, as ``model_dict``: what ``ragloop models show --json``
    prints and ``GET /api/models/{id}`` returns."""
    with session_of(db) as session:
        mv = get_model(session, name)
        return model_dict(mv, aliases_of(session, mv.id))


def aliases_of(db: SessionOrUrl, version_id: str) -> list[str]:
    with session_of(db) as session:
        return sorted(
            session.scalars(select(ModelAlias.name).where(ModelAlias.model_version_id == version_id))
        )


def registry_events(db: SessionOrUrl, version_id: str | None = None, limit: int = 50) -> list[RegistryEvent]:
    """Alias changes (and registrations), newest first; for one version when given."""
    with session_of(db) as session:
        q = select(RegistryEvent).order_by(RegistryEvent.id.desc()).limit(limit)
        if version_id:
            q = q.where(
                (RegistryEvent.model_version_id == version_id)
                | (RegistryEvent.previous_version_id == version_id)
            )
        return list(session.scalars(q))


def diff_models(a: ModelVersion, b: ModelVersion) -> dict[str, Any]:
    """What differs between two versions: base, lineage, dataset, hyperparameters, and every metric with
    its change (b - a). Only differing entries are listed, except metrics, which are all shown."""
    ma, mb = a.meta or {}, b.meta or {}

    def changed(x: dict[str, Any], y: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {k: {"a": x.get(k), "b": y.get(k)} for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)}

    metrics: dict[str, dict[str, Any]] = {}
    xa, xb = ma.get("metrics") or {}, mb.get("metrics") or {}
    for key in sorted(set(xa) | set(xb)):
        va, vb = xa.get(key), xb.get(key)
        entry: dict[str, Any] = {"a": va, "b": vb}
        if isinstance(va, int | float) and isinstance(vb, int | float) and not isinstance(va, bool):
            entry["delta"] = vb - va
        metrics[key] = entry
    da, db = ma.get("dataset") or {}, mb.get("dataset") or {}
    dataset = changed(
        {"id": a.dataset_id, "content_hash": da.get("content_hash"), "kb_version": ma.get("kb_version")},
        {"id": b.dataset_id, "content_hash": db.get("content_hash"), "kb_version": mb.get("kb_version")},
    )
    pa, pb = ma.get("curation_policy") or {}, mb.get("curation_policy") or {}
    policy = changed(pa, pb) if isinstance(pa, dict) and isinstance(pb, dict) else {}
    return {
        "a": a.id,
        "b": b.id,
        "base": changed(
            {"model": a.base_model, "hash": a.base_hash}, {"model": b.base_model, "hash": b.base_hash}
        ),
        "lineage": changed(
            {"kind": ma.get("kind"), "parent": a.parent_id}, {"kind": mb.get("kind"), "parent": b.parent_id}
        ),
        "dataset": dataset,
        "curation_policy": policy,
        "hyperparameters": changed(ma.get("hyperparameters") or {}, mb.get("hyperparameters") or {}),
        "metrics": metrics,
        "code": changed(ma.get("code") or {}, mb.get("code") or {}),
    }


# Export ------------------------------------------------------------------------------------------------


def export_model(settings: Settings, version: str, out: Path, merged: bool = False) -> Path:
    """Write a version where another tool can use it: the LoRA adapter folder (PEFT format), or with
    ``merged`` a full safetensors model with the adapter folded in plus the tokenizer, which plain
    ``transformers`` (or vLLM, or a GGUF converter) loads without PEFT or ragloop."""
    with session_scope(settings.db_url) as s:
        mv = get_model(s, version)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RagloopError(f"{out} exists and is not empty; choose a new --out folder.")
    card = {"id": mv.id, **(mv.meta or {}), "base_model": mv.base_model, "base_hash": mv.base_hash}
    card["parent_id"] = mv.parent_id
    card["exported"] = "merged" if merged else "adapter"
    if not merged:
        if not mv.adapter_path:
            raise RagloopError(
                f"{mv.id} is a base model without an adapter; use --merged to export its full weights."
            )
        _check_adapter(mv)
        return _copy_adapter(Path(mv.adapter_path), out, card)

    base_dir, base_hash = resolve_model(mv.base_model, settings.model_cache_dir)
    if base_hash != mv.base_hash:
        raise ConfigError(
            f"The base model {mv.base_model!r} on this machine (hash {base_hash[:12]}) is not the one {mv.id} "
            f"was trained on ({mv.base_hash[:12]}); put the original weights back to export it merged."
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        if mv.adapter_path:
            _check_adapter(mv)
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, mv.adapter_path).merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(tmp)
        (tmp / CARD).write_text(json.dumps(card, indent=2, ensure_ascii=False, default=str))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_adapter(mv: ModelVersion) -> None:
    path = Path(mv.adapter_path or "")
    if not (path / "adapter_config.json").is_file():
        raise NotFound(f"The adapter of {mv.id} is missing at {path}; restore it from a backup.")
    expected = (mv.meta or {}).get("adapter_files")
    if expected and adapter_files(path) != expected:
        raise RagloopError(f"The adapter files of {mv.id} at {path} changed since it was registered.")
