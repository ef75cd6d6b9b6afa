"""The `qfserve` command."""

from __future__ import annotations

import typer

from qfserve.cli import apps, engines, safety, services
from qfserve.cli.serve import serve

app = typer.Typer(
    name="qfserve",
    help="Serve fine-tuned chat models over Baidu Qianfan's v1 chat API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve)
app.add_typer(apps.app, name="app")
app.add_typer(services.app, name="service")
app.add_typer(safety.app, name="safety")
app.add_typer(engines.app, name="engine")  # scale-out (issue 11)


def _mount_optional() -> None:
    # Sub-apps whose modules import heavier dependencies only when their commands run.
    from qfserve.cli import memory, sft

    app.add_typer(memory.app, name="memory", help="See and erase what is remembered about end users.")
    app.add_typer(sft.app, name="sft", help="Fine-tune a LoRA adapter on Qianfan-format data, and evaluate it.")


_mount_optional()
