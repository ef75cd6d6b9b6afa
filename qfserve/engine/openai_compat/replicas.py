"""A pool of replicas of one OpenAI-compatible server: balancing, health, per-replica metrics.

- Balance: the admitted replica with the fewest requests in flight (ties rotate).
- Health: a probe (`GET /health`) every `probe_interval` seconds. A failed probe, or a failed call
  (no connection, an HTTP 5xx, garbage, a stream cut mid-way, a hang past `timeout`), ejects the
  replica; after a cool-down (doubling with consecutive failures, at most a minute) a probe that
  succeeds lets it back. A server without a `/health` route (404) counts as alive: it answered HTTP.
- Each re-admission starts a new `epoch`: a restarted vLLM has forgotten adapters loaded at run
  time, so they are registered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import httpx
import orjson

from qfserve import metrics
from qfserve.engine.openai_compat.dialect import DIALECTS, LLAMA_CPP, VLLM

log = logging.getLogger(__name__)
# httpx logs every request at INFO: one line per replica call and per health probe.
logging.getLogger("httpx").setLevel(logging.WARNING)

MAX_COOLDOWN = 60.0


class ReplicaFailure(Exception):
    """One call to one replica failed. `retryable`: nothing was received (safe to try another)."""

    def __init__(self, replica: "Replica", kind: str, message: str, retryable: bool = False):
        super().__init__(f"{replica.url}: {kind}: {message}")
        self.replica = replica
        self.kind = kind
        self.retryable = retryable


@dataclass(eq=False)
class Replica:
    url: str
    in_flight: int = 0
    admitted: bool = True  # optimistic until the first probe or call says otherwise
    ejected_until: float = 0.0
    consecutive_failures: int = 0
    epoch: int = 0
    last_error: str = ""
    models: dict = field(default_factory=dict)  # id -> /v1/models entry, from the latest look


@dataclass(frozen=True)
class PoolSettings:
    timeout: float = 120.0  # seconds without a byte from the replica before the call is given up
    connect_timeout: float = 3.0
    probe_interval: float = 2.0
    probe_timeout: float = 2.0
    cooldown: float = 5.0

    @classmethod
    def from_options(cls, options: dict) -> "PoolSettings":
        names = cls.__dataclass_fields__
        return cls(**{k: float(v) for k, v in options.items() if k in names and v is not None})


class ReplicaPool:
    def __init__(self, name: str, urls: list[str] | tuple[str, ...], *, api_key: str | None = None,
                 settings: PoolSettings = PoolSettings(), api: str = "auto", has_template: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.replicas = [Replica(url.rstrip("/")) for url in urls]
        self.settings = settings
        self._api = api
        self._has_template = has_template
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        self._probe_task: asyncio.Task | None = None
        self._turn = itertools.count()
        self._dialect: str | None = api if api in DIALECTS else None
        self._dialect_lock: asyncio.Lock | None = None
        self.closed = False
        for replica in self.replicas:
            metrics.REMOTE_HEALTHY.labels(name, replica.url).set(1)

    # ---- the HTTP client ---------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            s = self.settings
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(s.timeout, connect=s.connect_timeout, write=30.0, pool=s.timeout),
                limits=httpx.Limits(max_connections=4096, max_keepalive_connections=256),
                headers=self._headers,
            )
        return self._client

    def start(self) -> None:
        """Start the health probe (on the running event loop); idempotent."""
        if self._probe_task is None and not self.closed:
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop())

    async def close(self) -> None:
        self.closed = True
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._probe_task
            self._probe_task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- choosing a replica ------------------------------------------------------------------

    def admitted(self) -> list[Replica]:
        return [r for r in self.replicas if r.admitted]

    def pick(self, exclude: list[Replica] | tuple = ()) -> Replica | None:
        """The admitted replica with the fewest requests in flight; None when none is admitted."""
        candidates = [r for r in self.replicas if r.admitted and r not in exclude]
        if not candidates:
            return None
        fewest = min(r.in_flight for r in candidates)
        tied = [r for r in candidates if r.in_flight == fewest]
        return tied[next(self._turn) % len(tied)]

    @contextlib.contextmanager
    def in_flight(self, replica: Replica):
        replica.in_flight += 1
        gauge = metrics.REMOTE_IN_FLIGHT.labels(self.name, replica.url)
        gauge.inc()
        started = self._clock()
        try:
            yield
        finally:
            replica.in_flight -= 1
            gauge.dec()
            metrics.REMOTE_LATENCY.labels(self.name, replica.url).observe(self._clock() - started)

    # ---- health ------------------------------------------------------------------------------

    def failed(self, replica: Replica, kind: str, message: str) -> None:
        """A call failed: count it, and eject the replica for a cool-down."""
        metrics.REMOTE_ERRORS.labels(self.name, replica.url, kind).inc()
        replica.consecutive_failures += 1
        replica.last_error = f"{kind}: {message}"
        cooldown = min(MAX_COOLDOWN, self.settings.cooldown * 2 ** (replica.consecutive_failures - 1))
        replica.ejected_until = self._clock() + cooldown
        if replica.admitted:
            log.warning("engine %s: replica %s ejected for %.0fs (%s: %s)", self.name, replica.url, cooldown,
                        kind, message)
        replica.admitted = False
        metrics.REMOTE_HEALTHY.labels(self.name, replica.url).set(0)

    def succeeded(self, replica: Replica) -> None:
        replica.consecutive_failures = 0

    def _readmit(self, replica: Replica) -> None:
        replica.admitted = True
        replica.epoch += 1
        metrics.REMOTE_HEALTHY.labels(self.name, replica.url).set(1)
        log.info("engine %s: replica %s admitted again", self.name, replica.url)

    async def probe(self, replica: Replica) -> bool:
        try:
            response = await self.client.get(f"{replica.url}/health", timeout=self.settings.probe_timeout)
        except httpx.HTTPError as exc:
            replica.last_error = f"probe: {type(exc).__name__}"
            return False
        # 404: a server without a health route (llama-cpp-python's) that still answers HTTP.
        return response.status_code == 200 or response.status_code == 404

    async def probe_all(self) -> None:
        now = self._clock()
        due = [r for r in self.replicas if r.admitted or now >= r.ejected_until]
        results = await asyncio.gather(*(self.probe(r) for r in due))
        for replica, ok in zip(due, results):
            if ok and not replica.admitted:
                self._readmit(replica)
            elif not ok:
                self.failed(replica, "probe", replica.last_error or "unhealthy")

    async def _probe_loop(self) -> None:
        while not self.closed:
            try:
                await self.probe_all()
            except Exception:  # a probe must never kill the loop
                log.exception("engine %s: health probe failed", self.name)
            await asyncio.sleep(self.settings.probe_interval)

    # ---- calls -------------------------------------------------------------------------------

    async def call_json(self, replica: Replica, method: str, path: str, body: dict | None = None,
                        timeout: float | None = None, server_errors_count: bool = True,
                        text_ok: bool = False) -> tuple[int, object]:
        """One JSON call: (HTTP status, decoded body). Connection failures, timeouts and bodies that
        are not JSON raise ReplicaFailure (and eject the replica); HTTP errors are returned, and a
        5xx counts against the replica's health unless `server_errors_count` is off (vLLM answers
        500 for an adapter it refuses to load, which says nothing about the replica). `text_ok`: a
        plain-text body is returned as a string (vLLM's LoRA routes answer success in text)."""
        try:
            response = await self.client.request(
                method, f"{replica.url}{path}", json=body,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._failure(replica, "connect", str(exc) or type(exc).__name__, retryable=True) from None
        except httpx.TimeoutException as exc:
            raise self._failure(replica, "timeout", type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise self._failure(replica, "protocol", str(exc) or type(exc).__name__, retryable=True) from None
        try:
            payload = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            if text_ok:
                return response.status_code, response.text
            if response.status_code == 404:
                return 404, None
            raise self._failure(replica, "garbage", f"HTTP {response.status_code}, not JSON") from None
        if response.status_code >= 500 and server_errors_count:
            self.failed(replica, "status", f"HTTP {response.status_code} on {path}")
        return response.status_code, payload

    def _failure(self, replica: Replica, kind: str, message: str, retryable: bool = False) -> ReplicaFailure:
        self.failed(replica, kind, message)
        return ReplicaFailure(replica, kind, message, retryable)

    async def models(self, replica: Replica) -> dict:
        """The replica's `/v1/models`, by id."""
        status, payload = await self.call_json(replica, "GET", "/v1/models")
        if status != 200 or not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            raise self._failure(replica, "garbage", f"/v1/models answered HTTP {status}")
        replica.models = {m.get("id"): m for m in payload["data"] if isinstance(m, dict)}
        return replica.models

    async def dialect(self) -> str:
        """How to talk to this pool's servers: given at `engine add --api`, or detected once from
        `/v1/models` (vLLM marks its models `owned_by: vllm`)."""
        if self._dialect is not None:
            return self._dialect
        if self._dialect_lock is None:
            self._dialect_lock = asyncio.Lock()
        async with self._dialect_lock:
            if self._dialect is None:
                self._dialect = await self._detect()
        return self._dialect

    async def _detect(self) -> str:
        from qfserve.engine.base import EngineUnavailable

        tried: list[Replica] = []
        while (replica := self.pick(tried)) is not None:
            try:
                found = await self.models(replica)
            except ReplicaFailure:
                tried.append(replica)
                continue
            if any(m.get("owned_by") == "vllm" or "max_model_len" in m for m in found.values()):
                return VLLM
            # Not vLLM: a server that can count chat messages is vLLM-like; one that cannot needs the
            # chat template rendered here, which `engine add --chat-template` provides.
            return LLAMA_CPP if self._has_template else VLLM
        raise EngineUnavailable(f"engine {self.name}: no replica answers")

    def stats(self) -> dict:
        return {
            "engine": self.name,
            "replicas": [
                {"url": r.url, "admitted": r.admitted, "in_flight": r.in_flight, "last_error": r.last_error}
                for r in self.replicas
            ],
            "running": sum(r.in_flight for r in self.replicas),
            "waiting": 0,
        }
