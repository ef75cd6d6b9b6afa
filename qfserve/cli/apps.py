"""`qfserve app …`: the callers and their credentials."""

from __future__ import annotations

import re
import time
from typing import Annotated

import typer
from rich.table import Table

from qfserve.cli.common import DataDir, JsonFlag, YesFlag, confirm, console, fail, open_store, print_json
from qfserve.store import apps as app_store

app = typer.Typer(help="Create, list, rotate and delete apps (API Key / Secret Key and IAM AK/SK pairs).",
                  no_args_is_help=True)

Name = Annotated[str, typer.Argument(help="The app's name.", show_default=False)]
DEFAULT_GRACE = "24h"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """`90s`, `30m`, `24h`, `7d` or plain seconds → seconds."""
    found = _DURATION.match(text.lower())
    if not found:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 24h or 7d)")
    return int(float(found.group(1)) * _UNIT_SECONDS[found.group(2)])


def _when(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(timestamp))


def _show_credentials(creds: app_store.AppCredentials, as_json: bool, title: str) -> None:
    if as_json:
        print_json(creds.as_dict())
        return
    table = Table(title=title, show_header=False)
    for key, value in creds.as_dict().items():
        if key != "old_credentials_valid_until":
            table.add_row(key, str(value))
    console.print(table)
    console.print("[dim]The secrets are shown only now; `qfserve app rotate` replaces them.[/]")


@app.command("create")
def create(name: Name, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Create an app and print its API Key / Secret Key and IAM Access Key / Secret Access Key."""
    with open_store(data_dir) as store:
        try:
            creds = app_store.create_app(store, name)
        except app_store.AppExists as exc:
            fail(str(exc))
    _show_credentials(creds, as_json, f"app {name}")


@app.command("rotate")
def rotate(
    name: Name,
    grace: Annotated[str, typer.Option(help="How long the old pairs, and the tokens issued so far, stay valid "
                                            "(30m, 24h, 7d), so clients can switch without an outage.")] = DEFAULT_GRACE,
    now: Annotated[bool, typer.Option("--now", help="End the old pairs and all their tokens at once "
                                                    "(same as --grace 0); for leaked secrets.")] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Replace both credential pairs. The old ones keep working for the grace period, then stop."""
    try:
        seconds = 0 if now else parse_duration(grace)
    except ValueError as exc:
        fail(str(exc))
    with open_store(data_dir) as store:
        try:
            creds = app_store.rotate_app(store, name, grace=seconds)
        except app_store.AppNotFound as exc:
            fail(str(exc))
    _show_credentials(creds, as_json, f"app {name} (rotated)")
    if not as_json:
        if creds.old_valid_until is None:
            console.print("The old credentials and their access tokens no longer work.")
        else:
            console.print(f"The old credentials and their access tokens work until {_when(creds.old_valid_until)}; "
                          f"`qfserve app rotate {name} --now` ends them at once.", highlight=False)


@app.command("list")
def list_(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
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


def _change(data_dir, change, *args, done: str, as_json: bool, result: dict) -> None:
    with open_store(data_dir) as store:
        try:
            change(store, *args)
        except (app_store.AppNotFound, app_store.GrantError) as exc:
            fail(str(exc))
        if "name" in result:
            app = app_store.get_app(store, result["name"])
            result["services"] = "all" if app.all_services else app_store.granted_paths(store, app.id)
    if as_json:
        print_json(result)
    else:
        console.print(done, highlight=False)


Service = Annotated[str, typer.Argument(help="The service's api_path.", show_default=False)]


@app.command("delete")
def delete(name: Name, yes: YesFlag = False, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Delete an app; its access tokens stop working at once."""
    with open_store(data_dir) as store:
        try:
            app_store.get_app(store, name)
        except app_store.AppNotFound as exc:
            fail(str(exc))
        confirm(f"Delete app {name}? Its credentials and access tokens stop working at once, "
                "and what is remembered about its users is erased.", yes)
        try:
            app_store.delete_app(store, name)
        except app_store.AppNotFound as exc:
            fail(str(exc))
    if as_json:
        print_json({"deleted": "app", "name": name})
    else:
        console.print(f"deleted app {name}", highlight=False)


@app.command("grant")
def grant(name: Name, api_path: Service, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Allow the app to call a service. From the first grant on, the app may call only granted services."""
    _change(data_dir, app_store.grant, name, api_path, done=f"app {name} may call {api_path}",
            as_json=as_json, result={"name": name, "granted": api_path})


@app.command("revoke")
def revoke(name: Name, api_path: Service, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Withdraw a grant (the app then calls only its remaining granted services)."""
    _change(data_dir, app_store.revoke, name, api_path, done=f"app {name} may no longer call {api_path}",
            as_json=as_json, result={"name": name, "revoked": api_path})


@app.command("allow-all")
def allow_all(name: Name, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Let the app call every service again (drops its grants)."""
    _change(data_dir, app_store.allow_all, name, done=f"app {name} may call every service",
            as_json=as_json, result={"name": name})
