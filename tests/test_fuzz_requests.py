"""
Fuzzing the request handling of the whole site: hypothesis mutates the
headers that carry credentials and client identity (C{Authorization},
C{DPoP}, C{Origin}, C{X-Forwarded-For}, C{Host}), the method and the path of
an otherwise valid, freshly signed call, and sends the raw bytes into the
real C{ETSSite} (its HTTP parser included) on an in-memory connection.

Whatever arrives, the answer is one of SPEC's errors with its status (or
the protocol-level C{400 bad_request}), never a 500; and only an unmutated
call, or one whose mutation changes nothing that matters, may reach the
upstream. A relay attempt shows up as a connection the site asks the
memory reactor to open.

C{ETS_FUZZ_EXAMPLES} sets how many requests one run sends (200 by default,
so that CI's pass is short); see docs/SECURITY.md for a longer run.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool

from ets_twisted.app import build_site
from ets_twisted.config import load
from ets_twisted.errors import STATUS
from ets_twisted.stores.memory import MemoryStore
from tests.support.proofs import ProofSigner, ath_of
from tests.support.web import BASE_ENV, ORIGIN

EXAMPLES = int(os.environ.get("ETS_FUZZ_EXAMPLES", "200"))
HOST = "ets.example"
#: Protocol-level refusals, below SPEC's table (see web/channel.py).
PROTOCOL = {"bad_request": 400, "request_timeout": 408}

header_text = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["", " ", ",", "DPoP", "Bearer", "DPoP  x", "null", "a.b.c", "..", "\x00",
                     "127.0.0.1", "::1", "10.0.0.1, 127.0.0.1", "unknown", ORIGIN + "/", ORIGIN.upper()]),
)

mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(["Authorization", "DPoP", "Origin", "X-Forwarded-For", "Host"]), header_text),
    st.tuples(st.just("drop"), st.sampled_from(["Authorization", "DPoP", "Origin", "Host"]), st.just("")),
    st.tuples(st.just("twice"), st.sampled_from(["Authorization", "DPoP", "Origin"]), st.just("")),
    st.tuples(st.just("edit"), st.sampled_from(["Authorization", "DPoP"]), st.integers(0, 2000)),
    st.tuples(st.just("method"), st.sampled_from(["POST", "PUT", "DELETE", "OPTIONS", "HEAD", "TRACE", "get", "X"]), st.just("")),
    st.tuples(st.just("path"), st.sampled_from(["/api", "/api/", "/api/../x", "/api/%2e%2e/x", "//api/echo",
                                                "/api/echo?x=1#f", "/API/echo", "/tvm/issue", "/api/echo%00"]), st.just("")),
)


class WireHarness:
    """The site on an in-memory reactor: raw bytes in, raw answer out."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_800_000_000)
        self.config = load({**BASE_ENV, "UPSTREAM_BASE_URL": "http://upstream.test:8000",
                            "RATE_LIMIT_PER_MINUTE": "1000000", "RATE_LIMIT_BURST": "1000000"})
        self.store = MemoryStore(self.reactor)
        pool = HTTPConnectionPool(self.reactor, persistent=False)
        self.site = build_site(self.config, self.reactor, self.store, pool, clock=self.reactor)

    def exchange(self, raw: bytes) -> bytes:
        channel = self.site.buildProtocol(IPv4Address("TCP", "198.51.100.7", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.7", 40000),
                                    hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        channel.makeConnection(transport)
        channel.dataReceived(raw)
        answer = transport.value()
        # The client goes away; a pending relay is cancelled, as it would be.
        channel.connectionLost(Failure(ConnectionDone()))
        return answer

    def relay_attempts(self) -> int:
        return len(self.reactor.tcpClients)


def request_bytes(method: str, path: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def parse_answer(answer: bytes) -> tuple[int, dict[str, Any] | None]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


class RequestFuzzTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.wire = WireHarness()
        self.signer = ProofSigner()
        answer = self.wire.exchange(
            b"POST /tvm/issue HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nOrigin: " + ORIGIN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(self.jwk_body()), self.jwk_body()))
        status, body = parse_answer(answer)
        self.assertEqual(status, 200, answer)
        self.token = body["accessToken"]

    def jwk_body(self) -> bytes:
        return json.dumps({"dpopPublicJwk": self.signer.public_jwk}).encode()

    def valid_call(self) -> tuple[str, str, list[tuple[str, str]]]:
        proof = self.signer.sign("GET", f"http://{HOST}/api/echo", iat=self.wire.reactor.seconds(),
                                 ath=ath_of(self.token))
        return "GET", "/api/echo", [("Host", HOST), ("Origin", ORIGIN),
                                    ("Authorization", f"DPoP {self.token}"), ("DPoP", proof)]

    def test_valid_call_is_relayed(self) -> None:
        """The base of every example is a good call: it reaches the upstream."""
        method, path, headers = self.valid_call()
        self.assertEqual(self.wire.exchange(request_bytes(method, path, headers)), b"")
        self.assertEqual(self.wire.relay_attempts(), 1)

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(mutation, min_size=1, max_size=3))
    def test_mutated_calls(self, mutations: list[tuple[str, str, Any]]) -> None:
        """
        Every mutated call gets a defined error with SPEC's status, or (when
        the mutation left the call valid) reaches the upstream; never a 500.
        """
        method, path, headers = self.valid_call()
        for kind, name, value in mutations:
            if kind == "method":
                method = name
            elif kind == "path":
                path = name
            elif kind == "set":
                headers = [(k, v) for k, v in headers if k != name] + [(name, value)]
            elif kind == "drop":
                headers = [(k, v) for k, v in headers if k != name]
            elif kind == "twice":
                headers += [(k, v) for k, v in headers if k == name]
            elif kind == "edit":
                headers = [(k, v[: value % (len(v) + 1)] + "A" + v[value % (len(v) + 1) + 1:])
                           if k == name and v else (k, v) for k, v in headers]
        before = self.wire.relay_attempts()
        answer = self.wire.exchange(request_bytes(method, path, headers))
        if not answer:
            # Only a call that still is a good one may be relayed.
            self.assertEqual(self.wire.relay_attempts(), before + 1)
            self.assertEqual(method, "GET")
            self.assertTrue(path.startswith("/api/"), path)
            return
        status, body = parse_answer(answer)
        self.assertNotEqual(status // 100, 5, answer)
        self.assertEqual(self.wire.relay_attempts(), before, answer)
        if method == "OPTIONS" and status == 204:
            return  # a real CORS preflight
        if method == "HEAD":
            self.assertIn(status, set(STATUS.values()) | set(PROTOCOL.values()), answer)
            return
        self.assertIsNotNone(body, answer)
        code = body["error"]
        self.assertEqual(status, {**{c: s for c, s in STATUS.items()}, **PROTOCOL}[code], answer)
