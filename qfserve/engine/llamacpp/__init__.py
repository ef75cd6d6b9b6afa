"""The embedded engine: a continuous-batching llama.cpp decode loop in its own worker process.

- client.py  LlamaCppEngine, the Engine the HTTP process uses (spawns and talks to the worker)
- worker.py  the worker process: admission, prefix reuse, chunked prefill, one batch per step
- native.py  the llama.cpp model, context, batch and LoRA adapters (low-level ctypes API)
- sampling.py one native sampler chain per sequence; logprobs
- text.py    UTF-8 reassembly and stop-string holdback
- protocol.py the pipe messages and the worker's settings
"""

from qfserve.engine.llamacpp.client import LlamaCppEngine

__all__ = ["LlamaCppEngine"]
