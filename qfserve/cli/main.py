"""The `qfserve` command."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from qfserve import __version__
from qfserve.cli import apps, db, engines, safety, services
from qfserve.cli.console import console_command
from qfserve.cli.serve import serve


class _Cli(typer.Typer):
    """Every failure the commands don't foresee ends as one line, not a traceback
    (QFSERVE_DEBUG=1 shows the traceback)."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if os.environ.get("QFSERVE_DEBUG"):
                raise
            sys.stderr.write(f"error: {type(exc).__name__}: {exc} (QFSERVE_DEBUG=1 shows where)\n")
            sys.exit(1)


app = _Cli(
    name="qfserve",
    help="Serve fine-tuned chat models over Baidu Qianfan's v1 chat API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        print(f"qfserve {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Serve fine-tuned chat models over Baidu Qianfan's v1 chat API."""


app.command("serve")(serve)
app.command("console")(console_command)
app.add_typer(apps.app, name="app")
app.add_typer(services.app, name="service")
app.add_typer(safety.app, name="safety")
app.add_typer(engines.app, name="engine")  # scale-out (issue 11)
app.add_typer(db.app, name="db")  # scale-out (issue 11)


def _mount_optional() -> None:
    # Sub-apps whose modules import heavier dependencies only when their commands run.
    from qfserve.cli import memory, sft

    app.add_typer(memory.app, name="memory", help="See and erase what is remembered about end users.")
    app.add_typer(sft.app, name="sft", help="Fine-tune a LoRA adapter on Qianfan-format data, and evaluate it.")


_mount_optional()
