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


def _check_model(model: str) -> str:
    if model == "default":
        return model
    path = Path(model).expanduser().resolve()
    if not path.is_file():
        fail(f"model file not found: {model}")
    return str(path)


def _check_adapter(adapter: Path, model: str) -> str:
    from qfserve.services.adapters import AdapterError, check_adapter

    try:
        return check_adapter(adapter, model)
    except AdapterError as exc:
        fail(str(exc))


@app.command("publish")
def publish(
    api_path: Annotated[str, typer.Argument(help="The API address: 2-64 of a-z 0-9 _ - (e.g. qianfan_bloomz_7b_compressed).")],
    model: Annotated[str, typer.Option(help="`default` (embedded SmolLM2-135M) or a GGUF path.")] = "default",
    adapter: Annotated[Optional[Path], typer.Option(help="A LoRA adapter folder made by `qfserve sft train`.")] = None,
    profile: Annotated[str, typer.Option(help=f"Limits profile: {', '.join(PROFILES)}.")] = DEFAULT_PROFILE,
    rpm: Annotated[int, typer.Option(help="Requests per minute per app.")] = service_store.DEFAULT_RPM,
    tpm: Annotated[int, typer.Option(help="Tokens per minute per app.")] = service_store.DEFAULT_TPM,
    safety: Annotated[str, typer.Option(help="Content safety policy: off, default or strict.")] = "default",
    replace: Annotated[bool, typer.Option(help="Replace a service already at this address.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    as_json: JsonFlag = False,
) -> None:
    """Publish a service. A running server on the same data dir serves it from its next request."""
    try:
        service_store.check_api_path(api_path)
        get_profile(profile)
    except ValueError as exc:
        fail(str(exc))
    model = _check_model(model)
    adapter_dir = _check_adapter(adapter, model) if adapter is not None else None
    with open_store(data_dir) as store:
        try:
            service = service_store.publish_service(
                store, api_path, model=model, adapter=adapter_dir, profile=profile,
                rpm=rpm, tpm=tpm, safety=safety, replace=replace,
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
