"""`qfserve safety …`: operate the moderation lexicons of a running server, and test them.

The options are named as on `qfserve serve` (--safety-lexicon, --safety-allow, --safety-level,
with the same QFSERVE_* variables), so `safety check` tests exactly what the server would load;
the policy is named as on `qfserve service publish/update` (--safety).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from qfserve.cli.common import JsonFlag, console, data_dir_or_default, env, fail, print_json
from qfserve.config import PID_FILE, split_paths
from qfserve.safety import POLICIES

app = typer.Typer(help="Content safety: reload lexicons, check text against them.", no_args_is_help=True)

# Shared with `qfserve serve`.
LexiconOpt = Annotated[Optional[list[Path]], typer.Option(
    "--safety-lexicon", **env("SAFETY_LEXICON"), show_default=False, metavar="FILE",
    help="Deny lexicon TSV (term, category, level 1-3); repeatable, or PATH-style a.tsv:b.tsv in the variable.")]
AllowOpt = Annotated[Optional[Path], typer.Option("--safety-allow", **env("SAFETY_ALLOW"), show_default=False,
                                                  help="Allow-list file, one term a line.")]
LevelOpt = Annotated[Optional[list[str]], typer.Option(
    "--safety-level", **env("SAFETY_CATEGORY_LEVELS"), show_default=False, metavar="CATEGORY=LEVEL",
    help="Override a category's level, as CATEGORY=LEVEL (0-3, 0 switches it off); repeatable.")]


def category_levels(specs: list[str] | None) -> dict[str, int] | None:
    """`--safety-level` values → {category: level}; a bad one fails the command with one line."""
    if not specs:
        return None
    from qfserve.safety import parse_category_levels

    try:
        return parse_category_levels(",".join(specs))
    except ValueError as exc:
        fail(f"--safety-level: {exc}")


def load_moderator(lexicons: list[Path] | None, allow: Path | None, levels: dict[str, int] | None):
    """Load and compile the lexicons now; a missing or malformed file fails with one line."""
    from qfserve.safety import LexiconError, Moderator

    try:
        return Moderator.from_files([str(p) for p in split_paths(lexicons or [])],
                                    str(allow) if allow else None, levels)
    except LexiconError as exc:
        fail(f"safety lexicon: {exc}")


@app.command("reload")
def reload(
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", **env("DATA_DIR"), show_default=False,
                                                     help="The data dir of the running server.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Make the server on this data dir re-read its lexicon and allow-list files (sends it SIGHUP)."""
    data_dir = data_dir_or_default(data_dir)
    pid_path = data_dir / PID_FILE
    try:
        pid = int(pid_path.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except FileNotFoundError:
        fail(f"no running server on {data_dir} (no {PID_FILE})")
    except (ValueError, ProcessLookupError):
        fail(f"the server recorded in {pid_path} is not running")
    except PermissionError:
        fail(f"not allowed to signal the server recorded in {pid_path} (another user's?)")
    if as_json:
        print_json({"signalled": pid, "data_dir": str(data_dir)})
    else:
        console.print(f"asked server {pid} to reload its safety lexicons")


@app.command("check")
def check(
    text: Annotated[str, typer.Argument(help="Text to check as a user question.", show_default=False)],
    lexicon: LexiconOpt = None,
    allow: AllowOpt = None,
    level: LevelOpt = None,
    policy: Annotated[str, typer.Option("--safety", help=f"Policy, as on a service: {', '.join(POLICIES)}.")] = "default",
    as_json: JsonFlag = False,
) -> None:
    """Show the verdict the lexicons give a text, and each term that matched: where, level, category."""
    if policy not in POLICIES:
        fail(f"--safety must be one of {', '.join(POLICIES)}, got {policy!r}")
    if not lexicon:
        fail("name a deny lexicon: --safety-lexicon FILE.tsv (or QFSERVE_SAFETY_LEXICON)")
    moderator = load_moderator(lexicon, allow, category_levels(level))
    verdict, hits = moderator.explain_input([("user", text)], policy=policy)
    result = {"flag": verdict.level, "category": verdict.category, "need_clear_history": verdict.need_clear_history}
    if verdict.ban_round is not None:
        result["ban_round"] = verdict.ban_round
    result["matches"] = [{k: v for k, v in hit.items() if k != "source"} for hit in hits]
    if as_json:
        print_json(result)
        return
    head = " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in result.items()
                    if k != "matches" and v is not None)
    console.print(head, highlight=False)
    for hit in hits:
        term, matched = escape(hit["term"] or "?"), escape(hit["matched"])
        console.print(f"  term “{term}” ({hit['category']}, level {hit['level']}) matched “{matched}” "
                      f"at characters {hit['start'] + 1}-{hit['end']}", highlight=False)
    if not hits:
        console.print("  no term matched", highlight=False)
