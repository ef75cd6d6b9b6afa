"""`qfserve console`: print a one-time sign-in link to the web console of a server on this data dir."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from qfserve.cli.common import JsonFlag, console, open_store, print_json
from qfserve.config import PID_FILE, load_settings


def console_base_url(host: str, port: int) -> str:
    # A server listening on every address is reached on loopback from this machine.
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def signin_link(store, host: str, port: int) -> str:
    from qfserve.console.signin import new_signin_link

    return new_signin_link(store, console_base_url(host, port))


def console_command(
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", envvar="QFSERVE_DATA_DIR", show_envvar=True,
                                                     help="The server's data dir. Default: ./qfserve-data.")] = None,
    host: Annotated[Optional[str], typer.Option(help="The server's address, for the link. Default: its setting.",
                                                envvar="QFSERVE_HOST", show_envvar=True)] = None,
    port: Annotated[Optional[int], typer.Option(help="The server's port, for the link. Default: its setting.",
                                                envvar="QFSERVE_PORT", show_envvar=True)] = None,
    as_json: JsonFlag = False,
) -> None:
    """Print a one-time sign-in link to the web console (valid 15 minutes, works once).

    The link works against a server running on the same data dir (now or started within the 15 minutes).
    """
    settings = load_settings(data_dir=data_dir, host=host, port=port)
    from qfserve.console.signin import SIGNIN_TTL

    with open_store(settings.data_dir) as store:
        link = signin_link(store, settings.host, settings.port)
    running = (settings.data_dir / PID_FILE).exists()
    if as_json:
        print_json({"link": link, "expires_in": SIGNIN_TTL, "server_running": running})
        return
    console.print("Open this link to sign in to the qfserve console (works once, for 15 minutes):")
    print(link, flush=True)  # plain: the link must survive copy-paste whole
    if not running:
        console.print(f"[yellow]No server seems to run on {settings.data_dir}: start one with `qfserve serve`.[/]")
