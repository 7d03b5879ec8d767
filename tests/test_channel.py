"""
The request deadlines of GuardedChannel on a Clock: a request must have its
headers within HEADERS_DEADLINE of its first byte and its body within
BODY_DEADLINE of its headers, on the first request of a connection and on
every keep-alive request after it (one timer is reused across requests).
"""

from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.http import datetimeToString

from ets_twisted.app import build_site
from ets_twisted.config import load
from ets_twisted.stores.memory import MemoryStore
from ets_twisted.web.channel import BODY_DEADLINE, HEADERS_DEADLINE, IDLE_TIMEOUT
from ets_twisted.web.root import http_date
from tests.support.web import BASE_ENV

HEALTH = b"GET /health HTTP/1.1\r\nHost: ets.example\r\n\r\n"
ISSUE_HEAD = (b"POST /tvm/issue HTTP/1.1\r\nHost: ets.example\r\n"
              b"Content-Type: application/json\r\nContent-Length: 20\r\n\r\n")


class ChannelCase(SynchronousTestCase):
    """A GuardedChannel of ETS's site on a StringTransport and a Clock."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_800_000_000)
        config = load({**BASE_ENV, "UPSTREAM_BASE_URL": "http://upstream.test:8000"})
        site = build_site(config, self.reactor, MemoryStore(self.reactor),
                          HTTPConnectionPool(self.reactor, persistent=False))
        self.channel = site.buildProtocol(IPv4Address("TCP", "198.51.100.7", 40000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.7", 40000),
                                         hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        self.channel.makeConnection(self.transport)

    def answers(self) -> list[bytes]:
        """The status lines written so far."""
        # Answers follow each other with no line break after a body.
        return re.findall(rb"HTTP/1\.1 \d{3} [A-Za-z ]+", self.transport.value())

    def timed_out(self) -> bool:
        return self.answers()[-1:] == [b"HTTP/1.1 408 Request Timeout"]


class DeadlineTests(ChannelCase):
    def test_headers_deadline(self):
        """Headers not complete HEADERS_DEADLINE after the first byte: 408."""
        self.channel.dataReceived(b"GET /health HTTP/1.1\r\n")
        self.reactor.advance(HEADERS_DEADLINE - 0.1)
        self.assertEqual(self.answers(), [])
        self.reactor.advance(0.2)
        self.assertTrue(self.timed_out())
        self.assertTrue(self.transport.disconnecting)

    def test_body_deadline_counts_from_the_headers(self):
        """The body has BODY_DEADLINE after the headers, however long they took."""
        self.channel.dataReceived(ISSUE_HEAD[:20])
        self.reactor.advance(HEADERS_DEADLINE - 1)
        self.channel.dataReceived(ISSUE_HEAD[20:] + b'{"dpop')
        self.reactor.advance(BODY_DEADLINE - 0.1)
        self.assertEqual(self.answers(), [])
        self.reactor.advance(0.2)
        self.assertTrue(self.timed_out())

    def test_keep_alive_requests_get_their_own_deadline(self):
        """
        A later request on the connection gets a full HEADERS_DEADLINE from
        its own first byte, not from the first request's.
        """
        self.channel.dataReceived(HEALTH)
        self.assertEqual(self.answers(), [b"HTTP/1.1 200 OK"])
        self.reactor.advance(HEADERS_DEADLINE - 2)
        self.channel.dataReceived(b"GET /health HTTP/1.1\r\n")
        # The first request's deadline passes: nothing happens.
        self.reactor.advance(3)
        self.assertEqual(len(self.answers()), 1)
        self.reactor.advance(HEADERS_DEADLINE - 3 - 0.1)
        self.assertEqual(len(self.answers()), 1)
        self.reactor.advance(0.2)
        self.assertTrue(self.timed_out())

    def test_many_quick_requests_then_a_slow_one(self):
        """After many requests the deadline still holds, and no timers pile up."""
        for _ in range(50):
            self.channel.dataReceived(HEALTH)
            self.reactor.advance(0.5)
        self.assertEqual(len(self.answers()), 50)
        self.assertLessEqual(len(self.reactor.getDelayedCalls()), 3)
        self.channel.dataReceived(b"GET /hea")
        self.reactor.advance(HEADERS_DEADLINE + 0.1)
        self.assertTrue(self.timed_out())

    def test_answered_request_is_not_timed_out(self):
        """A complete request disarms its deadline: idle keep-alive is the idle timeout's job."""
        self.channel.dataReceived(HEALTH)
        self.reactor.advance(HEADERS_DEADLINE + 1)
        self.assertEqual(self.answers(), [b"HTTP/1.1 200 OK"])
        self.assertFalse(self.transport.disconnecting)

    def test_idle_timeout(self):
        """
        IDLE_TIMEOUT without a byte after an answer closes the connection;
        each request starts the count again.
        """
        self.channel.dataReceived(HEALTH)
        self.reactor.advance(IDLE_TIMEOUT - 1)
        self.channel.dataReceived(HEALTH)
        self.reactor.advance(IDLE_TIMEOUT - 1)
        self.assertEqual(len(self.answers()), 2)
        self.assertFalse(self.transport.disconnecting)
        self.reactor.advance(1.5)
        self.assertTrue(self.transport.disconnecting)


class DefaultHeadersTests(ChannelCase):
    def test_server_and_date(self):
        """Every answer carries twisted.web's Server header and the current Date."""
        self.channel.dataReceived(HEALTH)
        head = self.transport.value().split(b"\r\n\r\n")[0].decode()
        self.assertIn("\r\nServer: TwistedWeb/", head)
        date = re.search(r"\r\nDate: ([^\r]+)", head).group(1)
        self.assertLess(abs(parsedate_to_datetime(date).timestamp() - time.time()), 5)

    def test_date_follows_the_second(self):
        self.assertEqual(http_date(1_800_000_000.9), datetimeToString(1_800_000_000))
        self.assertEqual(http_date(1_800_000_001.0), datetimeToString(1_800_000_001))
        self.assertEqual(http_date(1_800_000_000.1), datetimeToString(1_800_000_000))
