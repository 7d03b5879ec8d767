"""
Who the client is behind proxies: C{X-Forwarded-For} and
C{X-Forwarded-Host} count only when the socket peer is a trusted proxy, and
then the client is the right-most address that is not one, so an entry a
client writes itself (on the left) is never believed.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from ets_twisted.web.admission import client_ip, public_url

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


def request(peer: str, **headers: str) -> DummyRequest:
    r = DummyRequest([b"api", b"x"])
    r.path = b"/api/x"
    r.isSecure = lambda: False
    r.client = IPv6Address("TCP", peer, 1234) if ":" in peer else IPv4Address("TCP", peer, 1234)
    for name, value in headers.items():
        r.requestHeaders.addRawHeader(name.replace("_", "-").encode(), value.encode("latin-1"))
    return r


class ClientIpTests(SynchronousTestCase):
    def test_untrusted_peer_is_the_client(self) -> None:
        """A client's own X-Forwarded-For is ignored: it is not a proxy."""
        self.assertEqual(client_ip(request("203.0.113.9", x_forwarded_for="10.1.1.1"), TRUSTED), "203.0.113.9")

    def test_no_trusted_proxies(self) -> None:
        self.assertEqual(client_ip(request("10.0.0.2", x_forwarded_for="198.51.100.1"), ()), "10.0.0.2")

    def test_right_most_untrusted(self) -> None:
        """
        Behind two trusted hops, the client is the first untrusted address
        from the right; what the client prepended is not believed.
        """
        r = request("10.0.0.2", x_forwarded_for="1.2.3.4, 198.51.100.7, 10.0.0.3")
        self.assertEqual(client_ip(r, TRUSTED), "198.51.100.7")

    def test_several_headers_are_one_list(self) -> None:
        r = request("10.0.0.2")
        r.requestHeaders.setRawHeaders(b"x-forwarded-for", [b"1.2.3.4", b"198.51.100.7"])
        self.assertEqual(client_ip(r, TRUSTED), "198.51.100.7")

    def test_all_trusted(self) -> None:
        self.assertEqual(client_ip(request("10.0.0.2", x_forwarded_for="10.9.9.9"), TRUSTED), "10.9.9.9")

    def test_garbage_stops_the_walk(self) -> None:
        """An unparsable hop: the last trusted hop is the client."""
        r = request("10.0.0.2", x_forwarded_for="198.51.100.7, not-an-ip, 10.0.0.3")
        self.assertEqual(client_ip(r, TRUSTED), "10.0.0.3")

    def test_ipv6(self) -> None:
        r = request("::1", x_forwarded_for="2001:db8::7")
        self.assertEqual(client_ip(r, TRUSTED), "2001:db8::7")

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=200), st.sampled_from(["10.0.0.2", "203.0.113.9", "::1"]))
    def test_any_header(self, forwarded: str, peer: str) -> None:
        """
        Whatever the header holds, the answer is the peer or an address
        written in it (normalised), and only when the peer is trusted.
        """
        try:
            forwarded.encode("latin-1")
        except UnicodeEncodeError:
            forwarded = forwarded.encode("utf-8").decode("latin-1")
        forwarded = forwarded.replace("\r", "").replace("\n", "")
        got = client_ip(request(peer, x_forwarded_for=forwarded), TRUSTED)
        if peer == "203.0.113.9":
            self.assertEqual(got, peer)
        elif got != peer:
            hops = {str(ipaddress.ip_address(h.strip())) for h in forwarded.split(",") if _is_ip(h.strip())}
            self.assertIn(got, hops)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class PublicUrlTests(SynchronousTestCase):
    def test_forwarded_host_only_from_trusted_proxy(self) -> None:
        """A client cannot pick the host its proofs are checked against."""
        spoofed = request("203.0.113.9", host="ets.example", x_forwarded_host="evil.example")
        self.assertEqual(public_url(spoofed, None, TRUSTED), "http://ets.example/api/x")
        proxied = request("10.0.0.2", host="10.0.0.5:8080", x_forwarded_host="ets.example",
                          x_forwarded_proto="https")
        self.assertEqual(public_url(proxied, None, TRUSTED), "https://ets.example/api/x")

    def test_public_base_url_wins(self) -> None:
        r = request("10.0.0.2", host="x", x_forwarded_host="y", x_forwarded_proto="http")
        self.assertEqual(public_url(r, "https://ets.example", TRUSTED), "https://ets.example/api/x")
