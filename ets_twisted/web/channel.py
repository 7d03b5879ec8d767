"""
The HTTP/1.1 connection of ETS's listener: twisted.web's C{HTTPChannel} with
deadlines, so a slow client cannot hold a connection open for long.

twisted.web's only guard is an idle timeout (12 hours by default) that every
received byte restarts: a client trickling one header byte every few seconds
keeps a connection, and its memory, forever. Here:

  - C{IDLE_TIMEOUT}: no byte for this long, between requests or inside one,
    closes the connection (twisted.web's own timeout, shortened). It is off
    while ETS writes an answer, so long streams are not cut.
  - C{HEADERS_DEADLINE}: the request line and headers must be complete this
    long after their first byte.
  - C{BODY_DEADLINE}: the body must be complete this long after the headers.

A request that misses a deadline is answered C{408} with
C{{"error": "request_timeout"}}; oversized request lines and headers (over
16 KiB, or over 500 headers) and malformed HTTP are answered C{400} with
C{{"error": "bad_request"}} (twisted.web finds them; its own answer has no
body). These two codes are below SPEC's table: the request never reached a
route.

Every such refusal closes the connection with a lingering close: the answer
is written, the sending side shut, and what the client still sends is read
and dropped for up to C{LINGER_SECONDS}. Closing at once with unread input
makes the kernel send a reset, which can destroy the answer before the
client reads it (nginx lingers for the same reason).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import tcp
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers

IDLE_TIMEOUT = 30.0
HEADERS_DEADLINE = 10.0
BODY_DEADLINE = 60.0
LINGER_SECONDS = 2.0


def closing_answer(status: bytes, body: dict[str, Any], headers: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """
    A whole HTTP/1.1 answer that ends its connection, for requests refused
    before any route saw them.

    @param status: the status line's code and reason, e.g. C{b"408 Request Timeout"}.
    """
    data = json.dumps(body, separators=(",", ":")).encode()
    head = b"".join(b"%s: %s\r\n" % pair for pair in (
        (b"Content-Type", b"application/json"),
        (b"Cache-Control", b"no-store"),
        *headers,
        (b"Connection", b"close"),
        (b"Content-Length", b"%d" % len(data)),
    ))
    return b"HTTP/1.1 %s\r\n%s\r\n%s" % (status, head, data)


class Deadline:
    """
    A moment by which something must happen, moved often and cheaply.

    A keep-alive connection sets and clears several deadlines per request
    (header, body, idle): a new reactor timer each time, scheduled and
    cancelled, cost ~5% of a small request. Here one timer stays due at or
    before the deadline: moving the deadline later (the usual case) only
    changes a number, and a timer that fires early goes on to the deadline
    then in force. C{expired} is called once the deadline passes while set.

    @param owner: gives C{callLater} (a protocol's, so tests can drive time).
    """

    def __init__(self, owner: Any, expired: Any) -> None:
        self._owner = owner
        self._expired = expired
        self._at: float | None = None
        self._timer: Any = None

    @property
    def armed(self) -> bool:
        return self._at is not None

    def arm(self, seconds: float) -> None:
        """The deadline is now C{seconds} from now."""
        timer = self._timer
        if timer is None or not timer.active():
            self._timer = timer = self._owner.callLater(seconds, self._check)
            self._at = timer.getTime()
            return
        self._at = timer.seconds() + seconds
        if self._at < timer.getTime():
            timer.reset(seconds)

    def disarm(self) -> None:
        """No deadline (the timer, if any, finds nothing to do)."""
        self._at = None

    def cancel(self) -> None:
        """No deadline and no timer: the connection is gone."""
        self._at = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _check(self) -> None:
        timer, self._timer = self._timer, None
        if self._at is None:
            return
        remaining = self._at - timer.seconds()
        if remaining > 0:
            self._timer = self._owner.callLater(remaining, self._check)
        else:
            self._at = None
            self._expired()


def _sends_directly(transport: Any) -> bool:
    """Whether answers may be sent straight to C{transport}'s socket: plain TCP (or UNIX), no TLS."""
    return isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", True)


def _idle(transport: Any) -> bool:
    """Whether C{transport} (a L{tcp.Connection}) is open for writing with nothing waiting in it."""
    return (
        transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    )


_TIMEOUT_ANSWER = closing_answer(b"408 Request Timeout", {"error": "request_timeout"})
_BAD_REQUEST_ANSWER = closing_answer(b"400 Bad Request", {"error": "bad_request"})


class GuardedChannel(HTTPChannel):
    """
    An C{HTTPChannel} that holds each request to L{HEADERS_DEADLINE} and
    L{BODY_DEADLINE} (class attributes, so tests can shorten them).
    """

    headers_deadline = HEADERS_DEADLINE
    body_deadline = BODY_DEADLINE
    linger_seconds = LINGER_SECONDS
    _linger: Any = None
    _receiving = False
    _lingering = False
    _host: Any = None
    _peer: Any = None
    #: The output of an answer made while a read is processed, sent with one
    #: send() once the answer is complete (None: not inside a read).
    _held: list[bytes] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._request_deadline = Deadline(self, self._request_late)
        # Through a lambda: tests replace timeoutConnection on the instance.
        self._idle_deadline = Deadline(self, lambda: self.timeoutConnection())
        super().__init__(*args, **kwargs)

    def getHost(self) -> Any:
        # twisted.web asks for every request (a getsockname() call); a
        # connection's addresses do not change.
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def refuse(self, answer: bytes) -> None:
        """
        Write C{answer} (a whole answer from L{closing_answer}) and close
        the connection with a lingering close.
        """
        if self._lingering:
            return
        self._release()
        self._lingering = True
        self._disarm()
        self._linger = self.callLater(self.linger_seconds, self.transport.abortConnection)
        self.setTimeout(None)
        self.transport.write(answer)
        # Shut our side once the answer is out; keep reading (and dropping).
        half_close = getattr(self.transport, "loseWriteConnection", self.transport.loseConnection)
        half_close()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web calls this for every request it cannot parse.
        self.refuse(_BAD_REQUEST_ANSWER)

    def lineLengthExceeded(self, line: bytes) -> None:
        # LineReceiver's default drops the connection without a word.
        self._respondToBadRequestAndDisconnect()

    def dataReceived(self, data: bytes) -> None:
        if self._lingering:
            return
        # The first byte of a request (not of data buffered while an answer
        # is being written) starts its clock.
        if data and not self._receiving and not self._handlingRequest:
            self._receiving = True
            self._arm(self.headers_deadline)
        if not _sends_directly(self.transport):
            super().dataReceived(data)
            return
        self._held = []
        try:
            super().dataReceived(data)
        finally:
            self._release()
            self._held = None

    # Answering. twisted.web hands what it writes to the transport, which
    # keeps it and asks the reactor to say when the socket can take it:
    # for a small answer made at once that is two epoll_ctl() calls and a
    # trip round the reactor before the one send(): 14% of the user-space
    # instructions of an issuance.
    # An answer made while a read is processed is held here instead and,
    # once complete (or when the read is done), sent with one send() when
    # nothing else is waiting in the transport; what the socket does not
    # take goes to the transport as usual. Answers written later (from the
    # store, the upstream) take the transport's usual path.

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if self._held is None or not isinstance(headers, Headers):
            # (twisted.web's Request always passes Headers.)
            self._release()
            super().writeHeaders(version, code, reason, headers)
            return
        held = self._held
        held += (version, b" ", code, b" ", reason, b"\r\n")
        # Headers, as twisted.web keeps them (names canonical, values checked).
        for name, values in headers.getAllRawHeaders():
            for value in values:
                held += (name, b": ", value, b"\r\n")
        held.append(b"\r\n")

    def write(self, data: bytes) -> None:
        if self._held is None:
            super().write(data)
        else:
            self._held.append(data)

    def writeSequence(self, iovec: Any) -> None:
        if self._held is None:
            super().writeSequence(iovec)
        else:
            self._held.extend(iovec)

    def requestDone(self, request: Any) -> None:
        # Its answer is complete: out before the next pipelined request is read.
        self._release()
        super().requestDone(request)

    def _release(self) -> None:
        held = self._held
        if not held:
            return
        data = b"".join(held)
        held.clear()
        transport = self.transport
        if _idle(transport):
            try:
                sent = transport.socket.send(data)
            except OSError:
                # Would block, or the connection failed: the transport's
                # own writing retries and meets (and reports) the failure.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def lineReceived(self, line: bytes) -> None:
        # LineReceiver goes on with the lines it has buffered: not once refused.
        if not self._lingering:
            super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._lingering:
            super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        self._arm(self.body_deadline)
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._disarm()
        self._receiving = False
        super().allContentReceived()

    def connectionLost(self, reason: Any) -> None:
        self._request_deadline.cancel()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)
        self._idle_deadline.cancel()

    def _arm(self, seconds: float) -> None:
        """The request being received must be in within C{seconds}."""
        self._request_deadline.arm(seconds)

    def _disarm(self) -> None:
        self._request_deadline.disarm()

    def _request_late(self) -> None:
        self.refuse(_TIMEOUT_ANSWER)

    # twisted.web's idle timeout (TimeoutMixin) is switched off for every
    # answer and on again after it, a new timer each time: it runs on a
    # Deadline too, with TimeoutMixin's meaning.

    def setTimeout(self, period: float | None) -> float | None:
        previous, self.timeOut = self.timeOut, period
        if period is None:
            self._idle_deadline.disarm()
        else:
            self._idle_deadline.arm(period)
        return previous

    def resetTimeout(self) -> None:
        # As TimeoutMixin: only a running timeout starts again.
        if self.timeOut is not None and self._idle_deadline.armed:
            self._idle_deadline.arm(self.timeOut)

