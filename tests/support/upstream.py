"""
A recording upstream for relay tests, on a real loopback socket.

Each request is recorded (method, URI, headers, body). What it answers
depends on the path's last segment:

  - C{/stream}: server-sent events written one at a time when the test
    calls L{Upstream.send_event}, ended by L{Upstream.end_stream};
  - C{/slow}: never answers (a silent upstream);
  - C{/big}: C{big_size} bytes of body, produced with back-pressure;
  - C{/stall}: headers and a first chunk, then silence;
  - anything else: C{200} JSON echo of what it received, with headers that
    ETS must drop (C{Access-Control-Allow-Origin}, C{Set-Cookie}) and one it
    must keep (C{X-Upstream}).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IListeningPort, IPushProducer
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer


@implementer(IPushProducer)
class _Zeros:
    """Writes C{size} bytes to a request as fast as the client reads them."""

    chunk = b"0" * 65536

    def __init__(self, request: Request, size: int, clock: Any) -> None:
        self._request = request
        self._left = size
        self._paused = False
        self._clock = clock
        request.registerProducer(self, True)
        clock.callLater(0, self._pump)

    def _pump(self) -> None:
        while not self._paused and self._left > 0 and not self._request._disconnected:
            data = self.chunk[: min(len(self.chunk), self._left)]
            self._left -= len(data)
            self._request.write(data)
        if self._left <= 0 and not self._request._disconnected:
            self._request.unregisterProducer()
            self._request.finish()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._clock.callLater(0, self._pump)

    def stopProducing(self) -> None:
        self._left = 0


class Upstream(Resource):
    isLeaf = True

    def __init__(self, clock: Any, big_size: int = 50 * 1024 * 1024) -> None:
        super().__init__()
        self.clock = clock
        self.big_size = big_size
        self.received: list[dict[str, Any]] = []
        self.streams: list[Request] = []
        self.stream_closed: list[Deferred[None]] = []
        self.port: IListeningPort | None = None

    def listen(self, reactor: Any) -> str:
        self.site = Site(self)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def render(self, request: Request) -> Any:
        self.received.append({
            "method": request.method.decode(),
            "uri": request.uri.decode("latin-1"),
            "headers": {k.decode().lower(): [v.decode("latin-1") for v in vs]
                        for k, vs in request.requestHeaders.getAllRawHeaders()},
            "body": request.content.read(),
        })
        last = request.path.rsplit(b"/", 1)[-1]
        if last == b"slow":
            return NOT_DONE_YET
        if last == b"stream":
            request.setHeader(b"content-type", b"text/event-stream")
            request.write(b"")
            self.streams.append(request)
            closed: Deferred[None] = Deferred()
            request.notifyFinish().addBoth(lambda _: closed.callback(None))
            self.stream_closed.append(closed)
            return NOT_DONE_YET
        if last == b"stall":
            request.setHeader(b"content-type", b"text/plain")
            request.write(b"first chunk")
            return NOT_DONE_YET
        if last == b"big":
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(b"content-length", b"%d" % self.big_size)
            _Zeros(request, self.big_size, self.clock)
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"set-cookie", b"upstream=1")
        request.setHeader(b"x-upstream", b"yes")
        return json.dumps({"echo": request.uri.decode("latin-1")}).encode()

    def send_event(self, data: str, index: int = -1) -> None:
        self.streams[index].write(f"data: {data}\n\n".encode())

    def end_stream(self, index: int = -1) -> None:
        self.streams[index].finish()
