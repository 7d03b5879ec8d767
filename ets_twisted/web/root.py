"""
The Resource tree and the request class that enforces body caps.

Routing is a plain lookup on the path: the few fixed routes, the configured
C{API_PATH} prefix, and a JSON 404 for everything else.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol

import attr
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString, unquote
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.server import version as server_version

from ..memo import PerSecond
from ..metrics import Metrics
from ..observe import Observer
from ..shutdown import Drain
from . import headers
from .answers import write_json
from .channel import IDLE_TIMEOUT, GuardedChannel, closing_answer
from .headers import set_header
from .issue import MAX_ISSUE_BODY


class Route(Protocol):
    def render(self, request: Request) -> object: ...


@attr.s(auto_attribs=True, repr=False)
class Root(Resource):
    """
    The whole tree: C{routes} maps exact paths to routes; C{api} (when set)
    serves C{api_path} and everything below it.
    """

    routes: dict[bytes, Route]
    api_path: bytes = b"/api"
    api: Route | None = None
    prefixes: dict[bytes, Route] = attr.Factory(dict)
    drain: Drain = attr.Factory(Drain)

    isLeaf = True

    def __repr__(self) -> str:
        # twisted.web prints resources in some warnings; the routes hold
        # configuration that has no place in a log.
        return "<ETS Root>"

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def route_for(self, path: bytes) -> Route | None:
        """The route serving C{path}, or None."""
        route = self.routes.get(path)
        if route is not None:
            return route
        if self.api is not None and (
            path == self.api_path or path.startswith(self.api_path + b"/")
        ):
            return self.api
        for prefix, route in self.prefixes.items():
            if path.startswith(prefix):
                return route
        return None

    def render(self, request: Request) -> object:
        route = self.route_for(request.path)
        if route is None:
            return write_json(request, 404, {"error": "not_found"})
        return route.render(request)


#: The C{Date} header's text for a time (formatted once per second).
http_date: PerSecond[bytes] = PerSecond(datetimeToString)


class CappedRequest(Request):
    """
    A request that refuses an oversized body while it arrives.

    twisted.web reads the whole body before C{render}; waiting for it would
    let a client make us spool gigabytes. The cap of the route is known from
    the request line, so a declared C{Content-Length} over it, or a chunked
    body that passes it, is answered C{413 body_too_large} at once and the
    connection closed without reading the rest.
    """

    _refused = False
    _received = 0
    _cap = 0

    def process(self) -> None:
        # twisted.web's Request.process, with the Date header formatted once
        # a second rather than per request and the two default headers set
        # without setHeader's re-encoding. The tree is ETS's Root, a leaf
        # that encodes nothing, so twisted.web's encoder lookup is left out.
        self.site = self.channel.site
        set_header(self, headers.SERVER, server_version)
        set_header(self, headers.DATE, http_date(time.time()))
        self.prepath = []
        self.postpath = list(map(unquote, self.path[1:].split(b"/")))
        if self.path == b"*":
            self._handleStar()
            return
        try:
            self.render(self.site.getResourceFor(self))
        except BaseException:
            self.processingFailed(Failure())

    def gotLength(self, length: int | None) -> None:
        site: ETSSite = self.channel.site
        path = self.channel._path.split(b"?", 1)[0]
        self._cap = site.body_cap(path)
        if length is not None and length > self._cap:
            self._refuse(path)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._cap:
            self._refuse(self.channel._path.split(b"?", 1)[0])
            return
        super().handleContentChunk(data)

    def _refuse(self, path: bytes) -> None:
        self._refused = True
        site: ETSSite = self.channel.site
        headers: list[tuple[bytes, bytes]] = []
        origin = self.requestHeaders.getRawHeaders(b"origin", [None])[-1]
        if origin is not None and site.cors_origin(path, origin):
            headers += [(b"Access-Control-Allow-Origin", origin), (b"Vary", b"Origin")]
        request_id = site.observer.refused_early(self, path, site.route_label(path))
        headers.append((b"X-Request-Id", request_id.encode("ascii")))
        # The Request machinery has not started (no request line is parsed
        # into it yet), so the answer is written straight to the connection;
        # the lingering close keeps the rest of the body from resetting it.
        self.channel.refuse(closing_answer(
            b"413 Content Too Large", {"error": "body_too_large", "limit": self._cap}, tuple(headers)))
        site.on_refused_body(path)


class ETSSite(Site):
    """
    A L{Site} that knows each route's body cap and which origins get CORS
    headers on an early 413.
    """

    requestFactory = CappedRequest
    # Plain HTTP/1.1 with request deadlines (see channel); ETS does not
    # speak HTTP/2, so twisted.web's protocol-switching wrapper is not used.
    protocol = GuardedChannel

    def __init__(
        self,
        root: Root,
        *,
        api_body_cap: int,
        cors_origins: frozenset[bytes],
        on_refused_body: Callable[[bytes], None] = lambda path: None,
        observer: Observer | None = None,
        **kwargs: object,
    ) -> None:
        kwargs.setdefault("timeout", IDLE_TIMEOUT)
        # ETS reads bodies as JSON or relays them as bytes: twisted.web's
        # parsing of form posts (Content-Type through email.message, ~40 µs
        # a request) would be wasted.
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(root, **kwargs)
        self._root = root
        self._api_body_cap = api_body_cap
        self._cors_origins = cors_origins
        self.on_refused_body = on_refused_body
        self.observer = observer if observer is not None else Observer(Metrics(), self.reactor)

    def getResourceFor(self, request: Request) -> Resource:
        # Every processed request passes here first: it gets its id, its
        # access line and metrics once it is over (see observe), and it is
        # counted in flight for the graceful drain. Both wait on the same
        # notifyFinish() Deferred (the observer's callback passes None on).
        finished = request.notifyFinish()
        self.observer.begin(request, self.route_label(request.path), finished)
        self._root.drain.track(request, finished)
        return super().getResourceFor(request)

    def route_label(self, path: bytes) -> str:
        """
        The route of C{path} as a metrics label: a configured route's path
        (C{/tvm/issue}, the C{API_PATH}, C{/demo/}), or C{other}; never the
        raw path, so the label set stays bounded.
        """
        root = self._root
        if path in root.routes:
            return path.decode("ascii")
        if self._is_api(path):
            return root.api_path.decode("ascii")
        for prefix in root.prefixes:
            if path.startswith(prefix):
                return prefix.decode("ascii")
        return "other"

    def body_cap(self, path: bytes) -> int:
        """The largest body accepted for C{path}."""
        return self._api_body_cap if self._is_api(path) else MAX_ISSUE_BODY

    def _is_api(self, path: bytes) -> bool:
        return self._root.api is not None and self._root.route_for(path) is self._root.api

    def cors_origin(self, path: bytes, origin: bytes) -> bool:
        """Whether an early answer for C{path} may carry CORS headers for C{origin}."""
        return origin in self._cors_origins and (
            path == b"/tvm/issue" or self._is_api(path)
        )

    def log(self, request: Request) -> None:
        """
        Twisted's default access line holds the whole URI, and a query can
        carry secrets; ETS writes its own access log instead (see
        L{ets_twisted.observe}, started in L{getResourceFor}).
        """
