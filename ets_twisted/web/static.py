"""
The browser SDK, served from package data.

The bytes are read once at start; C{ETag} is their hash, so a browser
revalidates cheaply. The content type is explicit: C{static.File} would guess
it from the host's MIME table, and a module served as anything but
JavaScript is refused by browsers.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import attr
from twisted.web.server import Request

from .answers import body_for, write_json

_TYPES = {
    ".mjs": b"text/javascript; charset=utf-8",
    ".ts": b"application/typescript; charset=utf-8",
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
}


@attr.s(frozen=True, auto_attribs=True)
class StaticFile:
    """One file of package data, with its validator."""

    body: bytes = attr.ib(repr=False)
    content_type: bytes
    etag: bytes
    cache_control: bytes
    cors: bool

    @classmethod
    def from_package(cls, *parts: str, cache_control: bytes, cors: bool) -> StaticFile:
        """Load C{ets_twisted/<parts...>} from the installed package."""
        body = resources.files("ets_twisted").joinpath(*parts).read_bytes()
        suffix = "." + parts[-1].rsplit(".", 1)[-1]
        etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode("ascii") + b'"'
        return cls(body, _TYPES.get(suffix, b"application/octet-stream"), etag, cache_control, cors)

    def render(self, request: Request) -> bytes:
        if self.cors:
            # A cross-origin `import` of a module needs this.
            request.setHeader(b"access-control-allow-origin", b"*")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return write_json(request, 405, {"error": "method_not_allowed"})
        request.setHeader(b"etag", self.etag)
        request.setHeader(b"cache-control", self.cache_control)
        request.setHeader(b"content-type", self.content_type)
        if _matches(request, self.etag):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-length", b"%d" % (len(self.body),))
        return body_for(request, self.body)


def _matches(request: Request, etag: bytes) -> bool:
    """Whether C{If-None-Match} names C{etag} (weakly or strongly) or C{*}."""
    for value in request.requestHeaders.getRawHeaders(b"if-none-match", []):
        for tag in value.split(b","):
            tag = tag.strip()
            # A weak validator names the same bytes here: we never transform them.
            if tag == b"*" or tag.removeprefix(b"W/") == etag:
                return True
    return False


@attr.s(frozen=True, auto_attribs=True)
class StaticDirectory:
    """
    Every file of one package-data folder, loaded at start and served
    below C{prefix}; the folder's C{index.html} answers the prefix itself.
    """

    prefix: bytes
    files: dict[bytes, StaticFile]

    @classmethod
    def from_package(cls, folder: str, prefix: bytes, cache_control: bytes) -> StaticDirectory:
        files = {}
        for entry in resources.files("ets_twisted").joinpath(folder).iterdir():
            if entry.is_file() and not entry.name.startswith("."):
                files[entry.name.encode("utf-8")] = StaticFile.from_package(
                    folder, entry.name, cache_control=cache_control, cors=False
                )
        return cls(prefix, files)

    def render(self, request: Request) -> bytes:
        name = request.path[len(self.prefix):] or b"index.html"
        page = self.files.get(name)
        if page is None:
            return write_json(request, 404, {"error": "not_found"})
        return page.render(request)
