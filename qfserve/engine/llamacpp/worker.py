"""The engine worker process: a continuous-batching decode loop over one llama.cpp context.

Each loop iteration (a step): read every pending message from the parent, admit waiting requests
into free sequences, build one batch (one token per decoding sequence, plus up to `prefill_chunk`
prompt tokens of the sequences still prefilling), decode it, sample, and send every sequence's
events of this step in one message.

It runs in its own process because every ctypes call needs the GIL, and a busy HTTP thread beside
the loop slows decoding up to 4x (engine-notes.md).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from qfserve.engine.base import FinishEvent, FinishReason, GenerateRequest, TokenEvent, TopLogprob
from qfserve.engine.llamacpp import protocol
from qfserve.engine.llamacpp.native import NativeModel
from qfserve.engine.llamacpp.protocol import WorkerConfig
from qfserve.engine.llamacpp.constrained import make_sampler
from qfserve.engine.llamacpp.sampling import SequenceSampler, token_logprobs
from qfserve.engine.llamacpp.text import StreamingText


@dataclass(eq=False)
class Slot:
    """One llama.cpp sequence id and what its KV cache holds, kept after a request ends so the next
    request with the same prefix (a multi-turn conversation resending its history) skips it.

    Keeping costs nothing: without kv_unified each sequence owns exactly n_ctx / n_seq_max cells,
    so freeing a finished sequence's cells could not help any other sequence. They are dropped
    (`llama_memory_seq_rm`) when the slot is reused for another prompt or after a failed step."""

    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV is in the cache, in order
    adapter: str | None = None  # the KV of one adapter is no prefix for another
    last_used: float = 0.0
    busy: bool = False


@dataclass(eq=False)
class Sequence:
    request: GenerateRequest
    slot: Slot
    sampler: SequenceSampler
    text: StreamingText
    pending: list[int]  # prompt tokens not yet in the KV cache
    next_token: int | None = None  # sampled last step, decoded this step
    generated: int = 0
    queue_seconds: float = 0.0

    @property
    def request_id(self) -> str:
        return self.request.request_id


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class EngineWorker:
    def __init__(self, conn: Connection, config: WorkerConfig) -> None:
        self.conn = conn
        self.config = config
        self.native: NativeModel | None = None
        self.slots: list[Slot] = []
        self.waiting: dict[str, GenerateRequest] = {}  # insertion order is arrival order
        self.enqueued_at: dict[str, float] = {}
        self.running: dict[str, Sequence] = {}
        self.outbox: list[tuple[str, TokenEvent | FinishEvent]] = []
        self.shutting_down = False
        self._last_group = ""
        self._last_stats: dict = {}
        self._parent_pid = os.getppid()
        self.steps = 0
        self.tokens_generated = 0
        self.prompt_tokens_reused = 0
        self.busy_seconds = 0.0  # time inside steps
        self.decode_seconds = 0.0  # of which inside llama_decode

    # -- lifecycle ----------------------------------------------------------------------------

    def load(self) -> None:
        last_sent = [-1.0]

        def on_progress(fraction: float) -> None:
            if fraction - last_sent[0] >= 0.01 or fraction >= 1.0:
                last_sent[0] = fraction
                self.conn.send((protocol.PROGRESS, fraction))

        self.native = NativeModel(self.config, on_progress)
        self.slots = [Slot(seq_id=i) for i in range(self.config.parallel)]
        self.conn.send(
            (
                protocol.READY,
                {"n_ctx_seq": self.native.n_ctx_seq, "n_vocab": self.native.n_vocab, "threads": self.config.threads},
            )
        )

    def serve(self) -> None:
        while True:
            idle = not self.running and not self.waiting
            if not self._receive(timeout=1.0 if idle else 0.0):
                return  # the parent is gone
            if self.shutting_down:
                self._cancel_all()
                self._flush()
                return
            self._admit()
            if self.running:
                step_started = time.perf_counter()
                try:
                    self._step()
                except Exception:  # never take the process down for one bad step
                    traceback.print_exc(file=sys.stderr)
                    for seq in list(self.running.values()):
                        self._finish(seq, "error", error="internal engine error", wipe=True)
                self.busy_seconds += time.perf_counter() - step_started
            self._flush()

    # -- messages -----------------------------------------------------------------------------

    def _receive(self, timeout: float) -> bool:
        """Handle every message that is waiting (blocking up to `timeout` for the first).
        Returns False when the parent has gone away."""
        try:
            if not self.conn.poll(timeout):
                return os.getppid() == self._parent_pid
            while True:
                self._handle(self.conn.recv())
                if not self.conn.poll(0):
                    return True
        except (EOFError, OSError):
            return False

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == protocol.GENERATE:
            self._enqueue(message[1])
        elif kind == protocol.CANCEL:
            self._cancel(message[1])
        elif kind == protocol.SHUTDOWN:
            self.shutting_down = True

    def _flush(self) -> None:
        """One message per step with all events; stats ride along (and are sent when they change)."""
        stats = self.stats()
        if self.outbox or stats["running"] != self._last_stats.get("running") or stats["waiting"] != self._last_stats.get("waiting"):
            self.conn.send((protocol.EVENTS, self.outbox, stats))
            self.outbox = []
            self._last_stats = stats

    def stats(self) -> dict:
        return {
            "running": len(self.running),
            "waiting": len(self.waiting),
            "steps": self.steps,
            "tokens_generated": self.tokens_generated,
            "prompt_tokens_reused": self.prompt_tokens_reused,
            # Where a step's time goes: llama_decode versus everything else in the loop (the profile
            # the benchmark prints).
            "busy_seconds": round(self.busy_seconds, 4),
            "decode_seconds": round(self.decode_seconds, 4),
        }

    # -- admission ----------------------------------------------------------------------------

    def _refuse(self, request: GenerateRequest, message: str) -> None:
        event = FinishEvent("error", len(request.prompt_tokens), 0, error=message)
        self.outbox.append((request.request_id, event))

    def _enqueue(self, request: GenerateRequest) -> None:
        """Check the request now, so a bad one is refused at once instead of after the queue."""
        prompt, params = request.prompt_tokens, request.params
        n_ctx_seq = self.native.n_ctx_seq
        if not prompt:
            return self._refuse(request, "the prompt is empty")
        if min(prompt) < 0 or max(prompt) >= self.native.n_vocab:
            return self._refuse(request, "the prompt holds token ids outside the vocabulary")
        if params.max_tokens < 1:
            return self._refuse(request, "max_tokens must be at least 1")
        if len(prompt) + params.max_tokens > n_ctx_seq:
            return self._refuse(
                request,
                f"the prompt has {len(prompt)} tokens; with max_tokens {params.max_tokens} "
                f"it exceeds the context of {n_ctx_seq} tokens per sequence",
            )
        # Requests arrive in bursts before admission runs, so count free sequences as room too.
        if len(self.waiting) + len(self.running) >= self.config.parallel + self.config.queue_size:
            return self._refuse(request, "the engine queue is full")
        if request.adapter:
            try:
                self.native.load_adapter(request.adapter)
            except ValueError as error:
                return self._refuse(request, str(error))
        self.waiting[request.request_id] = request
        self.enqueued_at[request.request_id] = time.monotonic()

    def _admit(self) -> None:
        while self.waiting and any(not slot.busy for slot in self.slots):
            request_id = next(iter(self.waiting))
            self._start(self.waiting.pop(request_id))

    def _start(self, request: GenerateRequest) -> None:
        prompt = request.prompt_tokens
        slot, shared = self._choose_slot(request)
        # Re-evaluate at least the last prompt token: its logits give the first sampled token.
        keep = min(shared, len(prompt) - 1)
        if keep < len(slot.cached) and not self.native.truncate(slot.seq_id, keep):
            keep = 0
            self.native.truncate(slot.seq_id, 0)
        slot.cached = slot.cached[:keep]
        slot.adapter = request.adapter
        slot.busy = True
        self.prompt_tokens_reused += keep

        sampler = make_sampler(request.params, self.native)  # constrained when the params say so
        sampler.accept_prompt(prompt, request.params.penalty_last_n)
        self.running[request.request_id] = Sequence(
            request=request,
            slot=slot,
            sampler=sampler,
            text=StreamingText(request.params.stop),
            pending=prompt[keep:],
            queue_seconds=time.monotonic() - self.enqueued_at.pop(request.request_id, time.monotonic()),
        )

    def _choose_slot(self, request: GenerateRequest) -> tuple[Slot, int]:
        """The idle slot sharing the longest prefix; among equals the least recently used, so
        other conversations' caches survive longest."""
        best, best_shared = None, -1
        for slot in sorted((s for s in self.slots if not s.busy), key=lambda s: s.last_used):
            shared = common_prefix_length(slot.cached, request.prompt_tokens) if slot.adapter == request.adapter else 0
            if shared > best_shared:
                best, best_shared = slot, shared
        return best, best_shared

    # -- ending sequences ---------------------------------------------------------------------

    def _finish(
        self,
        seq: Sequence,
        reason: FinishReason,
        text: str = "",
        error: str | None = None,
        wipe: bool = False,
    ) -> None:
        event = FinishEvent(
            reason,
            len(seq.request.prompt_tokens),
            seq.generated,
            text=text,
            error=error,
            matched_stop=seq.text.matched_stop,
            queue_seconds=seq.queue_seconds,
        )
        self.outbox.append((seq.request_id, event))
        seq.sampler.free()
        slot = seq.slot
        if wipe:  # the cache may not match `cached` any more
            self.native.truncate(slot.seq_id, 0)
            slot.cached = []
        slot.busy = False
        slot.last_used = time.monotonic()
        del self.running[seq.request_id]

    def _cancel(self, request_id: str) -> None:
        if request_id in self.waiting:
            request = self.waiting.pop(request_id)
            self.enqueued_at.pop(request_id, None)
            self.outbox.append((request_id, FinishEvent("cancelled", len(request.prompt_tokens), 0)))
        elif request_id in self.running:
            self._finish(self.running[request_id], "cancelled")

    def _cancel_all(self) -> None:
        for request_id in list(self.waiting) + list(self.running):
            self._cancel(request_id)

    # -- one decode step ----------------------------------------------------------------------

    def _pick_adapter_group(self) -> str | None:
        """Adapters apply to the whole context, so each step serves one adapter set; with several
        in use, steps rotate between them."""
        groups = sorted({seq.request.adapter or "" for seq in self.running.values()})
        later = [g for g in groups if g > self._last_group]
        self._last_group = later[0] if later else groups[0]
        return self._last_group or None

    def _step(self) -> None:
        adapter = self._pick_adapter_group()
        members = [seq for seq in self.running.values() if seq.request.adapter == adapter]
        self.native.use_adapter(adapter)

        tokens: list[int] = []
        positions: list[int] = []
        seq_ids: list[int] = []
        logits: list[bool] = []
        added: list[tuple[Sequence, list[int], int | None]] = []  # (seq, tokens, index to sample)

        def add(seq: Sequence, chunk: list[int], sample_last: bool) -> None:
            start = len(seq.slot.cached)
            for offset, token in enumerate(chunk):
                tokens.append(token)
                positions.append(start + offset)
                seq_ids.append(seq.slot.seq_id)
                logits.append(False)
            if sample_last:
                logits[-1] = True
            added.append((seq, chunk, len(tokens) - 1 if sample_last else None))

        for seq in members:
            if seq.next_token is not None:
                add(seq, [seq.next_token], sample_last=True)
        # Prompt chunks are capped so running streams keep their pace; with none running (a burst
        # of new requests) a bigger chunk gets everyone their first token sooner.
        budget = self.config.prefill_chunk if tokens else self.config.idle_prefill_chunk
        for seq in members:
            if seq.pending and budget > 0:
                chunk = seq.pending[:budget]
                budget -= len(chunk)
                add(seq, chunk, sample_last=len(chunk) == len(seq.pending))

        decode_started = time.perf_counter()
        code = self.native.decode(tokens, positions, seq_ids, logits)
        self.decode_seconds += time.perf_counter() - decode_started
        self.steps += 1
        if code != 0:
            for seq, _, _ in added:
                self._finish(seq, "error", error=f"llama_decode failed ({code})", wipe=True)
            return

        for seq, chunk, _ in added:
            seq.slot.cached.extend(chunk)
            if seq.pending:
                del seq.pending[: len(chunk)]
            else:
                seq.next_token = None
        for seq, _, index in added:
            if index is not None:
                self._sample(seq, index)

    def _sample(self, seq: Sequence, index: int) -> None:
        native, params = self.native, seq.request.params
        token = seq.sampler.sample(native.ctx, index)
        if native.is_eog(token):
            return self._finish(seq, "stop", text=seq.text.flush())

        seq.generated += 1
        self.tokens_generated += 1
        piece = native.piece(token)
        logprob, top = None, ()
        if params.logprobs or params.top_logprobs > 0:
            logprob, ranked = token_logprobs(native.ctx, index, native.n_vocab, token, params.top_logprobs)
            top = tuple(TopLogprob(native.piece(t).decode("utf-8", "replace"), lp) for t, lp in ranked)
        text = seq.text.push(piece)
        self.outbox.append(
            (seq.request_id, TokenEvent(token, text, logprob, top, piece.decode("utf-8", "replace")))
        )

        if seq.text.stopped:
            self._finish(seq, "stop")
        elif seq.generated >= params.max_tokens or len(seq.slot.cached) >= native.n_ctx_seq:
            self._finish(seq, "length", text=seq.text.flush())
        else:
            seq.next_token = token
            if seq.generated >= params.min_tokens:
                seq.sampler.allow_eog()


def run_worker(conn: Connection, config: WorkerConfig) -> None:
    """Process entry point (multiprocessing 'spawn' target)."""
    # Ctrl+C and a group-wide SIGTERM are the parent's to handle: it finishes in-flight answers,
    # then closes this worker (which also exits by itself if the parent dies).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker = EngineWorker(conn, config)
    try:
        worker.load()
    except Exception as error:
        conn.send((protocol.LOAD_FAILED, f"{type(error).__name__}: {error}"))
        return
    try:
        worker.serve()
    finally:
        worker.native.close()
        conn.close()
