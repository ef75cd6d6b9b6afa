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

from qfserve.cli.common import console, data_dir_or_default, fail, open_store, say_database
from qfserve.cli.console import signin_link
from qfserve.cli.safety import AllowOpt, LevelOpt, LexiconOpt, category_levels, load_moderator
from qfserve.config import Settings, load_settings, split_paths
from qfserve.store import apps as app_store
from qfserve.store import services as service_store
from qfserve.store.db import DB_NAME

DEMO_APP = "demo"
DEMO_SERVICE = "demo"
DEMO_FILE = "demo-credentials.json"
DEMO_MAX_OUTPUT_TOKENS = 128

# Libraries that log at DEBUG/INFO on their own loggers (bm25s even sets its logger to DEBUG):
# below WARNING they only show with --log-level debug.
QUIET_LOGGERS = ("bm25s", "jieba", "httpx", "httpcore", "urllib3", "filelock", "huggingface_hub",
                 "transformers", "asyncio", "multipart", "alembic.runtime.plugins")


def _env(name: str) -> dict:
    return {"envvar": f"QFSERVE_{name}", "show_envvar": True}


def _check_timezone(value: str | None) -> str | None:
    from qfserve.limits.days import check_timezone

    try:
        return None if value is None else check_timezone(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def serve(
    host: Annotated[Optional[str], typer.Option(help="Address to listen on. Default: 127.0.0.1.", **_env("HOST"))] = None,
    port: Annotated[Optional[int], typer.Option(help="Port to listen on. Default: 8360.", **_env("PORT"))] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Database and config folder (reads qfserve.toml there). Default: the per-user data folder.", **_env("DATA_DIR"))] = None,
    parallel: Annotated[Optional[int], typer.Option(help="Max concurrent sequences per base model. Default: 4.", **_env("PARALLEL"))] = None,
    threads: Annotated[Optional[int], typer.Option(help="llama.cpp threads. Default: physical cores.", **_env("THREADS"))] = None,
    queue_size: Annotated[Optional[int], typer.Option(help="Waiting requests before answering 336100. Default: 64.", **_env("QUEUE_SIZE"))] = None,
    # engine (issue 15)
    kv_cells: Annotated[Optional[int], typer.Option(help="KV cells per base model, all sequences together (one cell per prompt or answer token). Default: parallel x --ctx-per-seq.", **_env("KV_CELLS"))] = None,
    ctx_per_seq: Annotated[Optional[int], typer.Option(help="Most KV cells one sequence may hold (prompt + answer); longer prompts get 336103. Default: 9216 (an 8K profile's 7168 + 2048), or kv-cells / parallel when --kv-cells is given, or the whole pool with --kv-unified.", **_env("CTX_PER_SEQ"))] = None,
    kv_unified: Annotated[Optional[bool], typer.Option("--kv-unified/--kv-per-sequence", help="One KV pool the sequences share (a long conversation may use what several short ones would), instead of a region each. Default: a region each (answers then never depend on what else runs).", **_env("KV_UNIFIED"))] = None,
    kv_type: Annotated[Optional[str], typer.Option(help="KV cell type: f16, or q8_0 (half the memory; answers never depend on batching; prompts of thousands of tokens prefill slower). Default: f16.", **_env("KV_TYPE"))] = None,
    max_queue_wait: Annotated[Optional[float], typer.Option(help="Seconds a request may wait for a sequence: beyond the predicted wait it gets 336100 at once. Default: 30.", **_env("MAX_QUEUE_WAIT"))] = None,
    stream_interval: Annotated[Optional[float], typer.Option(min=0, max=1, help="Seconds the engine may hold tokens in the middle of an answer to send them to the server together (the first token and the end go at once); 0 sends each token alone, at more CPU per token. Default: 0.05.", **_env("STREAM_INTERVAL"))] = None,
    limiter: Annotated[Optional[str], typer.Option(help="Rate-limit backend: local or redis. Default: local.", **_env("LIMITER"))] = None,
    redis_url: Annotated[Optional[str], typer.Option(help="Redis URL for --limiter redis; with it, the failed-auth throttle is shared too.", **_env("REDIS_URL"))] = None,
    database_url: Annotated[Optional[str], typer.Option(help="PostgreSQL URL (postgresql://user:password@host:5432/db) for state shared by several gateways. Default: the SQLite file in the data dir.", **_env("DATABASE_URL"))] = None,
    max_in_flight: Annotated[Optional[int], typer.Option(min=0, help="Chat requests in flight before answering 4 at once (no queueing). Default: 0, no ceiling.", **_env("MAX_IN_FLIGHT"))] = None,
    quota_timezone: Annotated[Optional[str], typer.Option(callback=_check_timezone, help="Time zone (IANA name) whose midnight starts an app's daily quota. Default: Asia/Shanghai, as Qianfan.", **_env("QUOTA_TIMEZONE"))] = None,
    safety_lexicon: LexiconOpt = None,
    safety_allow: AllowOpt = None,
    safety_level: LevelOpt = None,
    log_level: Annotated[Optional[str], typer.Option(help="debug, info, warning or error. Default: info.", **_env("LOG_LEVEL"))] = None,
    log_json: Annotated[Optional[bool], typer.Option("--log-json/--log-text", help="Log as JSON lines.", **_env("LOG_JSON"))] = None,
    access_log: Annotated[Optional[bool], typer.Option(
        "--access-log/--no-access-log", help="One line per request: id, app, service, status or error code, "
        "tokens, latency (never user text). Default: on.", **_env("ACCESS_LOG"))] = None,
    drain_seconds: Annotated[Optional[float], typer.Option(
        help="After SIGTERM, how long running answers may finish; meanwhile /readyz answers 503 and new chat "
             "requests get error 2 (the SDK retries it). A second signal stops at once. Default: 30.",
        **_env("DRAIN_SECONDS"))] = None,
    demo: Annotated[bool, typer.Option(help="On an empty data dir, create a demo app and service; print how to call them.",
                                       **_env("DEMO"))] = False,
    # security (issue 16); more settings (body limits, timeouts) in SECURITY.md
    trusted_proxy: Annotated[Optional[list[str]], typer.Option(help="Address or network of a reverse proxy whose X-Forwarded-For is believed; repeatable (the variable takes a comma-separated list). Default: none.", **_env("TRUSTED_PROXIES"))] = None,
    public_url: Annotated[Optional[str], typer.Option(help="Base URL clients reach this server at, used in the service list. Default: http://HOST:PORT.", **_env("PUBLIC_URL"))] = None,
    metrics_token: Annotated[Optional[str], typer.Option(help="Bearer token /metrics requires. Unset: /metrics answers loopback clients only.", **_env("METRICS_TOKEN"))] = None,
    models_dir: Annotated[Optional[Path], typer.Option(help="Serve only model files inside this folder.", **_env("MODELS_DIR"))] = None,
) -> None:
    """Serve every published service over Qianfan's v1 chat API.

    Settings come from flags, then QFSERVE_* environment variables, then qfserve.toml in the data
    dir, then defaults. SIGTERM stops admitting, lets running answers finish, then exits.
    """
    if kv_type is not None and kv_type not in ("f16", "q8_0"):
        raise typer.BadParameter("choose f16 or q8_0", param_hint="--kv-type")
    data_dir = data_dir_or_default(data_dir)
    try:
        settings = load_settings(
            host=host, port=port, data_dir=data_dir, parallel=parallel, ctx_per_seq=ctx_per_seq, threads=threads,
            queue_size=queue_size, limiter=limiter, redis_url=redis_url, database_url=database_url,
            max_in_flight=max_in_flight,
            quota_timezone=quota_timezone,
            safety_lexicon=split_paths(safety_lexicon or []), safety_allow=safety_allow, log_level=log_level,
            log_json=log_json, safety_category_levels=category_levels(safety_level), access_log=access_log,
            drain_seconds=drain_seconds, trusted_proxies=trusted_proxy, public_url=public_url,
            metrics_token=metrics_token, models_dir=models_dir,
            kv_cells=kv_cells, kv_unified=kv_unified, kv_type=kv_type, max_queue_wait=max_queue_wait,
            stream_interval=stream_interval,  # engine (issue 15)
        )
    except ValueError as exc:  # pydantic's ValidationError: a bad value in the flags, environment or toml
        fail(f"bad setting: {_first_error(exc)}")
    _configure_logging(settings)
    # Fail here, in one line, rather than as a traceback inside the server's startup.
    moderator = None
    if settings.safety_lexicon:
        moderator = load_moderator(settings.safety_lexicon, settings.safety_allow,
                                   settings.safety_category_levels or None)
        from qfserve.safety import install_sighup_reload

        install_sighup_reload(moderator)
    if demo:
        _ensure_demo(settings)
    else:
        if settings.database_url:  # scale-out (issue 11)
            from qfserve.store.db import display_url

            say_database(display_url(settings.database_url))
        else:
            say_database((settings.data_dir / DB_NAME).resolve(), not (settings.data_dir / DB_NAME).exists())
    from qfserve.api.app import create_app
    from qfserve.api.draining import DrainingServer
    from qfserve.api.http_server import uvicorn_config

    web_app = create_app(settings, moderator=moderator, freeze_startup_heap=True)
    # The drain (--drain-seconds) comes first; uvicorn's own grace then only closes what is left.
    config = uvicorn_config(web_app, settings)
    config.timeout_graceful_shutdown = 1
    DrainingServer(config, web_app, settings.drain_seconds).run()


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}"
    return str(exc)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                 "msg": record.getMessage()}
        entry.update(getattr(record, "fields", None) or {})  # structured fields (the access log's)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _QuietLibraries(logging.Filter):
    def __init__(self, floor: int):
        super().__init__()
        self.floor = floor

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.floor:
            return True
        return not any(record.name == name or record.name.startswith(name + ".") for name in QUIET_LOGGERS)


def _configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    if settings.log_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        fail(f"--log-level must be debug, info, warning or error, got {settings.log_level!r}")
    # Records below the chosen level never print, even from a library that set its own logger lower.
    handler.setLevel(level)
    handler.addFilter(_QuietLibraries(logging.WARNING if level > logging.DEBUG else logging.DEBUG))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


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
            creds = None
        console_link = signin_link(store, settings.host, settings.port)
    if creds is None:
        print(f"# web console (one-time sign-in link; `qfserve console` prints another)\n{console_link}", flush=True)
        return
    base = f"http://{settings.host}:{settings.port}"
    token_url = (f"{base}/oauth/2.0/token?grant_type=client_credentials"
                 f"&client_id={creds['api_key']}&client_secret={creds['secret_key']}")
    body = json.dumps({"messages": [{"role": "user", "content": "介绍一下北京"}], "stream": True,
                       "max_output_tokens": DEMO_MAX_OUTPUT_TOKENS}, ensure_ascii=False)
    chat_url = f"{base}/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{DEMO_SERVICE}?access_token=$TOKEN"
    keys = f"API Key:    {creds['api_key']}\nSecret Key: {creds['secret_key']}\napi_path:   {DEMO_SERVICE}"
    console.print(Panel(keys, title="qfserve demo", expand=False))
    # Plain prints: the commands must survive copy-paste whole, without rich's wrapping.
    print("# 1. get an access token")
    print(f"TOKEN=$(curl -s {shlex.quote(token_url)} | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')")
    print("# 2. chat (streams the answer as it is written)")
    print(f"curl -N -X POST \"{chat_url}\" -d {shlex.quote(body)}")
    print("# The demo model is SmolLM2-135M: tiny, for trying the API, not for good answers. For a real model:"
          " qfserve service publish NAME --model /path/model.gguf")
    print("# 3. the web console (one-time sign-in link; `qfserve console` prints another)")
    print(console_link, flush=True)
