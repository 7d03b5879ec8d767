"""
Setting response headers whose names and values ETS wrote itself.

twisted.web's C{setHeader} canonicalizes the name and scans the value for
line breaks on every call: about a microsecond each, and a small answer of
ETS sets a dozen. The names here are put in twisted.web's canonical form
once (L{canonical}), and the values are ETS's own (constants, numbers, hex
ids, an allowlisted origin), so L{set_header} stores them straight into the
answer's header table, where twisted.web's own lookups and its writer find
them as if C{setHeader} had put them there.
"""

from __future__ import annotations

from twisted.web.http_headers import Headers
from twisted.web.server import Request


def canonical(name: bytes) -> bytes:
    """C{name} as twisted.web keys its header tables (C{Http-Header-Case})."""
    headers = Headers()
    headers.setRawHeaders(name, [b""])
    return next(iter(headers.getAllRawHeaders()))[0]


# The table is a private attribute of Headers (stable for many years);
# without it, set_header falls back to setHeader.
_TABLE = isinstance(getattr(Headers(), "_rawHeaders", None), dict)


def set_header(request: Request, name: bytes, value: bytes) -> None:
    """
    C{request.setHeader(name, value)} for a C{name} from L{canonical} and a
    C{value} of ETS's own making (no line breaks).
    """
    if _TABLE:
        request.responseHeaders._rawHeaders[name] = [value]
    else:
        request.setHeader(name, value)


VARY = canonical(b"vary")
ALLOW_ORIGIN = canonical(b"access-control-allow-origin")
EXPOSE_HEADERS = canonical(b"access-control-expose-headers")
RATELIMIT_LIMIT = canonical(b"ratelimit-limit")
RATELIMIT_REMAINING = canonical(b"ratelimit-remaining")
RATELIMIT_RESET = canonical(b"ratelimit-reset")
CACHE_CONTROL = canonical(b"cache-control")
PRAGMA = canonical(b"pragma")
CONTENT_TYPE = canonical(b"content-type")
CONTENT_LENGTH = canonical(b"content-length")
REQUEST_ID = canonical(b"x-request-id")
SERVER = canonical(b"server")
DATE = canonical(b"date")
