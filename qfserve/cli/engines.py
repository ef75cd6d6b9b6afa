"""`qfserve engine …`: remote engine pools (vLLM replicas) that services can be published on."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from qfserve.cli.common import DataDir, JsonFlag, console, fail, open_store, print_json
from qfserve.store import engines as pool_store

app = typer.Typer(help="Remote engine pools: OpenAI-compatible servers (vLLM) that services run on.",
                  no_args_is_help=True)


def _template_options(source: Path) -> dict:
    """The chat template (and its BOS/EOS) of a GGUF file or a Hugging Face model folder."""
    path = source.expanduser().resolve()
    if path.is_dir():
        config_file = path / "tokenizer_config.json"
        if not config_file.is_file():
            fail(f"{path}: no tokenizer_config.json")
        config = json.loads(config_file.read_text(encoding="utf-8"))
        template = config.get("chat_template")
        if not isinstance(template, str) or not template:
            fail(f"{config_file}: no chat_template")

        def token(name):
            value = config.get(name) or ""
            return value.get("content", "") if isinstance(value, dict) else value

        return {"chat_template": template, "bos_token": token("bos_token"), "eos_token": token("eos_token")}
    if not path.is_file():
        fail(f"chat template source not found: {source}")
    from qfserve.engine.prompt import ChatPrompt

    try:
        prompt = ChatPrompt(str(path))
    except (ValueError, OSError, RuntimeError) as exc:
        fail(f"cannot read a chat template from {path}: {exc}")
    return {"chat_template": prompt.chat_template, "bos_token": prompt.bos_token, "eos_token": prompt.eos_token}


def _base_options(base: str) -> dict:
    from qfserve.services.engines import resolve_model
    from qfserve.sft.manifest import base_hash

    path = Path(resolve_model(base))
    if not path.exists():
        fail(f"base model not found: {base}")
    return {"base": base, "base_sha256": base_hash(path)}


async def _look(pool_row) -> list[dict]:
    """What each replica says about itself (best effort: replicas may not be up yet)."""
    from qfserve.engine.openai_compat import ReplicaFailure
    from qfserve.services.engines import replica_pool

    pool = replica_pool(pool_row)
    found = []
    try:
        for replica in pool.replicas:
            try:
                models = await pool.models(replica)
                found.append({"url": replica.url, "reachable": True, "models": sorted(map(str, models))})
            except ReplicaFailure as failure:
                found.append({"url": replica.url, "reachable": False, "error": failure.kind})
    finally:
        await pool.close()
    return found


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The engine's name, used by `service publish --engine`.")],
    url: Annotated[list[str], typer.Option("--url", help="A replica's base URL (http://host:8000); repeatable.")],
    api_key_env: Annotated[Optional[str], typer.Option(help="Environment variable holding the replicas' API key (sent as a Bearer token).")] = None,
    api: Annotated[str, typer.Option(help="Server kind: auto (detect), vllm or llama-cpp (llama-cpp-python's server).")] = "auto",
    chat_template: Annotated[Optional[Path], typer.Option(help="GGUF file or HF model folder whose chat template the gateway renders, for servers that cannot count chat messages (llama-cpp-python).")] = None,
    context_length: Annotated[Optional[int], typer.Option(help="Tokens per sequence (prompt + answer), if the server does not report it. vLLM reports its --max-model-len.")] = None,
    base: Annotated[Optional[str], typer.Option(help="The base model the replicas serve (`default` or a GGUF/HF path): adapters trained on another base are refused.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds without a byte from a replica before the request is ended with an error.")] = 120.0,
    cooldown: Annotated[float, typer.Option(help="Seconds a failing replica stays ejected before a health probe may re-admit it.")] = 5.0,
    probe_interval: Annotated[float, typer.Option(help="Seconds between health probes (GET /health).")] = 2.0,
    replace: Annotated[bool, typer.Option(help="Replace an engine of the same name (running gateways switch within a second).")] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Add a pool of replicas. Running gateways on the same database use it from their next request."""
    from qfserve.engine.openai_compat import DIALECTS

    if api != "auto" and api not in DIALECTS:
        fail(f"--api must be auto, {' or '.join(DIALECTS)}")
    if context_length is not None and context_length < 16:
        fail("--context-length must be at least 16")
    if min(timeout, cooldown, probe_interval) <= 0:
        fail("--timeout, --cooldown and --probe-interval must be positive")
    options: dict = {"api": api, "timeout": timeout, "cooldown": cooldown, "probe_interval": probe_interval}
    if context_length is not None:
        options["context_length"] = context_length
    if chat_template is not None:
        options.update(_template_options(chat_template))
    if base is not None:
        options.update(_base_options(base))
    with open_store(data_dir) as store:
        try:
            pool = pool_store.add_pool(store, name, url, api_key_env=api_key_env, options=options, replace=replace)
        except (ValueError, pool_store.PoolExists) as exc:
            fail(str(exc))
    replicas = asyncio.run(_look(pool))
    if as_json:
        print_json({**_public(pool), "replicas": replicas})
        return
    console.print(f"engine [bold]{name}[/]: {len(pool.urls)} replica(s)")
    for replica in replicas:
        if replica["reachable"]:
            console.print(f"  {replica['url']}: serves {', '.join(replica['models']) or 'nothing'}")
        else:
            console.print(f"  {replica['url']}: [yellow]not reachable now[/] ({replica['error']})")


def _public(pool) -> dict:
    out = pool.as_dict()
    options = dict(out["options"])
    if "chat_template" in options:  # long; say where it is, not what it is
        options["chat_template"] = f"<{len(options['chat_template'])} characters>"
    out["options"] = options
    return out


@app.command("list")
def list_(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List engine pools and their replicas."""
    with open_store(data_dir) as store:
        pools = pool_store.list_pools(store)
    if as_json:
        print_json([_public(p) for p in pools])
        return
    table = Table("name", "replicas", "api", "api key env", "base")
    for p in pools:
        table.add_row(p.name, "\n".join(p.urls), p.options.get("api", "auto"), p.api_key_env or "-",
                      p.options.get("base", "-"))
    console.print(table)


@app.command("remove")
def remove(name: Annotated[str, typer.Argument(help="The engine's name.")],
           data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Remove an engine pool that no service uses."""
    with open_store(data_dir) as store:
        try:
            pool_store.remove_pool(store, name)
        except (pool_store.PoolNotFound, pool_store.PoolInUse) as exc:
            fail(str(exc))
    if as_json:
        print_json({"removed": name})
    else:
        console.print(f"removed engine {name}")
