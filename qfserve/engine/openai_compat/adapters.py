"""LoRA adapters on remote replicas: registered through vLLM's runtime LoRA API where the replica
allows it (`VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`), or else found already served under their name
(`--lora-modules NAME=DIR`, or a llama-cpp-python model alias with a `lora_path`). The request
then selects the adapter through its `model` field.
"""

from __future__ import annotations

from dataclasses import dataclass

from qfserve.engine.openai_compat.dialect import error_message
from qfserve.engine.openai_compat.replicas import Replica, ReplicaPool


class AdapterRefused(Exception):
    """A replica cannot serve the adapter; the message says why and what to do."""


@dataclass(frozen=True)
class RemoteAdapter:
    name: str  # the model name requests use
    path: str  # the PEFT folder, as the replicas see it (same path: shared storage)


async def ensure_adapter(pool: ReplicaPool, replica: Replica, adapter: RemoteAdapter) -> str:
    """Make `replica` serve `adapter` under its name; returns how ("loaded" or "listed")."""
    status, payload = await pool.call_json(
        replica, "POST", "/v1/load_lora_adapter", {"lora_name": adapter.name, "lora_path": adapter.path},
        server_errors_count=False, text_ok=True)
    message = error_message(payload)
    if status == 200:
        return "loaded"
    if status == 400 and "already been loaded" in message:
        served = (await pool.models(replica)).get(adapter.name, {})
        root = served.get("root")
        if root and root.rstrip("/") != adapter.path.rstrip("/"):
            raise AdapterRefused(f"{replica.url} already serves {adapter.name!r} from {root}, not {adapter.path}; "
                                 "publish under another --model name")
        return "loaded"
    if status in (404, 405):  # no runtime LoRA API on this replica: it must already serve the name
        if adapter.name in await pool.models(replica):
            return "listed"
        raise AdapterRefused(
            f"{replica.url} does not serve {adapter.name!r} and does not load adapters at run time: start vLLM "
            f"with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 --enable-lora, or with --lora-modules {adapter.name}={adapter.path}")
    raise AdapterRefused(f"{replica.url} refused the adapter: {message}")
