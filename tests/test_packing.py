"""Padding-free packing: a packed row must give each example exactly the loss (and gradient) it has alone,
and the batch plan must be deterministic, complete and within its token budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ragloop.training.packing import (
    collate,
    pack,
    plan_epoch,
    plan_training,
    token_nll,
    use_packed_attention,
)


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir: Path) -> torch.nn.Module:
    """The tiny random Llama with a non-zero LoRA adapter (so adapter gradients are meaningful)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    return model


def _examples(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(5, 60, (1,), generator=g))
        ids = torch.randint(3, 300, (length,), generator=g).tolist()
        answer = int(torch.randint(1, length - 1, (1,), generator=g))
        out.append({"id": f"ex{i}", "input_ids": ids, "labels": [-100] * (length - answer) + ids[-answer:]})
    return out


def _reference_loss(model: torch.nn.Module, ex: dict) -> torch.Tensor:
    """Summed loss of one example through transformers' own unpacked forward (sdpa, full logits)."""
    ids = torch.tensor([ex["input_ids"]])
    labels = torch.tensor([ex["labels"]])
    logits = model(input_ids=ids).logits[0, :-1]
    return torch.nn.functional.cross_entropy(logits, labels[0, 1:], ignore_index=-100, reduction="sum")


def test_packed_loss_and_gradients_equal_each_example_alone(lora_model: torch.nn.Module) -> None:
    model = lora_model
    examples = _examples(5)
    model.base_model.model.set_attn_implementation("sdpa")
    alone = [_reference_loss(model, ex).item() for ex in examples]

    use_packed_attention(model)
    nll, owner = token_nll(model, collate(examples))
    packed = [nll[owner == i].sum().item() for i in range(len(examples))]
    assert len(nll) == sum(sum(1 for x in ex["labels"] if x != -100) for ex in examples)
    assert packed == pytest.approx(alone, rel=1e-5, abs=1e-5)

    # The same for the adapter's gradients: the packed row's total equals the sum of the separate ones.
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    token_nll(model, collate(examples))[0].sum().backward()
    packed_grads = [p.grad.clone() for p in params]
    model.zero_grad()
    for ex in examples:
        token_nll(model, collate([ex]))[0].sum().backward()
    for a, b in zip(packed_grads, (p.grad for p in params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    model.zero_grad()


def test_packed_attention_is_plain_sdpa_without_boundaries(lora_model: torch.nn.Module) -> None:
    """A model left on the packed implementation still works for ordinary (padded) forwards."""
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 7, 8, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    use_packed_attention(lora_model)
    packed_impl = lora_model(input_ids=ids, attention_mask=mask).logits
    lora_model.base_model.model.set_attn_implementation("sdpa")
    sdpa = lora_model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(packed_impl, sdpa)


def test_plan_is_deterministic_complete_and_within_budget() -> None:
    lengths = [int(x) for x in torch.randint(50, 1000, (300,), generator=torch.Generator().manual_seed(1))]
    kwargs = dict(batch_tokens=2048, seed=3, gradient_accumulation_steps=2, buffer_size=64)
    plan = plan_epoch(lengths, epoch=0, **kwargs)
    assert plan == plan_epoch(lengths, epoch=0, **kwargs)
    assert plan != plan_epoch(lengths, epoch=1, **kwargs)
    seen = sorted(i for step in plan for mb in step for i in mb)
    assert seen == list(range(len(lengths)))  # every example exactly once per epoch
    micro = [mb for step in plan for mb in step]
    assert all(sum(lengths[i] for i in mb) <= 2048 for mb in micro)
    fill = sum(lengths) / (len(micro) * 2048)
    assert fill > 0.9, f"micro-batches only {fill:.0%} full"

    by_examples = plan_epoch(lengths, epoch=0, batch_tokens=2048, seed=3, batch_size=4)
    assert all(sum(len(mb) for mb in step) == 4 for step in by_examples[:-1])

    total = plan_training(lengths, epochs=1.5, max_steps=None, **kwargs)
    assert len(total) == len(plan) + round(0.5 * len(plan_epoch(lengths, epoch=1, **kwargs)))
    assert len(plan_training(lengths, epochs=3, max_steps=7, **kwargs)) == 7


def test_pack_first_fit_decreasing() -> None:
    assert pack([0, 1, 2, 3], [6, 5, 4, 1], budget=10) == [[0, 2], [1, 3]]
