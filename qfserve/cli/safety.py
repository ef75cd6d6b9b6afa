"""`qfserve safety …`: operate the moderation lexicons of a running server."""

from __future__ import annotations

import os
import signal
from typing import Annotated

import typer

from qfserve.cli.common import DEFAULT_DATA_DIR, DataDir, console, fail

app = typer.Typer(help="Content safety: reload lexicons, check text against them.", no_args_is_help=True)

from qfserve.config import PID_FILE


@app.command("reload")
def reload(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Make the server on this data dir re-read its lexicon and allow-list files (sends it SIGHUP)."""
    pid_path = data_dir / PID_FILE
    try:
        pid = int(pid_path.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except FileNotFoundError:
        fail(f"no running server on {data_dir} (no {PID_FILE})")
    except (ValueError, ProcessLookupError):
        fail(f"the server recorded in {pid_path} is not running")
    console.print(f"asked server {pid} to reload its safety lexicons")


@app.command("check")
def check(
    text: Annotated[str, typer.Argument(help="Text to check as a user question.")],
    lexicon: Annotated[list[str], typer.Option(help="Deny lexicon TSV; repeatable.")],
    allow: Annotated[str | None, typer.Option(help="Allow-list file.")] = None,
    policy: Annotated[str, typer.Option(help="off, default or strict.")] = "default",
) -> None:
    """Show the verdict a lexicon gives a text, to test a policy before deploying it."""
    from qfserve.safety import Moderator

    verdict = Moderator.from_files(lexicon, allow).check_input([("user", text)], None, None, policy=policy)
    console.print(f"flag={verdict.level} category={verdict.category} need_clear_history={verdict.need_clear_history}"
                  f" ban_round={verdict.ban_round}")
