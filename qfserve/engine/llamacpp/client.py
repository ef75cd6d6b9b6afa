"""LlamaCppEngine: the HTTP process's handle on an engine worker process.

The worker owns llama.cpp; this side only pickles requests into a pipe and routes the events that
come back to one asyncio queue per request. The event loop that started the engine watches the pipe
(`add_reader`) and delivers each step's events directly; requests made on other loops (tests use
several) get theirs with one `call_soon_threadsafe` per loop, as long as the engine's own loop
runs. Nothing here blocks a loop.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from qfserve.engine.base import (
    AdmissionTicket,
    Constraint,
    Engine,
    EngineEvent,
    EngineOverloaded,
    EngineUnavailable,
    FinishEvent,
    GenerateRequest,
    TokenEvent,
    Tools,
    TopLogprob,
)
from qfserve.engine.llamacpp import calls, protocol
from qfserve.engine.llamacpp.admission import Flight, WaitPredictor
from qfserve.engine.llamacpp.grammar import check_grammar
from qfserve.engine.llamacpp.protocol import DEFAULT_CTX_PER_SEQ, WorkerConfig, physical_cores


@dataclass(eq=False)
class _Route(Flight):
    loop: asyncio.AbstractEventLoop | None = None
    queue: asyncio.Queue | None = None


class _Ticket(AdmissionTicket):
    """A place at the door: the predictor counts it as a request waiting ahead (admission.py)."""

    def __init__(self, engine: "LlamaCppEngine") -> None:
        self._engine = engine

    def release(self) -> None:
        with self._engine._lock:
            self._engine.predictor.closed(self)


def _deliver(items: list[tuple[asyncio.Queue, EngineEvent]]) -> None:
    for queue, event in items:
        queue.put_nowait(event)


class _EventStream:
    """The events of one request. Not an async generator: those run no cleanup when closed before
    their first step, and a request must be cancelled however its consumer lets go of it (aclose,
    CancelledError while waiting, or just dropping it)."""

    def __init__(self, engine: "LlamaCppEngine", request_id: str, route: _Route) -> None:
        self._engine = engine
        self._request_id = request_id
        self._route = route
        self._done = False

    def __aiter__(self) -> "_EventStream":
        return self

    async def __anext__(self) -> EngineEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            event = await self._route.queue.get()
        except BaseException:  # CancelledError: the consumer's task is going away
            self._abandon()
            raise
        if isinstance(event, FinishEvent):
            self._done = True
            if event.reason == "error" and event.error == protocol.OVERLOADED:
                raise EngineOverloaded("the request could not start within the queue wait bound")
        return event

    async def aclose(self) -> None:
        self._abandon()

    def _abandon(self) -> None:
        if not self._done:
            self._done = True
            self._engine._cancel(self._request_id)

    def __del__(self) -> None:
        if not self._done:
            # GC may run anywhere (even inside a pipe send): hop onto the loop to cancel.
            try:
                self._route.loop.call_soon_threadsafe(self._engine._cancel, self._request_id)
            except RuntimeError:
                pass


class LlamaCppEngine(Engine):
    """One base model served by a worker process: `parallel` sequences and `kv_cells` KV cells, a
    region of `ctx_per_seq` cells each (default: 9216, an 8K profile's input and output), or with
    `kv_unified` one pool they share (one sequence may then hold up to `ctx_per_seq`, default all).
    A live request is refused at once (EngineOverloaded) when its predicted wait for a sequence
    exceeds `max_queue_wait` seconds, or when `queue_size` requests already wait; one that still
    waits that long is refused then. `threads` defaults to the physical cores: more ggml threads
    than cores only contend."""

    renders_tools = True  # tool_prompt's format, calls and structured output under a grammar

    def __init__(
        self,
        model_path: str,
        *,
        parallel: int = 4,
        kv_cells: int | None = None,
        ctx_per_seq: int = 0,
        kv_unified: bool = False,
        kv_type: str = "f16",
        threads: int | None = None,
        queue_size: int = 64,
        max_queue_wait: float = 30.0,
        stream_interval: float = 0.05,
        show_progress: bool | None = None,
        tool_call_threshold: float = calls.DEFAULT_CALL_THRESHOLD,
    ) -> None:
        self.config = WorkerConfig(
            model_path=model_path,
            parallel=parallel,
            kv_cells=kv_cells or parallel * (ctx_per_seq or DEFAULT_CTX_PER_SEQ),
            ctx_per_seq=ctx_per_seq,
            kv_unified=kv_unified,
            kv_type=kv_type,
            threads=threads or physical_cores(),
            queue_size=queue_size,
            max_queue_wait=max_queue_wait,
            stream_interval=stream_interval,
        )
        self.predictor = WaitPredictor(parallel)
        self.rejected = 0  # refused at once for the predicted wait or a full queue
        self.show_progress = sys.stderr.isatty() if show_progress is None else show_progress
        self.tool_call_threshold = tool_call_threshold
        self.prompt = None  # the model's chat template and vocabulary (ChatPrompt), loaded by start()
        self.load_progress = 0.0
        self.worker_info: dict = {}  # n_ctx_seq, n_ctx_train, kv_cells, ...: sent by the worker when ready
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gone: asyncio.Event | None = None  # set when the pipe reaches EOF
        self._lock = threading.Lock()  # guards _routes and _worker_stats (callers may run on several loops)
        self._send_lock = threading.Lock()
        self._routes: dict[str, _Route] = {}
        self._worker_stats: dict = {"running": 0, "waiting": 0}
        self._ready = False
        self._closing = False
        self._on_progress: Callable[[float], None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        from qfserve.engine.llamacpp.worker import run_worker
        from qfserve.engine.prompt import ChatPrompt

        # The vocabulary and template only (a few MB): prompts are built and counted on this side.
        self.prompt = await asyncio.to_thread(ChatPrompt, self.config.model_path)
        loop = asyncio.get_running_loop()
        started: asyncio.Future = loop.create_future()
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe(duplex=True)
        self._process = context.Process(
            target=run_worker, args=(child_end, self.config), name="qfserve-engine", daemon=True
        )
        with self._progress_bar():
            await asyncio.to_thread(self._process.start)
            child_end.close()  # so the reader sees EOF when the worker dies
            self._conn = parent_end
            # The event loop itself watches the pipe: one wake-up per engine step, no reader thread
            # handing each message over (which cost a second wake-up and a GIL hand-off per step).
            self._loop = loop
            self._gone = asyncio.Event()
            loop.add_reader(parent_end.fileno(), self._on_readable, loop, started)
            await started
        self._ready = True

    async def close(self) -> None:
        """Stop admitting; the worker cancels what runs, sends those finishes, and exits."""
        self._ready = False
        self._closing = True
        process = self._process
        if process is None:
            return
        if process.is_alive():
            self._send_quietly((protocol.SHUTDOWN,))
            await asyncio.to_thread(process.join, 10)
        if process.is_alive():
            process.terminate()
            await asyncio.to_thread(process.join, 5)
        if process.is_alive():
            process.kill()
        if self._gone is not None:
            try:  # the pipe's EOF settles what is left
                await asyncio.wait_for(self._gone.wait(), 5)
            except asyncio.TimeoutError:
                self._stop_reading()
                self._worker_gone()
        if self._conn is not None:
            self._conn.close()
        self._process = None

    # -- what the engine answers about itself --------------------------------------------------

    async def chat_tokens(self, messages: list[dict], system: str | None, tools: Tools | None = None) -> list[int]:
        # Tokenizing is CPU work in a ctypes call that releases the GIL: keep it off the event loop.
        return await asyncio.to_thread(self.prompt.chat_tokens, messages, system, tools)

    def check_tools(self, tools: Tools) -> None:
        calls.check(tools, self.prompt.vocab, self.tool_call_threshold)

    def check_constraint(self, constraint: Constraint) -> None:
        check_grammar(self.prompt.vocab, calls.output_constraint(constraint).grammar)

    @property
    def context_length(self) -> int:
        """The most one sequence may hold: the pool (or the per-sequence cap). Serving answers
        336103 beyond it, so a request the pool can never hold is refused, not queued."""
        return int(self.worker_info.get("n_ctx_seq") or self.config.seq_limit)

    def reserve(self) -> "_Ticket":
        if not self._ready:
            raise EngineUnavailable("the engine is not loaded")
        ticket = _Ticket(self)
        with self._lock:
            ticket.predicted_wait = self._refuse_if_overloaded()
            self.predictor.opened(ticket)
        return ticket

    def check_admission(self, max_tokens: int | None = None, ticket: AdmissionTicket | None = None) -> None:
        if not self._ready:
            raise EngineUnavailable("the engine is not loaded")
        with self._lock:
            if ticket is not None:
                # Checked again without its own place, now that the answer's size is known.
                self.predictor.closed(ticket)
            self._refuse_if_overloaded()
            self.predictor.admitted(max_tokens)

    def _refuse_if_overloaded(self) -> float:
        """Under self._lock: raise EngineOverloaded for a live request that could not start in time;
        else its predicted wait in seconds."""
        if len(self._routes) >= self.config.parallel + self.config.queue_size:
            self.rejected += 1
            raise EngineOverloaded("the engine queue is full")
        wait = self.predictor.wait(self._routes.values())
        if wait > self.config.max_queue_wait:
            self.rejected += 1
            raise EngineOverloaded("the predicted queue wait exceeds the bound")
        return wait

    # -- generation ---------------------------------------------------------------------------

    def generate(self, request: GenerateRequest) -> AsyncIterator[EngineEvent]:
        """Admit the request now (raising EngineUnavailable or EngineOverloaded at once) and return
        the stream of its events. Closing the stream before its FinishEvent cancels the request."""
        if not self._ready:
            raise EngineUnavailable("the engine is not loaded")
        request = calls.constrained(request, self.tool_call_threshold)
        route = _Route(len(request.prompt_tokens), request.params.max_tokens, request.priority,
                       loop=asyncio.get_running_loop(), queue=asyncio.Queue())
        with self._lock:
            if request.request_id in self._routes:
                raise ValueError(f"request id {request.request_id!r} is already in flight")
            if request.priority == 0:
                self.predictor.generating()
                self._refuse_if_overloaded()
                self.predictor.observed_cost(route.prompt_tokens, route.max_tokens)
            elif len(self._routes) >= self.config.parallel + self.config.queue_size:
                self.rejected += 1
                raise EngineOverloaded("the engine queue is full")
            self._routes[request.request_id] = route
        try:
            self._send((protocol.GENERATE, request))
        except (OSError, EOFError, ValueError) as error:
            with self._lock:
                self._routes.pop(request.request_id, None)
            raise EngineUnavailable("the engine worker is gone") from error
        events = _EventStream(self, request.request_id, route)
        return calls.CallStream(events, request.tools) if request.tools is not None else events

    def _cancel(self, request_id: str) -> None:
        # The route stays until the worker's "cancelled" finish arrives: until then the request
        # still holds a sequence, and the overload count must see it.
        with self._lock:
            pending = request_id in self._routes
        if pending:
            self._send_quietly((protocol.CANCEL, request_id))

    def stats(self) -> dict:
        with self._lock:
            in_flight = len(self._routes)
            stats = dict(self._worker_stats)
            predicted_wait = self.predictor.wait(self._routes.values())
            rejected = self.rejected
        running = stats.get("running", 0)
        stats.pop("started", None)
        # Before the worker's first stats message: the pool as it was made, empty.
        stats.setdefault("kv_cells", self.worker_info.get("kv_cells", 0))
        stats.setdefault("kv_used", 0)
        stats.update(
            running=running,
            waiting=max(0, in_flight - running),  # includes requests still in the pipe
            in_flight=in_flight,
            parallel=self.config.parallel,
            queue_size=self.config.queue_size,
            max_queue_wait=self.config.max_queue_wait,
            predicted_wait_seconds=round(predicted_wait, 3),
            rejected=rejected,
            ready=self._ready,
        )
        return stats

    # -- pipe ---------------------------------------------------------------------------------

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _send_quietly(self, message: tuple) -> None:
        try:
            self._send(message)
        except (OSError, EOFError, ValueError, AttributeError):
            pass  # the worker is gone; the pipe's EOF settles the routes

    def _on_readable(self, loop: asyncio.AbstractEventLoop, started: asyncio.Future) -> None:
        try:
            while self._conn.poll():
                self._handle(self._conn.recv(), loop, started)
        except (EOFError, OSError):
            self._stop_reading()
            self._resolve(loop, started, EngineUnavailable("the engine worker exited while loading"))
            self._worker_gone()

    def _stop_reading(self) -> None:
        if self._loop is not None and self._conn is not None and not self._conn.closed:
            self._loop.remove_reader(self._conn.fileno())
        if self._gone is not None:
            self._gone.set()

    def _handle(self, message: tuple, loop: asyncio.AbstractEventLoop, started: asyncio.Future) -> None:
        kind = message[0]
        if kind == protocol.EVENTS:
            self._dispatch(message[1], message[2])
        elif kind == protocol.PROGRESS:
            self.load_progress = message[1]
            if self._on_progress is not None:
                self._on_progress(message[1])
        elif kind == protocol.READY:
            self.worker_info = message[1]
            self.predictor.update(message[1])
            self._resolve(loop, started, None)
        elif kind == protocol.LOAD_FAILED:
            self._resolve(loop, started, EngineUnavailable(f"model load failed: {message[1]}"))

    @staticmethod
    def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future, error: Exception | None) -> None:
        def settle() -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:
            pass  # that loop is closed

    def _dispatch(self, events: list, worker_stats: dict | None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
        with self._lock:
            if worker_stats is not None:  # None: unchanged since the last ones
                self._worker_stats = worker_stats
                self.predictor.update(worker_stats)
                for request_id in worker_stats.get("started", ()):
                    route = self._routes.get(request_id)
                    if route is not None:
                        route.started = True
            for request_id, event in events:
                route = self._routes.get(request_id)
                if route is None:
                    continue
                if isinstance(event, tuple):  # a token (protocol.EVENTS)
                    token, text, logprob, top, token_text, at = event
                    event = TokenEvent(token, text, logprob, tuple(TopLogprob(t, lp) for t, lp in top), token_text, at)
                    route.completion_tokens += 1
                else:
                    del self._routes[request_id]
                by_loop[route.loop].append((route.queue, event))
        self._post(by_loop)

    def _worker_gone(self) -> None:
        """The pipe closed: every request still waiting gets its finish now."""
        self._ready = False
        reason, error = ("cancelled", None) if self._closing else ("error", "the engine worker exited")
        by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
        with self._lock:
            routes, self._routes = self._routes, {}
            self._worker_stats = {"running": 0, "waiting": 0}
        for route in routes.values():
            event = FinishEvent(reason, route.prompt_tokens, route.completion_tokens, error=error)
            by_loop[route.loop].append((route.queue, event))
        self._post(by_loop)

    def _post(self, by_loop: dict) -> None:
        for loop, items in by_loop.items():
            if loop is self._loop:
                _deliver(items)  # we are on that loop already
                continue
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:
                pass  # that loop is closed; nobody is listening

    # -- load progress ------------------------------------------------------------------------

    def _progress_bar(self):
        """A transient `rich` bar fed by the worker's llama.cpp progress callback."""
        import contextlib

        if not self.show_progress:
            return contextlib.nullcontext()
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        progress = Progress(TextColumn("loading model"), BarColumn(), TaskProgressColumn(), transient=True)
        task = progress.add_task("load", total=1.0)
        self._on_progress = lambda fraction: progress.update(task, completed=fraction)

        @contextlib.contextmanager
        def shown():
            with progress:
                yield
            self._on_progress = None

        return shown()
