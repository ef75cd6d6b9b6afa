"""`qfserve memory …`: see and erase what is remembered about an end user (the chat body's user_id).

This is the operator's view, across every app; `--app` narrows it to one. An app's own view of its
users goes through the admin HTTP routes (qfserve/api/memory_routes.py), which see only that app.
"""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer
from rich.table import Table

from qfserve.cli.common import DataDir, JsonFlag, YesFlag, confirm, console, fail, open_store, print_json
from qfserve.store import apps as app_store
from qfserve.store import memories as memory_store
from qfserve.store.db import Store

app = typer.Typer(help="See and erase what is remembered about end users.", no_args_is_help=True)

UserId = Annotated[str, typer.Argument(help="The end user's user_id, as sent in the chat body.", show_default=False)]
MaybeUserId = Annotated[Optional[str], typer.Argument(
    help="The end user's user_id, as sent in the chat body. Without it: the users that have memories.",
    show_default=False)]
ServiceOpt = Annotated[Optional[str], typer.Option("--service", help="Only this service (its api_path).")]
AppOpt = Annotated[Optional[str], typer.Option("--app", help="Only this app (its name).")]


def _app_id(store: Store, name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return app_store.get_app(store, name).id
    except app_store.AppNotFound as exc:
        fail(str(exc))


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


@app.command("list")
def list_(
    user_id: MaybeUserId = None,
    service: ServiceOpt = None,
    app_name: AppOpt = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """List a user's memories, superseded ones included (marked with what replaced them); without a
    user, list the users that have memories, with counts."""
    if user_id is None:
        _list_users(service, app_name, data_dir, as_json)
        return
    with open_store(data_dir) as store:
        found = memory_store.list_memories(store, user_id, app_id=_app_id(store, app_name), api_path=service)
        names = {a.id: a.name for a in app_store.list_apps(store)}
    if as_json:
        print_json([{**m.as_dict(), "app": names.get(m.app_id)} for m in found])
        return
    if not found:
        console.print(f"No memories for user {user_id!r}.")
        return
    table = Table(title=f"memories of {user_id}")
    for column in ("id", "app", "service", "memory", "from", "created", "last used", "status"):
        table.add_column(column)
    for m in found:
        status = "current" if m.active else f"superseded by {m.superseded_by}"
        table.add_row(str(m.id), names.get(m.app_id, str(m.app_id)), m.api_path, m.text,
                      f"{m.request_id} round {m.round} ({m.extractor})", _when(m.created_at),
                      _when(m.last_used_at), status)
    console.print(table)


@app.command("delete")
def delete(
    user_id: UserId,
    memory_id: Annotated[Optional[int], typer.Option("--id", help="Only this memory; default: all of the user's.",
                                                     show_default=False)] = None,
    service: ServiceOpt = None,
    app_name: AppOpt = None,
    yes: YesFlag = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Delete one of a user's memories (--id), or all of them (asks first on a terminal)."""
    with open_store(data_dir) as store:
        app_id = _app_id(store, app_name)
        if memory_id is None:
            scope = "".join(f" {word} {value}" for word, value in (("in app", app_name), ("in service", service)) if value)
            confirm(f"Delete every memory of user {user_id!r}{scope}?", yes)
        deleted = memory_store.delete_memories(store, user_id, app_id=app_id, api_path=service, memory_id=memory_id)
    if memory_id is not None and deleted == 0:
        fail(f"no memory {memory_id} for user {user_id!r}")
    if as_json:
        print_json({"deleted": deleted})
    else:
        console.print(f"Deleted {deleted} memor{'y' if deleted == 1 else 'ies'} of user {user_id!r}.", highlight=False)


def _list_users(service: str | None, app_name: str | None, data_dir, as_json: bool) -> None:
    with open_store(data_dir) as store:
        users = memory_store.users_with_memories(store, app_id=_app_id(store, app_name), api_path=service)
        names = {a.id: a.name for a in app_store.list_apps(store)}
    if as_json:
        print_json([{**u.as_dict(), "app": names.get(u.app_id)} for u in users])
        return
    if not users:
        console.print("No user has memories" + (f" in app {app_name!r}" if app_name else "") + ".", highlight=False)
        return
    table = Table("app", "service", "user_id", "memories", "superseded", title="users with memories")
    for u in users:
        table.add_row(names.get(u.app_id, str(u.app_id)), u.api_path, u.user_id, str(u.current), str(u.total - u.current))
    console.print(table)
