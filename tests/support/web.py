"""
The ETS Resource tree on a real loopback socket, inside a Trial test.

L{SiteHarness} builds the site from an environment mapping exactly as the
daemon does (L{ets_twisted.app.build_site}) and offers a treq client with
its own non-persistent pool, so Trial sees no dirty reactor.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.web.client import Agent, HTTPConnectionPool

from ets_twisted.app import build_site
from ets_twisted.config import load
from ets_twisted.stores.memory import MemoryStore

ORIGIN = "https://app.example"
KEY = "unit-test-signing-key-0123456789abcdef"

BASE_ENV = {
    "ORIGIN_ALLOWLIST": ORIGIN,
    "TVM_JWT_HS256_KEY": KEY,
    "UPSTREAM_BASE_URL": "http://127.0.0.1:9",
    "RATE_LIMIT_PER_MINUTE": "1000",
}


class Answer:
    """A finished answer: status, headers (lower-case names) and body."""

    def __init__(self, status: int, headers: dict[str, list[str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        try:
            return self.json().get("error")
        except ValueError:
            return None


class SiteHarness:
    """One ETS site listening on 127.0.0.1, for the length of one test."""

    def __init__(self, testcase: Any, env: Mapping[str, str] | None = None, *,
                 clock: Any = None, **overrides: str) -> None:
        """
        @param clock: drives the site's time (a L{Clock} in tests of time
            windows); the real reactor when None. The network is always real.
        """
        self.config = load({**BASE_ENV, **(env or {}), **overrides})
        self.clock = reactor if clock is None else clock
        self.store = MemoryStore(self.clock)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        # The site's own upstream pool is persistent, as in the daemon.
        upstream_pool = HTTPConnectionPool(reactor, persistent=True)
        testcase.addCleanup(upstream_pool.closeCachedConnections)
        self.site = build_site(self.config, reactor, self.store, upstream_pool, clock=self.clock)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        testcase.addCleanup(self.port.stopListening)
        testcase.addCleanup(pool.closeCachedConnections)

    @inlineCallbacks
    def request(
        self, method: str, path: str, *, body: bytes | None = None,
        headers: Mapping[str, str | list[str]] | None = None,
    ) -> Deferred[Answer]:
        """Send one request and collect the whole answer."""
        raw = {k: v if isinstance(v, list) else [v] for k, v in (headers or {}).items()}
        response = yield self.http.request(method, self.base + path, headers=raw, data=body)
        data = yield response.content()
        headers_out = {
            k.decode().lower(): [v.decode("latin-1") for v in vs]
            for k, vs in response.headers.getAllRawHeaders()
        }
        return Answer(response.code, headers_out, data)

    def issue(self, payload: Any = None, *, body: bytes | None = None, origin: str | None = ORIGIN,
              headers: Mapping[str, str | list[str]] | None = None) -> Deferred[Answer]:
        """POST /tvm/issue with a JSON payload (or raw C{body})."""
        all_headers: dict[str, str | list[str]] = {"Content-Type": "application/json"}
        if origin is not None:
            all_headers["Origin"] = origin
        all_headers.update(headers or {})
        if body is None:
            body = json.dumps(payload).encode()
        return self.request("POST", "/tvm/issue", body=body, headers=all_headers)


def wait_until(predicate: Any, timeout: float = 10.0) -> Deferred[None]:
    """Fire once C{predicate()} is true, polling the real reactor."""
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout

    async def poll() -> None:
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError("condition not met in time")
            await deferLater(reactor, 0.01, lambda: None)

    return Deferred.fromCoroutine(poll())
