"""
Admission: what every protected route checks before it looks at credentials.

Origin policy and CORS, the real-preflight answer, the client IP behind
trusted proxies, the browser-visible URL of a request (for C{htu}), and the
rate limit. Each check either passes on what it learned or raises an
L{ETSError} with its SPEC code.
"""

from __future__ import annotations

import ipaddress
from typing import Sequence

import attr
from twisted.web.server import Request

from ..errors import ETSError
from ..memo import Memo
from ..stores import IRateLimiter, RateDecision, rate_key
from . import headers
from .headers import set_header

_EXPOSED = (
    b"DPoP-Nonce, WWW-Authenticate, Retry-After, RateLimit-Limit, "
    b"RateLimit-Remaining, RateLimit-Reset, X-Request-Id, Date"
)
_ALLOWED_HEADERS = ("Authorization", "Content-Type", "DPoP")
# Chromium caps preflight caching at 7200 s, SPEC's maximum.
_PREFLIGHT_MAX_AGE = b"7200"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def header(request: Request, name: bytes) -> str | None:
    """The first value of a request header as text, or None."""
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    return values[0].decode("latin-1")


def is_preflight(request: Request) -> bool:
    """A real CORS preflight: OPTIONS with Origin and Access-Control-Request-Method."""
    return (
        request.method == b"OPTIONS"
        and request.requestHeaders.hasHeader(b"origin")
        and request.requestHeaders.hasHeader(b"access-control-request-method")
    )


def _is_token(name: str) -> bool:
    # RFC 9110 token characters: anything else cannot be a header name and
    # must not be reflected into our answer.
    return bool(name) and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name)


@attr.s(frozen=True, auto_attribs=True)
class Admission:
    """
    The admission rules of one route class (C{issue} or C{api}).

    @ivar route_class: the rate-limit route class, C{issue} or C{api}.
    @ivar methods: the methods this route accepts (upper-case).
    """

    route_class: str
    methods: tuple[str, ...]
    origins: frozenset[str]
    trusted_proxies: tuple[IPNetwork, ...]
    limiter: IRateLimiter
    rate_per_minute: int
    burst: int

    def origin(self, request: Request) -> str:
        """
        Check C{Origin} against the allowlist and add the CORS headers every
        answer of an allowed origin carries.

        @raise ETSError: C{origin_not_allowed}, with no CORS headers set.
        """
        set_header(request, headers.VARY, b"Origin")
        origins = request.requestHeaders.getRawHeaders(b"origin")
        if not origins or len(origins) != 1:
            raise ETSError("origin_not_allowed")
        origin = origins[0].decode("latin-1")
        if origin not in self.origins:
            raise ETSError("origin_not_allowed")
        # An allowlisted origin: text from the configuration, as received.
        set_header(request, headers.ALLOW_ORIGIN, origins[0])
        set_header(request, headers.EXPOSE_HEADERS, _EXPOSED)
        return origin

    def preflight(self, request: Request) -> bytes:
        """Answer a real preflight: 204 with the CORS grants, no rate limit, no token."""
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-methods", ", ".join(self.methods).encode())
        allowed = list(_ALLOWED_HEADERS)
        # Front ends send their own headers to the upstream API; grant the
        # well-formed ones asked for, since ETS strips the sensitive ones anyway.
        for value in request.requestHeaders.getRawHeaders(b"access-control-request-headers", []):
            for name in value.decode("latin-1").split(","):
                name = name.strip()
                if _is_token(name) and name.lower() not in {a.lower() for a in allowed}:
                    allowed.append(name)
        request.setHeader(b"access-control-allow-headers", ", ".join(allowed).encode("latin-1"))
        request.setHeader(b"access-control-max-age", _PREFLIGHT_MAX_AGE)
        request.setHeader(b"content-length", b"0")
        return b""

    def method(self, request: Request) -> None:
        """@raise ETSError: C{method_not_allowed} (with C{Allow}) for other methods."""
        if request.method.decode("latin-1") not in self.methods:
            raise ETSError(
                "method_not_allowed", headers={"Allow": ", ".join(self.methods)}
            )

    async def rate(self, request: Request, origin: str) -> RateDecision:
        """
        Take one token from this client's bucket; set the C{RateLimit-*}
        headers either way.

        @raise ETSError: C{rate_limited} with C{Retry-After}.
        """
        ip = client_ip(request, self.trusted_proxies)
        decision = await self.limiter.take(
            _rate_key(self.route_class, origin, ip), self.rate_per_minute, self.burst
        )
        set_header(request, headers.RATELIMIT_LIMIT, b"%d" % (decision.limit,))
        set_header(request, headers.RATELIMIT_REMAINING, b"%d" % (decision.remaining,))
        set_header(request, headers.RATELIMIT_RESET, b"%d" % (decision.reset,))
        if not decision.allowed:
            raise ETSError(
                "rate_limited", headers={"Retry-After": str(max(1, decision.retry_after))}
            )
        return decision


def _rate_key(route_class: str, origin: str, ip: str) -> bytes:
    """
    L{rate_key}, remembered for the last few thousand clients (a digest
    per request otherwise; the origin is an allowlisted one by now).
    """
    return _rate_keys((route_class, origin, ip))


def _in(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in networks)


def _parse_ip_uncached(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 peer on a dual-stack socket reads ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def peer_ip(request: Request) -> str:
    """The socket peer's address as text (C{unix} for a UNIX socket)."""
    host = getattr(request.getClientAddress(), "host", None)
    if not host:
        return "unix"
    return _peer_texts(host)


def _peer_text(host: str) -> str:
    address = _parse_ip(host)
    return str(address) if address is not None else host


#: Every request parses its peer's address several times (client IP,
#: trusted-proxy checks, forwarding headers), and a handful of peers (a
#: load balancer, a proxy) send most requests: parsed addresses, peer texts
#: and rate-limit keys are remembered.
_parse_ip: Memo[str, ipaddress.IPv4Address | ipaddress.IPv6Address | None] = Memo(
    _parse_ip_uncached, max_length=64)
_peer_texts: Memo[str, str] = Memo(_peer_text, max_length=64)
_rate_keys: Memo[tuple[str, str, str], bytes] = Memo(lambda fields: rate_key(*fields))


def is_trusted_peer(request: Request, trusted: Sequence[IPNetwork]) -> bool:
    """Whether the socket peer is inside C{TRUSTED_PROXIES}."""
    if not trusted:
        return False
    address = _parse_ip(peer_ip(request))
    return address is not None and _in(address, trusted)


def client_ip(request: Request, trusted: Sequence[IPNetwork]) -> str:
    """
    The client IP of SPEC's rate-limit key: the socket peer, unless the peer
    is a trusted proxy; then the right-most C{X-Forwarded-For} address that
    is not a trusted proxy (the peer itself when there is none). An
    unparsable entry stops the walk: nothing left of it can be trusted, so
    the last trusted hop is the client.
    """
    peer = peer_ip(request)
    if not is_trusted_peer(request, trusted):
        return peer
    values = request.requestHeaders.getRawHeaders(b"x-forwarded-for", [])
    hops = ",".join(v.decode("latin-1") for v in values).split(",")
    client = peer
    for hop in reversed(hops):
        if not hop.strip():
            continue
        address = _parse_ip(hop)
        if address is None:
            return client
        client = str(address)
        if not _in(address, trusted):
            return client
    return client


def public_url(request: Request, public_base_url: str | None, trusted: Sequence[IPNetwork]) -> str:
    """
    The URL the browser used, for comparing with a proof's C{htu} (query
    left out): C{PUBLIC_BASE_URL} + path when set; otherwise the scheme of
    C{X-Forwarded-Proto} (honoured from any peer, as SPEC says) or of the
    connection, and the host of C{X-Forwarded-Host} from a trusted proxy,
    else C{Host}.
    """
    path = request.path.decode("latin-1")
    if public_base_url:
        return public_base_url + path
    proto = (header(request, b"x-forwarded-proto") or "").split(",")[0].strip().lower()
    if proto not in ("http", "https"):
        proto = "https" if request.isSecure() else "http"
    host = None
    if is_trusted_peer(request, trusted):
        host = header(request, b"x-forwarded-host")
        host = host.split(",")[0].strip() if host else None
    if not host:
        host = header(request, b"host") or ""
    return f"{proto}://{host}{path}"
