"""Padding-free batches: several examples in one row, each attending only to itself.

RAFT prompts vary widely in length (a few passages or many), so padding a batch to its longest example
wastes a large share of the compute on CPU. Instead the examples of a micro-batch are concatenated into one
row with ``position_ids`` restarting at 0 per example, and attention runs per example:

- ``ragloop_packed`` is an attention function registered with transformers' ``AttentionInterface``. It
  reads the example boundaries (``cu_seq_lens_q``, built by TRL's padding-free collator) and runs causal
  SDPA on each example separately: on CPU there is no flash-attention varlen kernel, and the alternative
  that transformers offers (packed sequences detected from ``position_ids``, a block-diagonal 4D mask)
  computes attention over the whole row, quadratic in its length, and is silently skipped whenever a KV
  cache is passed (the model's default ``use_cache=True`` in training mode attends across examples).
- The LM head runs only on the positions that are trained (the answer tokens): with a 49k vocabulary,
  projecting every prompt token is a large share of the FLOPs and memory for nothing.

Batches are planned to a token budget: examples are shuffled with the seed, sorted by length within a
buffer and packed first-fit-decreasing, so a micro-batch is nearly full and the plan is deterministic,
which is what makes resuming at step N reproduce the same batches.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "ragloop_packed"


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention inside each packed example (varlen attention, one SDPA call per example).

    Without ``cu_seq_lens_q`` (generation, a padded batch) it is plain SDPA, so a model left with this
    implementation still works."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    lengths = cu_seq_lens_q.diff().tolist()
    gqa = query.shape[1] != key.shape[1]
    p = dropout if module.training else 0.0
    # split, not slicing: its backward concatenates the gradients instead of zero-filling a full-size
    # tensor per example and summing them.
    splits = (t.split(lengths, dim=2) for t in (query, key, value))
    parts = [
        F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=scaling, enable_gqa=gqa)
        for q, k, v in zip(*splits, strict=True)
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def _packed_mask(
    *args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any
) -> torch.Tensor | None:
    """No 4D mask for packed rows (the attention uses the boundaries); SDPA's mask for padded batches."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(ATTENTION, packed_attention)
AttentionMaskInterface.register(ATTENTION, _packed_mask)


def use_packed_attention(model: torch.nn.Module) -> None:
    """Switch a (PEFT-wrapped) causal LM to ``ragloop_packed`` attention."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.set_attn_implementation(ATTENTION)


# Planning ----------------------------------------------------------------------------------------------


def pack(indices: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """First-fit decreasing: bins of example indices whose lengths sum to at most ``budget``."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
        slot = next((b for b, r in enumerate(room) if r >= lengths[i]), None)
        if slot is None:
            bins.append([i])
            room.append(budget - lengths[i])
        else:
            bins[slot].append(i)
            room[slot] -= lengths[i]
    return bins


def plan_epoch(
    lengths: list[int],
    *,
    batch_tokens: int,
    seed: int,
    epoch: int,
    batch_size: int | None = None,
    gradient_accumulation_steps: int = 1,
    buffer_size: int = 256,
) -> list[list[list[int]]]:
    """One epoch as optimizer steps, each a list of micro-batches (lists of example indices).

    A pure function of its arguments: the same seed and epoch give the same plan in a resumed process."""
    rng = random.Random(f"ragloop:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if batch_size:
        return [
            pack(order[i : i + batch_size], lengths, batch_tokens) for i in range(0, len(order), batch_size)
        ]
    micro: list[list[int]] = []
    for i in range(0, len(order), buffer_size):
        micro += pack(order[i : i + buffer_size], lengths, batch_tokens)
    rng.shuffle(micro)  # so that the loss is not correlated with example length along the epoch
    gas = gradient_accumulation_steps
    return [micro[i : i + gas] for i in range(0, len(micro), gas)]


def plan_training(
    lengths: list[int],
    *,
    epochs: float,
    max_steps: int | None,
    batch_tokens: int,
    seed: int,
    batch_size: int | None = None,
    gradient_accumulation_steps: int = 1,
    buffer_size: int = 256,
) -> list[list[list[int]]]:
    """Every optimizer step of the run, epochs concatenated (a fractional last epoch is cut short)."""
    steps: list[list[list[int]]] = []
    for epoch in range(math.ceil(epochs)):
        plan = plan_epoch(lengths, batch_tokens=batch_tokens, seed=seed, epoch=epoch, batch_size=batch_size,
                          gradient_accumulation_steps=gradient_accumulation_steps, buffer_size=buffer_size)  # fmt: skip
        share = min(1.0, epochs - epoch)
        steps += plan[: max(1, round(share * len(plan)))]
    return steps[:max_steps] if max_steps else steps


# Batches and loss --------------------------------------------------------------------------------------

_collator = None


def collate(features: list[dict], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """One packed row from tokenized examples (TRL's padding-free collator: ``position_ids`` restart per
    example, ``cu_seq_lens_*`` mark the boundaries, the first label of each example is masked so no
    example predicts from the one before)."""
    global _collator
    if _collator is None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        _collator = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)
    batch = _collator([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
    batch.pop("seq_idx", None)  # only for linear-attention layers
    return batch


def _parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, Any]:
    """(backbone, LM head, text config) of a causal LM, PEFT-wrapped or not (LoRA layers live inside)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(lm, lm.base_model_prefix), lm.get_output_embeddings(), lm.config.get_text_config()


def token_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative log-likelihood of every trained token of a packed row, and the example index of each.

    Runs the backbone on the whole row and the LM head only on the positions whose next token is trained."""
    backbone, head, cfg = _parts(model)
    device = head.weight.device
    inputs = {
        k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != "labels"
    }
    hidden = backbone(**inputs, use_cache=False).last_hidden_state[0, :-1]
    targets = batch["labels"][0, 1:].to(device)
    keep = targets != -100
    logits = head(hidden[keep]).float()
    if getattr(cfg, "final_logit_softcapping", None):
        cap = cfg.final_logit_softcapping
        logits = torch.tanh(logits / cap) * cap
    nll = F.cross_entropy(logits, targets[keep], reduction="none")
    example = (batch["position_ids"][0] == 0).cumsum(0)[1:].to(device) - 1
    return nll, example[keep]
