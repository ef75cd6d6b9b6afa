"""Remote engines: a pool of OpenAI-compatible replicas (vLLM; llama-cpp-python's server)."""

from qfserve.engine.openai_compat.adapters import AdapterRefused, RemoteAdapter
from qfserve.engine.openai_compat.dialect import DIALECTS, LLAMA_CPP, VLLM, ChatTemplate
from qfserve.engine.openai_compat.engine import RemoteEngine
from qfserve.engine.openai_compat.replicas import PoolSettings, Replica, ReplicaFailure, ReplicaPool

__all__ = [
    "AdapterRefused", "ChatTemplate", "DIALECTS", "LLAMA_CPP", "PoolSettings", "RemoteAdapter", "RemoteEngine",
    "Replica", "ReplicaFailure", "ReplicaPool", "VLLM",
]
