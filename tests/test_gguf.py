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
from ragloop.errors import ConfigError
from ragloop.generation.gguf import base_gguf, write_base_gguf
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


def engine(model: Path, loras: list[Path] = (), n_ctx: int = 1024) -> xl.Server:
    """One llama.cpp engine in this process, F32 KV cache, adapters loaded at scale 0 (FINDINGS 2.1)."""
    params = xl.CommonParams()
    params.model.path = str(model)
    params.n_parallel = 1
    params.n_ctx = n_ctx
    params.cpuparams.n_threads = 2
    params.cpuparams_batch.n_threads = 2
    params.cache_type_k = xl.ggml_type.GGML_TYPE_F32
    params.cache_type_v = xl.ggml_type.GGML_TYPE_F32
    params.lora_init_without_apply = True
    params.lora_adapters = [xl.CommonAdapterLoraInfo(str(path), 0.0) for path in loras]
    return xl.Server(params)


def next_tokens(server: xl.Server, ids: list[int], lora: list[dict[str, Any]]) -> list[int]:
    """The engine's greedy token after every prefix ids[:t] (t >= 1): one 1-token completion per
    position, the shared prefix cached so each step prefills one token. Through llama-server's native
    /completion with return_tokens: the OpenAI endpoint drops logprobs (the only place ids are) for a
    token that is an incomplete UTF-8 sequence, which byte-level BPE produces."""
    out = []
    with httpx.Client(base_url=server.listening_address, timeout=60) as http:
        for t in range(1, len(ids) + 1):
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


def test_base_gguf_tokenizer_and_chat_template_match_transformers(
    tmp_path: Path, tiny_model_dir: Path, tiny
) -> None:
    """The GGUF's own tokenizer and jinja chat template (what llama.cpp applies to a chat request) give
    exactly the token ids transformers' tokenizer and template give, special tokens and all."""
    _, tokenizer = tiny
    server = engine(write_base_gguf(tiny_model_dir, tmp_path / "tiny.q8_0.gguf", "q8_0"))
    base = server.listening_address
    for messages in MESSAGES:
        expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = httpx.post(f"{base}/apply-template", json={"messages": messages}).json()["prompt"]
        assert prompt == expected
        ids = httpx.post(f"{base}/tokenize", json={"content": prompt, "add_special": True}).json()["tokens"]
        assert ids == tokenizer(expected, add_special_tokens=True)["input_ids"]
        usage = server.handle_chat_completions({"messages": messages, "max_tokens": 1})["usage"]
        assert usage["prompt_tokens"] == len(ids)
    for text in CORPUS:
        ids = httpx.post(f"{base}/tokenize", json={"content": text, "add_special": True}).json()["tokens"]
        assert ids == tokenizer(text)["input_ids"], text


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
