"""
The relay: one verified request to the upstream, its answer streamed back.

It sits on Twisted's C{Agent} and the pooled connections of
L{ets_twisted.app.HTTPClientService} (the same pool the treq client of the
challenge uses). C{treq.HTTPClient.request} itself is not used here because
it always stacks a gzip C{ContentDecoderAgent} (which rewrites bodies and
drops C{Content-Encoding}: SPEC wants encodings passed through) and a
cookie jar shared by every caller; both are wrong for a proxy.

The answer is written chunk by chunk as it arrives; the upstream connection
is registered as the producer of the client's, so a slow browser pauses
reading from the upstream (back-pressure) instead of filling memory.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote, unquote_to_bytes

import attr
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from twisted.web.server import Request

from .. import observe
from ..errors import ETSError

# RFC 9110 section 7.6.1 hop-by-hop headers, plus what ETS itself owns or
# must not pass on (credentials, cookies, the Host of the upstream).
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})
_DROP_REQUEST = _HOP_BY_HOP | {
    b"authorization", b"dpop", b"cookie", b"host", b"content-length",
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id",
}
# The upstream's own CORS is dropped (ETS owns CORS); so are its cookies:
# ETS sends none upstream, and an upstream must not set cookies on the
# gateway's origin.
_DROP_RESPONSE = _HOP_BY_HOP | {b"set-cookie", b"content-length"}


def _named_in_connection(headers: Headers) -> set[bytes]:
    names = set()
    for value in headers.getRawHeaders(b"connection", []):
        names.update(n.strip().lower() for n in value.split(b",") if n.strip())
    return names


def upstream_url(base: bytes, path: bytes, query: bytes, secret: bytes | None) -> bytes:
    """
    The upstream URL: C{base} + the original path + the original query, with
    C{key=secret} set when a secret is configured (any C{key} the client sent
    is replaced, never duplicated). The rest of the query is passed as sent.
    """
    if secret is not None:
        kept = [p for p in query.split(b"&") if p and _param_name(p) != b"key"]
        kept.append(b"key=" + secret)
        query = b"&".join(kept)
    return base + path + (b"?" + query if query else b"")


def _param_name(pair: bytes) -> bytes:
    return unquote_to_bytes(pair.split(b"=", 1)[0].replace(b"+", b" "))


def quoted_secret(secret: str | None) -> bytes | None:
    """The secret as a query value, percent-encoded once at start."""
    return None if secret is None else quote(secret, safe="").encode("ascii")


@attr.s(auto_attribs=True)
class Forwarding:
    """What the relay adds about the client (the C{X-Forwarded-*} family)."""

    client_chain: bytes
    proto: bytes
    host: bytes
    request_id: bytes


def new_request_id() -> bytes:
    return uuid.uuid4().hex.encode("ascii")


def request_headers(request: Request, forwarding: Forwarding) -> Headers:
    """The headers sent upstream: the client's minus what SPEC drops, plus X-Forwarded-*."""
    incoming = request.requestHeaders
    drop = _DROP_REQUEST | _named_in_connection(incoming)
    out = Headers()
    for name, values in incoming.getAllRawHeaders():
        if name.lower() not in drop:
            out.setRawHeaders(name, values)
    out.setRawHeaders(b"x-forwarded-for", [forwarding.client_chain])
    out.setRawHeaders(b"x-forwarded-proto", [forwarding.proto])
    if forwarding.host:
        out.setRawHeaders(b"x-forwarded-host", [forwarding.host])
    out.setRawHeaders(b"x-request-id", [forwarding.request_id])
    return out


def copy_response_headers(response: IResponse, request: Request) -> None:
    """The upstream's status and headers onto the client's answer, filtered."""
    request.setResponseCode(response.code, response.phrase or None)
    drop = _DROP_RESPONSE | _named_in_connection(response.headers)
    for name, values in response.headers.getAllRawHeaders():
        lower = name.lower()
        if lower in drop or lower.startswith(b"access-control-"):
            continue
        request.responseHeaders.setRawHeaders(name, values)
    if request.method == b"HEAD":
        # No body follows: the upstream's declared length is the answer's.
        length = response.headers.getRawHeaders(b"content-length")
        if length:
            request.setHeader(b"content-length", length[0])
    elif isinstance(response.length, int) and response.code not in (204, 304):
        request.setHeader(b"content-length", b"%d" % (response.length,))


class _BodyRelay(Protocol):
    """
    Writes each chunk of the upstream body to the client as it arrives,
    with back-pressure, and an idle timer between chunks.
    """

    def __init__(self, request: Request, clock: IReactorTime, idle: float, done: Deferred[None]) -> None:
        self._request = request
        self._clock = clock
        self._idle = idle
        self._done = done
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._request.registerProducer(self.transport, True)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        self._arm()
        if not self._request._disconnected:
            self._request.write(data)

    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle)
        else:
            self._timer = self._clock.callLater(self._idle, self._silent)

    def _silent(self) -> None:
        # Headers are out: the status cannot become 504 now, so the client
        # connection is cut, which tells it the answer is incomplete.
        self.transport.stopProducing()

    def stop(self) -> None:
        """The client went away: close the upstream connection."""
        if self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        request = self._request
        if not request._disconnected:
            request.unregisterProducer()
            if reason.check(ResponseDone, PotentialDataLoss):
                request.finish()
            else:
                request.loseConnection()
        self._done.callback(None)


@attr.s(auto_attribs=True)
class Relay:
    """
    Sends verified requests to the upstream.

    @ivar agent: an L{IAgent} on the shared persistent pool.
    @ivar base: C{UPSTREAM_BASE_URL} as bytes.
    @ivar secret: the percent-encoded C{UPSTREAM_SERVICE_SECRET}, or None.
    @ivar timeout: C{UPSTREAM_TIMEOUT_SECONDS}: for the headers, and for
        each silence between body chunks.
    """

    agent: IAgent
    clock: IReactorTime
    base: bytes
    secret: bytes | None = attr.ib(repr=False)
    timeout: float

    async def relay(self, request: Request, forwarding: Forwarding) -> None:
        """
        Relay C{request} and write the answer; finishes the request itself.

        @raise ETSError: C{upstream_error} or C{upstream_timeout} when the
            upstream fails before its headers arrive.
        """
        path, _, query = request.uri.partition(b"?")
        url = upstream_url(self.base, path, query, self.secret)
        headers = request_headers(request, forwarding)
        producer = None
        content = request.content
        if content is not None and content.seek(0, 2) > 0:
            content.seek(0)
            producer = FileBodyProducer(content)
        metrics = observe.metrics_of(request)
        # In flight until the client's answer is complete or cut.
        metrics.relays_in_flight.inc()
        request.notifyFinish().addBoth(lambda _: metrics.relays_in_flight.dec())
        started = self.clock.seconds()
        sent = self.agent.request(request.method, url, headers, producer)
        timed_out = []

        def too_slow() -> None:
            timed_out.append(True)
            sent.cancel()

        timer = self.clock.callLater(self.timeout, too_slow)
        try:
            response = await sent
        except Exception:
            # A cancelled request fails with CancelledError or, once bytes
            # went out, ResponseNeverReceived: the timer says which it was.
            raise ETSError("upstream_timeout" if timed_out else "upstream_error") from None
        finally:
            if timer.active():
                timer.cancel()

        metrics.upstream_latency.observe(self.clock.seconds() - started)
        copy_response_headers(response, request)
        # Send the headers now: a browser's fetch() resolves on them, and an
        # event stream may not write its first event for a while.
        request.write(b"")
        done: Deferred[None] = Deferred()
        body = _BodyRelay(request, self.clock, self.timeout, done)
        request.notifyFinish().addErrback(lambda _: body.stop())
        response.deliverBody(body)
        await done
