"""
What an operator sees of each request: the access log, the request id, the
metrics each answer feeds, and the warning about a client that keeps
failing signature checks.

One L{Observer} belongs to the L{ets_twisted.web.root.ETSSite}; the site
calls L{Observer.begin} for every request, which gives the request its id
(echoed in C{X-Request-Id}) and, once the answer is complete or the
connection is gone, writes one access line and counts the request. The
routes only add what they learn on the way: the error code
(L{note_error}, called where errors become answers), the key thumbprint
(L{note_thumbprint}).

An access line holds the request id, method, path (never the query: a
query can carry secrets), status, error code, duration, client IP and the
first 8 characters of the key thumbprint; never a token, a proof, a key or
the upstream secret.

Log lines go through C{twisted.logger}; L{ets_twisted.logs} writes them
(classic text or, with C{LOG_FORMAT=json}, one JSON object per line).
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from typing import Any, Sequence

import attr
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.server import Request

from .metrics import Metrics
from .randomness import random_bytes
from .web import headers
from .web.admission import client_ip, header, is_trusted_peer
from .web.headers import set_header

access_log = Logger(namespace="ets.access")
security_log = Logger(namespace="ets.security")

#: SPEC codes that mean "this client's credentials do not verify".
SIGNATURE_FAILURES = frozenset({"bad_dpop_sig", "invalid_token"})

#: Longest incoming C{X-Request-Id} taken from a trusted proxy.
MAX_REQUEST_ID = 128

#: How much of a path and method an access line keeps.
_MAX_PATH = 512
_MAX_METHOD = 16



def access_line(fields: dict[str, Any]) -> str:
    """
    The text of an access line (the message of C{LOG_FORMAT=text} and
    C{json}). Formatted here, once, rather than by the log system from a
    format string: the same text, without a format-string interpreter
    walking eight fields per request.
    """
    return "%(method)s %(path)s %(status)s %(error)s %(duration_ms)sms client=%(client_ip)s " \
        "id=%(request_id)s jkt=%(jkt)s" % fields

_ATTRIBUTE = "_ets_observed"


def new_request_id() -> str:
    """A fresh request id: 32 random hex digits."""
    # The bytes of a uuid4 without building a UUID object (a few µs a request).
    return random_bytes(16).hex()


def incoming_request_id(request: Request, trusted: Sequence[Any]) -> str | None:
    """
    The C{X-Request-Id} of a trusted proxy when it is usable (printable,
    at most L{MAX_REQUEST_ID} characters), else None: an id from anyone
    else could be chosen to forge or confuse log lines.
    """
    if not is_trusted_peer(request, trusted):
        return None
    value = header(request, b"x-request-id")
    if not value or len(value) > MAX_REQUEST_ID or not value.isprintable() or not value.isascii():
        return None
    return value


@attr.s(auto_attribs=True)
class _Seen:
    """What the access line of one request will say."""

    request_id: str
    started: float
    route: str
    method: str
    path: str
    client_ip: str
    error: str | None = None
    jkt: str | None = None
    done: bool = False


def _seen(request: Request) -> _Seen | None:
    return getattr(request, _ATTRIBUTE, None)


def request_id(request: Request, trusted: Sequence[Any]) -> str:
    """
    The id of C{request}: the one L{Observer.begin} gave it, else (a
    request served outside an L{ETSSite}) one taken or made now.
    """
    seen = _seen(request)
    if seen is not None:
        return seen.request_id
    return incoming_request_id(request, trusted) or new_request_id()


def observer_of(request: Request) -> Observer | None:
    """The L{Observer} of the site serving C{request}, if any."""
    site = getattr(request, "site", None)
    if site is None:
        channel = getattr(request, "channel", None)
        site = getattr(channel, "site", None)
    return getattr(site, "observer", None)


_UNOBSERVED = Metrics()


def metrics_of(request: Request) -> Metrics:
    """
    The L{Metrics} of the site serving C{request} (a throwaway set for a
    request served outside an L{ETSSite}, e.g. by C{StubTreq}).
    """
    observer = observer_of(request)
    return _UNOBSERVED if observer is None else observer.metrics


def note_error(request: Request, code: str) -> None:
    """C{request} is answered with the error C{code}: count it, log it."""
    metrics_of(request).refusals.labels(code=code).inc()
    seen = _seen(request)
    if seen is not None:
        seen.error = code


def note_thumbprint(request: Request, jkt: str | None) -> None:
    """The key of C{request} is known: its thumbprint prefix goes in the access line."""
    seen = _seen(request)
    if seen is not None and jkt:
        seen.jkt = jkt[:8]


def _text(data: bytes, limit: int) -> str:
    text = data.decode("latin-1")
    if text.isprintable():
        return text[:limit]
    # No control characters: a crafted path must not forge log lines.
    text = "".join(c if c.isprintable() else "\\x%02x" % ord(c) for c in text)
    return text[:limit]


class FailureWatch:
    """
    Notices a client that keeps failing signature checks.

    Keeps, per client IP, the times of its last C{threshold} failures, for
    at most C{max_clients} clients (the least recently failing are
    forgotten first), so memory stays bounded whatever the traffic.
    L{failed} says when a client reaches C{threshold} failures within
    C{window} seconds, at most once per window per client.
    """

    def __init__(self, clock: Any, threshold: int = 5, window: float = 60.0, max_clients: int = 10000) -> None:
        self._clock = clock
        self.threshold = threshold
        self.window = window
        self._max = max_clients
        # ip -> [warned_at, t1, t2, ...]
        self._clients: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def failed(self, ip: str) -> bool:
        """Record one failure of C{ip}; True when it is time to warn."""
        now = self._clock.seconds()
        entry = self._clients.pop(ip, None) or [float("-inf")]
        warned_at, times = entry[0], [t for t in entry[1:] if t > now - self.window]
        times = (times + [now])[-self.threshold :]
        warn = len(times) >= self.threshold and now - warned_at >= self.window
        if warn:
            warned_at = now
        self._clients[ip] = [warned_at, *times]
        while len(self._clients) > self._max:
            self._clients.popitem(last=False)
        return warn


@attr.s(auto_attribs=True)
class Observer:
    """
    Access log, request ids and per-request metrics of one site.

    @ivar clock: measures durations (the reactor).
    @ivar trusted_proxies: C{TRUSTED_PROXIES}: whose C{X-Request-Id} and
        C{X-Forwarded-For} are believed.
    """

    metrics: Metrics
    clock: Any
    trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()
    watch: FailureWatch | None = None

    def __attrs_post_init__(self) -> None:
        if self.watch is None:
            self.watch = FailureWatch(self.clock)

    def begin(self, request: Request, route: str, finished: Deferred[None] | None = None) -> None:
        """
        Give C{request} its id (set as the answer's C{X-Request-Id}) and
        log and count it once it is over.

        @param route: the route label (a configured route, never the raw path).
        @param finished: its C{notifyFinish()} when the caller has one already.
        """
        seen = _Seen(
            request_id=request_id(request, self.trusted_proxies),
            started=self.clock.seconds(),
            route=route,
            method=_text(request.method, _MAX_METHOD),
            path=_text(request.path, _MAX_PATH),
            client_ip=client_ip(request, self.trusted_proxies),
        )
        setattr(request, _ATTRIBUTE, seen)
        # Hex digits, or a printable ASCII id from a trusted proxy.
        set_header(request, headers.REQUEST_ID, seen.request_id.encode("ascii"))
        (request.notifyFinish() if finished is None else finished).addBoth(self._over, request, seen)

    def refused_early(self, request: Request, path: bytes, route: str) -> str:
        """
        Log and count a request refused before it was processed (the early
        C{413 body_too_large}); return its request id for the answer.
        """
        seen = _Seen(
            request_id=request_id(request, self.trusted_proxies),
            started=self.clock.seconds(),
            route=route,
            method=_text(getattr(request.channel, "_command", b"") or b"-", _MAX_METHOD),
            path=_text(path, _MAX_PATH),
            client_ip=client_ip(request, self.trusted_proxies),
            error="body_too_large",
        )
        self.metrics.refusals.labels(code="body_too_large").inc()
        self._log(seen, 413)
        return seen.request_id

    def _over(self, result: object, request: Request, seen: _Seen) -> None:
        if seen.done:
            return
        seen.done = True
        # nginx's convention: 499 when the answer did not complete.
        status = 499 if isinstance(result, Failure) else request.code
        self._log(seen, status)

    def _log(self, seen: _Seen, status: int) -> None:
        duration = max(0.0, self.clock.seconds() - seen.started)
        self.metrics.requests.inc(seen.route, str(status))
        fields = {
            "request_id": seen.request_id,
            "method": seen.method,
            "path": seen.path,
            "status": status,
            "error": seen.error or "-",
            "duration_ms": round(duration * 1000, 1),
            "client_ip": seen.client_ip,
            "jkt": seen.jkt or "-",
        }
        # The event Logger.info would make, handed to its observer directly:
        # info() first checks the level against a list of every LogLevel
        # built anew per call (~3 µs, more than the rest of the logging).
        access_log.observer({
            "ets_access_line": access_line(fields),
            "ets": fields,
            "log_logger": access_log,
            "log_level": LogLevel.info,
            "log_namespace": access_log.namespace,
            "log_source": None,
            "log_format": "{ets_access_line}",
            "log_time": time.time(),
        })
        if seen.error in SIGNATURE_FAILURES and self.watch is not None and self.watch.failed(seen.client_ip):
            security_log.warn(
                "client {client_ip} failed {count} signature checks "
                "(bad_dpop_sig/invalid_token) within {window:.0f} s; last: {error}",
                client_ip=seen.client_ip,
                count=self.watch.threshold,
                window=self.watch.window,
                error=seen.error,
                ets={"client_ip": seen.client_ip, "error": seen.error, "request_id": seen.request_id},
            )


def site_observer(trusted_proxies: Sequence[Any], store: Any, reactor: Any) -> Observer:
    """The L{Observer} of one site: fresh L{Metrics} watching C{store}."""
    metrics = Metrics()
    metrics.watch_store(store)
    return Observer(metrics, reactor, tuple(trusted_proxies))
