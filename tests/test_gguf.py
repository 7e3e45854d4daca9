"""GGUF conversion (generation/gguf.py), proved against transformers through the real llama.cpp engine
(xllamacpp): a base written from safetensors predicts what transformers predicts, and its tokenizer and
chat template turn a conversation into the same tokens.

Agreement is measured teacher-forced: for each position of a token sequence, the engine's greedy next
token given the true prefix against transformers' argmax there. F32 weights and an F32 KV cache keep the
two computations within rounding of each other, so anything under ~100 % is a conversion error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import xllamacpp as xl

from conftest import make_home
from ragloop.config import Settings
from ragloop.errors import ConfigError, GenerationError, RagloopError
from ragloop.generation.gguf import (
    CONVERTER_VERSION,
    base_gguf,
    convert_lora,
    gguf_adapter_for,
    write_base_gguf,
)
from ragloop.generation.models import packaged_gguf
from ragloop.testing import CORPUS

MESSAGES = [
    [{"role": "user", "content": "What is the right to erasure?"}],
    [
        {"role": "system", "content": "Answer from the documents [1]."},
        {"role": "user", "content": "Fines can reach 20 000 000 EUR?"},
        {"role": "assistant", "content": "yes [2]."},
        {"role": "user", "content": "And the data subject?"},
    ],
]


def engine(model: Path, loras: list[Path] = (), slots: int = 1, kv: str = "f32") -> xl.Server:
    """One llama.cpp engine in this process, F32 KV cache unless ``kv`` says f16, adapters loaded at
    scale 0 and every request naming each adapter's scale (an absent or empty list means "as before")."""
    params = xl.CommonParams()
    params.model.path = str(model)
    params.n_parallel = slots
    params.n_ctx = 1024 * slots  # the total, split between the slots
    params.cpuparams.n_threads = 2
    params.cpuparams_batch.n_threads = 2
    params.cache_type_k = params.cache_type_v = getattr(xl.ggml_type, f"GGML_TYPE_{kv.upper()}")
    params.lora_init_without_apply = True
    params.lora_adapters = [xl.CommonAdapterLoraInfo(str(path), 0.0) for path in loras]
    return xl.Server(params)


def next_tokens(server: xl.Server, ids: list[int], lora: list[dict[str, Any]], start: int = 1) -> list[int]:
    """The engine's greedy token after every prefix ids[:t] (t >= start): one 1-token completion per
    position, the shared prefix cached so each step prefills one token. Through llama-server's native
    /completion with return_tokens: the OpenAI endpoint drops logprobs (the only place ids are) for a
    token that is an incomplete UTF-8 sequence, which byte-level BPE produces."""
    out = []
    with httpx.Client(base_url=server.listening_address, timeout=60) as http:
        for t in range(start, len(ids) + 1):
            body = {"prompt": ids[:t], "n_predict": 1, "temperature": 0, "return_tokens": True, "lora": lora}
            result = http.post("/completion", json=body).json()
            assert len(result.get("tokens", [])) == 1, result
            out.append(result["tokens"][0])
    return out


def agreement(server: xl.Server, model: Any, sequences: list[list[int]], lora: list[dict[str, Any]]) -> float:
    """Share of positions where the engine's top-1 is transformers' argmax, teacher-forced."""
    import torch

    same = total = 0
    for ids in sequences:
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
        got = next_tokens(server, ids, lora)
        same += sum(a == b for a, b in zip(got, expected, strict=True))
        total += len(ids)
    return same / total


@pytest.fixture(scope="module")
def sharp_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with attention made to matter. At its random init (std 0.02) attention scores are
    ~0, so attention is uniform and no rotary order changes a prediction: a converter that forgot the
    permutation would still pass. Scaled q/k make attention peaked and position-dependent, scaled v/o
    let it move the output."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype="float32")
    with torch.no_grad():
        for layer in model.model.layers:
            for proj, factor in (("q_proj", 30), ("k_proj", 30), ("v_proj", 10), ("o_proj", 10)):
                getattr(layer.self_attn, proj).weight.mul_(factor)
    folder = tmp_path_factory.mktemp("sharp-tiny")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(sharp_dir: Path) -> Iterator[tuple[Any, Any]]:
    """transformers' view of the sharpened tiny model: (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(sharp_dir), dtype="float32").eval()
    yield model, AutoTokenizer.from_pretrained(str(sharp_dir))


def tiny_sequences(tokenizer: Any) -> list[list[int]]:
    """Chat prompts and plain text: what the engine is fed in practice, special tokens included."""
    chats = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in MESSAGES]
    return [tokenizer(text)["input_ids"] for text in [*chats, " ".join(CORPUS[:4])]]


def test_base_gguf_predicts_what_transformers_predicts(tmp_path: Path, sharp_dir: Path, tiny) -> None:
    """≥ 95 % teacher-forced top-1 agreement (measured: 99.5 %, one near-tie in 219); the same file
    written without the rotary permutation agrees at ~5 %, so the test sees a wrong conversion."""
    model, tokenizer = tiny
    sequences = tiny_sequences(tokenizer)
    assert sum(map(len, sequences)) >= 200
    out = write_base_gguf(sharp_dir, tmp_path / "tiny.f32.gguf", "f32")
    assert out.is_file() and not list(tmp_path.glob(".*.tmp"))
    assert agreement(engine(out), model, sequences, []) >= 0.95
    wrong = write_base_gguf(sharp_dir, tmp_path / "wrong.f32.gguf", "f32", _permute=False)
    assert agreement(engine(wrong), model, sequences, []) < 0.5


def assert_same_prompts(server: xl.Server, tokenizer: Any, conversations: list[list[dict[str, str]]]) -> None:
    """llama.cpp's rendering of each conversation with the GGUF's jinja template, and its tokens with the
    GGUF's tokenizer (what a chat request is prefilled with), are transformers' exactly."""
    with httpx.Client(base_url=server.listening_address) as http:
        for messages in conversations:
            expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            prompt = http.post("/apply-template", json={"messages": messages}).json()["prompt"]
            assert prompt == expected
            ids = http.post("/tokenize", json={"content": prompt, "add_special": True}).json()["tokens"]
            assert ids == tokenizer(expected)["input_ids"], messages
            usage = server.handle_chat_completions({"messages": messages, "max_tokens": 1})["usage"]
            assert usage["prompt_tokens"] == len(ids)


def test_base_gguf_tokenizer_and_chat_template_match_transformers(
    tmp_path: Path, tiny_model_dir: Path, tiny
) -> None:
    """The GGUF's own tokenizer and chat template give transformers' token ids, special tokens and all."""
    _, tokenizer = tiny
    server = engine(write_base_gguf(tiny_model_dir, tmp_path / "tiny.q8_0.gguf", "q8_0"))
    assert_same_prompts(server, tokenizer, MESSAGES + [[{"role": "user", "content": t}] for t in CORPUS])


def test_base_gguf_formats_and_refusals(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Each format holds the same tensors (q/k permuted, 2-D ones in the format asked, 1-D in F32, the
    tied lm_head left out); an unknown format or a non-Llama folder is refused by name."""
    import gguf

    readers = {
        ft: gguf.GGUFReader(write_base_gguf(tiny_model_dir, tmp_path / f"{ft}.gguf", ft))
        for ft in ("f32", "f16", "q8_0")
    }
    names = {ft: [t.name for t in r.tensors] for ft, r in readers.items()}
    assert names["f32"] == names["f16"] == names["q8_0"]
    assert "output.weight" not in names["f32"] and "token_embd.weight" in names["f32"]
    for ft, kind in (("f32", "F32"), ("f16", "F16"), ("q8_0", "Q8_0")):
        types = {t.name: t.tensor_type.name for t in readers[ft].tensors}
        assert types["blk.0.attn_q.weight"] == kind and types["blk.0.attn_norm.weight"] == "F32"
    f32 = {t.name: np.array(t.data) for t in readers["f32"].tensors}
    q8 = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in readers["q8_0"].tensors}
    for name, data in f32.items():
        assert np.abs(q8[name].reshape(data.shape) - data).max() < 0.01, name
    with pytest.raises(Exception, match="q4_0"):
        write_base_gguf(tiny_model_dir, tmp_path / "x.gguf", "q4_0")
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(Exception, match="BertModel"):
        write_base_gguf(other, tmp_path / "y.gguf", "f32")
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y.gguf").exists()


def test_base_gguf_is_written_once_into_the_model_cache(tmp_path: Path, tiny_model_dir: Path) -> None:
    """base_gguf writes the file the first time, beside the HF folder in the model cache, and returns
    the same file after; q4_1 exists only as the packaged file."""
    settings = make_home(tmp_path, tiny_model_dir)
    first = base_gguf(settings, "q8_0")
    assert first.parent == settings.model_cache_dir and first.is_file()
    stamp = first.stat().st_mtime_ns
    assert base_gguf(settings, "q8_0") == first and first.stat().st_mtime_ns == stamp
    assert base_gguf(settings, "f16") != first
    with pytest.raises(ConfigError, match="q4_1"):
        base_gguf(settings, "q4_1")
    assert base_gguf(Settings(home=tmp_path), "q4_1") == packaged_gguf()  # as shipped, nothing written


# LoRA adapters ---------------------------------------------------------------------------------------


def random_lora(
    base_dir: Path, out: Path, sigma: float, seed: int = 0, qk: float = 1.0, **config: Any
) -> Path:
    """A PEFT LoRA on every linear layer with random A and B: strong enough (sigma; ``qk`` times that on
    q and k, where the rotary permutation applies) that the adapted model disagrees with its base at
    most positions, so a conversion error cannot hide in agreement."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="float32")
    settings = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"} | config
    peft = get_peft_model(model, LoraConfig(**settings))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, sigma * (qk if ".q_proj." in name or ".k_proj." in name else 1.0))
    peft.save_pretrained(out)
    return out


def peft_model(base_dir: Path, adapter: Path) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="float32")
    return PeftModel.from_pretrained(model, str(adapter)).eval()


def test_converted_lora_predicts_what_peft_predicts(tmp_path: Path, sharp_dir: Path, tiny) -> None:
    """A strong random all-linear LoRA, registered, converted by gguf_adapter_for and served by llama.cpp
    over the F32 base with F32 KV: ≥ 95 % teacher-forced agreement with transformers+PEFT (measured
    99.5 %; the base alone agrees with it at ~2 %). Converted without the permutation it scores ~10 %.
    An rsLoRA adapter with rank and alpha patterns (scaling folded into lora_b) agrees as well. After
    that adapter traffic, the full lora list at scale 0 on the same engine is the base model again."""
    from ragloop.training.lineage import register_model

    base_model, tokenizer = tiny
    sequences = tiny_sequences(tokenizer)
    settings = make_home(tmp_path, sharp_dir)
    adapter = random_lora(sharp_dir, tmp_path / "adapter", sigma=0.5)
    version = register_model(settings, {"adapter_dir": str(adapter)})
    converted = gguf_adapter_for(settings, version)
    wrong = tmp_path / "noperm.gguf"
    convert_lora(Path(version.adapter_path), sharp_dir, wrong, _permute=False)
    patterned = random_lora(
        sharp_dir,
        tmp_path / "patterned",
        sigma=0.5,
        seed=1,
        use_rslora=True,
        rank_pattern={"k_proj": 4},
        alpha_pattern={"q_proj": 4, "down_proj": 32},
    )
    assert convert_lora(patterned, sharp_dir, tmp_path / "patterned.gguf")["folded"]
    loras = [converted, wrong, tmp_path / "patterned.gguf"]
    server = engine(write_base_gguf(sharp_dir, tmp_path / "base.f32.gguf", "f32"), loras)
    tuned = peft_model(sharp_dir, Path(version.adapter_path))

    def only(i: int | None) -> list[dict[str, Any]]:
        return [{"id": n, "scale": 1.0 if n == i else 0.0} for n in range(len(loras))]

    assert agreement(server, tuned, sequences, only(0)) >= 0.95
    assert agreement(server, tuned, sequences, only(1)) < 0.5
    assert agreement(server, peft_model(sharp_dir, patterned), sequences, only(2)) >= 0.95
    assert agreement(server, base_model, sequences, only(None)) >= 0.95
    assert agreement(server, tuned, sequences, only(None)) < 0.5  # the adapter changes most predictions


def test_gguf_adapter_is_converted_once_with_its_lineage(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Converted on first use into the version's folder, with the lineage that says what it came from;
    reused while that lineage holds, converted again when it does not; the version's registered files
    (its identity, its export) are untouched by the derived file."""
    from ragloop.training.lineage import adapter_files, register_model

    settings = make_home(tmp_path, tiny_model_dir)
    adapter = random_lora(tiny_model_dir, tmp_path / "adapter", sigma=0.1)
    version = register_model(settings, {"adapter_dir": str(adapter)})
    out = gguf_adapter_for(settings, version)
    folder = Path(version.adapter_path)
    assert out == folder / "gguf" / "adapter.gguf"
    lineage = json.loads((out.parent / "adapter.gguf.json").read_text())
    registered = version.meta["adapter_files"]
    assert lineage["source_files"] == {k: registered[k] for k in lineage["source_files"]}
    assert set(lineage["source_files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert lineage["base_hash"] == version.base_hash and lineage["converter_version"] == CONVERTER_VERSION
    assert lineage["summary"] == {"pairs": 14, "ranks": [8], "alpha": 16.0, "folded": False}
    assert adapter_files(folder) == registered  # the derived file is not part of the version
    stamp = out.stat().st_mtime_ns
    assert gguf_adapter_for(settings, version) == out and out.stat().st_mtime_ns == stamp

    (out.parent / "adapter.gguf.json").write_text(json.dumps(lineage | {"converter_version": 0}))
    assert gguf_adapter_for(settings, version) == out and out.stat().st_mtime_ns != stamp
    assert (
        json.loads((out.parent / "adapter.gguf.json").read_text())["converter_version"] == CONVERTER_VERSION
    )
    out.write_bytes(out.read_bytes()[:1000])  # a damaged converted file is noticed and written again
    assert gguf_adapter_for(settings, version) == out and out.stat().st_size > 1000


def test_damaged_adapter_is_refused_with_what_is_wrong(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A truncated adapter is refused before conversion (its sha256 differs from the registered one), and
    one that was never recorded is refused when it cannot be read: the release path relies on this."""
    from ragloop.training.lineage import register_model

    settings = make_home(tmp_path, tiny_model_dir)
    version = register_model(settings, {"adapter_dir": str(random_lora(tiny_model_dir, tmp_path / "a", 0.1))})
    weights = Path(version.adapter_path) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(
        GenerationError, match="adapter_model.safetensors is not the file registered.*truncated"
    ):
        gguf_adapter_for(settings, version)
    assert not (Path(version.adapter_path) / "gguf" / "adapter.gguf").exists()
    version.meta = {}  # registered before sha256s were recorded
    with pytest.raises(GenerationError, match="cannot be read"):
        gguf_adapter_for(settings, version)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "lora_only"}, "bias"),
        ({"peft_type": "IA3"}, "IA3"),
    ],
)
def test_unsupported_adapters_are_refused_by_name(
    tmp_path: Path, tiny_model_dir: Path, change: dict[str, Any], named: str
) -> None:
    adapter = random_lora(tiny_model_dir, tmp_path / "a", 0.1)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(config | change))
    with pytest.raises(RagloopError, match=named):
        convert_lora(adapter, tiny_model_dir, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


# The packaged SmolLM2 (integration) ---------------------------------------------------------------------

SMOL_QUESTIONS = [
    "What is the right to erasure?",
    "When must a personal data breach be notified?",
    "Who must designate a data protection officer?",
    "What is personal data?",
    "Can I withdraw my consent at any time?",
    "How high can fines be under the GDPR?",
    "What does the principle of data minimisation mean?",
    "Which rights does a data subject have?",
    "What is a data protection impact assessment?",
    "When may personal data be transferred to a third country?",
    "What is the role of a supervisory authority?",
    "How long may personal data be stored?",
    "What is pseudonymisation?",
    "Explain the right to data portability in two sentences.",
    "Is an IP address personal data?",
    "What must a privacy notice contain?",
    "Who is a controller and who is a processor?",
    "What counts as a special category of personal data?",
    "Write a short poem about privacy.",
    "List three lawful bases for processing, numbered 1 to 3.",
]


def smol_chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer in English."}, {"role": "user", "content": question}]


def smollm_reference(model: Any, base_dir: Path, new_tokens: int) -> list[tuple[list[int], int]]:
    """``model``'s (transformers+PEFT) greedy answers to the chat prompts, one batch: (prompt + answer
    ids, prompt length).
    A short system message replaces SmolLM2's default one: prefill is most of the time here."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), padding_side="left")
    prompts = [
        tokenizer(tokenizer.apply_chat_template(smol_chat(q), add_generation_prompt=True, tokenize=False))[
            "input_ids"
        ]
        for q in SMOL_QUESTIONS
    ]
    batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    sequences = []
    for prompt, row in zip(prompts, out[:, batch["input_ids"].shape[1] :].tolist(), strict=True):
        answer = row[: row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else row
        sequences.append((prompt + answer, len(prompt)))
    return sequences


def answer_agreement(
    server: xl.Server, sequences: list[tuple[list[int], int]], lora: list[dict[str, Any]], workers: int = 1
) -> float:
    """Teacher-forced top-1 agreement on the reference answers, one request per disagreement rather than
    per position: while the engine's greedy continuation equals the reference, its prefix is the true
    prefix, so each of its tokens is its teacher-forced top-1; at the first difference (one miss) it is
    asked again from the true prefix one token further. ``workers`` sequences run at once, batched by
    the engine's slots."""
    from concurrent.futures import ThreadPoolExecutor

    def matches(item: tuple[list[int], int]) -> int:
        ids, t = item
        same = 0
        with httpx.Client(base_url=server.listening_address, timeout=120) as http:
            while t < len(ids):
                body = {
                    "prompt": ids[:t],
                    "n_predict": len(ids) - t,
                    "temperature": 0,
                    "return_tokens": True,
                    "lora": lora,
                }
                got = http.post("/completion", json=body).json()["tokens"]
                assert got, ids[:t]
                k = next((i for i, (a, b) in enumerate(zip(got, ids[t:], strict=False)) if a != b), len(got))
                same += k
                t += k + (k < len(got))  # past a miss, or on from where a short answer stopped
        return same

    with ThreadPoolExecutor(workers) as pool:
        same = sum(pool.map(matches, sequences))
    return same / sum(len(ids) - start for ids, start in sequences)


@pytest.mark.integration
def test_packaged_smollm2_adapter_agrees_with_peft(tmp_path: Path) -> None:
    """The issue's proof on the real packaged SmolLM2-135M: a strong random all-linear LoRA (r=16,
    alpha=32, q/k heavier), transformers+PEFT greedy answers to 20 chat prompts, then llama.cpp over the
    F16 base GGUF (F32 KV cache) with the converted adapter, teacher-forced on those answers: ≥ 95 %
    top-1 agreement (measured 100 %), while the base alone agrees far less (~75 %: the adapter really
    changes the answers). The GGUF's chat template and tokenizer give transformers' prompt tokens.
    Figures for the other formats and the F16 KV cache: bench/gguf_agreement.py, docs/benchmarks.md."""
    import torch
    from transformers import AutoTokenizer

    from ragloop.generation.models import resolve_model

    settings = Settings(home=tmp_path)  # the machine's model cache: the base files are written once
    base_dir, _ = resolve_model("packaged", settings.model_cache_dir)
    adapter = random_lora(base_dir, tmp_path / "adapter", sigma=0.05, qk=4.0, r=16, lora_alpha=32)
    converted = tmp_path / "adapter.gguf"
    convert_lora(adapter, base_dir, converted)
    tuned = peft_model(base_dir, adapter)
    reference = smollm_reference(tuned, base_dir, new_tokens=12)
    server = engine(base_gguf(settings, "f16"), [converted], slots=4)
    assert answer_agreement(server, reference, [{"id": 0, "scale": 1.0}], workers=4) >= 0.95
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    texts = [*SMOL_QUESTIONS, "Fines: 20 000 000 EUR, 4 %, Art. 17(1)(a) — “déjà vu” 日本 🙂\n\n\t  end"]
    assert_same_prompts(
        server, tokenizer, [smol_chat(t) for t in texts[:4]] + [[{"role": "user", "content": texts[-1]}]]
    )

    same = total = 0
    with torch.no_grad(), tuned.disable_adapter():
        for ids, start in reference:
            top1 = tuned(torch.tensor([ids])).logits[0, start - 1 : -1].argmax(-1).tolist()
            same += sum(a == b for a, b in zip(top1, ids[start:], strict=True))
            total += len(ids) - start
    assert same / total < 0.8
