"""
A local stand-in for a siteverify endpoint (Cloudflare Turnstile's protocol).

It takes the same form (C{secret}, C{response}, C{remoteip},
C{idempotency_key}) and answers the same JSON, so the daemon can be pointed
at it with C{ETS_VERIFY_URL}:

    server = FakeSiteverify(good_tokens={"good-1"})
    port, url = server.listen(reactor)
    self.addCleanup(server.shutdown)

Cloudflare's documented test secrets behave as they do there:
L{PASS_SECRET} always passes, L{FAIL_SECRET} always fails
(C{invalid-input-response}), L{SPENT_SECRET} answers "already spent"
(C{timeout-or-duplicate}). With any other secret only the tokens in
C{good_tokens} pass, and each only once: presented again it is spent
(C{timeout-or-duplicate}), unless it comes with the same C{idempotency_key}
as its first check, which is how Turnstile lets a caller retry.

For fault tests set C{mode}: L{GARBAGE} (200 with a page that is not JSON),
L{ERROR} (500), L{HANG} (never answers), L{STALL} (sends the headers and
part of the body, then nothing); or C{canned} to any C{(status, body)}.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterable

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

#: Cloudflare's dummy secret that always passes.
PASS_SECRET = "1x0000000000000000000000000000000AA"
#: Cloudflare's dummy secret that always fails.
FAIL_SECRET = "2x0000000000000000000000000000000AA"
#: Cloudflare's dummy secret that answers "token already spent".
SPENT_SECRET = "3x0000000000000000000000000000000AA"

#: Answer the protocol.
NORMAL = "normal"
#: Answer 200 with an HTML page.
GARBAGE = "garbage"
#: Answer 500 (with Turnstile's C{internal-error} JSON).
ERROR = "error"
#: Never answer.
HANG = "hang"
#: Send the status, headers and part of the body, then nothing.
STALL = "stall"


class _Channel(HTTPChannel):
    """
    An HTTP connection the site keeps track of, so L{FakeSiteverify.shutdown}
    can close it and wait until it is gone (Trial wants no open sockets).
    """

    site: _Site

    def connectionMade(self) -> None:
        super().connectionMade()
        self.lost: Deferred[None] = Deferred()
        self.site.channels.add(self)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.site.channels.discard(self)
        self.lost.callback(None)
        if not self.site.channels:
            idle, self.site.idle = self.site.idle, []
            for d in idle:
                d.callback(None)


class _Site(Site):
    protocol = _Channel

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.channels: set[_Channel] = set()
        self.idle: list[Deferred[None]] = []

    def log(self, request: Request) -> None:
        # No access log: it would only add noise to test.log.
        pass


class FakeSiteverify(Resource):
    """
    A siteverify endpoint answering on any path.

    @ivar good_tokens: response tokens that pass (once) with a non-test
        secret.
    @ivar secret: when set, the only non-test secret accepted; others get
        C{invalid-input-secret}. When L{None}, any secret is accepted.
    @ivar hostname: the C{hostname} of passing answers.
    @ivar action: the C{action} of passing answers.
    @ivar mode: L{NORMAL}, L{GARBAGE}, L{ERROR}, L{HANG} or L{STALL}.
    @ivar canned: when set, C{(status, body)} answered to every request
        (after recording it), whatever the mode.
    @ivar received: the forms received, oldest first, one C{dict} each
        (last value of each field).
    @ivar content_types: the C{Content-Type} of each request received.
    """

    isLeaf = True

    def __init__(
        self,
        good_tokens: Iterable[str] = (),
        hostname: str = "localhost",
        action: str = "",
        secret: str | None = None,
    ) -> None:
        super().__init__()
        self.good_tokens = set(good_tokens)
        self.secret = secret
        self.hostname = hostname
        self.action = action
        self.mode = NORMAL
        self.canned: tuple[int, bytes] | None = None
        self.received: list[dict[str, str]] = []
        self.content_types: list[str | None] = []
        # token -> the idempotency_key of its first, successful check
        self._spent: dict[str, str | None] = {}
        self._waiting: list[Deferred[dict[str, str]]] = []
        self._sites: list[tuple[IListeningPort, _Site]] = []

    def listen(
        self, reactor: IReactorTCP, interface: str = "127.0.0.1"
    ) -> tuple[IListeningPort, str]:
        """
        Serve on a free loopback port.

        @return: the listening port and the siteverify URL to use.
        """
        site = _Site(self)
        port = reactor.listenTCP(0, site, interface=interface)
        self._sites.append((port, site))
        host = f"[{interface}]" if ":" in interface else interface
        return port, f"http://{host}:{port.getHost().port}/turnstile/v0/siteverify"

    def shutdown(self) -> Deferred[None]:
        """
        Stop listening, drop every open connection (a hanging request too)
        and fire once they are all closed.
        """
        waits: list[Deferred[Any]] = []
        for port, site in self._sites:
            waits.append(maybeDeferred(port.stopListening))
            for channel in list(site.channels):
                waits.append(channel.lost)
                channel.transport.abortConnection()
        self._sites = []
        return gatherResults(waits).addCallback(lambda _: None)

    def idle(self) -> Deferred[None]:
        """
        @return: fires once no connection to the stand-in is open, for
            tests that check the client hung up (after a timeout, say).
        """
        for _, site in self._sites:
            if site.channels:
                d: Deferred[None] = Deferred()
                site.idle.append(d)
                return d.addCallback(lambda _: self.idle())
        return succeed(None)

    def next_request(self) -> Deferred[dict[str, str]]:
        """
        @return: fires with the form of the next request received.
        """
        d: Deferred[dict[str, str]] = Deferred()
        self._waiting.append(d)
        return d

    def render_POST(self, request: Request) -> bytes | int:
        form = {
            key.decode("utf-8", "replace"): values[-1].decode("utf-8", "replace")
            for key, values in (request.args or {}).items()
        }
        self.received.append(form)
        content_type = request.getHeader(b"content-type")
        self.content_types.append(content_type.decode("latin-1") if content_type else None)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(form)

        if self.canned is not None:
            status, body = self.canned
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            return body
        if self.mode == GARBAGE:
            request.setHeader(b"content-type", b"text/html")
            return b"<html><body>Bad gateway, try later</body></html>"
        if self.mode == ERROR:
            request.setResponseCode(500)
            return self._answer(request, ["internal-error"])
        if self.mode == HANG:
            return NOT_DONE_YET
        if self.mode == STALL:
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"content-length", b"100")
            request.write(b'{"success": tr')
            return NOT_DONE_YET
        return self._answer(request, self._verdict(form))

    def _verdict(self, form: dict[str, str]) -> list[str]:
        """
        @return: the error codes for C{form}; empty when it passes.
        """
        secret = form.get("secret", "")
        token = form.get("response", "")
        if not secret:
            return ["missing-input-secret"]
        if not token:
            return ["missing-input-response"]
        if secret == PASS_SECRET:
            return []
        if secret == FAIL_SECRET:
            return ["invalid-input-response"]
        if secret == SPENT_SECRET:
            return ["timeout-or-duplicate"]
        if self.secret is not None and secret != self.secret:
            return ["invalid-input-secret"]
        key = form.get("idempotency_key")
        if token in self._spent:
            if key is not None and self._spent[token] == key:
                return []
            return ["timeout-or-duplicate"]
        if token in self.good_tokens:
            self._spent[token] = key
            return []
        return ["invalid-input-response"]

    def _answer(self, request: Request, codes: list[str]) -> bytes:
        answer: dict[str, Any]
        if codes:
            answer = {"success": False, "error-codes": codes, "messages": []}
        else:
            now = datetime.now(timezone.utc)
            answer = {
                "success": True,
                "challenge_ts": now.isoformat(timespec="milliseconds"),
                "hostname": self.hostname,
                "error-codes": [],
                "action": self.action,
                "cdata": "",
                "metadata": {"interactive": False},
            }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(answer).encode("utf-8")
