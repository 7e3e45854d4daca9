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
import re
import uuid
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors import SafetensorError, safe_open

from ragloop.config import Settings
from ragloop.errors import ConfigError, GenerationError, RagloopError
from ragloop.generation.models import PACKAGED, file_sha256, packaged_gguf, resolve_model
from ragloop.store.models import ModelVersion

# Bump when the bytes written for the same input change: cached base files and each adapter's lineage
# are keyed by it, so every file written by an older converter is written again on next use.
CONVERTER_VERSION = 1
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
    beside its Hugging Face folder (keyed by the base's content hash, the format and CONVERTER_VERSION) and
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
    target = settings.model_cache_dir / f"{base_hash}.{ftype}.w{CONVERTER_VERSION}.gguf"
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
    if tokenizer.get("normalizer"):
        raise RagloopError(f"{hf_dir}: the tokenizer normalizes text first, which llama.cpp's BPE does not.")
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
# SmolLM/SmolLM2's vocabulary (sha256 of its tokens by id): "smollm" (digits split one by one, then GPT-2's
# regex) as in the shipped GGUF, although the folder transformers converts from that GGUF lost the Digits
# step. The vocabulary has no multi-digit token, so both split every text into the same tokens.
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


# LoRA adapters ---------------------------------------------------------------------------------------

GGUF_DIR = "gguf"  # inside the version's adapter folder
# A subfolder, not files beside the adapter's: a version's identity and integrity check (adapter_files)
# and its export cover the folder's plain files only, and the converted file is derived, not registered.
_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
# PEFT options whose effect a GGUF LoRA (one B·A per linear layer, no extra tensors) cannot carry.
_UNSUPPORTED = {
    "use_dora": "DoRA (its magnitude vectors)",
    "modules_to_save": "modules_to_save (fully trained layers)",
    "lora_bias": "LoRA bias terms",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D layers, not a Llama's)",
    "layer_replication": "layer_replication",
    "alora_invocation_tokens": "aLoRA",
    "trainable_token_indices": "trainable tokens",
}


def convert_lora(adapter_dir: Path, base_hf_dir: Path, out: Path, *, _permute: bool = True) -> dict[str, Any]:
    """Write ``out``, the GGUF LoRA adapter llama.cpp loads beside the base GGUF of ``base_hf_dir``, from
    the PEFT adapter folder ``adapter_dir``; returns a summary (pairs, ranks, alpha, whether scaling was
    folded). Adapters with a feature llama.cpp cannot apply are refused by name. Tensors are F32 so that
    the adapter adds no rounding of its own.

    Scaling: llama.cpp multiplies each B·A by ``alpha / rank`` (rank read from that pair) when alpha is set,
    and by 1 when it is 0. Plain PEFT LoRA (alpha/r, rank_pattern included) is that; rsLoRA (alpha/sqrt r)
    and alpha_pattern are not, so their per-module scaling is folded into lora_b and alpha is written 0.
    ``_permute=False`` leaves out the rotary permutation: wrong on purpose, for the tests."""
    adapter_dir = Path(adapter_dir)
    peft = _peft_config(adapter_dir)
    config = _llama_config(Path(base_hf_dir))
    pairs = _lora_pairs(adapter_dir)
    alpha = float(peft["lora_alpha"])
    fold = bool(peft.get("use_rslora") or peft.get("alpha_pattern"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    shapes = _linear_shapes(config)
    writer = gguf.GGUFWriter(None, _LLAMA)  # the loader refuses an adapter of another architecture
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0 if fold else alpha)
    ranks = set()
    for module, (lora_a, lora_b) in sorted(pairs.items()):
        name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        kind = name.split(".")[-2] if name and name.startswith("blk.") else None
        if kind not in shapes:
            raise RagloopError(
                f"{adapter_dir}: LoRA on {module} is not supported; llama.cpp adapters apply to the "
                "attention and MLP projections of a Llama only."
            )
        rank = lora_a.shape[0]
        if lora_b.shape[1] != rank or (lora_a.shape[1], lora_b.shape[0]) != shapes[kind]:
            raise RagloopError(
                f"{adapter_dir}: {module} has lora_A {lora_a.shape} and lora_B {lora_b.shape}, which do not "
                f"fit the base's {kind} (in, out) = {shapes[kind]}: an adapter for another base model?"
            )
        ranks.add(rank)
        if fold:
            module_alpha = float(_pattern_value(peft.get("alpha_pattern") or {}, module, alpha))
            lora_b = lora_b * np.float32(module_alpha / (rank**0.5 if peft.get("use_rslora") else rank))
        heads = _rotary_heads(name, config)
        if heads is not None and _permute:
            lora_b = _rotary_permute(lora_b, heads)
        # numpy's (r, in) and (out, r) are GGUF's ne = [in, r] and [r, out]: what llama.cpp expects.
        writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(lora_a))
        writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(lora_b))
    _write_atomically(writer, Path(out))
    return {"pairs": len(pairs), "ranks": sorted(ranks), "alpha": 0.0 if fold else alpha, "folded": fold}


def gguf_adapter_for(settings: Settings, version: ModelVersion) -> Path:
    """The GGUF LoRA adapter of a registered version, converted on first use and kept in the home beside
    its PEFT adapter (``<adapter_path>/gguf/adapter.gguf``) with its lineage in ``adapter.gguf.json``: the
    sha256 of each source file, the base's hash, the converter version and the GGUF's own sha256. A file
    whose lineage does not match (the adapter or the converter changed) is converted again. The source
    files are checked against the sha256s the version was registered with first, so a truncated or
    overwritten adapter is refused with what is wrong instead of being converted."""
    if not version.adapter_path:
        raise RagloopError(f"Model version {version.id} is a base model: it has no adapter to convert.")
    folder = Path(version.adapter_path)
    sources = _verified_sources(version, folder)
    out = folder / GGUF_DIR / "adapter.gguf"
    record = out.with_name("adapter.gguf.json")
    lineage = {
        "version": version.id,
        "source_files": sources,
        "base_hash": version.base_hash,
        "converter_version": CONVERTER_VERSION,
    }
    try:
        kept = json.loads(record.read_text())
    except (OSError, ValueError):
        kept = None
    current = kept and {k: kept.get(k) for k in lineage} == lineage and out.is_file()
    if current and file_sha256(out) == kept.get("sha256"):
        return out
    base_dir, base_hash = resolve_model(version.base_model, settings.model_cache_dir)
    if version.base_hash and base_hash != version.base_hash:
        raise ConfigError(
            f"The base model {version.base_model!r} on this machine (hash {base_hash[:12]}) is not the one "
            f"{version.id} was trained on ({version.base_hash[:12]}); put the original weights back to serve it."
        )
    summary = convert_lora(folder, base_dir, out)
    # Written last and atomically: a lineage record on disk always describes a whole adapter.gguf.
    lineage |= {"sha256": file_sha256(out), "summary": summary}
    tmp = _tmp_beside(record)
    tmp.write_text(json.dumps(lineage, indent=2))
    os.replace(tmp, record)
    return out


def _peft_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    try:
        peft = json.loads(path.read_text())
    except OSError as exc:
        raise GenerationError(f"{adapter_dir} has no readable adapter_config.json ({exc}).") from exc
    except ValueError as exc:
        raise GenerationError(f"{path} is not valid JSON ({exc}): a damaged adapter.") from exc
    if peft.get("peft_type", "LORA") != "LORA":
        raise RagloopError(f"{adapter_dir}: a {peft.get('peft_type')} adapter; only LoRA converts to GGUF.")
    unsupported = [what for key, what in _UNSUPPORTED.items() if peft.get(key)]
    if peft.get("bias", "none") != "none":
        unsupported.append(f"bias={peft['bias']!r}")
    if unsupported:
        raise RagloopError(
            f"{adapter_dir} uses {', '.join(unsupported)}, which llama.cpp's LoRA format cannot apply; "
            "serve this version with the transformers backend."
        )
    return peft


def _lora_pairs(adapter_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """HF module name -> (lora_A (r, in), lora_B (out, r)) as F32, from adapter_model.safetensors."""
    halves: dict[str, dict[str, np.ndarray]] = {}
    path = adapter_dir / "adapter_model.safetensors"
    try:
        with safe_open(str(path), framework="numpy") as weights:
            tensors = {key: weights.get_tensor(key) for key in weights.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as exc:  # what a truncated or overwritten file raises
        raise GenerationError(
            f"{path} cannot be read ({exc}): the adapter is damaged. Restore it from a backup, or register "
            "the training run again."
        ) from exc
    for key, value in tensors.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise RagloopError(
                f"{adapter_dir}: tensor {key!r} is not a LoRA matrix (embeddings, lm_head or norms "
                "trained in the adapter), which llama.cpp's LoRA format cannot carry."
            )
        halves.setdefault(match["module"], {})[match["ab"]] = value.astype(np.float32)
    if not halves:
        raise GenerationError(f"{adapter_dir}/adapter_model.safetensors holds no LoRA tensors.")
    incomplete = sorted(module for module, ab in halves.items() if set(ab) != {"A", "B"})
    if incomplete:
        raise GenerationError(f"{adapter_dir}: {incomplete[0]} lacks lora_A or lora_B: a damaged adapter.")
    return {module.removeprefix("base_model.model."): (ab["A"], ab["B"]) for module, ab in halves.items()}


def _linear_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) of each adapted projection of a Llama, by its GGUF name."""
    hidden, ffn = config["hidden_size"], config["intermediate_size"]
    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // n_head
    kv = (config.get("num_key_value_heads") or n_head) * head_dim
    return {
        "attn_q": (hidden, n_head * head_dim),
        "attn_k": (hidden, kv),
        "attn_v": (hidden, kv),
        "attn_output": (n_head * head_dim, hidden),
        "ffn_gate": (hidden, ffn),
        "ffn_up": (hidden, ffn),
        "ffn_down": (ffn, hidden),
    }


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches the module name or a dotted suffix of it."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _verified_sources(version: ModelVersion, folder: Path) -> dict[str, str]:
    """sha256 of the adapter files the conversion reads, checked against the registered ones."""
    expected: dict[str, str] = (version.meta or {}).get("adapter_files") or {}
    problems = []
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (folder / name).is_file():
            problems.append(f"{name} is missing from {folder}")
        elif name in expected and file_sha256(folder / name) != expected[name]:
            size = (folder / name).stat().st_size
            problems.append(
                f"{name} is not the file registered ({size:,} bytes now: truncated or overwritten)"
            )
    if problems:
        raise GenerationError(
            f"The adapter of model version {version.id} cannot be converted for llama.cpp: {'; '.join(problems)}. "
            "Restore its adapter folder from a backup, or register the training run again."
        )
    return {name: file_sha256(folder / name) for name in ("adapter_config.json", "adapter_model.safetensors")}


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
    tmp = _tmp_beside(out)
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


def _tmp_beside(path: Path) -> Path:
    """A temporary name in ``path``'s folder (so the final rename is atomic), unique per writer: two
    threads or processes converting the same file never write into one another's."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
