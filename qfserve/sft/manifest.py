"""The adapter folder's `manifest.json` and file hashing: the API the server and CLI use.

`service publish --adapter DIR` compares `load_manifest(DIR)["base"]["sha256"]` with
`base_hash(<the service's base model>)` and refuses a mismatch: a LoRA adapter is only meaningful
on the exact weights it was trained against. This module imports no torch, so the server can use
it without the training dependencies.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

MANIFEST_NAME = "manifest.json"
ADAPTER_GGUF_NAME = "adapter.gguf"  # llama.cpp LoRA adapter
PEFT_DIR_NAME = "peft"  # Hugging Face PEFT folder (vLLM --lora-modules)
TRAIN_LOG_NAME = "train_log.jsonl"
MANIFEST_FORMAT = "qfserve-sft/1"

_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_sha256(folder: str) -> str:
    """A folder's hash: sha256 over the sorted (relative path, file sha256) of every file.

    For a Hugging Face base model folder, where the weights span several files.
    """
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(f"{os.path.relpath(full, folder)}\0{base_hash(full)}\n".encode())
    return digest.hexdigest()


def base_hash(path: str | os.PathLike) -> str:
    """sha256 (hex) of a model file, or of a model folder's contents.

    Files are ~100 MB and get hashed on every publish, so results are cached per process,
    keyed by (real path, size, mtime): a file replaced in place gets a new mtime and is rehashed.
    """
    real = os.path.realpath(path)
    if os.path.isdir(real):
        return _folder_sha256(real)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is None:
        cached = file_sha256(real)
        with _hash_lock:
            _hash_cache[key] = cached
    return cached


def load_manifest(adapter_dir: str | os.PathLike) -> dict:
    """The adapter folder's manifest; raises FileNotFoundError / ValueError when unusable."""
    path = Path(adapter_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{adapter_dir}: no {MANIFEST_NAME}; not a `qfserve sft train` output")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: unknown manifest format")
    return manifest


def adapter_gguf_path(adapter_dir: str | os.PathLike) -> str:
    """Absolute path of the llama.cpp LoRA adapter inside an adapter folder.

    The manifest names the file; it must resolve, symlinks followed, to a file inside the folder
    (ValueError otherwise): a manifest can't point the engine at an arbitrary file.
    """
    manifest = load_manifest(adapter_dir)
    files = manifest.get("files")
    name = files.get("gguf") if isinstance(files, dict) else None
    if not name:
        raise FileNotFoundError(f"{adapter_dir}: this adapter has no llama.cpp GGUF export")
    if not isinstance(name, str):
        raise ValueError(f"{adapter_dir}: {MANIFEST_NAME} names no valid GGUF file")
    folder = Path(adapter_dir).resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder):
        raise ValueError(f"{adapter_dir}: the manifest's GGUF file {name!r} is outside the adapter folder")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: listed in the manifest but missing")
    return str(path)


def write_manifest(adapter_dir: str | os.PathLike, manifest: dict) -> Path:
    path = Path(adapter_dir) / MANIFEST_NAME
    manifest = {"format": MANIFEST_FORMAT, **manifest}
    path.write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path
