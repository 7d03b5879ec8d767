"""
Development mode: what C{twistd ets} runs with no configuration at all.

A random signing key held only in memory (made by L{ets_twisted.config}), the
daemon's own origins allowlisted, and a small echo upstream on loopback, so
a newcomer sees a whole round trip without writing a line of configuration.
"""

from __future__ import annotations

import json
import re

import attr
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .config import Config

log = Logger()

_PORT = re.compile(r"^tcp6?:(\d+)")


def dev_origins(listen_addr: str) -> tuple[str, ...]:
    """The browser origins of a local daemon listening on C{listen_addr}."""
    match = _PORT.match(listen_addr)
    if not match or match.group(1) == "0":
        return ()
    port = match.group(1)
    return (f"http://localhost:{port}", f"http://127.0.0.1:{port}", f"http://[::1]:{port}")


class EchoUpstream(Resource):
    """
    The built-in upstream: answers every request with what it received
    (method, path, query, headers, body) as JSON; a path ending in
    C{/stream} answers a few server-sent events, one every C{interval}
    seconds, so streaming can be seen.
    """

    isLeaf = True

    def __init__(self, clock: IReactorTime, interval: float = 0.3, events: int = 5) -> None:
        super().__init__()
        self._clock = clock
        self._interval = interval
        self._events = events

    def render(self, request: Request) -> object:
        if request.path.endswith(b"/stream"):
            return self._stream(request)
        body = request.content.read()
        answer = {
            "method": request.method.decode("latin-1"),
            "path": request.path.decode("latin-1"),
            "query": request.uri.partition(b"?")[2].decode("latin-1"),
            "headers": {
                k.decode("latin-1").lower(): [v.decode("latin-1") for v in vs]
                for k, vs in request.requestHeaders.getAllRawHeaders()
            },
            "body": body.decode("utf-8", "replace"),
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(answer).encode("utf-8")

    def _stream(self, request: Request) -> object:
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")

        async def send() -> None:
            for n in range(1, self._events + 1):
                if request._disconnected:
                    return
                request.write(b"data: %s\n\n" % json.dumps({"event": n, "of": self._events}).encode())
                await deferLater(self._clock, self._interval, lambda: None)
            if not request._disconnected:
                request.finish()

        Deferred.fromCoroutine(send())
        return NOT_DONE_YET


@attr.s(frozen=True, auto_attribs=True)
class DevUpstream:
    """The listening echo upstream and the configuration that points at it."""

    port: object
    config: Config


def start_dev_upstream(config: Config, reactor: IReactorTCP) -> DevUpstream:
    """
    Listen with the echo upstream on a free loopback port and fill the
    development configuration in: that upstream, and the daemon's own
    origins. Listening here (not in a service) gives the port number before
    the rest of the wiring is built.
    """
    port = reactor.listenTCP(0, Site(EchoUpstream(reactor)), interface="127.0.0.1")
    upstream = f"http://127.0.0.1:{port.getHost().port}"
    filled = attr.evolve(
        config, upstream_base_url=upstream, origin_allowlist=dev_origins(config.listen_addr)
    )
    log.warn(
        "ETS is in DEVELOPMENT MODE (no configuration given): the signing key is random and "
        "held only in memory, requests are relayed to the built-in echo upstream at {upstream}, "
        "allowed origins: {origins}. Set ORIGIN_ALLOWLIST, TVM_JWT_HS256_KEY and "
        "UPSTREAM_BASE_URL for production.",
        upstream=upstream,
        origins=", ".join(filled.origin_allowlist) or "(none)",
    )
    return DevUpstream(port, filled)
