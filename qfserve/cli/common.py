"""Shared CLI plumbing: the data-dir option, JSON output, and clean error exits."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator

import typer
from rich.console import Console

from qfserve.store.db import Store

console = Console()
err_console = Console(stderr=True)

DataDir = Annotated[
    Path,
    typer.Option("--data-dir", envvar="QFSERVE_DATA_DIR", show_envvar=True, help="Where qfserve keeps its database."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

DEFAULT_DATA_DIR = Path("./qfserve-data")


def print_json(value) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


@contextmanager
def open_store(data_dir: Path) -> Iterator[Store]:
    store = Store(data_dir)
    try:
        yield store
    finally:
        store.close()


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)
