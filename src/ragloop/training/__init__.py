"""Stage 7 of the loop: dataset versions in, LoRA adapters out.

``config`` holds every training knob, ``preflight`` tokenizes and checks the loss mask, ``packing`` builds
padding-free batches with per-example attention, ``sft`` and ``dpo`` train, ``run`` is the command-line
entry point of one run; ``jobs`` / ``worker`` run trainings in the background and ``lineage`` records
their adapters as model versions. Names are imported lazily: the CLI imports this package without paying
for torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "TrainConfig": "ragloop.training.config",
    "load_train_config": "ragloop.training.config",
    "PreflightReport": "ragloop.training.preflight",
    "preflight": "ragloop.training.preflight",
    "TrainResult": "ragloop.training.sft",
    "train_sft": "ragloop.training.sft",
    "train_dpo": "ragloop.training.dpo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ragloop.training' has no attribute {name!r}")
