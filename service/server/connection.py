"""The connection layer's limits, in the server itself: uvicorn's HTTP protocol with bounds on
connections, header size and the time a client may take to send its request or to read its answer.

uvicorn bounds none of these by default: an idle connection or one that trickles its headers is
kept for ever, and an answer that the client never reads stays in the transport's write buffer.
Each limit here closes such a connection with a clear answer where HTTP has one (431, 408, 503).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api.responses import envelope

log = logging.getLogger(__name__)
SCOPE_KEY = "attnserve.connection"
# How long a connection with no request in progress when the drain starts is kept for one (a request
# already sent but not yet read): longer than a loaded event loop takes to read it, short enough
# not to hold up the exit.
DRAIN_IDLE_S = 1.0


def _canned(status: int, reason: str, message: str, request_id: bytes = b"") -> bytes:
    """A whole answer written by the connection layer itself, before any app sees the request. It
    carries an X-Request-ID like every other answer: the client's own when its headers got that far."""
    body = json.dumps(envelope(reason.lower().replace(" ", "_"), message)).encode()
    rid = request_id or uuid.uuid4().hex.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\nx-request-id: "
    ).encode()
    return head + rid + b"\r\n\r\n" + body


class _HeadersTooLarge(Exception):
    pass


class _CoalescingTransport:
    """The connection's transport, with the small writes of one event-loop turn sent as one.

    uvicorn writes an answer's head and its body separately. A replica killed between the two
    leaves a proxy with a head it has already passed on and a body that never comes (it can retry
    nothing then); and if the kernel resets the connection, a body still in the send buffer is
    dropped. One write puts head and body in one segment: the proxy gets all of it or none.
    Large writes (attention answers) go at once, after what is pending, without a copy.
    """

    SMALL = 65536

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if len(data) > self.SMALL:
            self._flush()
            self._transport.write(data)
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(p) for p in self._pending)

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)


class GuardedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with the limits of service.server.settings (set on a subclass by guarded_protocol())."""

    max_connections = 1024
    max_header_bytes = 16384
    max_headers = 100
    header_timeout_s = 10.0
    body_timeout_s = 30.0
    write_timeout_s = 30.0
    # Called with "opened" and "closed" for each accepted connection, and with "refused",
    # "header_timeout", "body_timeout", "too_large" or "write_timeout".
    on_event: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._header_count = 0
        self._too_large = False
        self._request_id = b""  # the request's own X-Request-ID, once its header has been parsed
        self._accepted = False  # counted as open (refused connections never are)
        self.client_gone = False  # the client left, or was dropped, before it had the whole answer
        self.body_timed_out = False
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._receiving = False  # a request's head has begun and is not complete yet
        self._draining = False  # the server drains: the next request is this connection's last

    # -- connections and the time to send a request ---------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            # Over the limit: answered at once and closed, so that descriptors stay bounded.
            self._event("refused")
            transport.write(_canned(503, "Service Unavailable", "too many connections; retry later"))
            transport.close()
            return
        super().connection_made(transport)
        self.transport = _CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        self._accepted = True
        self._event("opened")
        self._arm(self.header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._write_timer is not None:
            self._write_timer.cancel()
        if self.cycle is not None and not self.cycle.response_complete:
            self.client_gone = True
        self._flushed.set()
        if self._accepted:
            self._accepted = False
            self._event("closed")
        if self.transport is not None:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._too_large:
                self._event("too_large")
                self._close_with(431, "Request Header Fields Too Large", self._too_large_message())
            else:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self._close_with(400, "Bad Request", "the request is not valid HTTP/1.1")

    def _too_large_message(self) -> str:
        return f"the request headers exceed {self.max_header_bytes} bytes or {self.max_headers} fields"

    def on_message_begin(self) -> None:
        self._receiving = True
        super().on_message_begin()
        self._header_bytes = 0
        self._header_count = 0
        self._request_id = b""
        self._arm(self.header_timeout_s, self._header_timeout)
        self.scope[SCOPE_KEY] = self  # type: ignore[literal-required]

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._count(len(name) + len(value) + 4)
        if name.lower() == b"x-request-id":
            self._request_id = value[:128]  # the middleware's rule: the first 128 bytes, echoed as sent
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes or self._header_count > self.max_headers:
            self._too_large = True
            raise _HeadersTooLarge  # httptools turns it into a parser error: see data_received

    def on_headers_complete(self) -> None:
        self._receiving = False
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered (served, or 503 for work) with Connection: close
        # The whole body must follow within body_timeout_s; a request with no body completes at once.
        self._arm(self.body_timeout_s, self._body_timeout)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _header_timeout(self) -> None:
        self._event("header_timeout")
        if self._header_bytes:
            self._close_with(
                408, "Request Timeout", f"the request headers took longer than {self.header_timeout_s:g} s"
            )
        else:
            self.transport.close()  # an idle connection: nothing to answer

    def _body_timeout(self) -> None:
        self._event("body_timeout")
        self.body_timed_out = True
        if self.cycle is not None:
            # The app sees a disconnect and gives up the request; the client gets the reason.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self._close_with(408, "Request Timeout", f"the request body took longer than {self.body_timeout_s:g} s")

    # -- draining --------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """The server drains. uvicorn closes a connection with no request in progress at once, but a
        client may have sent one that is not read yet (it would see the connection closed with no
        answer): such a connection gets DRAIN_IDLE_S for its request, which is answered with
        Connection: close. A request in progress finishes, and closes the connection after it."""
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        elif not self._receiving:
            self._arm(DRAIN_IDLE_S, self._drain_idle)

    def _drain_idle(self) -> None:
        if not self._receiving and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()

    # -- the time to read an answer ---------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._flushed.clear()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.write_timeout_s, self._write_timeout)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._flushed.set()

    def _write_timeout(self) -> None:
        # The client has not read for write_timeout_s: drop it, and the answer it pinned in memory.
        self._write_timer = None
        self._event("write_timeout")
        self.client_gone = True
        self.transport.abort()

    async def flushed(self) -> bool:
        """Wait until the answer has left the write buffer (or the client is gone); True if it left."""
        await self._flushed.wait()
        return not self.client_gone

    # -- helpers ----------------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_with(self, status: int, reason: str, message: str) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_canned(status, reason, message, self._request_id))
            self.transport.close()

    def _event(self, kind: str) -> None:
        log.debug("connection %s: %s", self.client, kind)
        if self.on_event is not None:
            self.on_event(kind)


def guarded_protocol(settings: Any, on_event: Any = None) -> type[GuardedProtocol]:
    """The protocol class with this server's limits (uvicorn instantiates it per connection)."""
    return type(
        "AttnserveProtocol",
        (GuardedProtocol,),
        {
            "max_connections": settings.max_connections,
            "max_header_bytes": settings.max_header_bytes,
            "max_headers": settings.max_headers,
            "header_timeout_s": settings.header_timeout_s,
            "body_timeout_s": settings.body_timeout_s,
            "write_timeout_s": settings.write_timeout_s,
            "on_event": staticmethod(on_event) if on_event else None,
        },
    )
