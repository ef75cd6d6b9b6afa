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


def _check_remote(data_dir: Path, engine: str, model: str, adapter: Path | None) -> tuple[str | None, list[str]]:
    """scale-out (issue 11): the pool exists, and its replicas serve the model or take the adapter."""
    import asyncio

    from qfserve.services.adapters import AdapterError, check_remote_adapter
    from qfserve.services.remote import RemoteServiceError, check_remote_service
    from qfserve.store import engines as pool_store

    if model == "default":
        fail("with --engine, --model names the model the replicas serve (or the name to serve the adapter under)")
    with open_store(data_dir) as store:
        row = pool_store.get_pool(store, engine)
    if row is None:
        fail(f"no engine named {engine!r}: add it with `qfserve engine add {engine} --url …`")
    adapter_dir = None
    if adapter is not None:
        try:
            adapter_dir = check_remote_adapter(adapter, row.options.get("base_sha256"))
        except AdapterError as exc:
            fail(str(exc))
    try:
        notes = asyncio.run(check_remote_service(row, model, adapter_dir))
    except RemoteServiceError as exc:
        fail(str(exc))
    return adapter_dir, notes


@app.command("publish")
def publish(
    api_path: Annotated[str, typer.Argument(help="The API address: 2-20 of a-z 0-9 _ -.")],
    model: Annotated[str, typer.Option(help="`default` (embedded SmolLM2-135M) or a GGUF path; with --engine, the served model or LoRA name.")] = "default",
    adapter: Annotated[Optional[Path], typer.Option(help="A LoRA adapter folder made by `qfserve sft train`. With --engine, it is served under the --model name.")] = None,
    engine: Annotated[str, typer.Option(help="`default` (embedded llama.cpp) or a remote engine added with `qfserve engine add`.")] = "default",
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
    notes: list[str] = []
    if engine == "default":
        model = _check_model(model)
        adapter_dir = _check_adapter(adapter, model) if adapter is not None else None
    else:
        adapter_dir, notes = _check_remote(data_dir, engine, model, adapter)
    with open_store(data_dir) as store:
        try:
            service = service_store.publish_service(
                store, api_path, model=model, adapter=adapter_dir, profile=profile,
                rpm=rpm, tpm=tpm, safety=safety, replace=replace,
                engine=None if engine == "default" else engine,
            )
        except (ValueError, service_store.ServiceExists) as exc:
            fail(str(exc))
    if as_json:
        print_json(service.as_dict())
    else:
        for note in notes:
            console.print(f"  {note}")
        console.print(f"published [bold]{api_path}[/]: model {service.model}"
                      + (f" on engine {service.engine}" if service.engine else "")
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
    table = Table("api_path", "engine", "model", "adapter", "profile", "rpm", "tpm", "safety")
    for s in services:
        table.add_row(s.api_path, s.engine or "default", s.model, s.adapter or "-", s.profile, str(s.rpm),
                      str(s.tpm), s.safety)
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
