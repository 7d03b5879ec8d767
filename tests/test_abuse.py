"""
Protocol abuse on real loopback sockets: slow clients are cut off by the
deadlines of L{ets_twisted.web.channel} (shortened here so the tests are
quick), oversized and malformed requests get a 400 at once, held
connections do not stop good requests, and a flood of bad proofs leaves
nothing behind.

The abusive clients are plain blocking sockets run in a thread, so that
they can misbehave byte by byte while the reactor serves the site.
"""

from __future__ import annotations

import json
import select
import socket
import time

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from ets_twisted.config import endpoint_string
from ets_twisted.web.channel import GuardedChannel
from tests.support.proofs import ProofSigner, ath_of
from tests.support.web import ORIGIN, SiteHarness
from tests.test_api import ApiCase

SHORT = 0.5


def misbehave(
    port: int, chunks: list[bytes], pause: float = 0.1, limit: float = 10.0,
    first: tuple[bytes, bytes] | None = None,
) -> tuple[bytes, float]:
    """
    Connect to C{port}, send C{chunks} with C{pause} between them until the
    server says something, then read until it closes.

    @param first: a request sent before the chunks, and a marker of the end
        of its answer, read before the chunks begin (a kept-alive connection).
    @return: what the server sent after C{first}, and the seconds from the
        first chunk until it closed (or C{limit} when it never did).
    """
    s = socket.create_connection(("127.0.0.1", port), timeout=limit)
    got = b""
    try:
        if first is not None:
            s.sendall(first[0])
            while first[1] not in got:
                got += s.recv(65536)
            got = b""
        started = time.monotonic()
        for chunk in chunks:
            if chunk:
                s.sendall(chunk)
            readable, _, _ = select.select([s], [], [], pause)
            if readable:
                break
        while time.monotonic() - started < limit:
            data = s.recv(65536)
            if not data:
                break
            got += data
    except OSError:
        pass
    finally:
        s.close()
    return got, time.monotonic() - started


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


class SlowClientTests(TestCase):
    """Deadlines and the idle timeout cut off clients that take too long."""

    def setUp(self) -> None:
        self.patch(GuardedChannel, "headers_deadline", SHORT)
        self.patch(GuardedChannel, "body_deadline", SHORT)
        self.ets = SiteHarness(self)
        self.ets.site.timeOut = SHORT
        self.port = self.ets.port.getHost().port

    def assertTimedOut(self, answer: bytes, seconds: float) -> None:
        self.assertEqual(status_of(answer), 408, answer)
        body = answer.split(b"\r\n\r\n", 1)[1]
        self.assertEqual(json.loads(body), {"error": "request_timeout"})
        # Cut well before the trickle (10 s) would have ended.
        self.assertLess(seconds, 5)

    @inlineCallbacks
    def test_trickled_headers(self):
        """
        Headers trickled a byte at a time, each byte well inside the idle
        timeout: 408 once the headers deadline passes, connection closed.
        """
        chunks = [b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "] + [b"a"] * 100
        answer, seconds = yield deferToThread(misbehave, self.port, chunks)
        self.assertTimedOut(answer, seconds)

    @inlineCallbacks
    def test_trickled_body(self):
        """A body trickled a byte at a time: 408 once the body deadline passes."""
        head = (b"POST /tvm/issue HTTP/1.1\r\nHost: x\r\nOrigin: " + ORIGIN.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n")
        answer, seconds = yield deferToThread(misbehave, self.port, [head] + [b" "] * 100)
        self.assertTimedOut(answer, seconds)

    @inlineCallbacks
    def test_idle_connection(self):
        """A connection that sends nothing is closed after the idle timeout."""
        answer, seconds = yield deferToThread(misbehave, self.port, [b""])
        self.assertEqual(answer, b"")
        self.assertLess(seconds, 5)

    @inlineCallbacks
    def test_keep_alive_then_trickle(self):
        """
        The deadline starts again with each request on a kept-alive
        connection: a good request is answered, a trickled one after it is
        cut.
        """
        good = (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b'{"status":"ok"}')
        chunks = [b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "] + [b"a"] * 100
        answer, seconds = yield deferToThread(misbehave, self.port, chunks, 0.1, 10.0, good)
        self.assertTimedOut(answer, seconds)


class SlowStreamTests(ApiCase):
    """The idle timeout does not cut an answer that takes longer than it."""

    @inlineCallbacks
    def test_stream_outlives_idle_timeout(self):
        self.patch(GuardedChannel, "headers_deadline", SHORT)
        self.ets.site.timeOut = SHORT
        reactor.callLater(3 * SHORT, self.upstream.send_event, "late")
        reactor.callLater(4 * SHORT, self.upstream.end_stream)
        answer = yield self.call("GET", "/api/stream")
        self.assertEqual((answer.status, answer.body), (200, b"data: late\n\n"))


class MalformedRequestTests(TestCase):
    """Oversized and malformed requests: a 400 at once, never a hang."""

    def setUp(self) -> None:
        self.ets = SiteHarness(self)
        self.port = self.ets.port.getHost().port

    @inlineCallbacks
    def assertBadRequest(self, request: bytes):
        answer, seconds = yield deferToThread(misbehave, self.port, [request], 0.1, 10.0)
        self.assertEqual(status_of(answer), 400, answer[:200])
        self.assertLess(seconds, 5)

    def test_request_line_too_long(self):
        return self.assertBadRequest(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")

    def test_header_too_long(self):
        return self.assertBadRequest(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")

    def test_too_many_headers(self):
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(600))
        return self.assertBadRequest(b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")

    def test_not_http(self):
        return self.assertBadRequest(b"\x16\x03\x01\x00\xa5garbage that is no request line\r\n\r\n")

    def test_bad_content_length(self):
        return self.assertBadRequest(b"POST /tvm/issue HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")

    def test_header_without_colon(self):
        return self.assertBadRequest(b"GET /health HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n")

    def test_bad_chunked_body(self):
        return self.assertBadRequest(
            b"POST /tvm/issue HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")


class HeldConnectionTests(TestCase):
    @inlineCallbacks
    def test_many_idle_connections_do_not_block_good_requests(self):
        """
        1,000 connections held open without a byte sent: a new client still
        gets its token and its /health at once. The site listens the way
        C{LISTEN_ADDR=127.0.0.1:0} makes it (its listen backlog included:
        with Twisted's default of 50, opening these took 12 s of SYN
        retries).
        """
        ets = SiteHarness(self)
        listening = yield serverFromString(reactor, endpoint_string("127.0.0.1:0")).listen(ets.site)
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port
        ets.base = f"http://127.0.0.1:{port}"
        held = yield deferToThread(
            lambda: [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(1000)])
        self.addCleanup(lambda: [s.close() for s in held])
        answer = yield ets.request("GET", "/health")
        self.assertEqual(answer.status, 200)
        minted = yield ets.issue({"dpopPublicJwk": ProofSigner().public_jwk})
        self.assertEqual(minted.status, 200, minted.body)


class BadProofFloodTests(ApiCase):
    @inlineCallbacks
    def test_bad_proofs_leave_nothing_behind(self):
        """
        300 proofs for the right token, each signed by a different made-up
        key (the key in the header is the token's, the signature is not):
        every one is refused with bad_dpop_sig, nothing reaches the
        upstream, and no replay entry or cached key is left.
        """
        api = self.ets.site.resource.api
        keys_before = len(api.key_cache)
        for _ in range(300):
            forged = ProofSigner()
            header = self.proof().split(".")[0]
            # The token's key in the header, another key's signature.
            payload_and_sig = forged.sign("GET", self.ets.base + "/api/echo", iat=self.clock.seconds(),
                                          ath=ath_of(self.token)).split(".", 1)[1]
            answer = yield self.call(proof=f"{header}.{payload_and_sig}")
            self.assertEqual(answer.code, "bad_dpop_sig")
        self.assertEqual(self.upstream.received, [])
        self.assertEqual(len(self.ets.store.replay), 0)
        self.assertEqual(len(api.key_cache), keys_before)

    @inlineCallbacks
    def test_made_up_keys_are_not_cached(self):
        """
        Proofs signed by their own made-up keys, which are not the token's:
        cnf_mismatch, and no key is kept.
        """
        api = self.ets.site.resource.api
        keys_before = len(api.key_cache)
        for _ in range(50):
            other = ProofSigner()
            proof = other.sign("GET", self.ets.base + "/api/echo", iat=self.clock.seconds(), ath=ath_of(self.token))
            answer = yield self.call(proof=proof)
            self.assertEqual(answer.code, "cnf_mismatch")
        self.assertEqual(len(self.ets.store.replay), 0)
        self.assertEqual(len(api.key_cache), keys_before)
