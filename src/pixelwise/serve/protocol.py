"""uvicorn's HTTP/1.1 protocol with the guards a public server needs: slow clients and too many sockets.

uvicorn (0.54, h11) waits forever for a request header, so sockets that connect and stall
(slowloris) pile up until the process runs out of file descriptors, and then every accept
logs a traceback. :func:`guarded_protocol` makes a subclass of its ``H11Protocol`` that adds:

- a header deadline: a request header must be complete within ``read_timeout_s`` of the
  connection opening (or of the previous response), however slowly it trickles in;
- the same deadline for the rest of a body the server refused early (413, 503: uvicorn
  reads and drops it so the client can read the answer), after which the socket closes;
- a connection cap: at ``max_connections`` open sockets, a new one closes the oldest socket
  that has no request in progress (idle, stalled in its header, or draining a refused
  body); when every socket has a request in progress the new one is closed at once;
- a lingering close: when a response must close the connection while the request body is
  still arriving, the server half-closes (FIN after the answer) and drops incoming bytes for
  up to ``read_timeout_s`` instead of resetting the socket, so the client reads its 413 / 503
  rather than a "connection reset";
- one log line per client closed for any of these reasons, never a traceback.

Body reads inside a request are bounded by the app itself (:mod:`pixelwise.serve.body`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["guarded_protocol", "server_options", "LOGGER_NAME"]

LOGGER_NAME = "pixelwise.serve"


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


class _LingeringTransport:
    """The connection's transport, whose ``close()`` lingers while the client is still sending a body."""

    def __init__(self, transport: asyncio.Transport, protocol: H11Protocol, linger_s: float) -> None:
        self._raw, self._protocol, self._linger_s = transport, protocol, linger_s
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def is_closing(self) -> bool:
        return self.lingering or self._raw.is_closing()

    def close(self) -> None:
        if self.lingering or self._raw.is_closing() or self._protocol.conn.their_state is not h11.SEND_BODY \
                or not self._raw.can_write_eof():
            self._raw.close()
            return
        self.lingering = True
        self._raw.write_eof()  # sent after the buffered answer: the client sees a complete response
        self._raw.resume_reading()
        self._protocol.loop.call_later(self._linger_s, self._raw.close)


def server_options(*, read_timeout_s: float, max_connections: int) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config``: the guarded protocol and a 5 s keep-alive."""
    return {"http": guarded_protocol(read_timeout_s=read_timeout_s, max_connections=max_connections),
            "timeout_keep_alive": 5}


def guarded_protocol(*, read_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """A ``uvicorn`` ``http=`` protocol class with the header deadline and the connection cap."""
    log = logging.getLogger(LOGGER_NAME)

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._opened = time.monotonic()
            self._deadline: asyncio.TimerHandle | None = None
            self._heard = False  # bytes arrived since the deadline was armed
            self._served = 0  # responses completed on this connection
            self._refused = False

        # -- the cap --------------------------------------------------------------------------
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            open_now = [c for c in self.connections if not getattr(c, "_closing", lambda: False)()]
            if len(open_now) >= max_connections:
                victim = min((c for c in open_now if getattr(c, "_idle", lambda: False)()),
                             key=lambda c: c._opened, default=None)
                if victim is None:
                    self._refused = True
                    self.transport = transport
                    log.warning("%s: refused, %d connections are open and all have a request in progress "
                                "(--max-connections %d)", _peer(transport.get_extra_info("peername")),
                                len(open_now), max_connections)
                    transport.close()
                    return
                # Logged only if it was never answered: a refusal (413, 503) was logged when it was made.
                victim._close(None if victim._served else f"closed to make room for a new connection "
                                                          f"({max_connections} open, --max-connections)")
            super().connection_made(_LingeringTransport(transport, self, read_timeout_s))  # type: ignore[arg-type]
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._refused:
                return
            super().connection_lost(exc)

        def _closing(self) -> bool:
            return self._refused or self.transport is None or self.transport.is_closing()

        def _idle(self) -> bool:
            """No request of this connection is in the app: it waits for a header, or drains a refused body."""
            return not self._refused and (self.cycle is None or self.cycle.response_complete)

        # -- the deadline ---------------------------------------------------------------------
        def _arm(self) -> None:
            self._disarm()
            self._heard = False
            self._deadline = self.loop.call_later(read_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport is None or self.transport.is_closing():
                return
            if self.conn.their_state is h11.SEND_BODY:
                self._close(None)  # the rest of a body the app refused, and logged, already
            elif self._heard:
                self._close(f"no complete request header within {read_timeout_s:g} s (slow or stalled client)")
            elif self._served == 0:
                self._close(f"sent nothing for {read_timeout_s:g} s after connecting")
            else:
                self._close(None)  # an idle keep-alive connection: closing it is routine

        def _close(self, why: str | None) -> None:
            if why is not None:
                log.warning("%s: %s", _peer(self.client), why)
            self._disarm()
            try:
                self.conn.send(h11.ConnectionClosed())
            except h11.LocalProtocolError:
                pass
            raw = self.transport._raw if isinstance(self.transport, _LingeringTransport) else self.transport
            raw.close()

        def data_received(self, data: bytes) -> None:
            if isinstance(self.transport, _LingeringTransport) and self.transport.lingering:
                return  # the rest of a refused body: dropped unread
            self._heard = True
            super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a request is in the app, which bounds its own body reads

        def on_response_complete(self) -> None:
            self._served += 1
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the next header, or the rest of a refused body, has read_timeout_s to arrive

        def timeout_keep_alive_handler(self) -> None:
            self._disarm()
            super().timeout_keep_alive_handler()

    return GuardedH11Protocol
