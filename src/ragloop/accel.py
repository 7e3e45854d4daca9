"""Which torch device ragloop computes on: the GPU when there is one, the CPU otherwise.

Training and in-process generation both ask here, so one setting moves them together. ``auto`` (the
default) takes ``cuda:LOCAL_RANK`` when torch sees a CUDA device (``LOCAL_RANK`` is 0 outside a launcher),
because a team that owns a GPU expects ``ragloop train sft`` to use it without being told. ``cpu`` keeps
everything on the CPU (so does Accelerate's ``ACCELERATE_USE_CPU``, which ``accelerate launch --cpu`` sets);
``cuda`` / ``cuda:N`` insist on a GPU and fail loudly when there is none rather than training for hours on
the CPU by surprise. Weights stay fp32 on either: a 135M model is small enough that bf16 buys little on a
GPU, and fp32 makes a GPU-trained adapter the one the CPU would have trained, up to float summation order.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from ragloop.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def valid_device(spec: str | None) -> bool:
    """Whether a setting names a device at all (checked without torch, where a config is read)."""
    return _DEVICE.fullmatch((spec or "auto").strip().lower()) is not None


def resolve_device(spec: str | None = "auto") -> torch.device:
    """The ``torch.device`` for a setting (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``); ConfigError if unusable."""
    import torch

    value = (spec or "auto").strip().lower()
    if not valid_device(value):
        raise ConfigError(f"Device {spec!r} is not a device: use {DEVICES}.")
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        value = "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if value == "cpu":
        return torch.device("cpu")
    if value == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if not torch.cuda.is_available():  # cuda or cuda:N
        raise ConfigError(f"Device {spec!r} was asked for, but torch sees no CUDA GPU here; use auto or cpu.")
    device = torch.device(value)
    if device.index is None:
        device = torch.device("cuda", local_rank)
    if device.index >= torch.cuda.device_count():
        raise ConfigError(f"Device {spec!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s).")
    return device
