"""`qfserve app …`: the callers and their credentials."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from qfserve.cli.common import DEFAULT_DATA_DIR, DataDir, JsonFlag, console, fail, open_store, print_json
from qfserve.store import apps as app_store

app = typer.Typer(help="Create, list, rotate and delete apps (API Key / Secret Key and IAM AK/SK pairs, v2 API key).",
                  no_args_is_help=True)

Name = Annotated[str, typer.Argument(help="The app's name.")]


def _show_credentials(creds: app_store.AppCredentials, as_json: bool, title: str) -> None:
    if as_json:
        print_json(creds.as_dict())
        return
    table = Table(title=title, show_header=False)
    for key, value in creds.as_dict().items():
        table.add_row(key, value)
    console.print(table)
    console.print("[dim]The secrets are shown only now; `qfserve app rotate` replaces them.[/]")


@app.command("create")
def create(name: Name, data_dir: DataDir = DEFAULT_DATA_DIR, as_json: JsonFlag = False) -> None:
    """Create an app and print its API Key / Secret Key, IAM Access Key / Secret Access Key, and its v2
    API key (`Authorization: Bearer …` on /v2/chat/completions)."""
    with open_store(data_dir) as store:
        try:
            creds = app_store.create_app(store, name)
        except app_store.AppExists as exc:
            fail(str(exc))
    _show_credentials(creds, as_json, f"app {name}")


@app.command("rotate")
def rotate(name: Name, data_dir: DataDir = DEFAULT_DATA_DIR, as_json: JsonFlag = False) -> None:
    """Replace both credential pairs and the v2 API key, and revoke the app's outstanding access and
    bearer tokens. (Apps created before v2 existed get their first v2 API key this way.)"""
    with open_store(data_dir) as store:
        try:
            creds = app_store.rotate_app(store, name)
        except app_store.AppNotFound as exc:
            fail(str(exc))
    _show_credentials(creds, as_json, f"app {name} (rotated)")


@app.command("list")
def list_(data_dir: DataDir = DEFAULT_DATA_DIR, as_json: JsonFlag = False) -> None:
    """List apps (secrets are never shown)."""
    with open_store(data_dir) as store:
        rows = [
            {"name": a.name, "api_key": a.api_key, "access_key": a.access_key,
             "services": "all" if a.all_services else app_store.granted_paths(store, a.id), "created_at": a.created_at}
            for a in app_store.list_apps(store)
        ]
    if as_json:
        print_json(rows)
        return
    table = Table("name", "api_key", "access_key", "services")
    for row in rows:
        services = row["services"] if isinstance(row["services"], str) else ", ".join(row["services"]) or "(none)"
        table.add_row(row["name"], row["api_key"], row["access_key"], services)
    console.print(table)


def _change(data_dir, change, *args, done: str) -> None:
    with open_store(data_dir) as store:
        try:
            change(store, *args)
        except app_store.AppNotFound as exc:
            fail(str(exc))
    console.print(done)


Service = Annotated[str, typer.Argument(help="The service's api_path.")]


@app.command("delete")
def delete(name: Name, data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Delete an app; its access tokens stop working at once."""
    _change(data_dir, app_store.delete_app, name, done=f"deleted app {name}")


@app.command("grant")
def grant(name: Name, api_path: Service, data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Allow the app to call a service. From the first grant on, the app may call only granted services."""
    _change(data_dir, app_store.grant, name, api_path, done=f"app {name} may call {api_path}")


@app.command("revoke")
def revoke(name: Name, api_path: Service, data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Withdraw a grant (the app then calls only its remaining granted services)."""
    _change(data_dir, app_store.revoke, name, api_path, done=f"app {name} may no longer call {api_path}")


@app.command("allow-all")
def allow_all(name: Name, data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Let the app call every service again (drops its grants)."""
    _change(data_dir, app_store.allow_all, name, done=f"app {name} may call every service")
