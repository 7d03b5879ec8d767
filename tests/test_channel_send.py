"""
GuardedChannel's direct sending, over real loopback sockets: answers made
while a read is processed go out with one send(); they must still arrive
whole and in order, pipelined or not, when the socket takes only part of
them, and next to answers written later through the transport.
"""

from __future__ import annotations

import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from ets_twisted.web.channel import GuardedChannel

BIG = 8 * 1024 * 1024


class Answers(Resource):
    """/now/NAME answers NAME at once; /later/NAME on the next reactor turn; /big 8 MiB at once."""

    isLeaf = True

    def render_GET(self, request):
        kind, _, name = request.path.strip(b"/").partition(b"/")
        if kind == b"big":
            return bytes(range(256)) * (BIG // 256)
        if kind == b"later":
            def answer():
                request.setHeader(b"content-length", b"%d" % len(b"later " + name))
                request.write(b"later " + name)
                request.finish()
            reactor.callLater(0, answer)
            return NOT_DONE_YET
        return b"now " + name


class Collect(Protocol):
    def __init__(self, payload: bytes, done: Deferred) -> None:
        self.payload, self.done, self.data = payload, done, []

    def connectionMade(self):
        self.transport.write(self.payload)

    def dataReceived(self, data):
        self.data.append(data)

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.data))


def requests(*paths: bytes) -> bytes:
    """Pipelined GETs; the last asks to close the connection."""
    out = b""
    for n, path in enumerate(paths):
        close = b"Connection: close\r\n" if n == len(paths) - 1 else b""
        out += b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + close + b"\r\n"
    return out


def bodies(raw: bytes) -> list[bytes]:
    """The bodies of consecutive answers with Content-Length."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head[:80]
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        out.append(rest[:length])
        raw = rest[length:]
    return out


class DirectSendTests(TestCase):
    def setUp(self):
        site = Site(Answers())
        site.protocol = GuardedChannel
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def exchange(self, payload: bytes) -> Deferred:
        done: Deferred = Deferred()
        factory = ClientFactory()
        factory.protocol = lambda: Collect(payload, done)
        reactor.connectTCP("127.0.0.1", self.port.getHost().port, factory)
        return done

    @inlineCallbacks
    def test_pipelined_in_order(self):
        """Answers made at once and later, pipelined in one packet, come back in order."""
        raw = yield self.exchange(requests(b"/now/a", b"/later/b", b"/now/c", b"/now/d", b"/later/e"))
        self.assertEqual(bodies(raw), [b"now a", b"later b", b"now c", b"now d", b"later e"])

    @inlineCallbacks
    def test_more_than_the_socket_takes(self):
        """
        An 8 MiB answer made at once (more than a loopback socket takes in
        one send) arrives whole, and the pipelined answer after it follows it.
        """
        raw = yield self.exchange(requests(b"/big", b"/now/after"))
        big, after = bodies(raw)
        self.assertEqual(len(big), BIG)
        self.assertEqual(big, bytes(range(256)) * (BIG // 256))
        self.assertEqual(after, b"now after")

    @inlineCallbacks
    def test_many_connections(self):
        """Fifty connections at once, each with its own pipelined answers."""
        results = yield Deferred.fromCoroutine(self._many())
        self.assertEqual(results, [[b"now %d" % n, b"later %d" % n] for n in range(50)])

    async def _many(self):
        done = [self.exchange(requests(b"/now/%d" % n, b"/later/%d" % n)) for n in range(50)]
        return [bodies(await d) for d in done]
