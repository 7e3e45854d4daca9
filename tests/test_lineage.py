"""The model registry's training side: a registered version records its whole lineage and owns a copy of its
adapter; export gives an adapter folder or a merged model plain transformers loads (same greedy output as
adapter-on-base); diff shows what changed; the CLI doors (models show/diff/promote/rollback/export).

The helpers here (a dataset version in the shape ``datasets.build`` writes, a random LoRA adapter, a
registered version) are shared with test_jobs.py and test_hotswap.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from ragloop.cli import app
from ragloop.config import Settings
from ragloop.errors import NotFound, RagloopError
from ragloop.generation.models import resolve_model
from ragloop.store.db import session_scope
from ragloop.store.models import DatasetVersion, ModelAlias, ModelVersion, RegistryEvent
from ragloop.training.lineage import diff_models, export_model, register_model

SYSTEM = "Answer only from the numbered sources and cite them like [1]."
FACTS = [
    ("How many vacation days do employees get?", "Employees receive twenty-five days of paid vacation [1]."),
    ("When do unused vacation days expire?", "Unused vacation days expire at the end of March [1]."),
    ("How often must passwords be rotated?", "Passwords must be rotated every ninety days [1]."),
    ("What must laptops use?", "Laptops must use full disk encryption [1]."),
    ("When must a lost badge be reported?", "A lost badge is reported the same day [1]."),
    ("How high can fines reach?", "Fines can reach 20 000 000 EUR or 4 % of turnover [1]."),
]


# Helpers -----------------------------------------------------------------------------------------------


def example(i: int, question: str, answer: str) -> dict[str, Any]:
    """One training example as ``datasets.build`` writes it (``RaftExample`` as a dict)."""
    passage = {"id": f"p{i}", "title": "Handbook", "text": answer.replace(" [1]", ""), "source_path": "h.md",
               "section": ""}  # fmt: skip
    user = f"Sources:\n[1] {passage['text']}\n\nQuestion: {question}"
    return {
        "id": f"ex-{i}",
        "question": question,
        "passages": [passage],
        "oracle_ids": [passage["id"]],
        "has_oracle": True,
        "answer": answer.replace(" [1]", ""),
        "target": "plain",
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        "completion": answer,
        "source": "test",
        "group": f"g{i}",
        "meta": {"rejected": "The sources do not say."},
    }


def make_dataset(
    settings: Settings, n_train: int = 6, *, name: str = "tiny", erased: bool = False, seed: int = 0
) -> str:
    """A dataset version (row + folder of train/val/test JSONL), as ``ragloop dataset build`` leaves it."""
    rows = [example(i, *FACTS[i % len(FACTS)]) for i in range(n_train + 2)]
    splits = {"train": rows[:n_train], "val": rows[n_train:], "test": []}
    digest = hashlib.sha256(json.dumps([splits, name, seed], sort_keys=True).encode()).hexdigest()
    dataset_id = f"ds-{digest[:12]}"
    folder = settings.data_dir / "datasets" / dataset_id
    folder.mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    with session_scope(settings.db_url) as s:
        s.add(DatasetVersion(
            id=dataset_id, name=name, content_hash=digest, source="test", kb_version=3, seed=seed, path=str(folder),
            policy={"name": "test-policy", "version": 2, "raft": {"p_oracle": 0.8}},
            counts={"examples": {k: len(v) for k, v in splits.items()}}, command="ragloop dataset build --name tiny",
            contains_erased=erased, erased_note="erased in a test" if erased else None,
        ))  # fmt: skip
    return dataset_id


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (not zero) B matrices, so the model's greedy output really changes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(
        r=8,
        lora_alpha=64,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, config).save_pretrained(str(out))
    return out


@dataclass
class FakeResult:
    """What ``train_sft``/``train_dpo`` return (``TrainResult``'s fields)."""

    adapter_dir: Path
    metrics: dict = field(default_factory=dict)
    steps: int = 10
    tokens: int = 1000
    resumed_from: Path | None = None


def register_adapter(settings: Settings, tmp: Path, seed: int, **kwargs: Any) -> ModelVersion:
    """Register a random adapter on the home's base model as if a training job had produced it."""
    base_dir, _ = resolve_model(settings.generator.model, settings.model_cache_dir)
    adapter = make_adapter(base_dir, tmp / f"adapter-{seed}", seed)
    metrics = kwargs.pop("metrics", {"train_loss": 2.0 + seed, "eval_loss": 2.5 + seed})
    hyper = kwargs.pop("train_config", {"learning_rate": 1e-4 * seed, "lora_r": 8})
    return register_model(settings, FakeResult(adapter, metrics), train_config=hyper, **kwargs)


def greedy(
    model_dir_or_model: Any, tokenizer_dir: Path, messages: list[dict], max_new_tokens: int = 16
) -> list[int]:
    """Greedy token ids of a plain transformers (or PEFT) model for a chat."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = model_dir_or_model
    if isinstance(model, str | Path):
        model = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return out[0, ids["input_ids"].shape[1] :].tolist()


# Registration ------------------------------------------------------------------------------------------


def test_registered_version_records_its_lineage_and_owns_its_adapter(home: Settings, tmp_path: Path) -> None:
    dataset_id = make_dataset(home)
    mv = register_adapter(home, tmp_path, 1, dataset_id=dataset_id)

    assert re.fullmatch(r"sft-\d{8}-\d{4}-[0-9a-f]{8}", mv.id), mv.id
    _, base_hash = resolve_model(home.generator.model, home.model_cache_dir)
    assert mv.base_model == home.generator.model and mv.base_hash == base_hash
    assert mv.dataset_id == dataset_id and mv.parent_id is None
    # The adapter lives in the home, not where the trainer left it: cleaning the job folder breaks nothing.
    assert Path(mv.adapter_path) == home.data_dir / "models" / mv.id
    shutil.rmtree(tmp_path / "adapter-1")
    assert (Path(mv.adapter_path) / "adapter_config.json").is_file()

    meta = mv.meta
    with session_scope(home.db_url) as s:
        dv = s.get(DatasetVersion, dataset_id)
        assert meta["dataset"]["content_hash"] == dv.content_hash
    assert meta["curation_policy"]["name"] == "test-policy" and meta["kb_version"] == 3
    assert meta["hyperparameters"] == {"learning_rate": 1e-4, "lora_r": 8}
    assert meta["metrics"] == {"train_loss": 3.0, "eval_loss": 3.5}
    assert meta["code"]["ragloop"] and "git_commit" in meta["code"]
    assert meta["training"]["steps"] == 10 and meta["adapter_files"]
    card = json.loads((Path(mv.adapter_path) / "ragloop-model.json").read_text())
    assert card["id"] == mv.id and card["dataset"]["id"] == dataset_id

    with session_scope(home.db_url) as s:
        events = list(s.scalars(select(RegistryEvent).where(RegistryEvent.model_version_id == mv.id)))
        assert [e.action for e in events] == ["register"]
        assert s.get(ModelVersion, mv.id).meta == meta


def test_named_versions_count_up_and_children_inherit_erasure(home: Settings, tmp_path: Path) -> None:
    erased = make_dataset(home, name="old", erased=True)
    clean = make_dataset(home, name="new", seed=1)
    first = register_adapter(home, tmp_path, 1, dataset_id=erased, name="handbook")
    child = register_adapter(
        home, tmp_path, 2, dataset_id=clean, name="handbook", parent_id=first.id, kind="dpo"
    )
    assert (first.id, child.id) == ("handbook-v1", "handbook-v2")
    assert first.contains_erased and child.contains_erased  # DPO weights descend from the erased data
    assert child.parent_id == first.id and child.meta["kind"] == "dpo"

    with pytest.raises(NotFound):
        register_adapter(home, tmp_path, 3, dataset_id="ds-missing")
    with pytest.raises(NotFound):
        register_adapter(home, tmp_path, 4, parent_id="sft-missing")
    with pytest.raises(RagloopError, match="adapter_config.json"):
        register_model(home, FakeResult(tmp_path / "nothing-here"))
    with session_scope(home.db_url) as s:  # the failed registrations left nothing behind
        assert sorted(s.scalars(select(ModelVersion.id))) == ["handbook-v1", "handbook-v2"]
    assert sorted(p.name for p in (home.data_dir / "models").iterdir()) == ["handbook-v1", "handbook-v2"]


def test_diff_lists_what_changed(home: Settings, tmp_path: Path) -> None:
    a = register_adapter(home, tmp_path, 1, dataset_id=make_dataset(home))
    b = register_adapter(home, tmp_path, 2, dataset_id=make_dataset(home, seed=5), parent_id=a.id)
    diff = diff_models(a, b)
    assert diff["hyperparameters"] == {"learning_rate": {"a": 1e-4, "b": 2e-4}}
    assert diff["metrics"]["train_loss"] == {"a": 3.0, "b": 4.0, "delta": 1.0}
    assert set(diff["dataset"]) == {"id", "content_hash"}
    assert diff["lineage"] == {"parent": {"a": None, "b": a.id}}
    assert diff["base"] == {}


# Export ------------------------------------------------------------------------------------------------


def test_merged_export_loads_with_plain_transformers_and_answers_like_adapter_on_base(
    home: Settings, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    mv = register_adapter(home, tmp_path, 1)
    base_dir, _ = resolve_model(home.generator.model, home.model_cache_dir)
    messages = example(0, *FACTS[0])["prompt"]

    merged = export_model(home, mv.id, tmp_path / "merged", merged=True)
    assert not (merged / "adapter_config.json").exists() and any(merged.glob("*.safetensors"))
    plain = greedy(merged, merged, messages)  # tokenizer and weights from the export alone

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    on_base = greedy(PeftModel.from_pretrained(base, mv.adapter_path), base_dir, messages)
    assert plain == on_base
    assert plain != greedy(base_dir, base_dir, messages)  # the adapter really changes the answer

    adapter = export_model(home, mv.id, tmp_path / "adapter")
    assert (adapter / "adapter_config.json").is_file()
    assert json.loads((adapter / "ragloop-model.json").read_text())["id"] == mv.id
    with pytest.raises(RagloopError, match="not empty"):
        export_model(home, mv.id, tmp_path / "adapter")


# CLI ---------------------------------------------------------------------------------------------------


def run_cli(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(app, [*args, "--home", str(settings.home)])


def test_models_cli_show_diff_promote_rollback_export(home: Settings, tmp_path: Path) -> None:
    a = register_adapter(home, tmp_path, 1, dataset_id=make_dataset(home))
    b = register_adapter(home, tmp_path, 2, name="second")

    shown = run_cli(home, "models", "show", a.id, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["meta"]["dataset"]["id"] == a.dataset_id
    assert run_cli(home, "models", "show", a.id).exit_code == 0

    diff = run_cli(home, "models", "diff", a.id, b.id, "--json")
    assert diff.exit_code == 0, diff.output
    assert json.loads(diff.output)["metrics"]["eval_loss"]["delta"] == 1.0
    assert run_cli(home, "models", "diff", a.id, b.id).exit_code == 0

    for version in (a.id, b.id):
        result = run_cli(home, "models", "promote", version)
        assert result.exit_code == 0, result.output
    result = run_cli(home, "models", "rollback")
    assert result.exit_code == 0 and f"{b.id} → {a.id}" in result.output
    with session_scope(home.db_url) as s:
        assert s.get(ModelAlias, "production").model_version_id == a.id
        events = [(e.action, e.previous_version_id, e.model_version_id)
                  for e in s.scalars(select(RegistryEvent).where(RegistryEvent.alias == "production")
                                     .order_by(RegistryEvent.id))]  # fmt: skip
    assert events == [("promote", None, a.id), ("promote", a.id, b.id), ("rollback", b.id, a.id)]

    missing = run_cli(home, "models", "promote", "sft-nope")
    assert missing.exit_code == 1 and "does not exist" in missing.output
    exported = run_cli(home, "models", "export", "production", "--out", str(tmp_path / "exp"))
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "exp" / "adapter_config.json").is_file()
