"""Shared CLI plumbing: the data dir and the database line, JSON output, confirmations, clean errors.

Every command that opens the database says which one on stderr (`database: …/qfserve.db`), so
stdout stays pure output for scripts; with `--json` an object result also carries a `database`
field. Without `--data-dir` / QFSERVE_DATA_DIR the database is in the per-user data folder, the
same from any working directory.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape

from qfserve.config import database_url_for, default_data_dir
from qfserve.store.db import DB_NAME, Store

console = Console()
err_console = Console(stderr=True)


def env(name: str) -> dict:
    """typer.Option arguments that read QFSERVE_<NAME> and show it in --help."""
    return {"envvar": f"QFSERVE_{name}", "show_envvar": True}


DataDir = Annotated[
    Optional[Path],
    typer.Option("--data-dir", **env("DATA_DIR"), show_default=False,
                 help="Folder of the database (qfserve.db). Default: the per-user data folder, "
                      f"here {default_data_dir()}."),
]
JsonFlag = Annotated[bool, typer.Option("--json", **env("JSON"), help="Print machine-readable JSON on stdout.")]
YesFlag = Annotated[bool, typer.Option("--yes", "-y", **env("YES"),
                                       help="Don't ask for confirmation (never asked without a terminal).")]

LEGACY_DATA_DIR = Path("qfserve-data")  # the default before 0.2, relative to the working directory

# The database the last open_store used: print_json adds it to object results.
_database: str | None = None


def data_dir_or_default(data_dir: Path | None) -> Path:
    if data_dir is not None:
        return data_dir.expanduser()
    chosen = default_data_dir()
    legacy = LEGACY_DATA_DIR / DB_NAME
    if legacy.is_file() and legacy.resolve() != (chosen / DB_NAME).resolve():
        err_console.print(f"note: ./{legacy} is not used (the default is now {chosen}); "
                          f"pass --data-dir {LEGACY_DATA_DIR} to use it", highlight=False, soft_wrap=True)
    return chosen


def say_database(path: Path, new: bool = False) -> None:
    """The one line on stderr naming the database a command uses."""
    sys.stderr.write(f"database: {path}{' (new)' if new else ''}\n")
    sys.stderr.flush()


@contextmanager
def open_store(data_dir: Path | None) -> Iterator[Store]:
    global _database
    folder = data_dir_or_default(data_dir)
    path = folder / DB_NAME
    new = not path.exists()
    url = database_url_for(folder)  # scale-out (issue 11): PostgreSQL when configured
    try:
        store = Store(folder, url)
    except OSError as exc:
        fail(f"cannot open the database in {folder}: {exc.strerror or exc}")
    except Exception as exc:  # sqlite3.Error: not a database, locked, newer schema …
        fail(f"cannot open the database {path}: {exc}")
    if store.path is None:
        say_database(store.location)
        _database = store.location
    else:
        say_database(store.path.resolve(), new)
        _database = str(store.path.resolve())
    try:
        yield store
    finally:
        store.close()


def print_json(value) -> None:
    if isinstance(value, dict) and _database is not None and "database" not in value:
        value = {**value, "database": _database}
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def confirm(question: str, yes: bool) -> None:
    """Ask on a terminal; `--yes`, or no terminal on stdin (scripts, CI), goes ahead without asking."""
    if yes or not sys.stdin.isatty():
        return
    if not typer.confirm(question, default=False):
        fail("aborted; nothing changed")


def _flags_show_no_type() -> None:
    # typer 0.2x prints `<bool>` after flags (`--json <bool>`), which reads as if a value were
    # expected; flags take none.
    from typer.core import TyperOption

    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_qfserve", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else original(self, ctx)

    display_type_rich._qfserve = True
    TyperOption.display_type_rich = display_type_rich


_flags_show_no_type()
