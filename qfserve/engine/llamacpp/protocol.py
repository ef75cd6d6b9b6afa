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
EVENTS = "events"  # (EVENTS, [(request_id, token tuple | FinishEvent), ...], stats dict or None: unchanged)
# A token event on the wire: (token_id, text, logprob, ((token text, logprob), ...), token_text),
# the fields of base.TokenEvent in order.

# The error of a FinishEvent for a request refused for load (it waited `max_queue_wait` without
# starting, or the queue was full): the client raises EngineOverloaded for it (336100).
OVERLOADED = "the engine is overloaded"


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


DEFAULT_CTX_PER_SEQ = 9216  # an 8K profile's full input and output (7168 + 2048)


@dataclass(frozen=True)
class WorkerConfig:
    model_path: str
    parallel: int = 4  # sequences decoded together (llama.cpp n_seq_max)
    kv_cells: int = 4 * DEFAULT_CTX_PER_SEQ  # KV cells of the engine, all sequences together (llama.cpp n_ctx)
    ctx_per_seq: int = 0  # most cells one sequence may hold; 0: kv_cells / parallel (or the whole pool, unified)
    kv_unified: bool = False  # one pool the sequences share, instead of a region each (see native.py)
    kv_type: str = "f16"  # f16 or q8_0 (see native.py)
    threads: int = 2
    queue_size: int = 64  # requests allowed to wait for a free sequence
    max_queue_wait: float = 30.0  # seconds a request may wait before it starts (336100 beyond)
    prefill_chunk: int = 256  # prompt tokens per step, across all prefills, so streams keep flowing
    idle_prefill_chunk: int = 512  # the same when no stream is decoding: nothing waits, so go faster
    stream_interval: float = 0.05  # seconds tokens mid-answer may wait to travel together (first and last go at once)

    @property
    def seq_limit(self) -> int:
        """The most cells one sequence may hold."""
        if self.kv_unified:
            return min(self.ctx_per_seq or self.kv_cells, self.kv_cells)
        return min(self.ctx_per_seq or self.kv_cells // self.parallel, self.kv_cells // self.parallel)
