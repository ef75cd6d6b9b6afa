"""`qfserve service …`: publish a base model (optionally with a LoRA adapter) under an API address."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from qfserve.cli.common import DataDir, JsonFlag, YesFlag, confirm, console, err_console, fail, open_store, print_json
from qfserve.services import publishing
from qfserve.services.profiles import DEFAULT_PROFILE, PROFILES, sdk_endpoint
from qfserve.store import services as service_store
from qfserve.store.services import Service

app = typer.Typer(help="Publish, change, show, list and delete chat services.", no_args_is_help=True)

ApiPath = Annotated[str, typer.Argument(help="The API address: 2-64 of a-z 0-9 _ -.", show_default=False)]
ModelHelp = "`default` (embedded SmolLM2-135M, tiny: for trying things out) or a GGUF file path."
ProfileHelp = f"Limits profile: {', '.join(PROFILES)}."
SafetyHelp = "Content safety policy: off, default or strict (needs lexicons on `serve`)."
TopKHelp = "Sample from the K most likely tokens only (0: off). Default: the engine's (40)."
MinPHelp = "Drop tokens below P × the top token's probability, 0-1 (0: off). Default: the engine's (0.05)."
ModelsDir = Annotated[Optional[Path], typer.Option(
    help="Refuse model files outside this folder (relative --model paths are taken from it). "
         "Default: the server's (qfserve.toml).", envvar="QFSERVE_MODELS_DIR", show_envvar=True)]


def _engine_default(value: str | None, parse, name: str):
    """`--top-k`/`--min-p` on update: a number, or `default` for the engine's own value (None)."""
    if value is None or value == "default":
        return None
    try:
        return parse(value)
    except ValueError:
        fail(f"{name} takes a number or `default`, got {value!r}")


def _summary(s: Service) -> str:
    sampling = "".join(f", {name} {value}" for name, value in (("top_k", s.top_k), ("min_p", s.min_p))
                       if value is not None)
    return (f"[bold]{s.api_path}[/]: model {s.model}" + (f" on engine {s.engine}" if s.engine else "")
            + (f" + adapter {s.adapter}" if s.adapter else "")
            + f", {s.profile}, {s.rpm} RPM, {s.tpm} TPM, safety {s.safety}{sampling}")


def _note_printer(as_json: bool):
    """What publishing reports as it goes: warnings on stderr always, progress on stdout unless --json."""
    def note(text: str) -> None:
        if text.startswith("warning:"):
            err_console.print(text, highlight=False)
        elif not as_json:
            console.print(f"  {text}", highlight=False)
    return note


def _models_dir(data_dir: Path, flag: Optional[Path]) -> Optional[Path]:
    """--models-dir, else QFSERVE_MODELS_DIR, else `models_dir` in the data dir's qfserve.toml: as the server reads it."""
    from qfserve.config import load_settings

    return load_settings(data_dir=data_dir, models_dir=flag).models_dir


@app.command("publish")
def publish(
    api_path: Annotated[Optional[str], typer.Argument(
        help="The API address: 2-64 of a-z 0-9 _ - (e.g. qianfan_bloomz_7b_compressed). Optional with --for-model.", show_default=False)] = None,
    for_model: Annotated[Optional[str], typer.Option(
        "--for-model", help="Publish at the endpoint the qianfan SDK calls for this model name "
        "(ChatCompletion(model=…)), with its limits profile, e.g. ERNIE-Speed-8K → ernie_speed.")] = None,
    model: Annotated[str, typer.Option(help=ModelHelp)] = "default",
    adapter: Annotated[Optional[Path], typer.Option(help="A LoRA adapter folder made by `qfserve sft train`. "
                                                    "With --engine, it is served under the --model name.")] = None,
    engine: Annotated[str, typer.Option(help="`default` (the embedded llama.cpp engine) or a remote engine added "
                                        "with `qfserve engine add`; then --model is the served model or LoRA "
                                        "name.")] = "default",
    profile: Annotated[Optional[str], typer.Option(help=ProfileHelp + f" Default: {DEFAULT_PROFILE}, "
                                                   "or the --for-model one.", show_default=False)] = None,
    rpm: Annotated[int, typer.Option(help="Requests per minute per app.")] = service_store.DEFAULT_RPM,
    tpm: Annotated[int, typer.Option(help="Tokens per minute per app.")] = service_store.DEFAULT_TPM,
    safety: Annotated[str, typer.Option(help=SafetyHelp)] = "default",
    top_k: Annotated[Optional[int], typer.Option("--top-k", help=TopKHelp, show_default=False)] = None,
    min_p: Annotated[Optional[float], typer.Option("--min-p", help=MinPHelp, show_default=False)] = None,
    replace: Annotated[bool, typer.Option(hidden=True)] = False,
    models_dir: ModelsDir = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Publish a new service. A running server on the same data dir serves it from its next request.

    To change a published service use `qfserve service update`; to start over, `service delete` first.
    """
    if replace:
        fail("--replace is gone (it silently reset every setting not repeated): change a service with "
             "`qfserve service update NAME --rpm …`, or `qfserve service delete NAME` then publish again")
    preset = False
    if for_model is not None:
        try:
            endpoint = sdk_endpoint(for_model)
        except ValueError as exc:
            fail(str(exc))
        if api_path is not None and api_path != endpoint:
            fail(f"--for-model {for_model} publishes at {endpoint!r}; leave out the api_path {api_path!r}")
        if profile is not None and profile != for_model:
            fail(f"--for-model {for_model} uses the {for_model} profile; leave out --profile {profile}")
        api_path, profile, preset = endpoint, for_model, True
    if api_path is None:
        fail("name the API address (e.g. `qfserve service publish my_svc`), or use --for-model MODEL")
    with open_store(data_dir) as store:
        try:
            service = publishing.publish(
                store, api_path, model=model, adapter=adapter, profile=profile or DEFAULT_PROFILE,
                rpm=rpm, tpm=tpm, safety=safety, top_k=top_k, min_p=min_p, preset=preset, engine=engine,
                models_dir=_models_dir(store.data_dir, models_dir),
                on_note=_note_printer(as_json),
            )
        except publishing.PublishError as exc:
            fail(str(exc))
    if as_json:
        print_json(service.as_dict())
    else:
        console.print("published " + _summary(service), highlight=False)


@app.command("update")
def update(
    api_path: ApiPath,
    model: Annotated[Optional[str], typer.Option(help=ModelHelp, show_default=False)] = None,
    adapter: Annotated[Optional[Path], typer.Option(help="A LoRA adapter folder made by `qfserve sft train`.",
                                                    show_default=False)] = None,
    no_adapter: Annotated[bool, typer.Option("--no-adapter", help="Serve the base model alone.")] = False,
    profile: Annotated[Optional[str], typer.Option(help=ProfileHelp, show_default=False)] = None,
    rpm: Annotated[Optional[int], typer.Option(help="Requests per minute per app.", show_default=False)] = None,
    tpm: Annotated[Optional[int], typer.Option(help="Tokens per minute per app.", show_default=False)] = None,
    safety: Annotated[Optional[str], typer.Option(help=SafetyHelp, show_default=False)] = None,
    top_k: Annotated[Optional[str], typer.Option("--top-k", metavar="K|default",
                                                 help=TopKHelp + " `default` goes back to it.")] = None,
    min_p: Annotated[Optional[str], typer.Option("--min-p", metavar="P|default",
                                                 help=MinPHelp + " `default` goes back to it.")] = None,
    models_dir: ModelsDir = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Change the settings you name, and only those; a running server applies them on its next request."""
    if adapter is not None and no_adapter:
        fail("give --adapter or --no-adapter, not both")
    changes: dict = {name: value for name, value in (("model", model), ("adapter", adapter), ("profile", profile),
                                                     ("rpm", rpm), ("tpm", tpm), ("safety", safety))
                     if value is not None}
    if no_adapter:
        changes["adapter"] = None
    if top_k is not None:
        changes["top_k"] = _engine_default(top_k, int, "--top-k")
    if min_p is not None:
        changes["min_p"] = _engine_default(min_p, float, "--min-p")
    if not changes:
        fail("nothing to change: name at least one of --model, --adapter, --no-adapter, --profile, --rpm, --tpm, "
             "--safety, --top-k, --min-p")
    with open_store(data_dir) as store:
        try:
            service = publishing.update(
                store, api_path, models_dir=_models_dir(store.data_dir, models_dir),
                on_note=_note_printer(as_json), **changes)
        except publishing.PublishError as exc:
            fail(str(exc))
    if as_json:
        print_json(service.as_dict())
    else:
        console.print("updated " + _summary(service), highlight=False)


@app.command("show")
def show(api_path: ApiPath, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Show one service's settings."""
    with open_store(data_dir) as store:
        service = service_store.get_service(store, api_path)
    if service is None:
        fail(f"no service at {api_path!r} (see `qfserve service list`)")
    if as_json:
        print_json(service.as_dict())
        return
    table = Table(title=f"service {api_path}", show_header=False)
    for key, value in _display(service).items():
        table.add_row(key, value)
    console.print(table)


def _display(s: Service, unset: str = "engine default") -> dict[str, str]:
    row = {k: ("-" if v is None else str(v)) for k, v in s.as_dict().items() if k != "created_at"}
    for key in ("top_k", "min_p"):
        if getattr(s, key) is None:
            row[key] = unset
    row["engine"] = s.engine or "default"
    return row


@app.command("list")
def list_(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List published services with their base model, adapter, limits and sampling defaults
    (top_k/min_p `-`: the engine's default)."""
    with open_store(data_dir) as store:
        services = service_store.list_services(store)
    if as_json:
        print_json([s.as_dict() for s in services])
        return
    columns = ("api_path", "engine", "model", "adapter", "profile", "rpm", "tpm", "safety", "top_k", "min_p")
    table = Table(*columns)
    for s in services:
        shown = _display(s, unset="-")
        table.add_row(*(shown[c] for c in columns))
    console.print(table)


@app.command("delete")
def delete(api_path: ApiPath, yes: YesFlag = False, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Delete a service; a running server stops serving it from its next request."""
    with open_store(data_dir) as store:
        if service_store.get_service(store, api_path) is None:
            fail(f"no service at {api_path!r}")
        confirm(f"Delete service {api_path}? Apps calling it get 336005 from the next request on.", yes)
        try:
            service_store.delete_service(store, api_path)
        except service_store.ServiceNotFound as exc:
            fail(str(exc))
    if as_json:
        print_json({"deleted": "service", "api_path": api_path})
    else:
        console.print(f"deleted service {api_path}", highlight=False)
