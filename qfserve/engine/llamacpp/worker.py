"""The engine worker process: a continuous-batching decode loop over one llama.cpp context.

Each loop iteration (a step): read every pending message from the parent, admit waiting requests
into free sequences, build one batch (one token per decoding sequence, plus up to `prefill_chunk`
prompt tokens of the sequences still prefilling), decode it, sample, and send every sequence's
events of this step in one message.

Admission. A request starts when a sequence is free (and, with a unified KV pool, when the pool
can hold its prompt plus `max_tokens`: cells other running sequences may still grow into are
reserved for them, and idle sequences' cached prefixes are evicted, least recently used first,
to make room). Live requests (priority 0) start before any waiting background request. A request
that waits longer than `max_queue_wait` without starting is refused (the client answers 336100).

Prefix sharing. A new request takes the longest prefix of its prompt already in the KV cells: the
idle sequence whose cache it continues (a conversation's next turn), or a copy of another
sequence's cells (`llama_memory_seq_cp`) such as a service's persona. When that prefix is still
being prefilled by a running request (a burst with the same persona), the new sequence waits for
it instead of prefilling it a second time.

It runs in its own process because every ctypes call needs the GIL, and a busy HTTP thread beside
the loop slows decoding up to 4x (engine-notes.md).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

from qfserve.engine.base import FinishEvent, FinishReason, GenerateRequest
from qfserve.engine.llamacpp import protocol
from qfserve.engine.llamacpp.kvpool import KVPool, Slot, common_prefix_length
from qfserve.engine.llamacpp.native import NativeModel
from qfserve.engine.llamacpp.protocol import WorkerConfig
from qfserve.engine.llamacpp.constrained import make_sampler
from qfserve.engine.llamacpp.sampling import SequenceSampler, token_logprobs
from qfserve.engine.llamacpp.speed import StepTimer
from qfserve.engine.llamacpp.text import StreamingText

# A running request's prefill is worth waiting for when it would save at least this many tokens.
MIN_SHARED_WAIT = 16
# Between regions a copy moves the donor's whole sequence (then cuts it back): worth it while the
# shared prefix is at least 1/COPY_WORTH of what the donor holds (copying a cell costs ~1/500 of
# prefilling it: 400 cells copied in 2 ms, prefilled in 1.1 s on the 2-core dev VM).
COPY_WORTH = 64


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
    donor: "Sequence | None" = None  # a running sequence whose prefill this one waits to share
    share: int = 0  # how many of the donor's prompt tokens it will share

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def target_cells(self) -> int:
        """The most cells this sequence can hold: its prompt and every token it may generate."""
        return len(self.request.prompt_tokens) + self.request.params.max_tokens

    def growth(self) -> int:
        """Cells it may still add to the pool (the part it will share with its donor excluded)."""
        held = max(len(self.slot.cached), self.share if self.donor is not None else 0)
        return max(0, self.target_cells - held)


@dataclass
class Plan:
    """Where a new request starts: its slot, and the prefix it keeps there or copies in."""

    slot: Slot
    keep: int = 0  # cached tokens of `slot` it keeps (a continued conversation)
    donor_slot: Slot | None = None  # copy this slot's first `copy` cells
    copy: int = 0
    donor: Sequence | None = None  # wait for this running sequence's prefill, then copy `copy`

    @property
    def shared(self) -> int:
        return max(self.keep, self.copy)


class EngineWorker:
    def __init__(self, conn: Connection, config: WorkerConfig) -> None:
        self.conn = conn
        self.config = config
        self.native: NativeModel | None = None
        self.pool: KVPool | None = None
        self.waiting: dict[str, GenerateRequest] = {}  # insertion order is arrival order
        self.enqueued_at: dict[str, float] = {}
        self.running: dict[str, Sequence] = {}
        self.outbox: list[tuple[str, tuple | FinishEvent]] = []  # token events as tuples (see _sample)
        self.started: list[str] = []  # requests started since the last message (the client's queue model)
        self.urgent = False  # the outbox holds a first token, a finish or a refusal: send it this step
        self._flushed_at = 0.0
        self.shutting_down = False
        self.timer = StepTimer()
        self._last_group = ""
        self._last_stats: dict = {}
        self._parent_pid = os.getppid()
        self.received = 0  # GENERATE messages read (the client counts those still in the pipe)
        self.steps = 0
        self.tokens_generated = 0
        self.prompt_tokens_reused = 0  # prompt tokens taken from the pool (kept or copied)
        self.prompt_tokens_prefilled = 0  # prompt tokens decoded
        self.queue_timeouts = 0
        self.busy_seconds = 0.0  # time inside steps
        self.decode_seconds = 0.0  # of which inside llama_decode
        self._last_decode = 0.0
        self._pool_counted_at = 0.0
        self._stats_sent_at = 0.0
        self._pool_counts: dict = {}

    # -- lifecycle ----------------------------------------------------------------------------

    def load(self) -> None:
        last_sent = [-1.0]

        def on_progress(fraction: float) -> None:
            if fraction - last_sent[0] >= 0.01 or fraction >= 1.0:
                last_sent[0] = fraction
                self.conn.send((protocol.PROGRESS, fraction))

        self.native = NativeModel(self.config, on_progress)
        self.pool = KVPool(self.native.n_cells, self.config.parallel, self.native, shared=self.native.unified)
        self.timer.seed(self.native.measure(self.config.parallel))
        self.conn.send(
            (
                protocol.READY,
                {
                    "n_ctx_seq": self.native.n_ctx_seq,
                    "n_ctx_train": self.native.n_ctx_train,
                    "kv_cells": self.native.n_cells,
                    "n_vocab": self.native.n_vocab,
                    "threads": self.config.threads,
                    **self.timer.rates(self.config.parallel),
                },
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
            self._expire_waiting()
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
            elif self.waiting:
                time.sleep(0.005)  # waiting for cells that no running sequence will free: only a timeout
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
            self.received += 1
            self._enqueue(message[1])
        elif kind == protocol.CANCEL:
            self._cancel(message[1])
        elif kind == protocol.SHUTDOWN:
            self.shutting_down = True

    def _flush(self) -> None:
        """One message per step with all events. The stats ride along when a sequence started,
        ended or queued, and at least every 0.2 s; otherwise the message carries None for them
        (pickling them with every token costs both processes CPU the decode could use)."""
        changed = (self.started or len(self.running) != self._last_stats.get("running")
                   or len(self.waiting) != self._last_stats.get("waiting"))
        now = time.monotonic()
        if not (self.outbox or changed):
            return
        # Tokens in the middle of an answer wait up to stream_interval and go together: every
        # message costs the serving process CPU that, on a small machine, the decode threads share.
        if not (changed or self.urgent) and now - self._flushed_at < self.config.stream_interval:
            return
        self.urgent, self._flushed_at = False, now
        stats = None
        if changed or now - self._stats_sent_at >= 0.2:
            stats = self.stats()
            stats["started"], self.started = self.started, []
            self._last_stats, self._stats_sent_at = stats, now
        self.conn.send((protocol.EVENTS, self.outbox, stats))
        self.outbox = []

    def stats(self) -> dict:
        return {
            "running": len(self.running),
            "waiting": len(self.waiting),
            "received": self.received,
            "steps": self.steps,
            "tokens_generated": self.tokens_generated,
            "prompt_tokens_reused": self.prompt_tokens_reused,
            "prompt_tokens_prefilled": self.prompt_tokens_prefilled,
            "queue_timeouts": self.queue_timeouts,
            # Where a step's time goes: llama_decode versus everything else in the loop (the profile
            # the benchmark prints).
            "busy_seconds": round(self.busy_seconds, 4),
            "decode_seconds": round(self.decode_seconds, 4),
            **self._pool_stats(),
            **self.timer.rates(self.config.parallel),
        }

    def _pool_stats(self) -> dict:
        """The KV cells: held now, still to be grown into by running sequences, and held only by
        idle sequences' cached prefixes (evicted when needed). Counted at most every 0.2 s: the
        count walks every slot, and stats go out with every step."""
        now = time.monotonic()
        if now - self._pool_counted_at >= 0.2 or not self.running:
            self._pool_counted_at = now
            self._pool_counts = {
                "kv_cells": self.pool.n_cells,
                "kv_used": self.pool.used_cells(),
                "kv_reserved": sum(seq.growth() for seq in self.running.values()),
                "kv_cached": self.pool.cached_cells(),
            }
        return self._pool_counts

    # -- admission ----------------------------------------------------------------------------

    def _refuse(self, request: GenerateRequest, message: str) -> None:
        event = FinishEvent("error", len(request.prompt_tokens), 0, error=message)
        self.outbox.append((request.request_id, event))
        self.urgent = True

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
            return self._refuse(request, protocol.OVERLOADED)
        if request.adapter:
            try:
                self.native.load_adapter(request.adapter)
            except ValueError as error:
                return self._refuse(request, str(error))
        self.waiting[request.request_id] = request
        self.enqueued_at[request.request_id] = time.monotonic()

    def _expire_waiting(self) -> None:
        """A request that could not start within the bound is refused (336100), not left hanging.
        Background work (nobody waits on it, and it yields to every live request) gets ten times
        the bound."""
        if not self.waiting:
            return
        now = time.monotonic()
        bound = self.config.max_queue_wait
        expired = [request_id for request_id, request in self.waiting.items()
                   if now - self.enqueued_at[request_id] > (bound if request.priority == 0 else 10 * bound)]
        for request_id in expired:
            request = self.waiting.pop(request_id)
            self.enqueued_at.pop(request_id, None)
            self.queue_timeouts += 1
            self._refuse(request, protocol.OVERLOADED)

    def _next_waiting(self) -> GenerateRequest:
        """Live requests first; within a priority, arrival order (min keeps the first of equals)."""
        return min(self.waiting.values(), key=lambda request: request.priority)

    def _free_cells(self) -> int:
        """Cells a new sequence may take now. With a region per sequence, a free sequence is all it
        needs (its region holds n_ctx_seq, checked on arrival)."""
        if not self.pool.shared:
            return self.pool.n_cells
        return self.pool.n_cells - self.pool.used_cells() - sum(seq.growth() for seq in self.running.values())

    def _admit(self) -> None:
        while self.waiting and any(not slot.busy for slot in self.pool.slots):
            request = self._next_waiting()
            plan = self._plan(request)
            needed = len(request.prompt_tokens) + request.params.max_tokens - plan.shared
            if self._free_cells() < needed:
                protected = {id(plan.slot), id(plan.donor_slot)}
                reserved = sum(seq.growth() for seq in self.running.values())
                self.pool.evict_idle(needed + reserved, keep=lambda slot: id(slot) in protected)
            if self._free_cells() < needed and plan.keep < len(plan.slot.cached):
                self.pool.truncate(plan.slot, plan.keep)  # the part of its cache this request drops
            donor = plan.donor_slot
            if self._free_cells() < needed and donor is not None and not donor.busy and plan.copy < len(donor.cached):
                self.pool.truncate(donor, plan.copy)  # an idle donor keeps only the prefix it shares
            if self._free_cells() < needed:
                return  # the head of the queue waits for running sequences to free cells
            del self.waiting[request.request_id]
            self._start(request, plan)

    def _plan(self, request: GenerateRequest) -> Plan:
        prompt, adapter = request.prompt_tokens, request.adapter
        cap = len(prompt) - 1  # the last prompt token is always decoded: its logits give the first token
        idle = [slot for slot in self.pool.slots if not slot.busy]

        # The idle slot this prompt continues furthest (ties: least recently used).
        home, home_shared = None, -1
        for slot in sorted(idle, key=lambda s: s.last_used):
            shared = common_prefix_length(slot.cached, prompt) if slot.adapter == adapter else 0
            if shared > home_shared:
                home, home_shared = slot, shared
        # Any slot's cells to copy from, running or idle.
        donor_slot, donor_shared = None, 0
        for slot in self.pool.slots:
            if slot.adapter == adapter and slot.cached:
                shared = common_prefix_length(slot.cached, prompt)
                if shared > donor_shared:
                    donor_slot, donor_shared = slot, shared
        # A running sequence still prefilling a longer common prefix.
        donor, donor_prefix = None, 0
        for seq in self.running.values():
            if seq.donor is None and seq.pending and seq.request.adapter == adapter:
                shared = common_prefix_length(seq.request.prompt_tokens, prompt)
                if shared > donor_prefix:
                    donor, donor_prefix = seq, shared

        best_now = max(home_shared, donor_shared)
        if not self.pool.shared:
            return self._plan_in_regions(idle, home, home_shared, donor_slot, donor_shared, donor, donor_prefix, cap)
        # Fresh targets: empty slots first, then the least recently used cache.
        spare = sorted((s for s in idle if s is not home), key=lambda s: (bool(s.cached), s.last_used))
        target = spare[0] if spare else home
        if donor is not None and min(donor_prefix, cap) >= min(best_now, cap) + MIN_SHARED_WAIT:
            return Plan(target, donor=donor, copy=min(donor_prefix, cap))
        if home_shared >= donor_shared and (home_shared == len(home.cached) or not spare):
            return Plan(home, keep=min(home_shared, cap))  # continue the conversation in place
        if donor_shared > 0:
            # Copy rather than cut a cache that holds more (another conversation's history).
            target = spare[0] if spare and spare[0] is not donor_slot else home
            if target is donor_slot:
                return Plan(target, keep=min(donor_shared, cap))
            return Plan(target, donor_slot=donor_slot, copy=min(donor_shared, cap))
        return Plan(target)

    def _plan_in_regions(self, idle: list[Slot], home: Slot | None, home_shared: int, donor_slot: Slot | None,
                         donor_shared: int, donor: Sequence | None, donor_prefix: int, cap: int) -> Plan:
        """With a region per sequence, llama.cpp splits a step into one pass over the weights per run
        of consecutive sequence ids (its `split_equal` takes only seq_id + 1 after seq_id): measured,
        8 sequences on ids 0,2,..,14 decode at 0.55x the speed of ids 0..7. So the new sequence
        goes where it adds the fewest runs (beside or between running ones), its prefix kept in
        place when that slot holds it, else copied in (a copy moves only the donor's cells)."""
        busy = {slot.seq_id for slot in self.pool.slots if slot.busy}

        def new_runs(slot: Slot) -> int:  # +1 alone, 0 beside a run, -1 joining two
            return 1 - (slot.seq_id - 1 in busy) - (slot.seq_id + 1 in busy)

        target = min(idle, key=lambda s: (new_runs(s), s is not home, bool(s.cached), s.last_used, s.seq_id))
        if donor is not None and min(donor_prefix, cap) >= min(max(home_shared, donor_shared), cap) + MIN_SHARED_WAIT:
            return Plan(target, donor=donor, copy=min(donor_prefix, cap))
        if donor_slot is target:
            return Plan(target, keep=min(donor_shared, cap))  # continue the conversation in place
        if donor_slot is not None and donor_shared * COPY_WORTH >= len(donor_slot.cached):
            return Plan(target, donor_slot=donor_slot, copy=min(donor_shared, cap))
        if target is home and home_shared > 0:
            return Plan(target, keep=min(home_shared, cap))
        return Plan(target)

    def _start(self, request: GenerateRequest, plan: Plan) -> None:
        prompt, slot = request.prompt_tokens, plan.slot
        if plan.donor_slot is not None:
            self.pool.copy_prefix(plan.donor_slot, slot, plan.copy)
            kept = len(slot.cached)
        elif plan.donor is not None:
            self.pool.truncate(slot, 0)
            kept = 0
        else:
            self.pool.truncate(slot, plan.keep)
            kept = len(slot.cached)
        slot.adapter = request.adapter
        slot.busy = True
        self.prompt_tokens_reused += kept
        self.started.append(request.request_id)

        sampler = make_sampler(request.params, self.native)  # constrained when the params say so
        self.running[request.request_id] = Sequence(
            request=request,
            slot=slot,
            sampler=sampler,
            text=StreamingText(request.params.stop),
            pending=prompt[kept:],
            queue_seconds=time.monotonic() - self.enqueued_at.pop(request.request_id, time.monotonic()),
            donor=plan.donor,
            share=plan.copy if plan.donor is not None else 0,
        )

    def _take_shared_prefix(self, seq: Sequence) -> None:
        """The donor's prefill reached the shared prefix (or the donor ended): copy what it holds."""
        donor_slot = seq.donor.slot
        length = min(seq.share, common_prefix_length(donor_slot.cached, seq.request.prompt_tokens))
        self.pool.copy_prefix(donor_slot, seq.slot, length)
        seq.slot.adapter = seq.request.adapter
        seq.pending = seq.request.prompt_tokens[len(seq.slot.cached):]
        seq.donor, seq.share = None, 0
        self.prompt_tokens_reused += len(seq.slot.cached)

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
        self.urgent = True
        if reason in ("stop", "length"):
            self.timer.finished(seq.generated, seq.request.params.max_tokens)
        seq.sampler.free()
        slot = seq.slot
        if wipe:  # the cache may not match `cached` any more
            self.pool.truncate(slot, 0)
        # Who waited for this prefill takes what there is now, before the slot is reused.
        for waiter in [s for s in self.running.values() if s.donor is seq]:
            if wipe:
                waiter.share = 0
            self._take_shared_prefix(waiter)
        slot.busy = False
        slot.last_used = time.monotonic()
        del self.running[seq.request_id]

    def _cancel(self, request_id: str) -> None:
        if request_id in self.waiting:
            request = self.waiting.pop(request_id)
            self.enqueued_at.pop(request_id, None)
            self.outbox.append((request_id, FinishEvent("cancelled", len(request.prompt_tokens), 0)))
            self.urgent = True
        elif request_id in self.running:
            self._finish(self.running[request_id], "cancelled")

    def _cancel_all(self) -> None:
        for request_id in list(self.waiting) + list(self.running):
            self._cancel(request_id)

    # -- one decode step ----------------------------------------------------------------------

    def _pick_adapter_group(self) -> str | None:
        """Adapters apply to the whole context, so each step serves one adapter set; with several
        in use, steps rotate between them."""
        groups = sorted({seq.request.adapter or "" for seq in self.running.values() if seq.donor is None})
        if not groups:
            return None
        later = [g for g in groups if g > self._last_group]
        self._last_group = later[0] if later else groups[0]
        return self._last_group or None

    def _step(self) -> None:
        adapter = self._pick_adapter_group()
        members = [seq for seq in self.running.values() if seq.request.adapter == adapter and seq.donor is None]
        if not members:
            return
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

        decoding = sum(seq.next_token is not None for seq in members)
        # Prompt chunks are capped so running streams keep their pace; with none running (a burst
        # of new requests) a bigger chunk gets everyone their first token sooner. The budget goes
        # in arrival order.
        budget = self.config.prefill_chunk if decoding else self.config.idle_prefill_chunk
        chunks: dict[int, list[int]] = {}
        for seq in members:
            if seq.next_token is None and seq.pending and budget > 0:
                chunks[id(seq)] = seq.pending[:budget]
                budget -= len(chunks[id(seq)])
        # The batch lists sequences by id: llama.cpp cuts a batch into passes over the weights at
        # every break in consecutive ids (see _plan_in_regions), so 3, 1, 2 would cost three.
        for seq in sorted(members, key=lambda seq: seq.slot.seq_id):
            if seq.next_token is not None:
                add(seq, [seq.next_token], sample_last=True)
            elif id(seq) in chunks:
                add(seq, chunks[id(seq)], sample_last=len(chunks[id(seq)]) == len(seq.pending))
        if not tokens:
            return

        code = self._decode(tokens, positions, seq_ids, logits)
        if code != 0:
            for seq, _, _ in added:
                self._finish(seq, "error", error=f"llama_decode failed ({code})", wipe=True)
            return
        self.prompt_tokens_prefilled += len(tokens) - decoding
        self.timer.step(decoding, len(tokens) - decoding, self._last_decode)

        for seq, chunk, _ in added:
            self.pool.extend(seq.slot, chunk)
            if seq.pending:
                del seq.pending[: len(chunk)]
            else:
                seq.next_token = None
        # Sequences waiting on a prefill that now covers what they share start from a copy.
        for seq in [s for s in self.running.values() if s.donor is not None]:
            if len(seq.donor.slot.cached) >= seq.share or not seq.donor.pending:
                self._take_shared_prefix(seq)
        for seq, _, index in added:
            if index is not None:
                self._sample(seq, index)

    def _decode(self, tokens: list[int], positions: list[int], seq_ids: list[int], logits: list[bool]) -> int:
        started = time.perf_counter()
        code = self.native.decode(tokens, positions, seq_ids, logits)
        if code == 1:  # no room in the pool: idle caches go, then one more try (nothing was decoded)
            self.pool.evict_idle(self.pool.n_cells)
            code = self.native.decode(tokens, positions, seq_ids, logits)
        self._last_decode = time.perf_counter() - started
        self.decode_seconds += self._last_decode
        self.steps += 1
        return code

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
            # Each alternative shows the characters it would have completed, not a broken byte.
            top = tuple((seq.text.text_if(native.piece(t)), lp) for t, lp in ranked)
        text = seq.text.push(piece)
        # A plain tuple: cheaper to pickle than the dataclass; the client builds it. The time goes
        # along because tokens may wait for each other (stream_interval) before they travel.
        self.outbox.append((seq.request_id, (token, text, logprob, top, seq.text.last_decoded, time.monotonic())))
        if seq.generated == 1:
            self.urgent = True

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
