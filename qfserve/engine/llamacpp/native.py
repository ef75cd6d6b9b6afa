"""The llama.cpp objects of one worker: model, context, batch, vocabulary and LoRA adapters.

Thin wrappers over the low-level ctypes API (llama-cpp-python 0.3.36). Only the worker process
imports this module. Every call here takes the GIL back, so the decode loop keeps them few.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from typing import Callable

from llama_cpp import llama_cpp as L

from qfserve.engine.llamacpp.cpu_turns import CpuTurns
from qfserve.engine.llamacpp.protocol import WorkerConfig

KV_TYPES = {"f16": L.GGML_TYPE_F16, "q8_0": L.GGML_TYPE_Q8_0}

GGML_LOG_LEVEL_DEBUG = 1  # ggml.h; llama-cpp-python 0.3.36's own logger maps these levels wrongly
GGML_LOG_LEVEL_INFO = 2
GGML_LOG_LEVEL_WARN = 3
GGML_LOG_LEVEL_ERROR = 4
GGML_LOG_LEVEL_CONT = 5
_LOG_LEVELS = {"debug": GGML_LOG_LEVEL_DEBUG, "info": GGML_LOG_LEVEL_INFO, "warn": GGML_LOG_LEVEL_WARN,
               "error": GGML_LOG_LEVEL_ERROR}


class _LlamaLog:
    """Forwards llama.cpp's errors to stderr and drops the rest (load chatter, warnings), unless
    QFSERVE_LLAMA_LOG=info (or debug, warn) asks for more: `info` prints the context set-up the
    way llama-server's `-lv 4` does, to compare the two field by field."""

    def __init__(self) -> None:
        self.threshold = _LOG_LEVELS.get(os.environ.get("QFSERVE_LLAMA_LOG", "error").lower(), GGML_LOG_LEVEL_ERROR)
        self.printing = False
        self.callback = L.llama_log_callback(self._log)  # kept alive as long as this object
        L.llama_log_set(self.callback, ctypes.c_void_p(0))

    def _log(self, level: int, text: bytes, _user_data) -> None:
        if level != GGML_LOG_LEVEL_CONT:
            self.printing = level >= self.threshold
        if self.printing:
            sys.stderr.write(text.decode("utf-8", "replace"))



class NativeModel:
    def __init__(self, config: WorkerConfig, on_progress: Callable[[float], None]) -> None:
        self._log = _LlamaLog()
        self._turns = CpuTurns(config.threads)  # one decode at a time beside other workers (cpu_turns.py)
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
        self.unified = config.kv_unified
        context_params = L.llama_context_default_params()
        # The KV layout (the engine README's "KV cells" section has the measurements):
        # - a region per sequence (the default): a sequence's cells always lie in position order, so
        #   its attention sums them in the same order alone or beside others, and one sequence's
        #   attention never scans another's cells;
        # - one pool shared by all (kv_unified): a long conversation may use what several short
        #   ones would, and a copied prefix shares cells instead of duplicating them; but freed
        #   cells are reused first, so a sequence's new cell can sit below its older ones, and
        #   every sequence's attention scans the whole used part of the pool.
        context_params.n_ctx = config.kv_cells if self.unified else config.seq_limit * config.parallel
        context_params.kv_unified = self.unified
        context_params.n_seq_max = config.parallel
        context_params.n_batch = max(512, self.batch_capacity)
        # At most one sampled row per sequence per step: llama-server's output buffer, not n_batch rows.
        context_params.n_outputs_max = config.parallel
        context_params.n_outputs_max_per_seq = 1
        context_params.n_threads = config.threads
        context_params.n_threads_batch = config.threads  # both, or prefill uses the default of 4
        context_params.no_perf = True
        # KV cells in f16 (llama-server's default) or q8_0 (`kv_type`):
        # - f16: llama.cpp's fast attention kernels: a tiled one for prompt chunks of 64+ tokens, and
        #   a split-KV one for a sequence decoding alone past 256 cells. Other chunks and batched
        #   decoding use the plain kernel, which rounds differently, and this model's logits move by
        #   up to ~1 when rounding changes anywhere: so an answer can depend on what else ran.
        # - q8_0: half the memory, and only the plain kernel (f32 sums): bit-identical attention
        #   whatever the batch or chunking, but prompts of thousands of tokens prefill several times
        #   slower on a CPU.
        # llama.cpp's Hadamard "attention rotation" of quantized cells stays off: measured here, with
        # it q8_0 attention over cells out of position order (a unified pool) differs by 0.8 in the
        # logits from the same cells in order; without it, it is identical. It is read from the
        # environment when the context is made (this process only).
        context_params.type_k = context_params.type_v = KV_TYPES[config.kv_type]
        os.environ["LLAMA_ATTN_ROT_DISABLE"] = "1"
        self.ctx = L.llama_init_from_model(self.model, context_params)
        if not self.ctx:
            L.llama_model_free(self.model)
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")

        self.memory = L.llama_get_memory(self.ctx)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_cells = L.llama_n_ctx(self.ctx)  # llama.cpp pads to a multiple of 256 (per sequence if not unified)
        self.n_ctx_seq = min(config.seq_limit, L.llama_n_ctx_seq(self.ctx))
        self.n_ctx_train = L.llama_model_n_ctx_train(self.model)
        self.eog_ids = [t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self.vocab, t)]
        self._eog = frozenset(self.eog_ids)
        self._batch = L.llama_batch_init(self.batch_capacity, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._state_buffer = (ctypes.c_uint8 * 0)()  # grown to the largest sequence copied between regions
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
        with self._turns:
            return L.llama_decode(self.ctx, batch)

    def truncate(self, seq_id: int, keep: int) -> bool:
        """Drop this sequence's cells from position `keep` on (keep=0 wipes it)."""
        if keep <= 0:
            return L.llama_memory_seq_rm(self.memory, seq_id, -1, -1)
        return L.llama_memory_seq_rm(self.memory, seq_id, keep, -1)

    def copy_prefix(self, src: int, dst: int, length: int) -> bool:
        """Give `dst` (empty) the cells of `src`'s positions [0, length). In a unified pool the cells
        gain an owner (no data moves). Between regions `llama_memory_seq_cp` would copy the donor's
        whole region, used or not (9216 cells: 212 MB for this model), so the donor's sequence state
        (only the cells it holds) is read out and written into `dst`, then cut back to `length`.
        False if llama.cpp refused (`dst` is then empty)."""
        if self.unified:
            L.llama_memory_seq_cp(self.memory, src, dst, 0, length)
            return True
        size = L.llama_state_seq_get_size_ext(self.ctx, src, 0)
        if len(self._state_buffer) < size:
            self._state_buffer = (ctypes.c_uint8 * size)()
        written = L.llama_state_seq_get_data_ext(self.ctx, self._state_buffer, size, src, 0)
        L.llama_memory_seq_rm(self.memory, dst, -1, -1)
        if written == 0 or L.llama_state_seq_set_data_ext(self.ctx, self._state_buffer, written, dst, 0) == 0:
            L.llama_memory_seq_rm(self.memory, dst, -1, -1)
            return False
        return L.llama_memory_seq_rm(self.memory, dst, length, -1)

    def measure(self, parallel: int, prefill: int = 64) -> dict:
        """Time one decode step of 1 and of `parallel` sequences, and one prefill of `prefill`
        tokens, on throw-away cells: the first estimate of the engine's speed (for predicted queue
        waits), and the first touch of every weight page before a user waits on it."""
        token = max(0, L.llama_vocab_bos(self.vocab))

        def timed(tokens: list[int], positions: list[int], seq_ids: list[int]) -> float:
            # Logits where a real step wants them: the last token of each sequence.
            logits = [i == len(seq_ids) - 1 or seq_ids[i + 1] != seq_ids[i] for i in range(len(seq_ids))]
            started = time.perf_counter()
            code = self.decode(tokens, positions, seq_ids, logits)
            elapsed = time.perf_counter() - started
            for seq_id in set(seq_ids):
                self.truncate(seq_id, 0)
            if code != 0:
                raise RuntimeError(f"llama_decode failed ({code}) while measuring the engine")
            return elapsed

        prefill = max(1, min(prefill, self.batch_capacity, self.n_cells))
        timed([token] * prefill, list(range(prefill)), [0] * prefill)  # warm-up: page faults, thread pool
        prefill_seconds = timed([token] * prefill, list(range(prefill)), [0] * prefill)
        one = timed([token], [0], [0])
        n = max(1, min(parallel, self.batch_capacity))
        many = timed([token] * n, [0] * n, list(range(n)))
        return {"step_1": one, "step_n": many, "n": n, "prefill_tokens_per_s": prefill / max(prefill_seconds, 1e-6)}

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
        self._turns.close()
        L.llama_batch_free(self._batch)
        L.llama_free(self.ctx)
        for adapter in self._adapters.values():
            L.llama_adapter_lora_free(adapter)
        L.llama_model_free(self.model)
