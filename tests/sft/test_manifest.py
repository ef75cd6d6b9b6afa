"""The manifest API the server uses to refuse an adapter trained on a different base."""

from __future__ import annotations

import hashlib
import os

import pytest

from qfserve.sft import manifest


def test_base_hash_is_sha256_and_cached_by_size_and_mtime(tmp_path, monkeypatch):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"weights v1")
    assert manifest.base_hash(model) == hashlib.sha256(b"weights v1").hexdigest()

    calls = []
    real_hash = manifest.file_sha256
    monkeypatch.setattr(manifest, "file_sha256", lambda p: calls.append(p) or real_hash(p))
    manifest.base_hash(model)
    assert calls == []  # unchanged file: served from the cache

    model.write_bytes(b"weights v2")
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert manifest.base_hash(model) == hashlib.sha256(b"weights v2").hexdigest()
    assert len(calls) == 1


def test_folder_hash_changes_with_any_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"a")
    first = manifest.base_hash(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"bb")
    assert manifest.base_hash(tmp_path) != first


def test_load_manifest_and_adapter_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        manifest.load_manifest(tmp_path)
    manifest.write_manifest(tmp_path, {"base": {"sha256": "x"}, "files": {"gguf": "adapter.gguf"}})
    assert manifest.load_manifest(tmp_path)["base"]["sha256"] == "x"
    with pytest.raises(FileNotFoundError, match="missing"):
        manifest.adapter_gguf_path(tmp_path)
    (tmp_path / "adapter.gguf").write_bytes(b"GGUF")
    assert manifest.adapter_gguf_path(tmp_path) == str((tmp_path / "adapter.gguf").resolve())


def test_unknown_manifest_format_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": "other/9"}')
    with pytest.raises(ValueError, match="unknown manifest format"):
        manifest.load_manifest(tmp_path)
