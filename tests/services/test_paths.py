"""Model and adapter paths (issue 16): GGUF files only, inside the configured folders, pinned at publish."""

from __future__ import annotations

import asyncio
import os

import pytest

from qfserve.engine.prompt import default_model_path
from qfserve.services.adapters import AdapterError, adapter_gguf, adapter_sha256, check_adapter
from qfserve.services.engines import EngineRegistry, ModelUnavailable, resolve_model
from qfserve.sft.manifest import adapter_gguf_path, base_hash, write_manifest


def gguf(path, payload: bytes = b"") -> str:
    path.write_bytes(b"GGUF" + payload)
    return str(path)


def test_model_must_be_a_gguf_file(tmp_path):
    assert resolve_model(gguf(tmp_path / "m.gguf")) == str((tmp_path / "m.gguf").resolve())
    (tmp_path / "passwd").write_text("root:x:0:0")
    for bad, reason in ((tmp_path / "passwd", "not a GGUF file"), (tmp_path / "absent.gguf", "not found"),
                        (tmp_path, "not found")):
        with pytest.raises(ModelUnavailable, match=reason):
            resolve_model(str(bad))


def test_models_dir_confines_models(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    inside = gguf(models / "in.gguf")
    outside = gguf(tmp_path / "out.gguf")
    assert resolve_model("in.gguf", models) == inside  # relative to the folder
    assert resolve_model(inside, models) == inside
    (models / "link.gguf").symlink_to(outside)
    for bad in (outside, "../out.gguf", "link.gguf"):
        with pytest.raises(ModelUnavailable, match="not inside the models folder"):
            resolve_model(bad, models)
    assert resolve_model("default", models) == default_model_path()  # the embedded model is not a path


def test_a_model_that_fails_to_load_is_unavailable(tmp_path):
    class NeverBuilt:
        def __init__(self, path):
            raise AssertionError("the engine must not start on an unloadable file")

    registry = EngineRegistry(NeverBuilt)
    with pytest.raises(ModelUnavailable, match="failed to load"):
        asyncio.run(registry.get(gguf(tmp_path / "junk.gguf", b"\x00" * 64)))
    assert not registry.engines()


def make_adapter(folder, gguf_name: str = "adapter.gguf", base: str | None = None):
    folder.mkdir(exist_ok=True)
    write_manifest(folder, {"base": {"sha256": base or base_hash(default_model_path())}, "files": {"gguf": gguf_name}})
    return folder


def test_manifest_may_not_point_outside_the_adapter_folder(tmp_path):
    outside = tmp_path / "secret.gguf"
    outside.write_bytes(b"GGUF")
    adapter = make_adapter(tmp_path / "adapter", "../secret.gguf")
    with pytest.raises(ValueError, match="outside the adapter folder"):
        adapter_gguf_path(adapter)
    with pytest.raises(AdapterError, match="outside the adapter folder"):
        check_adapter(adapter, "default")
    # nor through a symlink inside it
    linked = make_adapter(tmp_path / "linked", "adapter.gguf")
    os.symlink(outside, linked / "adapter.gguf")
    with pytest.raises(ValueError, match="outside the adapter folder"):
        adapter_gguf_path(linked)
    absolute = make_adapter(tmp_path / "absolute", "/etc/hostname")
    with pytest.raises(ValueError, match="outside the adapter folder"):
        adapter_gguf_path(absolute)


def test_pinned_adapter_refused_once_changed(tmp_path):
    adapter = make_adapter(tmp_path / "adapter")
    gguf(adapter / "adapter.gguf", b"weights v1")
    folder = check_adapter(adapter, "default")
    pin = adapter_sha256(folder)
    assert adapter_gguf(folder, pin) == str((adapter / "adapter.gguf").resolve())
    gguf(adapter / "adapter.gguf", b"weights v2, swapped in after publishing")
    with pytest.raises(AdapterError, match="changed since it was published"):
        adapter_gguf(folder, pin)
    assert adapter_gguf(folder) == str((adapter / "adapter.gguf").resolve())  # no pin: an older service
