"""Publishing a service, checked end to end: the one implementation the CLI and the console share."""

from __future__ import annotations

import os
from pathlib import Path

from qfserve.services.profiles import get_profile
from qfserve.store import services as service_store
from qfserve.store.db import Store


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


def publish(
    store: Store,
    api_path: str,
    *,
    model: str = "default",
    adapter: str | os.PathLike | None = None,
    profile: str,
    rpm: int = service_store.DEFAULT_RPM,
    tpm: int = service_store.DEFAULT_TPM,
    safety: str = "default",
    replace: bool = False,
) -> service_store.Service:
    """Validate every part (address, profile, model file, adapter's base) and publish."""
    try:
        service_store.check_api_path(api_path)
        get_profile(profile)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    model = check_model(model)
    from qfserve.services.adapters import check_adapter  # imports the engine's model look-up: only when needed

    adapter_dir = check_adapter(adapter, model) if adapter is not None else None  # AdapterError is a ValueError
    try:
        return service_store.publish_service(
            store, api_path, model=model, adapter=adapter_dir, profile=profile,
            rpm=rpm, tpm=tpm, safety=safety, replace=replace,
        )
    except service_store.ServiceExists as exc:
        raise PublishError(str(exc)) from None
    except ValueError as exc:
        raise PublishError(str(exc)) from None


def change(
    store: Store,
    api_path: str,
    *,
    profile: str | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    safety: str | None = None,
) -> service_store.Service:
    """Change a service's limits or policy, keeping its model and adapter."""
    current = service_store.get_service(store, api_path)
    if current is None:
        raise PublishError(f"no service at {api_path!r}")
    try:
        get_profile(profile or current.profile)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    try:
        return service_store.publish_service(
            store, api_path, model=current.model, adapter=current.adapter,
            profile=profile or current.profile,
            rpm=current.rpm if rpm is None else rpm,
            tpm=current.tpm if tpm is None else tpm,
            safety=safety or current.safety, replace=True,
        )
    except ValueError as exc:
        raise PublishError(str(exc)) from None
