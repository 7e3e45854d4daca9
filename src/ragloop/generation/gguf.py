"""GGUF files for the llama.cpp engine: a base model written from a Hugging Face Llama folder, and each
registered version's PEFT LoRA adapter converted to a GGUF LoRA adapter.

llama.cpp's own converters live only in its source repository (convert_hf_to_gguf.py, LlamaModel, and
convert_lora_to_gguf.py); this module does what they do for a Llama with the ``gguf`` package alone, no
torch. The one subtle step is the rotary permutation: llama.cpp's rope rotates interleaved pairs (2i, 2i+1)
of each head while transformers' ``rotate_half`` rotates (i, i + d/2), so the rows of the q and k
projections are reordered per head (``_rotary_permute``). A LoRA delta B·A is permuted as (P·B)·A: only
``lora_b`` changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors import safe_open

from ragloop.config import Settings
from ragloop.errors import ConfigError, RagloopError
from ragloop.generation.models import PACKAGED, packaged_gguf, resolve_model

WRITER_VERSION = 1  # bump when the bytes written for the same input change: cached files are keyed by it
FTYPES = ("f32", "f16", "q8_0")  # written from safetensors; "q4_1" is the packaged file as shipped

_FILE_TYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}
_LLAMA = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]


# Base model ------------------------------------------------------------------------------------------


def write_base_gguf(hf_dir: Path, out: Path, ftype: str = "q8_0", *, _permute: bool = True) -> Path:
    """Write ``out``: the Llama model of the Hugging Face folder ``hf_dir`` (config.json,
    model.safetensors, tokenizer.json, tokenizer_config.json) as a GGUF that llama.cpp loads, its
    tokenizer and chat template included. ``ftype`` is f32, f16 or q8_0 (1-D tensors stay F32, as in
    llama.cpp). Written to a temporary file and renamed, so a crash never leaves a half file at ``out``.
    ``_permute=False`` writes a deliberately wrong file: the tests show they would catch it."""
    if ftype not in _FILE_TYPES:
        raise ConfigError(f"GGUF type {ftype!r} cannot be written; choose one of {', '.join(FTYPES)}.")
    file_type, qtype = _FILE_TYPES[ftype]
    hf_dir, out = Path(hf_dir), Path(out)
    config = _llama_config(hf_dir)
    writer = gguf.GGUFWriter(None, _LLAMA)  # the path is given when writing (_write_atomically)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(config.get("_name_or_path") or config.get("_model_name_or_path") or hf_dir.name)
    writer.add_file_type(file_type)
    if qtype == gguf.GGMLQuantizationType.Q8_0:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hparams(writer, config)
    _add_tokenizer(writer, hf_dir, config["vocab_size"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    with safe_open(str(hf_dir / "model.safetensors"), framework="numpy") as weights:
        for key in weights.keys():  # noqa: SIM118 - safe_open is not iterable
            if key == "lm_head.weight" and config.get("tie_word_embeddings"):
                continue  # llama.cpp uses token_embd as the output matrix when there is no output tensor
            name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise RagloopError(
                    f"{hf_dir}: tensor {key!r} has no llama.cpp counterpart; not a plain Llama."
                )
            data = weights.get_tensor(key).astype(np.float32)
            heads = _rotary_heads(name, config)
            if heads is not None and _permute:
                data = _rotary_permute(data, heads)
            if data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(name, data)
            elif qtype == gguf.GGMLQuantizationType.F16 or data.shape[-1] % 32:
                # Q8_0 packs rows in blocks of 32; llama.cpp's converter falls back to F16 the same way.
                writer.add_tensor(name, data.astype(np.float16))
            else:
                # quantize returns the packed bytes with their byte shape; GGUFWriter derives the logical
                # shape from it, so raw_shape must NOT be passed (it would be read as the byte shape).
                writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    _write_atomically(writer, out)
    return out


def base_gguf(settings: Settings, ftype: str = "q8_0") -> Path:
    """The base GGUF of ``[generator] model`` in format ``ftype``, written once into the model cache
    beside its Hugging Face folder (keyed by the base's content hash, the format and WRITER_VERSION) and
    reused by every home. ``q4_1`` is the packaged file itself: it is what the packaged safetensors were
    dequantised from, so no other file is needed for it."""
    model = settings.generator.model
    if ftype == "q4_1":
        if model != PACKAGED:
            raise ConfigError(
                f"Base format q4_1 is the packaged SmolLM2 file only; for {model!r} choose "
                f"{', '.join(FTYPES)}."
            )
        return packaged_gguf()
    if ftype not in _FILE_TYPES:
        raise ConfigError(f"Base format {ftype!r} is unknown; choose q4_1 or one of {', '.join(FTYPES)}.")
    hf_dir, base_hash = resolve_model(model, settings.model_cache_dir)
    target = settings.model_cache_dir / f"{base_hash}.{ftype}.w{WRITER_VERSION}.gguf"
    if not target.is_file():
        write_base_gguf(hf_dir, target, ftype)
    return target


def _llama_config(hf_dir: Path) -> dict[str, Any]:
    """config.json of a Llama whose every feature this writer maps; anything else is refused by name."""
    path = hf_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{hf_dir} has no config.json: not a Hugging Face model folder.")
    config = json.loads(path.read_text())
    archs = config.get("architectures") or ["?"]
    if config.get("model_type") != "llama" or archs[0] != "LlamaForCausalLM":
        raise RagloopError(
            f"{hf_dir} is a {archs[0]} ({config.get('model_type')}); only LlamaForCausalLM is converted to GGUF."
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise RagloopError(f"{hf_dir}: rope scaling {rope} is not supported by this converter.")
    return config


def _add_hparams(writer: gguf.GGUFWriter, config: dict[str, Any]) -> None:
    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    rope = config.get("rope_parameters") or {}
    writer.add_vocab_size(config["vocab_size"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _add_tokenizer(writer: gguf.GGUFWriter, hf_dir: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer as llama.cpp reads it ("gpt2" model): tokens by id, their types
    (added special tokens are control tokens, which llama.cpp never splits and never prints), merges,
    special ids, whether BOS is added, the pre-tokenizer regex family and the chat template."""
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"{hf_dir} has no tokenizer.json; a fast (tokenizers) tokenizer is needed.")
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise RagloopError(
            f"{hf_dir}: only byte-level BPE tokenizers are converted, not {model.get('type')}."
        )
    by_id: dict[int, str] = {i: token for token, i in model["vocab"].items()}
    types = {i: gguf.TokenType.NORMAL for i in by_id}
    for added in tokenizer.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    if max(by_id) >= vocab_size:
        raise RagloopError(f"{hf_dir}: token id {max(by_id)} is beyond the model's vocab_size {vocab_size}.")
    # Embedding rows no token uses (vocab padded to a round size) get placeholder names, as llama.cpp does.
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(hf_dir, tokenizer, by_id))
    writer.add_token_list([by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)])
    writer.add_token_types([types.get(i, gguf.TokenType.UNUSED) for i in range(vocab_size)])
    # SpecialVocab is llama.cpp's own reader of merges (both tokenizer.json formats), special token ids,
    # add_bos/add_eos (from the post-processor or tokenizer_config.json) and the chat template (from
    # tokenizer_config.json or chat_template.jinja).
    special = gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=vocab_size)
    special.add_special_token.setdefault("bos", False)  # llama.cpp's BPE default is False; say it
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_space_prefix(False)


# Pre-tokenizers llama.cpp implements, by the pre_tokenizer of tokenizer.json that they reproduce.
_GPT2_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}
# SmolLM/SmolLM2's vocabulary (sha256 of its tokens by id): trained with "smollm" (digits split one by one,
# then GPT-2's regex), even when a folder converted from its GGUF by transformers lost the Digits step.
_KNOWN_VOCABS = {"d1f2ce856b324081b621d9e2e8dbd22879f462329f3fd4aa39fa758dddb2ce55": "smollm"}


def _pre_tokenizer(hf_dir: Path, tokenizer: dict[str, Any], by_id: dict[int, str]) -> str:
    """llama.cpp's ``tokenizer.ggml.pre``: the regex family it splits text with before BPE. llama.cpp's
    converter recognises it by hashing the tokens of a test text; here the tokenizer.json structure says
    it, and a table of known vocabularies names the models whose saved folder lost it."""
    digest = hashlib.sha256("\n".join(by_id[i] for i in sorted(by_id)).encode()).hexdigest()
    if digest in _KNOWN_VOCABS:
        return _KNOWN_VOCABS[digest]
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    shape = [
        {k: step.get(k) for k in ("type", "add_prefix_space", "use_regex", "individual_digits")}
        for step in steps
    ]
    shape = [{k: v for k, v in step.items() if v is not None} for step in shape]
    if shape == [_GPT2_BYTE_LEVEL]:
        return "gpt-2"
    if shape == [_DIGITS, _GPT2_BYTE_LEVEL]:
        return "smollm"
    raise RagloopError(
        f"{hf_dir}: pre-tokenizer {pre} has no llama.cpp counterpart known to ragloop (GPT-2's byte-level "
        "regex, optionally after splitting digits, is)."
    )


# Shared helpers --------------------------------------------------------------------------------------


def _rotary_heads(gguf_name: str, config: dict[str, Any]) -> int | None:
    """How many heads the rows of a q or k projection are grouped in; None for other tensors."""
    if ".attn_q." in gguf_name:
        return config["num_attention_heads"]
    if ".attn_k." in gguf_name:
        return config.get("num_key_value_heads") or config["num_attention_heads"]
    return None


def _rotary_permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Rows in transformers' rotate_half order -> llama.cpp's interleaved order, head by head (a weight
    matrix, a bias vector or a lora_b: anything whose first axis is the projection's output)."""
    return (
        rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


def _write_atomically(writer: gguf.GGUFWriter, out: Path) -> None:
    """Write to a temporary name beside ``out``, then rename: readers see the whole file or none."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
