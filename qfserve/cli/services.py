"""`qfserve service …`: publish a base model (optionally with a LoRA adapter) under an API address."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from qfserve.cli.common import DEFAULT_DATA_DIR, DataDir, JsonFlag, console, fail, open_store, print_json
from qfserve.services.profiles import DEFAULT_PROFILE, PROFILES, get_profile
from qfserve.store import services as service_store

app = typer.Typer(help="Publish, list and delete chat services.", no_args_is_help=True)


def _models_dir(data_dir: Path, flag: Optional[Path]) -> Optional[Path]:
    """--models-dir, else QFSERVE_MODELS_DIR, else `models_dir` in the data dir's qfserve.toml: as the server reads it."""
    from qfserve.config import load_settings

    return load_settings(data_dir=data_dir, models_dir=flag).models_dir


def _check_model(model: str, models_dir: Optional[Path]) -> str:
    """`default`, or the absolute path of an existing GGUF file (inside the models folder when one is set)."""
    from qfserve.services.engines import resolve_model

    if model == "default":
        return model
    try:
        return resolve_model(model, models_dir)
    except FileNotFoundError as exc:
        fail(str(exc))


def _check_adapter(adapter: Path, model: str, models_dir: Optional[Path]) -> tuple[str, str]:
    """The adapter folder and its GGUF's sha256, pinned so that a file changed later is refused."""
    from qfserve.services.adapters import AdapterError, adapter_sha256, check_adapter

    try:
        folder = check_adapter(adapter, model, models_dir)
        return folder, adapter_sha256(folder)
    except AdapterError as exc:
        fail(str(exc))


@app.command("publish")
def publish(
    api_path: Annotated[str, typer.Argument(help="The API address: 2-20 of a-z 0-9 _ -.")],
    model: Annotated[str, typer.Option(help="`default` (embedded SmolLM2-135M) or a GGUF path.")] = "default",
    adapter: Annotated[Optional[Path], typer.Option(help="A LoRA adapter folder made by `qfserve sft train`.")] = None,
    profile: Annotated[str, typer.Option(help=f"Limits profile: {', '.join(PROFILES)}.")] = DEFAULT_PROFILE,
    rpm: Annotated[int, typer.Option(help="Requests per minute per app.")] = service_store.DEFAULT_RPM,
    tpm: Annotated[int, typer.Option(help="Tokens per minute per app.")] = service_store.DEFAULT_TPM,
    safety: Annotated[str, typer.Option(help="Content safety policy: off, default or strict.")] = "default",
    replace: Annotated[bool, typer.Option(help="Replace a service already at this address.")] = False,
    models_dir: Annotated[Optional[Path], typer.Option(
        help="Refuse model files outside this folder (relative --model paths are taken from it).",
        envvar="QFSERVE_MODELS_DIR", show_envvar=True)] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    as_json: JsonFlag = False,
) -> None:
    """Publish a service. A running server on the same data dir serves it from its next request."""
    try:
        service_store.check_api_path(api_path)
        get_profile(profile)
    except ValueError as exc:
        fail(str(exc))
    folder = _models_dir(data_dir, models_dir)
    model = _check_model(model, folder)
    adapter_dir, adapter_hash = _check_adapter(adapter, model, folder) if adapter is not None else (None, None)
    with open_store(data_dir) as store:
        try:
            service = service_store.publish_service(
                store, api_path, model=model, adapter=adapter_dir, profile=profile,
                rpm=rpm, tpm=tpm, safety=safety, replace=replace, adapter_sha256=adapter_hash,
            )
        except (ValueError, service_store.ServiceExists) as exc:
            fail(str(exc))
    if as_json:
        print_json(service.as_dict())
    else:
        console.print(f"published [bold]{api_path}[/]: model {service.model}"
                      + (f" + adapter {service.adapter}" if service.adapter else "")
                      + f", {profile}, {rpm} RPM, {tpm} TPM, safety {safety}")


@app.command("list")
def list_(data_dir: DataDir = DEFAULT_DATA_DIR, as_json: JsonFlag = False) -> None:
    """List published services with their base model and adapter."""
    with open_store(data_dir) as store:
        services = service_store.list_services(store)
    if as_json:
        print_json([s.as_dict() for s in services])
        return
    table = Table("api_path", "model", "adapter", "profile", "rpm", "tpm", "safety")
    for s in services:
        table.add_row(s.api_path, s.model, s.adapter or "-", s.profile, str(s.rpm), str(s.tpm), s.safety)
    console.print(table)


@app.command("delete")
def delete(api_path: Annotated[str, typer.Argument(help="The API address.")],
           data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Delete a service; a running server stops serving it from its next request."""
    with open_store(data_dir) as store:
        try:
            service_store.delete_service(store, api_path)
        except service_store.ServiceNotFound as exc:
            fail(str(exc))
    console.print(f"deleted service {api_path}")
