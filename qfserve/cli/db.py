"""`qfserve db …`: the database behind a data dir (scale-out, issue 11)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from qfserve.cli.common import DataDir, JsonFlag, console, fail, open_store, print_json

app = typer.Typer(help="The database: copy it to PostgreSQL, bring its schema up to date.", no_args_is_help=True)


@app.command("copy")
def copy(
    to: Annotated[str, typer.Option("--to", help="The target database URL: postgresql://user:password@host:5432/db "
                                    "(must be empty; its schema is created).", show_default=False)],
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Copy the data dir's database (apps, hashed secrets, tokens, services, grants, memories, usage,
    engines, console state) into another database, and check the row counts match. The source is
    not changed; point the gateways at the target with --database-url afterwards."""
    from sqlalchemy.exc import SQLAlchemyError

    from qfserve.store.copy import CopyError, copy_store
    from qfserve.store.db import Store, display_url

    with open_store(data_dir) as source:
        try:
            target = Store(source.data_dir, to)
        except (SQLAlchemyError, OSError, ValueError) as exc:
            fail(f"cannot open the target database {_safe(to)}: {_first_line(exc)}")
        try:
            counts = copy_store(source, target)
        except CopyError as exc:
            fail(str(exc))
        except SQLAlchemyError as exc:
            fail(f"the copy failed and was rolled back: {_first_line(exc)}")
        finally:
            target.close()
    if as_json:
        print_json({"target": display_url(target.url), "rows": counts})
        return
    table = Table("table", "rows copied")
    for name, n in counts.items():
        table.add_row(name, str(n))
    console.print(table)
    console.print(f"copied into {display_url(target.url)}; row counts match")


@app.command("upgrade")
def upgrade(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Bring the database's schema to this version of qfserve (every command also does it on open)."""
    with open_store(data_dir) as store:
        version = store.schema_version()
    if as_json:
        print_json({"schema_version": version})
    else:
        console.print(f"schema at revision {version:04d}")


def _safe(url: str) -> str:
    from qfserve.store.db import display_url

    try:
        return display_url(url)
    except Exception:  # noqa: BLE001 - not even a URL
        return "(unreadable URL)"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
