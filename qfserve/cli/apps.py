"""`qfserve app …`: the callers and their credentials."""

from __future__ import annotations

import re
import time
from typing import Annotated, Optional

import typer
from rich.table import Table

from qfserve.cli.common import (
    DataDir,
    JsonFlag,
    YesFlag,
    confirm,
    console,
    data_dir_or_default,
    fail,
    open_store,
    print_json,
)
from qfserve.store import apps as app_store
from qfserve.store import usage as usage_store

app = typer.Typer(help="Create, list, rotate and delete apps (API Key / Secret Key and IAM AK/SK pairs, v2 API key).",
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


# ---- quotas (per app, over all services) ----
Qps = Annotated[Optional[int], typer.Option(
    "--qps", min=0, help="Requests per second over all services; past it: error 18 (the SDK retries). 0: unlimited.")]
DailyRequests = Annotated[Optional[int], typer.Option(
    "--daily-requests", min=0,
    help="Requests per day (from midnight in the server's --quota-timezone); past it: error 17. 0: unlimited.")]


@app.command("create")
def create(name: Name, qps: Qps = None, daily_requests: DailyRequests = None,
           data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Create an app and print its API Key / Secret Key, IAM Access Key / Secret Access Key, and its v2
    API key (`Authorization: Bearer …` on /v2/chat/completions)."""
    with open_store(data_dir) as store:
        try:
            creds = app_store.create_app(store, name, qps=qps or 0, daily_requests=daily_requests or 0)
        except app_store.AppExists as exc:
            fail(str(exc))
    _show_credentials(creds, as_json, f"app {name}")


@app.command("update")
def update(name: Name, qps: Qps = None, daily_requests: DailyRequests = None,
           data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Change an app's quotas (only those given). A running server applies them from its next request."""
    if qps is None and daily_requests is None:
        fail("nothing to change: give --qps and/or --daily-requests")
    with open_store(data_dir) as store:
        try:
            changed = app_store.set_quotas(store, name, qps=qps, daily_requests=daily_requests)
        except app_store.AppNotFound as exc:
            fail(str(exc))
    quotas = {"name": changed.name, "qps": changed.qps, "daily_requests": changed.daily_requests}
    if as_json:
        print_json(quotas)
        return
    console.print(f"app {name}: qps {_limit(changed.qps)}, daily requests {_limit(changed.daily_requests)}")


def _limit(value: int) -> str:
    return str(value) if value > 0 else "unlimited"


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
    """Replace both credential pairs and the v2 API key. The old ones keep working for the grace period,
    then stop. (Apps created before v2 existed get their first v2 API key this way.)"""
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


QuotaTimezone = Annotated[Optional[str], typer.Option(
    "--quota-timezone", envvar="QFSERVE_QUOTA_TIMEZONE", show_envvar=True,
    help="The time zone whose day is shown (the server's --quota-timezone; qfserve.toml's, else Asia/Shanghai).")]


@app.command("list")
def list_(quota_timezone: QuotaTimezone = None, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List apps (secrets are never shown), their quotas and today's use per service.

    Use is what running servers have recorded (written every second or so): answered requests and tokens.
    """
    from pydantic import ValidationError

    from qfserve.config import load_settings
    from qfserve.limits.days import QuotaCalendar

    try:
        calendar = QuotaCalendar(quota_timezone or load_settings(data_dir=data_dir_or_default(data_dir)).quota_timezone)
    except ValidationError as exc:  # a bad setting in the environment or qfserve.toml
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    except ValueError as exc:
        fail(str(exc))
    day = calendar.day(time.time())
    with open_store(data_dir) as store:
        used: dict[int, dict[str, dict]] = {}
        for row in usage_store.usage_on(store, day):
            used.setdefault(row.app_id, {})[row.api_path] = {
                "requests": row.requests, "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens}
        rows = [_app_row(store, a, used.get(a.id, {}), day, calendar.timezone) for a in app_store.list_apps(store)]
    if as_json:
        print_json(rows)
        return
    table = Table("name", "api_key", "access_key", "services", "qps", f"requests today ({day})", "use per service",
                  title=f"apps · today is {day} in {calendar.timezone}")
    for row in rows:
        services = row["services"] if isinstance(row["services"], str) else ", ".join(row["services"]) or "(none)"
        today = row["today"]
        requests = f"{today['requests']} / {_limit(row['daily_requests'])}"
        per_service = "\n".join(
            f"{path}: {u['requests']} req, {u['prompt_tokens']} + {u['completion_tokens']} tok"
            for path, u in today["services"].items()) or "-"
        table.add_row(row["name"], row["api_key"], row["access_key"], services, _limit(row["qps"]), requests, per_service)
    console.print(table)


def _app_row(store, a: app_store.App, services_used: dict[str, dict], day: str, timezone: str) -> dict:
    today: dict = {"day": day, "timezone": timezone}
    for key in ("requests", "prompt_tokens", "completion_tokens"):
        today[key] = sum(u[key] for u in services_used.values())
    today["services"] = services_used
    if a.daily_requests > 0:
        today["daily_requests_left"] = max(0, a.daily_requests - today["requests"])
    return {"name": a.name, "api_key": a.api_key, "access_key": a.access_key,
            "services": "all" if a.all_services else app_store.granted_paths(store, a.id),
            "created_at": a.created_at, "qps": a.qps, "daily_requests": a.daily_requests, "today": today}


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
