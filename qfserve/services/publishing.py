"""Publishing and changing a service, checked end to end: the one implementation the CLI and the
console share. Every refusal is a PublishError whose message says what to do."""

from __future__ import annotations

import os
from pathlib import Path

from qfserve.services.profiles import DEFAULT_PROFILE, get_profile
from qfserve.store import services as service_store
from qfserve.store.db import Store
from qfserve.store.services import Service

KEEP = object()  # `update`: leave this setting as it is


class PublishError(ValueError):
    """A publish (or change) refused, with a message that says what to do."""


def check_model(model: str) -> str:
    """`default`, or a GGUF path made absolute; raises PublishError when the file is missing."""
    if model == "default":
        return model
    path = Path(model).expanduser().resolve()
    if not path.is_file():
        raise PublishError(f"model file not found: {model}")
    return str(path)


def check_adapter(adapter: str | os.PathLike, model: str) -> str:
    """The adapter folder, if it was trained on exactly this base model."""
    from qfserve.services.adapters import AdapterError, check_adapter as check  # imports the model look-up

    try:
        return check(adapter, model)
    except AdapterError as exc:
        raise PublishError(str(exc)) from None


def check_profile(profile: str) -> str:
    try:
        return get_profile(profile).name
    except ValueError as exc:
        raise PublishError(str(exc)) from None


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
) -> Service:
    """Validate every part (address, settings, profile, model file, adapter's base) and publish a new
    service. `preset`: the address is one of the SDK's own endpoint names (`--for-model`)."""
    try:
        service_store.check_api_path(api_path, preset=preset)
        service_store.check_settings(rpm=rpm, tpm=tpm, safety=safety, top_k=top_k, min_p=min_p)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    profile = check_profile(profile)
    model = check_model(model)
    adapter_dir = check_adapter(adapter, model) if adapter is not None else None
    try:
        return service_store.publish_service(
            store, api_path, model=model, adapter=adapter_dir, profile=profile, rpm=rpm, tpm=tpm,
            safety=safety, top_k=top_k, min_p=min_p, preset=preset,
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
    if "model" in changes:
        changes["model"] = check_model(changes["model"])
    final_model = changes.get("model", current.model)
    if changes.get("adapter") is not None:
        changes["adapter"] = check_adapter(changes["adapter"], final_model)
    elif "model" in changes and "adapter" not in changes and current.adapter:
        check_adapter(current.adapter, final_model)
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
