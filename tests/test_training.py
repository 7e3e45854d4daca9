"""Training stage: preflight, SFT, resume after SIGKILL, DPO reference, bad input, accelerate launch.

Everything runs on the tiny random Llama (``ragloop.testing``) with tiny RAFT-shaped datasets registered as
real dataset versions, so ``train_sft`` / ``train_dpo`` run exactly as a job runs them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ragloop.config import Settings, init_home, load_settings
from ragloop.errors import NotFound, RagloopError
from ragloop.generation.prompts import get_template
from ragloop.store.db import session_scope
from ragloop.store.models import DatasetVersion
from ragloop.testing import build_tiny_model
from ragloop.training.config import TrainConfig, load_train_config
from ragloop.training.preflight import preflight
from ragloop.training.sft import run_fingerprint, train_sft

FACTS = [
    ("What do employees receive?", "Employees receive paid vacation", "twenty-five days of paid vacation"),
    (
        "How often are passwords rotated?",
        "Passwords are rotated every ninety days",
        "rotated every ninety days",
    ),
    ("What must laptops use?", "Laptops must use disk encryption", "full disk encryption"),
    ("Where is a lost badge reported?", "A lost badge goes to the security desk", "the security desk"),
    ("How high can fines be?", "Fines can reach 4 % of turnover", "4 % of the total worldwide turnover"),
    ("When do vacation days expire?", "Unused days expire in March", "the end of March"),
]
FILLER = "The controller shall erase personal data without undue delay. "


def make_example(
    i: int, question: str, gold: str, answer: str, n_distractors: int = 2, filler: int = 1
) -> dict:
    """One example in the shape ``load_examples`` returns (a RaftExample as a dict)."""
    passages = [
        {"id": f"g{i}", "title": f"Policy {i}", "text": f"{gold}.", "source_path": "policy.md", "section": ""}
    ]
    passages += [
        {
            "id": f"d{i}-{k}",
            "title": f"Other {k}",
            "text": FILLER * filler,
            "source_path": f"other{k}.md",
            "section": "",
        }
        for k in range(n_distractors)
    ]
    prompt = get_template("cited-answer").render(
        [{"role": "user", "content": question}], [SimpleNamespace(**p) for p in passages]
    )
    return {
        "id": f"ex{i}", "question": question, "passages": passages, "oracle_ids": [f"g{i}"], "has_oracle": True,
        "answer": answer, "target": "plain", "prompt": prompt, "completion": f"{answer.capitalize()} [1].",
        "source": "test", "group": f"g{i}", "meta": {"rejected": f"It is not known [{n_distractors + 1}]."},
    }  # fmt: skip


def dataset(n_train: int = 12, n_val: int = 3) -> dict[str, list[dict]]:
    rows = [make_example(i, *FACTS[i % len(FACTS)], n_distractors=1 + i % 3) for i in range(n_train + n_val)]
    return {"train": rows[:n_train], "val": rows[n_train:], "test": []}


@pytest.fixture(scope="module")
def trainable_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama with embeddings scaled up. Its tied LM head is frozen under LoRA, and at the
    random init's std of 0.02 every logit stays near zero whatever the hidden state, so the loss could
    hardly move; scaled, the adapters have something to learn within a few dozen steps."""
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tmp_path_factory.mktemp("trainable-model"))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(8)
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def home(tmp_path: Path, trainable_model_dir: Path) -> Settings:
    """A fresh project home whose generator is ``trainable_model_dir``."""
    root = init_home(tmp_path / "home")
    (root / "ragloop.toml").write_text(
        f"model_cache = {json.dumps(str(tmp_path / 'model-cache'))}\n\n"
        f'[generator]\nbackend = "transformers"\nmodel = {json.dumps(str(trainable_model_dir))}\n'
    )
    return load_settings(root)


def register_dataset(settings: Settings, splits: dict[str, list[dict]], dataset_id: str = "ds-test") -> str:
    """Write the splits as a dataset version of the home, as ``build_dataset`` would."""
    folder = settings.data_dir / "datasets" / dataset_id
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with session_scope(settings.db_url) as s:
        s.add(DatasetVersion(id=dataset_id, name="test", content_hash=dataset_id, policy={}, source="test",
                             path=str(folder), counts={}))  # fmt: skip
    return dataset_id


def tiny_config(**overrides: object) -> TrainConfig:
    values = dict(lora_r=8, lora_alpha=16, lora_dropout=0.05, learning_rate=1e-2, epochs=3, batch_tokens=1024,
                  max_length=512, eval_every=5, save_every=4, logging_every=1, warmup_ratio=0.0, threads=1)  # fmt: skip
    return TrainConfig(**{**values, **overrides})  # type: ignore[arg-type]


def tokenizer_of(folder: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


# Config ------------------------------------------------------------------------------------------------


def test_train_config_loads_yaml_and_rejects_typos(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("learning_rate: 1e-4\nlora_r: 8\ntarget_modules: [q_proj, v_proj]\n")
    config = load_train_config(path, epochs=1, seed=None)
    assert (config.learning_rate, config.lora_r, config.epochs, config.seed) == (1e-4, 8, 1.0, 0)
    assert config.target_modules == ["q_proj", "v_proj"]
    assert load_train_config(None, **config.to_dict()) == config  # what a job records loads back
    path.write_text("learning_rte: 1e-4\n")
    with pytest.raises(RagloopError, match="learning_rte"):
        load_train_config(path)
    with pytest.raises(RagloopError, match="truncation"):
        load_train_config(None, truncation="right")


def test_device_setting_without_a_gpu_is_the_cpu(
    monkeypatch: pytest.MonkeyPatch, trainable_model_dir: Path
) -> None:
    """On a machine where torch sees no GPU (this one; the mock keeps it so on any): ``auto`` is the CPU,
    and asking for a GPU is an error, not hours of CPU training."""
    from ragloop.accel import resolve_device
    from ragloop.generation.backends import TransformersBackend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    cpu = torch.device("cpu")
    assert resolve_device("auto") == resolve_device(None) == resolve_device(" CPU ") == cpu
    for gpu in ("cuda", "cuda:0"):
        with pytest.raises(RagloopError, match="no CUDA GPU"):
            resolve_device(gpu)
    with pytest.raises(RagloopError, match="no CUDA GPU"):  # [generator] device = "cuda"
        TransformersBackend(trainable_model_dir, device="cuda")
    assert TransformersBackend(trainable_model_dir).model.device == cpu
    with pytest.raises(RagloopError, match="not a device"):
        resolve_device("gpu0")
    with pytest.raises(RagloopError, match="device must be"):
        load_train_config(None, device="tpu")
    # Where a run computes is not part of its identity: a GPU checkpoint resumes on a CPU.
    base = load_train_config(None)
    assert run_fingerprint("sft", "ds", "h", base) == run_fingerprint(
        "sft", "ds", "h", load_train_config(None, device="cpu")
    )


def test_device_setting_with_gpus_picks_the_launcher_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """With two GPUs (torch's view of the machine mocked: the one edge a CPU runner cannot have), ``auto``
    and ``cuda`` take the GPU of ``LOCAL_RANK``, ``cuda:N`` that one, ``cpu`` and Accelerate's
    ``--cpu`` stay on the CPU, and a GPU the machine does not have is an error."""
    from ragloop.accel import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "1")  # the second process of `accelerate launch`
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index wins over the rank
    with pytest.raises(RagloopError, match="has 2 CUDA GPU"):
        resolve_device("cuda:2")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # `accelerate launch --cpu` wins over the GPUs
    assert resolve_device("auto") == resolve_device("cuda:1") == torch.device("cpu")


@pytest.mark.gpu
def test_device_setting_uses_the_gpu_torch_sees(trainable_model_dir: Path) -> None:
    from ragloop.accel import resolve_device
    from ragloop.generation.backends import TransformersBackend

    assert resolve_device("auto") == torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    assert TransformersBackend(trainable_model_dir).model.device == resolve_device("cuda")
    assert TransformersBackend(trainable_model_dir, device="cpu").model.device == torch.device("cpu")


# Preflight ---------------------------------------------------------------------------------------------


def test_preflight_trains_answer_and_end_of_turn_only(tiny_model_dir: Path) -> None:
    tokenizer = tokenizer_of(tiny_model_dir)
    examples = dataset(4, 0)["train"]
    report = preflight(tokenizer, examples, max_length=1024, truncation="left-context")
    assert report.ok and not report.truncated and not report.dropped
    marked = report.rendered.split("<|im_start|>assistant\n")[-1]
    assert marked in [f"«{ex['completion']}<|im_end|>»" for ex in examples]
    assert report.rendered.count("«") == 1  # nothing of the prompt is trained
    answer = examples[0]["completion"]
    feature = report.features[0]
    trained = [t for t, lab in zip(feature["input_ids"], feature["labels"], strict=True) if lab != -100]
    assert tokenizer.decode(trained) == answer + "<|im_end|>"
    assert feature["input_ids"][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")  # nothing after it
    # The prompt part is exactly what serving tokenizes.
    served = tokenizer.apply_chat_template(examples[0]["prompt"], add_generation_prompt=True, tokenize=False)
    n_prompt = feature["labels"].count(-100)
    assert feature["input_ids"][:n_prompt] == tokenizer(served, add_special_tokens=False)["input_ids"]


def broken_template_model(folder: Path) -> Path:
    """The tiny model with a chat template that omits the end token after assistant turns."""
    build_tiny_model(folder)
    tokenizer = tokenizer_of(folder)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if m['role'] != 'assistant' %}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer.save_pretrained(folder)
    return folder


def test_preflight_catches_template_without_end_token(home: Settings, tmp_path: Path) -> None:
    folder = broken_template_model(tmp_path / "broken")
    report = preflight(
        tokenizer_of(folder), dataset(3, 0)["train"], max_length=1024, truncation="left-context"
    )
    assert not report.ok
    assert "no end-of-turn token" in report.problems[0] and "ex0, ex1, ex2" in report.problems[0]
    assert "«" in report.rendered  # the marked example shows the answer trained with no end token

    # A generation prompt that differs from how the answer turn is rendered (the other silent failure).
    tokenizer = tokenizer_of(folder)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
        "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    mismatch = preflight(tokenizer, dataset(2, 0)["train"], max_length=1024, truncation="left-context")
    assert not mismatch.ok and "renders the prompt differently" in mismatch.problems[0]

    dataset_id = register_dataset(home, dataset(3, 1))
    out = tmp_path / "out"
    with pytest.raises(RagloopError, match="never be trained to stop"):
        train_sft(home, dataset_id, out, tiny_config(), base=str(folder))
    assert not out.exists()


def test_preflight_cuts_distractors_never_the_answer_and_reports_drops(tiny_model_dir: Path) -> None:
    tokenizer = tokenizer_of(tiny_model_dir)
    fits = make_example(0, *FACTS[0], n_distractors=3, filler=1)
    long = make_example(1, *FACTS[1], n_distractors=3, filler=8)
    hopeless = make_example(2, *FACTS[2], n_distractors=0)
    hopeless["completion"] = "Laptops must use full disk encryption [1]. " * 60
    examples = [fits, long, hopeless]
    sizes = [len(f["input_ids"]) for f in preflight(tokenizer, examples, 100_000, "left-context").features]
    limit = sizes[0] + 5  # the first fits; the second only without some of its distractors

    report = preflight(tokenizer, examples, max_length=limit, truncation="left-context")
    assert report.ok, report.problems
    assert report.truncated == ["ex1"] and report.dropped == ["ex2"]
    assert (
        "distractor passage(s) [" in report.details["ex1"] and "answer is never cut" in report.details["ex2"]
    )
    cut = next(f for f in report.features if f["id"] == "ex1")
    text = tokenizer.decode(cut["input_ids"])
    assert len(cut["input_ids"]) <= limit
    assert FACTS[1][1] in text and text.endswith(
        long["completion"] + "<|im_end|>"
    )  # gold passage + whole answer
    assert text.count(FILLER.strip()) < 3 * 8

    dropped = preflight(tokenizer, examples, max_length=limit, truncation="drop")
    assert dropped.truncated == [] and dropped.dropped == ["ex1", "ex2"]
    assert "ex1" in dropped.summary() and "dropped (2)" in dropped.summary()


# SFT ---------------------------------------------------------------------------------------------------


def test_sft_loss_goes_down_and_writes_adapter_log_and_metrics(home: Settings, tmp_path: Path) -> None:
    dataset_id = register_dataset(home, dataset(12, 3))
    seen: list[dict] = []
    out = tmp_path / "run"
    result = train_sft(home, dataset_id, out, tiny_config(epochs=10, batch_tokens=1024), progress=seen.append)

    steps = [p for p in seen if p["event"] == "step"]
    evals = [p["eval_loss"] for p in seen if p["event"] == "eval"]
    assert result.steps == steps[-1]["step"] == steps[-1]["total"] >= 30
    assert sum(p["loss"] for p in steps[-3:]) / 3 < 0.85 * sum(p["loss"] for p in steps[:3]) / 3
    assert evals[-1] < 0.9 * evals[0] and evals == sorted(evals, reverse=True)
    assert all(p["tokens_per_s"] > 0 and p["eta_s"] >= 0 for p in steps) and steps[-1]["eta_s"] == 0
    assert (result.adapter_dir / "adapter_config.json").is_file() and result.adapter_dir == out / "adapter"
    assert result.metrics["eval_loss"] == pytest.approx(evals[-1]) and result.tokens == steps[-1]["tokens"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "step"] == [p["step"] for p in steps]
    assert "«" in (out / "preflight.txt").read_text()
    # A completed run is not trained again.
    again = train_sft(home, dataset_id, out, tiny_config(epochs=10, batch_tokens=1024))
    assert again.metrics == result.metrics


def test_bad_input_fails_early_and_writes_nothing(home: Settings, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(NotFound, match="ds-missing"):
        train_sft(home, "ds-missing", out, tiny_config())
    empty = register_dataset(home, {"train": [], "val": dataset(0, 2)["val"], "test": []}, "ds-empty")
    with pytest.raises(RagloopError, match="no training examples"):
        train_sft(home, empty, out, tiny_config())
    good = register_dataset(home, dataset(3, 0), "ds-good")
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text("{}")
    with pytest.raises(RagloopError, match="not-a-model"):
        train_sft(home, good, out, tiny_config(), base=str(not_a_model))
    assert not out.exists()


def test_should_stop_checkpoints_and_returns(home: Settings, tmp_path: Path) -> None:
    dataset_id = register_dataset(home, dataset(8, 0))
    calls = iter(range(100))
    result = train_sft(home, dataset_id, tmp_path / "run", tiny_config(save_every=100),
                       should_stop=lambda: next(calls) >= 2)  # fmt: skip
    assert result.metrics["stopped"] and result.steps == 3
    assert (result.adapter_dir / "state.json").is_file() and result.adapter_dir.name == "step-0000003"
    assert not (tmp_path / "run" / "adapter").exists()


def _run_training(
    home: Path, dataset_id: str, out: Path, config: Path, pause_at: int | None = None
) -> subprocess.Popen:
    """``train_sft`` in a child process; with ``pause_at`` it stops still (without exiting) after that
    step so the test can SIGKILL it there, mid-run, past a checkpoint."""
    code = (
        "import sys, time, json\n"
        "from pathlib import Path\n"
        "from ragloop.config import load_settings\n"
        "from ragloop.training.config import load_train_config\n"
        "from ragloop.training.sft import train_sft\n"
        f"pause_at = {pause_at!r}\n"
        "def progress(p):\n"
        "    print(json.dumps(p), flush=True)\n"
        "    if p['event'] == 'step' and p['step'] == pause_at:\n"
        "        print('PAUSED', flush=True); time.sleep(600)\n"
        f"train_sft(load_settings(Path({str(home)!r})), {dataset_id!r}, Path({str(out)!r}),\n"
        f"          load_train_config(Path({str(config)!r})), progress=progress)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def test_resume_after_sigkill_matches_uninterrupted_run(home: Settings, tmp_path: Path) -> None:
    dataset_id = register_dataset(home, dataset(10, 2))
    config = tmp_path / "train.yaml"
    config.write_text("lora_r: 8\nlearning_rate: 0.01\nepochs: 2\nbatch_tokens: 1024\nmax_length: 512\n"
                      "save_every: 3\neval_every: 4\nlogging_every: 1\nthreads: 1\nlora_dropout: 0.1\n")  # fmt: skip
    killed_out = tmp_path / "killed"
    proc = _run_training(home.home, dataset_id, killed_out, config, pause_at=5)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.strip() == "PAUSED":
            break
    assert lines and lines[-1].strip() == "PAUSED", "".join(lines)
    proc.send_signal(signal.SIGKILL)  # no handler runs: as in a power cut or the OOM killer
    proc.wait(timeout=30)
    assert sorted(p.name for p in (killed_out / "checkpoints").iterdir()) == ["step-0000003"]
    assert not (killed_out / "adapter").exists()

    resumed = train_sft(home, dataset_id, killed_out, load_train_config(config))
    assert resumed.resumed_from == 3

    straight = subprocess.run(
        [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_processes", "1", "--cpu", "-m",
         "ragloop.training.run", "--home", str(home.home), "--kind", "sft", "--dataset", dataset_id,
         "--out", str(tmp_path / "straight"), "--config", str(config)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-3000:]
    result = json.loads(straight.stdout.strip().splitlines()[-1])
    assert result["event"] == "result" and result["steps"] == resumed.steps

    a, b = adapter_weights(resumed.adapter_dir), adapter_weights(Path(result["adapter_dir"]))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert resumed.metrics["eval_loss"] == pytest.approx(result["metrics"]["eval_loss"], rel=1e-5)
    log = [json.loads(x) for x in (killed_out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "step"] == list(range(1, resumed.steps + 1))


# DPO ---------------------------------------------------------------------------------------------------


def test_a_run_trained_elsewhere_registers_only_against_the_same_data(
    home: Settings, tmp_path: Path, trainable_model_dir: Path
) -> None:
    """`ragloop train register`: a run from `accelerate launch` on another machine (here: another home with
    a copy of the dataset) becomes a version with its lineage, and only if this home has the same data."""
    from typer.testing import CliRunner

    from ragloop.cli import app
    from ragloop.training.lineage import get_model

    splits = dataset(8, 2)
    register_dataset(home, splits)
    run = tmp_path / "gpu-box-run"
    trained = train_sft(home, "ds-test", run, tiny_config(epochs=1))

    def other_home(name: str, rows: dict[str, list[dict]]) -> Settings:
        root = init_home(tmp_path / name)
        (root / "ragloop.toml").write_text(
            f"model_cache = {json.dumps(str(tmp_path / 'model-cache'))}\n\n"
            f'[generator]\nbackend = "transformers"\nmodel = {json.dumps(str(trainable_model_dir))}\n'
        )
        settings = load_settings(root)
        register_dataset(settings, rows)
        return settings

    here = other_home("here", splits)
    r = CliRunner().invoke(
        app, ["train", "register", str(run), "--name", "imported", "--home", str(here.home)]
    )
    assert r.exit_code == 0, r.output
    with session_scope(here.db_url) as s:
        mv = get_model(s, "imported-v1")
        assert mv.dataset_id == "ds-test" and mv.meta["training"]["steps"] == trained.steps
        assert mv.meta["hyperparameters"]["learning_rate"] == tiny_config().learning_rate
        assert adapter_weights(Path(mv.adapter_path)).keys() == adapter_weights(trained.adapter_dir).keys()
    r = CliRunner().invoke(
        app, ["train", "register", str(run), "--name", "imported", "--home", str(here.home)]
    )
    assert r.exit_code == 0 and "already registered as model version imported-v1" in " ".join(
        r.output.split()
    )

    # Same dataset id, other examples: refused, nothing registered.
    elsewhere = other_home("elsewhere", {**splits, "train": splits["train"][:-1]})
    r = CliRunner().invoke(app, ["train", "register", str(run), "--home", str(elsewhere.home)])
    assert r.exit_code != 0 and "does not match dataset ds-test" in " ".join(r.output.split())
    # Settings edited after training: the fingerprint no longer matches.
    edited = tmp_path / "edited-run"
    shutil.copytree(run, edited)
    metrics = json.loads((edited / "metrics.json").read_text())
    metrics["config"]["learning_rate"] = 1.0
    (edited / "metrics.json").write_text(json.dumps(metrics))
    r = CliRunner().invoke(app, ["train", "register", str(edited), "--home", str(here.home)])
    assert r.exit_code != 0 and "does not match" in " ".join(r.output.split())
    r = CliRunner().invoke(app, ["train", "register", str(tmp_path), "--home", str(here.home)])
    assert r.exit_code != 0 and "not a finished training run" in " ".join(r.output.split())
    with session_scope(elsewhere.db_url) as s:
        from ragloop.store.models import ModelVersion

        assert s.query(ModelVersion).count() == 0


def test_dpo_reference_is_the_sft_merged_model(home: Settings, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ragloop.training.dpo import build_dpo_trainer, train_dpo

    dataset_id = register_dataset(home, dataset(6, 2))
    sft = train_sft(home, dataset_id, tmp_path / "sft", tiny_config(epochs=2))
    config = tiny_config(epochs=1, dpo_batch_size=2, learning_rate=5e-3)

    trainer = build_dpo_trainer(
        home, dataset_id, tmp_path / "dpo-probe", config, reference_adapter=sft.adapter_dir
    ).trainer
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[0]]))
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, batch)

    def logps(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = batch["input_ids"], batch["completion_mask"]
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1]
        per_token = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        return (per_token * mask[:, 1:]).sum(-1).chunk(2)

    base = AutoModelForCausalLM.from_pretrained(home.generator.model, dtype=torch.float32)
    merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(home.generator.model, dtype=torch.float32), str(sft.adapter_dir)
    ).merge_and_unload()
    merged_chosen, merged_rejected = logps(merged)
    base_chosen, _ = logps(base)
    torch.testing.assert_close(ref_chosen, merged_chosen, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ref_rejected, merged_rejected, rtol=1e-4, atol=1e-4)
    assert (ref_chosen - base_chosen).abs().max() > 1e-2  # the bare base would be a different reference

    result = train_dpo(home, dataset_id, tmp_path / "dpo", config, reference_adapter=sft.adapter_dir)
    assert result.steps > 0 and result.metrics["reference"] == str(sft.adapter_dir)
    # The registered adapter applies to the bare base and equals SFT-merged + the DPO update.
    ids = batch["input_ids"][:1]
    on_base = PeftModel.from_pretrained(base, str(result.adapter_dir))
    stacked = PeftModel.from_pretrained(merged, str(tmp_path / "dpo" / "dpo-delta"))
    with torch.no_grad():
        torch.testing.assert_close(
            on_base(input_ids=ids).logits, stacked(input_ids=ids).logits, rtol=1e-4, atol=1e-4
        )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_accelerate_two_processes_match_one(home: Settings, tmp_path: Path) -> None:
    """``accelerate launch --multi_gpu --num_processes 2`` (torchrun; gloo on this CPU-only machine; accelerate's
    ``--cpu`` runs one process unless given an MPI hostfile): each rank runs every other micro-batch of a
    step, the LoRA gradients are summed, and the adapter equals a single process's over the same steps
    (dropout off: the ranks draw their own dropout masks). Then a resume on two processes, and DPO refused."""
    dataset_id = register_dataset(home, dataset(8, 2))
    config = tmp_path / "train.yaml"
    config.write_text("lora_r: 8\nlearning_rate: 0.01\nepochs: 2\nbatch_tokens: 400\nmax_length: 400\n"
                      "gradient_accumulation_steps: 3\nsave_every: 2\neval_every: 2\nlogging_every: 1\n"
                      "threads: 1\nlora_dropout: 0.0\n")  # fmt: skip
    single = train_sft(home, dataset_id, tmp_path / "single", load_train_config(config))

    def launch(out: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
             "--main_process_port", str(free_port()), "-m",
             "ragloop.training.run", "--home", str(home.home), "--kind", "sft", "--dataset", dataset_id,
             "--out", str(out), "--config", str(config), *extra],
            capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip

    out = tmp_path / "two"
    run = launch(out)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.strip().splitlines()]
    result = lines[-1]
    assert result["event"] == "result" and result["steps"] == single.steps
    assert [r["processes"] for r in lines if r["event"] == "start"] == [2]  # rank 0 alone reports
    steps = [r for r in lines if r["event"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, single.steps + 1))
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert steps[-1]["tokens"] == single.tokens
    two, one = adapter_weights(out / "adapter"), adapter_weights(single.adapter_dir)
    assert two.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_loss"] == pytest.approx(single.metrics["eval_loss"], rel=1e-4)

    # Resume: keep the first checkpoint only, drop the end, launch again on two processes.
    checkpoints = sorted((out / "checkpoints").iterdir())
    for extra_dir in [*checkpoints[1:], out / "adapter"]:
        shutil.rmtree(extra_dir)
    (out / "metrics.json").unlink()
    again = launch(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["resumed_from"] == int(checkpoints[0].name[5:])
    for key, value in adapter_weights(out / "adapter").items():
        torch.testing.assert_close(value, one[key], rtol=1e-4, atol=1e-5)

    dpo = subprocess.run(
        [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "-m",
         "ragloop.training.run", "--home", str(home.home), "--kind", "dpo", "--dataset", dataset_id,
         "--out", str(tmp_path / "dpo-two")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert dpo.returncode != 0 and "DPO trains in one process" in dpo.stderr
