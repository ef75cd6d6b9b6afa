"""`qfserve serve`: run the HTTP server (and, with --demo, make sure there is something to call)."""

from __future__ import annotations

import json
import logging
import os
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.panel import Panel

from qfserve.cli.common import console, open_store
from qfserve.config import Settings, load_settings
from qfserve.store import apps as app_store
from qfserve.store import services as service_store

DEMO_APP = "demo"
DEMO_SERVICE = "demo"
DEMO_FILE = "demo-credentials.json"


def _env(name: str) -> dict:
    return {"envvar": f"QFSERVE_{name}", "show_envvar": True}


def serve(
    host: Annotated[Optional[str], typer.Option(help="Address to listen on. Default: 127.0.0.1.", **_env("HOST"))] = None,
    port: Annotated[Optional[int], typer.Option(help="Port to listen on. Default: 8360.", **_env("PORT"))] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Database and config folder (reads qfserve.toml there). Default: ./qfserve-data.", **_env("DATA_DIR"))] = None,
    parallel: Annotated[Optional[int], typer.Option(help="Max concurrent sequences per base model. Default: 4.", **_env("PARALLEL"))] = None,
    threads: Annotated[Optional[int], typer.Option(help="llama.cpp threads. Default: physical cores.", **_env("THREADS"))] = None,
    queue_size: Annotated[Optional[int], typer.Option(help="Waiting requests before answering 336100. Default: 64.", **_env("QUEUE_SIZE"))] = None,
    # engine (issue 15)
    kv_cells: Annotated[Optional[int], typer.Option(help="KV cells per base model, all sequences together (one cell per prompt or answer token). Default: parallel x --ctx-per-seq.", **_env("KV_CELLS"))] = None,
    ctx_per_seq: Annotated[Optional[int], typer.Option(help="Most KV cells one sequence may hold (prompt + answer); longer prompts get 336103. Default: 9216 (an 8K profile's 7168 + 2048), or kv-cells / parallel when --kv-cells is given, or the whole pool with --kv-unified.", **_env("CTX_PER_SEQ"))] = None,
    kv_unified: Annotated[Optional[bool], typer.Option("--kv-unified/--kv-per-sequence", help="One KV pool the sequences share (a long conversation may use what several short ones would), instead of a region each. Default: a region each (answers then never depend on what else runs).", **_env("KV_UNIFIED"))] = None,
    kv_type: Annotated[Optional[str], typer.Option(help="KV cell type: f16, or q8_0 (half the memory; answers never depend on batching; prompts of thousands of tokens prefill slower). Default: f16.", **_env("KV_TYPE"))] = None,
    max_queue_wait: Annotated[Optional[float], typer.Option(help="Seconds a request may wait for a sequence: beyond the predicted wait it gets 336100 at once. Default: 30.", **_env("MAX_QUEUE_WAIT"))] = None,
    limiter: Annotated[Optional[str], typer.Option(help="Rate-limit backend: local or redis. Default: local.", **_env("LIMITER"))] = None,
    redis_url: Annotated[Optional[str], typer.Option(help="Redis URL for --limiter redis.", **_env("REDIS_URL"))] = None,
    safety_lexicon: Annotated[Optional[list[Path]], typer.Option(help="Deny lexicon TSV (term, category, level); repeatable.")] = None,
    safety_allow: Annotated[Optional[Path], typer.Option(help="Allow-list file, one term a line.", **_env("SAFETY_ALLOW"))] = None,
    safety_level: Annotated[Optional[list[str]], typer.Option(help="Override a category's level, as CATEGORY=LEVEL (0-3); repeatable.")] = None,
    log_level: Annotated[Optional[str], typer.Option(help="debug, info, warning or error. Default: info.", **_env("LOG_LEVEL"))] = None,
    log_json: Annotated[Optional[bool], typer.Option("--log-json/--log-text", help="Log as JSON lines.", **_env("LOG_JSON"))] = None,
    demo: Annotated[bool, typer.Option(help="On an empty data dir, create a demo app and service; print how to call them.")] = False,
) -> None:
    """Serve every published service over Qianfan's v1 chat API.

    Settings come from flags, then QFSERVE_* environment variables, then qfserve.toml in the data
    dir, then defaults. SIGTERM stops admitting, lets running answers finish, then exits.
    """
    if kv_type is not None and kv_type not in ("f16", "q8_0"):
        raise typer.BadParameter("choose f16 or q8_0", param_hint="--kv-type")
    settings = load_settings(
        host=host, port=port, data_dir=data_dir, parallel=parallel, threads=threads,
        queue_size=queue_size, limiter=limiter, redis_url=redis_url, safety_lexicon=safety_lexicon,
        safety_allow=safety_allow, log_level=log_level, log_json=log_json,
        safety_category_levels=_category_levels(safety_level),
        kv_cells=kv_cells, ctx_per_seq=ctx_per_seq, kv_unified=kv_unified, kv_type=kv_type,
        max_queue_wait=max_queue_wait,  # engine (issue 15)
    )
    _configure_logging(settings)
    if demo:
        _ensure_demo(settings)
    import uvicorn

    from qfserve.api.app import create_app

    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port, log_config=None,
        log_level=settings.log_level, timeout_graceful_shutdown=30, access_log=False,
    )
    uvicorn.Server(config).run()


def _category_levels(specs: list[str] | None) -> dict[str, int] | None:
    if not specs:
        return None
    from qfserve.safety import parse_category_levels

    try:
        return parse_category_levels(",".join(specs))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--safety-level") from None


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                 "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    if settings.log_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


def _ensure_demo(settings: Settings) -> None:
    """Create the demo app and service on an empty data dir; print the credentials and a curl pair."""
    creds_file = settings.data_dir / DEMO_FILE
    with open_store(settings.data_dir) as store:
        empty = not app_store.list_apps(store) and not service_store.list_services(store)
        if empty:
            creds = app_store.create_app(store, DEMO_APP).as_dict()
            service_store.publish_service(store, DEMO_SERVICE, model="default", profile="ERNIE-Speed-8K")
            # The Secret Key is stored hashed; keep the demo's copy (owner-only) so later runs can print it.
            fd = os.open(creds_file, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(creds, f)
        elif creds_file.exists():
            creds = json.loads(creds_file.read_text())
        else:
            console.print("[dim]--demo: the data dir already has apps or services; nothing created.[/]")
            return
    base = f"http://{settings.host}:{settings.port}"
    token_url = (f"{base}/oauth/2.0/token?grant_type=client_credentials"
                 f"&client_id={creds['api_key']}&client_secret={creds['secret_key']}")
    body = json.dumps({"messages": [{"role": "user", "content": "介绍一下北京"}]}, ensure_ascii=False)
    chat_url = f"{base}/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{DEMO_SERVICE}?access_token=$TOKEN"
    keys = f"API Key:    {creds['api_key']}\nSecret Key: {creds['secret_key']}\napi_path:   {DEMO_SERVICE}"
    console.print(Panel(keys, title="qfserve demo", expand=False))
    # Plain prints: the commands must survive copy-paste whole, without rich's wrapping.
    print("# 1. get an access token")
    print(f"TOKEN=$(curl -s {shlex.quote(token_url)} | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')")
    print("# 2. chat")
    print(f"curl -X POST \"{chat_url}\" -d {shlex.quote(body)}", flush=True)
