"""
The relay: one verified request to the upstream, its answer streamed back.

It sends each request on the pooled connections of
L{ets_twisted.app.PoolService} (the same pool the treq client of the
challenge uses) exactly as Twisted's C{Agent} would, with the endpoint of
the upstream taken from the C{Agent} and the per-call work of
C{Agent.request} (URL parsing, endpoint, pool key, C{Host}) done once.
C{treq.HTTPClient.request} itself is not used here because it always
stacks a gzip C{ContentDecoderAgent} (which rewrites bodies and drops
C{Content-Encoding}: SPEC wants encodings passed through) and a cookie jar
shared by every caller; both are wrong for a proxy.

The answer is written chunk by chunk as it arrives; the upstream connection
is registered as the producer of the client's, so a slow browser pauses
reading from the upstream (back-pressure) instead of filling memory.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import attr
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import URI, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from twisted.web.server import Request
from zope.interface import implementer

from .. import observe

try:
    # Private to Twisted: the direct path to the pool (see Relay) uses what
    # Agent.request uses, and falls back to Agent.request without them.
    from twisted.web._newclient import Request as ClientRequest
    from twisted.web._newclient import _ensureValidMethod, _ensureValidURI

    _DIRECT = hasattr(ClientRequest, "_construct")
except ImportError:  # pragma: no cover - a Twisted without them
    _DIRECT = False
from ..errors import ETSError
from ..randomness import random_bytes

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
    return random_bytes(16).hex().encode("ascii")


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


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A request body already in memory, written in one go: twisted.web keeps
    small bodies in a C{BytesIO}, and a C{FileBodyProducer} would take two
    turns of the cooperator (and a timer) to send a few bytes.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def body_producer(content: object) -> IBodyProducer | None:
    """The producer of a spooled request body, or None when it is empty."""
    if content is None:
        return None
    if isinstance(content, BytesIO):
        data = content.getvalue()
        return _BytesProducer(data) if data else None
    if content.seek(0, 2) > 0:  # type: ignore[attr-defined]
        content.seek(0)  # type: ignore[attr-defined]
        return FileBodyProducer(content)  # type: ignore[arg-type]
    return None


def _no_delay(request: Request) -> None:
    """
    Turn Nagle's algorithm off on the client's connection (once per
    connection): the body goes out in pieces as the upstream sends them,
    and an event written just after the headers would otherwise wait for
    the client's delayed ACK of the headers (milliseconds), as nginx's
    C{tcp_nodelay} avoids.
    """
    channel = request.channel
    if channel is None or getattr(channel, "_ets_no_delay", False):
        return
    channel._ets_no_delay = True
    set_no_delay = getattr(channel.transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass


#: Idle upstream connections the pool keeps open. Twisted's default is 2,
#: which under concurrency closes almost every connection after one request
#: and opens a new one (a resolver thread hop and a TCP handshake) for the
#: next; a gateway keeps one per concurrent request.
MAX_IDLE_UPSTREAM_CONNECTIONS = 256


@attr.s(auto_attribs=True)
class Relay:
    """
    Sends verified requests to the upstream.

    @ivar agent: an L{Agent} on the shared persistent pool: it makes the
        endpoint (TCP, or TLS with its policy) of C{base}.
    @ivar base: C{UPSTREAM_BASE_URL} as bytes.
    @ivar secret: the percent-encoded C{UPSTREAM_SERVICE_SECRET}, or None.
    @ivar timeout: C{UPSTREAM_TIMEOUT_SECONDS}: for the headers, and for
        each silence between body chunks.
    @ivar pool: the agent's connection pool.

    Every request goes to the same origin, so what C{Agent.request} works
    out per call (parsing the URL, building an endpoint, the pool key, the
    C{Host} header) is worked out once here, and each request goes straight
    to a pooled connection, as C{Agent} itself would send it.
    """

    agent: IAgent
    clock: IReactorTime
    base: bytes
    secret: bytes | None = attr.ib(repr=False)
    timeout: float
    pool: HTTPConnectionPool

    def __attrs_post_init__(self) -> None:
        parsed = URI.fromBytes(self.base)
        self._parsed = parsed
        self._key = (parsed.scheme, parsed.host, parsed.port)
        get_endpoint = getattr(self.agent, "_getEndpoint", None)
        direct = _DIRECT and get_endpoint is not None
        self._endpoint = get_endpoint(parsed) if direct else None
        host = parsed.host
        if isIPv6Address(host.decode("ascii")):
            host = b"[" + host + b"]"
        if (parsed.scheme, parsed.port) not in ((b"http", 80), (b"https", 443)):
            host = b"%b:%d" % (host, parsed.port)
        self._host = host

    def _send(self, method: bytes, path_and_query: bytes, headers: Headers,
              producer: IBodyProducer | None) -> Deferred[IResponse]:
        if self._endpoint is None:
            # Not an Agent, or a Twisted without the private parts
            # used below: the plain way, slower by about a fifth.
            return self.agent.request(method, self.base + path_and_query, headers, producer)
        # What Agent.request checks (raising at once) before it sends anything.
        method = _ensureValidMethod(method)
        path_and_query = _ensureValidURI(path_and_query.strip())
        if b"#" in path_and_query:
            # Agent parses the URL and never sends a fragment: do the same.
            path_and_query = URI.fromBytes(self.base + path_and_query).originForm
        headers.setRawHeaders(b"host", [self._host])
        pool = self.pool
        parsed = self._parsed
        connected = pool.getConnection(self._key, self._endpoint)

        def send(proto: Any) -> Deferred[IResponse]:
            return proto.request(ClientRequest._construct(
                method, path_and_query, headers, producer,
                persistent=pool.persistent, parsedURI=parsed,
            ))

        return connected.addCallback(send)

    async def relay(self, request: Request, forwarding: Forwarding) -> None:
        """
        Relay C{request} and write the answer; finishes the request itself.

        @raise ETSError: C{upstream_error} or C{upstream_timeout} when the
            upstream fails before its headers arrive.
        """
        path, _, query = request.uri.partition(b"?")
        url = upstream_url(b"", path, query, self.secret)
        headers = request_headers(request, forwarding)
        producer = body_producer(request.content)
        metrics = observe.metrics_of(request)
        # In flight until the client's answer is complete or cut.
        in_flight = metrics.relays_in_flight
        in_flight.inc()
        finished = request.notifyFinish()
        finished.addBoth(lambda _: in_flight.dec())
        clock = self.clock
        started = clock.seconds()
        sent = self._send(request.method, url, headers, producer)
        timed_out = []

        def too_slow() -> None:
            timed_out.append(True)
            sent.cancel()

        timer = clock.callLater(self.timeout, too_slow)
        try:
            response = await sent
        except Exception:
            # A cancelled request fails with CancelledError or, once bytes
            # went out, ResponseNeverReceived: the timer says which it was.
            raise ETSError("upstream_timeout" if timed_out else "upstream_error") from None
        finally:
            if timer.active():
                timer.cancel()

        metrics.upstream_latency.observe(clock.seconds() - started)
        _no_delay(request)
        copy_response_headers(response, request)
        # Send the headers now: a browser's fetch() resolves on them, and an
        # event stream may not write its first event for a while.
        request.write(b"")
        done: Deferred[None] = Deferred()
        body = _BodyRelay(request, clock, self.timeout, done)
        request.notifyFinish().addErrback(lambda _: body.stop())
        response.deliverBody(body)
        await done
