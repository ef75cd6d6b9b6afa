"""The uvicorn server settings that protect the event loop from slow or hostile connections.

uvicorn's HTTP/1.1 protocol (h11) has a keep-alive timeout between requests but none while a
request's headers arrive: a socket that connects and sends nothing, or dribbles one header byte
every few seconds, stays open for ever. `HeaderTimeoutProtocol` closes it once `header_timeout`
seconds pass without a complete request head. Bodies are bounded in time and size by
`qfserve.api.bodies`; connections and concurrent requests by uvicorn's `limit_concurrency`.
"""

from __future__ import annotations

import asyncio

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from qfserve.config import Settings


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head takes too long."""

    header_timeout: float = 10.0  # set per server by `header_timeout_protocol`

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a byte is closed too

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            # Still waiting for (the rest of) a request head; the timer runs from its first byte,
            # so a client can't keep it alive by sending a byte at a time.
            self._arm_head_timer()
        else:
            self._disarm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        # A keep-alive connection between requests is also IDLE: its own (shorter) timer governs
        # it, and uvicorn cancels that timer on the next byte, after which ours takes over.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutProtocol]:
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": seconds})


def uvicorn_config(app, settings: Settings) -> uvicorn.Config:
    proxies = settings.trusted_proxies
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=header_timeout_protocol(settings.header_timeout),
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
        timeout_keep_alive=settings.keep_alive_timeout,
        limit_concurrency=settings.max_connections,
        server_header=False,
        # X-Forwarded-For / -Proto only from configured proxies; uvicorn's default trusts loopback,
        # which lets any local client (or a proxy that passes the header through) pick its address.
        proxy_headers=bool(proxies),
        forwarded_allow_ips=list(proxies) if proxies else [],
    )
