"""ets_twisted.web.headers: what set_header stores is what setHeader would."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from ets_twisted.web import headers


class SetHeaderTests(SynchronousTestCase):
    NAMES = [getattr(headers, name) for name in dir(headers) if name.isupper() and not name.startswith("_")]

    def test_same_table_as_setHeader(self):
        """Every name set either way gives the same header table, found by any spelling."""
        self.assertGreaterEqual(len(self.NAMES), 11)
        fast, slow = DummyRequest([b""]), DummyRequest([b""])
        for n, name in enumerate(self.NAMES):
            headers.set_header(fast, name, b"value %d" % n)
            slow.setHeader(name.lower(), b"value %d" % n)
        self.assertEqual(list(fast.responseHeaders.getAllRawHeaders()),
                         list(slow.responseHeaders.getAllRawHeaders()))
        for n, name in enumerate(self.NAMES):
            self.assertEqual(fast.responseHeaders.getRawHeaders(name.lower()), [b"value %d" % n])

    def test_replaces(self):
        """Like setHeader, a second value replaces the first."""
        request = DummyRequest([b""])
        request.setHeader(b"cache-control", b"max-age=5")
        headers.set_header(request, headers.CACHE_CONTROL, b"no-store")
        self.assertEqual(request.responseHeaders.getRawHeaders(b"Cache-Control"), [b"no-store"])

    def test_canonical(self):
        self.assertEqual(headers.canonical(b"x-request-id"), b"X-Request-Id")
        self.assertEqual(headers.canonical(b"ratelimit-limit"), b"Ratelimit-Limit")
