"""Publishing and changing a service, checked end to end: the one implementation the CLI and the
console share. Every refusal is a PublishError whose message says what to do."""

from __future__ import annotations

import os
from typing import Callable

from qfserve.services.profiles import DEFAULT_PROFILE, get_profile
from qfserve.store import services as service_store
from qfserve.store.db import Store
from qfserve.store.services import Service

KEEP = object()  # `update`: leave this setting as it is


class PublishError(ValueError):
    """A publish (or change) refused, with a message that says what to do."""


def check_model(model: str, models_dir: str | os.PathLike | None = None) -> str:
    """`default`, or the absolute path of an existing GGUF file (inside `models_dir` when one is set)."""
    from qfserve.services.engines import resolve_model

    if model == "default":
        return model
    try:
        return resolve_model(model, models_dir)
    except FileNotFoundError as exc:
        raise PublishError(str(exc)) from None


def check_adapter(adapter: str | os.PathLike, model: str, models_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """The adapter folder, if it was trained on exactly this base model, and its GGUF's sha256,
    pinned so that a file changed after publishing is refused."""
    from qfserve.services.adapters import AdapterError, adapter_sha256, check_adapter as check

    try:
        folder = check(adapter, model, models_dir)
        return folder, adapter_sha256(folder)
    except AdapterError as exc:
        raise PublishError(str(exc)) from None


def check_profile(profile: str) -> str:
    try:
        return get_profile(profile).name
    except ValueError as exc:
        raise PublishError(str(exc)) from None


def check_capacity(store: Store, profile: str, model: str, on_note: Callable[[str], None] | None) -> None:
    """The embedded engine's configured KV cells must hold the profile's longest request (issue 15);
    going past the model's trained context is only a warning."""
    from qfserve.services.capacity import capacity_notes

    try:
        notes = capacity_notes(profile, model, store.data_dir)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    for note in notes:
        if on_note is not None:
            on_note(f"warning: {note}")


def publish(
    store: Store,
    api_path: str,
    *,
    model: str = "default",
    adapter: str | os.PathLike | None = None,
    profile: str = DEFAULT_PROFILE,
    rpm: int = service_store.DEFAULT_RPM,
    tpm: int = service_store.DEFAULT_TPM,
    safety: str = "default",
    top_k: int | None = None,
    min_p: float | None = None,
    preset: bool = False,
    models_dir: str | os.PathLike | None = None,
    engine: str = "default",
    on_note: Callable[[str], None] | None = None,
) -> Service:
    """Validate every part (address, settings, profile, model file, adapter's base) and publish a new
    service. `preset`: the address is one of the SDK's own endpoint names (`--for-model`).
    `models_dir`: model files must lie inside it (the server's --models-dir). `engine`: a remote
    engine pool (then `model` is what its replicas serve, checked on them; `on_note` hears how)."""
    try:
        service_store.check_api_path(api_path, preset=preset)
        service_store.check_settings(rpm=rpm, tpm=tpm, safety=safety, top_k=top_k, min_p=min_p)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    profile = check_profile(profile)
    remote = None if engine in ("default", "", None) else engine
    pin = None
    if remote is None:
        model = check_model(model, models_dir)
        adapter_dir, pin = check_adapter(adapter, model, models_dir) if adapter is not None else (None, None)
        check_capacity(store, profile, model, on_note)
    else:
        if service_store.get_service(store, api_path) is not None:  # before calling on the replicas
            raise PublishError(f"a service is already published at {api_path!r}: change it with "
                               f"`qfserve service update {api_path} …`, or `qfserve service delete {api_path}` first")
        adapter_dir = check_remote(store, remote, model, adapter, on_note)
    try:
        return service_store.publish_service(
            store, api_path, model=model, adapter=adapter_dir, profile=profile, rpm=rpm, tpm=tpm,
            safety=safety, top_k=top_k, min_p=min_p, preset=preset, engine=remote, adapter_sha256=pin,
        )
    except ValueError as exc:  # ServiceExists, and the store's own checks
        raise PublishError(str(exc)) from None


def update(
    store: Store,
    api_path: str,
    *,
    model=KEEP,
    adapter=KEEP,
    profile=KEEP,
    rpm=KEEP,
    tpm=KEEP,
    safety=KEEP,
    top_k=KEEP,
    min_p=KEEP,
    models_dir: str | os.PathLike | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Service:
    """Change only the settings given, keeping the rest. `adapter=None` serves the base alone;
    `top_k=None` / `min_p=None` go back to the engine's defaults. The adapter is checked against the
    model it will run on, whichever of the two changes."""
    changes = {name: value for name, value in (("model", model), ("adapter", adapter), ("profile", profile),
                                               ("rpm", rpm), ("tpm", tpm), ("safety", safety),
                                               ("top_k", top_k), ("min_p", min_p)) if value is not KEEP}
    if not changes:
        raise PublishError("nothing to change: name at least one setting")
    current = service_store.get_service(store, api_path)
    if current is None:
        raise PublishError(f"no service at {api_path!r} (see `qfserve service list`)")
    try:
        service_store.check_settings(**{k: v for k, v in changes.items() if k in ("rpm", "tpm", "safety", "top_k", "min_p")})
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    if "profile" in changes:
        changes["profile"] = check_profile(changes["profile"])
    if current.engine is not None:  # scale-out (issue 11): checked on the replicas, not as files
        if "model" in changes or changes.get("adapter") is not None:
            changes["adapter"] = check_remote(store, current.engine, changes.get("model", current.model),
                                              changes.get("adapter", current.adapter), None)
        try:
            return service_store.update_service(store, api_path, **changes)
        except (ValueError, service_store.ServiceNotFound) as exc:
            raise PublishError(str(exc)) from None
    if "model" in changes:
        changes["model"] = check_model(changes["model"], models_dir)
    final_model = changes.get("model", current.model)
    if changes.get("adapter") is not None:
        changes["adapter"], changes["adapter_sha256"] = check_adapter(changes["adapter"], final_model, models_dir)
    elif "adapter" in changes:  # serve the base alone
        changes["adapter_sha256"] = None
    elif "model" in changes and current.adapter:
        check_adapter(current.adapter, final_model, models_dir)
    if "model" in changes or "profile" in changes:
        check_capacity(store, changes.get("profile", current.profile), final_model, on_note)
    try:
        return service_store.update_service(store, api_path, **changes)
    except (ValueError, service_store.ServiceNotFound) as exc:
        raise PublishError(str(exc)) from None


def change(store: Store, api_path: str, *, profile: str | None = None, rpm: int | None = None,
           tpm: int | None = None, safety: str | None = None) -> Service:
    """The console's form: change limits and policy (None: keep)."""
    given = {k: v for k, v in (("profile", profile), ("rpm", rpm), ("tpm", tpm), ("safety", safety)) if v is not None}
    if not given:
        current = service_store.get_service(store, api_path)
        if current is None:
            raise PublishError(f"no service at {api_path!r} (see `qfserve service list`)")
        return current
    return update(store, api_path, **given)


# ---- scale-out (issue 11): services on remote engine pools --------------------------------------

def check_remote(store: Store, engine: str, model: str, adapter, on_note: Callable[[str], None] | None) -> str | None:
    """The pool exists; its replicas serve `model`, or take the adapter under that name (loaded at
    run time where they allow it); the adapter was trained on the base the pool declares. Returns the
    adapter folder (or None)."""
    from qfserve.services.adapters import AdapterError, check_remote_adapter
    from qfserve.services.remote import RemoteServiceError, check_remote_service
    from qfserve.store import engines as pool_store

    if model == "default":
        raise PublishError("with --engine, --model names the model the replicas serve "
                           "(or the name to serve the adapter under)")
    row = pool_store.get_pool(store, engine)
    if row is None:
        raise PublishError(f"no engine named {engine!r}: add it with `qfserve engine add {engine} --url …`")
    adapter_dir = None
    if adapter is not None:
        try:
            adapter_dir = check_remote_adapter(adapter, row.options.get("base_sha256"))
        except AdapterError as exc:
            raise PublishError(str(exc)) from None
    try:
        notes = _run(check_remote_service(row, model, adapter_dir))
    except RemoteServiceError as exc:
        raise PublishError(str(exc)) from None
    for note in notes:
        if on_note is not None:
            on_note(note)
    return adapter_dir


def _run(coroutine):
    """Run a coroutine to the end from synchronous code, on or off an event loop's thread."""
    import asyncio
    import concurrent.futures

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
