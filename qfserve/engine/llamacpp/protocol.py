"""Messages between the HTTP process (client.py) and the engine worker (worker.py).

Plain tuples over a multiprocessing Pipe: cheap to pickle, and one `events` message per decode
step carries every sequence's events, so pipe traffic stays at one message per step.
This module must stay importable without llama_cpp (the HTTP process imports it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# parent -> worker
GENERATE = "generate"  # (GENERATE, GenerateRequest)
CANCEL = "cancel"  # (CANCEL, request_id)
SHUTDOWN = "shutdown"  # (SHUTDOWN,)

# worker -> parent
PROGRESS = "progress"  # (PROGRESS, fraction 0..1) while the model loads
READY = "ready"  # (READY, {"n_ctx_seq": int, "n_vocab": int, ...})
LOAD_FAILED = "load_failed"  # (LOAD_FAILED, message)
EVENTS = "events"  # (EVENTS, [(request_id, TokenEvent | FinishEvent), ...], stats dict)


def physical_cores() -> int:
    """Cores we may run on, not counting SMT siblings: ggml threads beyond that only contend."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    try:
        for cpu in allowed:
            base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
            with open(f"{base}/physical_package_id") as package, open(f"{base}/core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
    except OSError:
        return max(1, len(allowed))
    return max(1, len(cores) or len(allowed))


@dataclass(frozen=True)
class WorkerConfig:
    model_path: str
    parallel: int = 4  # sequences decoded together (llama.cpp n_seq_max)
    ctx_per_seq: int = 4096  # KV cells per sequence; n_ctx = parallel * ctx_per_seq
    threads: int = 2
    queue_size: int = 64  # requests allowed to wait for a free sequence
    prefill_chunk: int = 256  # prompt tokens per step, across all prefills, so streams keep flowing
    idle_prefill_chunk: int = 512  # the same when no stream is decoding: nothing waits, so go faster
