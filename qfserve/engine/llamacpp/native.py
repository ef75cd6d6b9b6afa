"""The llama.cpp objects of one worker: model, context, batch, vocabulary and LoRA adapters.

Thin wrappers over the low-level ctypes API (llama-cpp-python 0.3.36). Only the worker process
imports this module. Every call here takes the GIL back, so the decode loop keeps them few.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Callable

from llama_cpp import llama_cpp as L

from qfserve.engine.llamacpp.protocol import WorkerConfig

GGML_LOG_LEVEL_ERROR = 4  # ggml.h; llama-cpp-python 0.3.36's own logger maps these levels wrongly
GGML_LOG_LEVEL_CONT = 5


class _ErrorsOnlyLog:
    """Forwards llama.cpp's errors to stderr and drops the rest (load chatter, warnings)."""

    def __init__(self) -> None:
        self.printing = False
        self.callback = L.llama_log_callback(self._log)  # kept alive as long as this object
        L.llama_log_set(self.callback, ctypes.c_void_p(0))

    def _log(self, level: int, text: bytes, _user_data) -> None:
        if level != GGML_LOG_LEVEL_CONT:
            self.printing = level == GGML_LOG_LEVEL_ERROR
        if self.printing:
            sys.stderr.write(text.decode("utf-8", "replace"))



class NativeModel:
    def __init__(self, config: WorkerConfig, on_progress: Callable[[float], None]) -> None:
        self._log = _ErrorsOnlyLog()
        L.llama_backend_init()

        # Kept on self: ctypes callbacks must outlive the call that uses them.
        self._progress_callback = L.llama_progress_callback(
            lambda progress, _user_data: on_progress(float(progress)) or True
        )
        model_params = L.llama_model_default_params()
        model_params.progress_callback = self._progress_callback
        # No extra (repacking) buffer types: on this CPU they select ggml's AMX kernels, and AMX
        # tile instructions fault here (the kernel or VM does not grant AMX), killing the process.
        model_params.use_extra_bufts = False
        self.model = L.llama_model_load_from_file(config.model_path.encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load the model {config.model_path}")

        self.batch_capacity = max(config.parallel + config.prefill_chunk, config.idle_prefill_chunk)
        context_params = L.llama_context_default_params()
        context_params.n_ctx = config.parallel * config.ctx_per_seq
        context_params.n_seq_max = config.parallel
        context_params.n_batch = max(512, self.batch_capacity)
        context_params.n_threads = config.threads
        context_params.n_threads_batch = config.threads  # both, or prefill uses the default of 4
        context_params.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, context_params)
        if not self.ctx:
            L.llama_model_free(self.model)
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")

        self.memory = L.llama_get_memory(self.ctx)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_seq = L.llama_n_ctx_seq(self.ctx)
        self.eog_ids = [t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self.vocab, t)]
        self._eog = frozenset(self.eog_ids)
        self._batch = L.llama_batch_init(self.batch_capacity, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._adapters: dict[str, object] = {}
        self._active_adapter: str | None = None

    # -- tokens -------------------------------------------------------------------------------

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    def piece(self, token: int) -> bytes:
        """The token's bytes (possibly part of a UTF-8 character); special tokens render empty."""
        cached = self._pieces.get(token)
        if cached is None:
            buffer = ctypes.create_string_buffer(64)
            size = L.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
            if size < 0:
                buffer = ctypes.create_string_buffer(-size)
                size = L.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
            cached = self._pieces[token] = buffer.raw[: max(size, 0)]
        return cached

    # -- decoding -----------------------------------------------------------------------------

    def decode(self, tokens: list[int], positions: list[int], seq_ids: list[int], logits: list[bool]) -> int:
        """Run one batch; returns llama_decode's code (0 = success, 1 = no KV slot, <0 = error)."""
        batch = self._batch
        for i, (token, position, seq_id, want_logits) in enumerate(zip(tokens, positions, seq_ids, logits)):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = want_logits
        batch.n_tokens = len(tokens)  # llama_batch_init leaves it unset
        return L.llama_decode(self.ctx, batch)

    def truncate(self, seq_id: int, keep: int) -> bool:
        """Drop this sequence's cells from position `keep` on (keep=0 wipes it)."""
        if keep <= 0:
            return L.llama_memory_seq_rm(self.memory, seq_id, -1, -1)
        return L.llama_memory_seq_rm(self.memory, seq_id, keep, -1)

    # -- LoRA adapters ------------------------------------------------------------------------

    def load_adapter(self, path: str) -> None:
        """Load a LoRA GGUF once; the base weights stay shared."""
        if path in self._adapters:
            return
        adapter = L.llama_adapter_lora_init(self.model, path.encode())
        if not adapter:
            raise ValueError(f"could not load LoRA adapter {path}")
        self._adapters[path] = adapter

    def use_adapter(self, path: str | None) -> None:
        """Adapters apply to the whole context, so a step's batch holds one adapter set."""
        if path == self._active_adapter:
            return
        if path is None:
            L.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            adapters = (L.llama_adapter_lora_p_ctypes * 1)(self._adapters[path])
            scales = (ctypes.c_float * 1)(1.0)
            L.llama_set_adapters_lora(self.ctx, adapters, 1, scales)
        self._active_adapter = path

    def close(self) -> None:
        L.llama_batch_free(self._batch)
        L.llama_free(self.ctx)
        for adapter in self._adapters.values():
            L.llama_adapter_lora_free(adapter)
        L.llama_model_free(self.model)
