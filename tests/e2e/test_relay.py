"""
End to end: the relay of a real C{twistd -n ets} process to a real upstream.
"""

from __future__ import annotations

import http.client
import json
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.daemon import ORIGIN, SIGNING_KEY, UPSTREAM_SECRET, Daemon, production_env
from tests.e2e.upstream import ThreadUpstream
from tests.support.proofs import ProofSigner, ath_of

OTHER_ORIGIN = "https://other.example"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class RelayCase(SynchronousTestCase):
    env: dict[str, str] = {}

    def setUp(self) -> None:
        self.upstream = ThreadUpstream(slow_seconds=3)
        self.addCleanup(self.upstream.close)
        self.daemon = Daemon(production_env(
            self.upstream.base, ORIGIN_ALLOWLIST=f"{ORIGIN},{OTHER_ORIGIN}",
            UPSTREAM_TIMEOUT_SECONDS="1", MAX_BODY_BYTES="1000", **self.env,
        )).start()
        self.addCleanup(self.daemon.stop)
        self.signer = ProofSigner()
        self.token = self.daemon.mint(self.signer.public_jwk)

    def credentials(self, method: str, path: str, origin: str = ORIGIN, token: str | None = None) -> dict[str, str]:
        token = token or self.token
        proof = self.signer.sign(method, self.daemon.base + path.split("?")[0], iat=time.time(), ath=ath_of(token))
        return {"Origin": origin, "Authorization": f"DPoP {token}", "DPoP": proof}

    def connection(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.daemon.port, timeout=15)
        self.addCleanup(conn.close)
        return conn


class RelayTests(RelayCase):
    def test_good_request_reaches_upstream(self) -> None:
        """
        A good call reaches the upstream with its path and query, one key
        (the secret), and without Authorization, DPoP or Cookie.
        """
        headers = {**self.credentials("GET", "/api/search"), "Cookie": "session=1"}
        status, _, body = self.daemon.request("GET", "/api/search?q=ets&key=mine", headers=headers)
        self.assertEqual(status, 200, body)
        [seen] = self.upstream.received
        self.assertEqual(seen["path"], f"/api/search?q=ets&key={UPSTREAM_SECRET}")
        for name in ("authorization", "dpop", "cookie"):
            self.assertNotIn(name, seen["headers"])

    def test_same_proof_twice_is_replay(self) -> None:
        """The same proof sent twice: the second answer is 401 replay, the upstream saw one."""
        headers = self.credentials("GET", "/api/x")
        self.assertEqual(self.daemon.request("GET", "/api/x", headers=headers)[0], 200)
        status, _, body = self.daemon.request("GET", "/api/x", headers=headers)
        self.assertEqual((status, json.loads(body)["error"]), (401, "replay"))
        self.assertEqual(len(self.upstream.received), 1)

    def test_proof_with_bad_token_not_burnt(self) -> None:
        """A proof first sent with a bad token still works afterwards with the good one."""
        headers = self.credentials("GET", "/api/x")
        bad = dict(headers, Authorization="DPoP " + self.token[:-4] + "AAAA")
        status, _, body = self.daemon.request("GET", "/api/x", headers=bad)
        self.assertEqual((status, json.loads(body)["error"]), (401, "invalid_token"))
        self.assertEqual(self.daemon.request("GET", "/api/x", headers=headers)[0], 200)

    def test_event_stream_arrives_incrementally(self) -> None:
        """Each server-sent event reaches the client while the stream is still open."""
        conn = self.connection()
        conn.request("GET", "/api/stream", headers=self.credentials("GET", "/api/stream"))
        answer = conn.getresponse()
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.getheader("Content-Type"), "text/event-stream")
        self.upstream.event("first")
        self.assertEqual(answer.readline(), b"data: first\n")
        self.assertEqual(answer.readline(), b"\n")
        self.upstream.event("second")
        self.assertEqual(answer.readline(), b"data: second\n")
        answer.readline()
        self.upstream.end()
        self.assertEqual(answer.read(), b"")

    def test_client_disconnect_closes_upstream(self) -> None:
        """A client that goes away mid-stream makes ETS close the upstream connection."""
        conn = self.connection()
        conn.request("GET", "/api/stream", headers=self.credentials("GET", "/api/stream"))
        answer = conn.getresponse()
        self.upstream.event("first")
        answer.readline()
        conn.sock.close()
        conn.close()
        # The upstream notices on its next write.
        deadline = time.monotonic() + 10
        while not self.upstream.stream_broken.is_set() and time.monotonic() < deadline:
            self.upstream.event("ping")
            time.sleep(0.1)
        self.assertTrue(self.upstream.stream_broken.is_set())

    def test_large_answer_streams_with_flat_memory(self) -> None:
        """
        A 50 MB answer passes through while the daemon's memory stays flat:
        with the client not reading, ETS stops reading the upstream instead
        of buffering the answer.
        """
        pid = self.daemon.process.pid
        before = rss_kib(pid)
        conn = self.connection()
        conn.request("GET", "/api/big", headers=self.credentials("GET", "/api/big"))
        answer = conn.getresponse()
        self.assertEqual(int(answer.getheader("Content-Length")), 50 * 1024 * 1024)
        answer.read(1024 * 1024)
        time.sleep(1.0)  # the client stalls: back-pressure must hold the upstream
        stalled = rss_kib(pid)
        total = 1024 * 1024
        peak = stalled
        while chunk := answer.read(1024 * 1024):
            total += len(chunk)
            peak = max(peak, rss_kib(pid))
        self.assertEqual(total, 50 * 1024 * 1024)
        self.assertLess(peak - before, 20 * 1024, f"RSS grew {peak - before} KiB")

    def test_slow_upstream_is_504(self) -> None:
        """An upstream silent past UPSTREAM_TIMEOUT_SECONDS: 504 upstream_timeout."""
        status, _, body = self.daemon.request("GET", "/api/slow", headers=self.credentials("GET", "/api/slow"))
        self.assertEqual((status, json.loads(body)["error"]), (504, "upstream_timeout"))

    def test_oversized_upload_is_413(self) -> None:
        """A body over MAX_BODY_BYTES: 413 body_too_large, and the upstream saw nothing."""
        status, _, body = self.daemon.request(
            "POST", "/api/upload", body=b"x" * 5000, headers=self.credentials("POST", "/api/upload"))
        self.assertEqual((status, json.loads(body)["error"]), (413, "body_too_large"))
        self.assertEqual(self.upstream.received, [])

    def test_oversized_chunked_upload_is_413(self) -> None:
        """A chunked body that passes MAX_BODY_BYTES is cut off with 413; the upstream saw nothing."""
        conn = self.connection()
        conn.putrequest("POST", "/api/upload")
        for name, value in self.credentials("POST", "/api/upload").items():
            conn.putheader(name, value)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            for _ in range(4):
                conn.send(b"200\r\n" + b"y" * 512 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = conn.getresponse()
        self.assertEqual((answer.status, json.loads(answer.read())["error"]), (413, "body_too_large"))
        self.assertEqual(self.upstream.received, [])


class ClosedUpstreamTests(SynchronousTestCase):
    def test_closed_port_is_502(self) -> None:
        """An upstream port nobody listens on: 502 upstream_error."""
        upstream = ThreadUpstream()
        base = upstream.base
        upstream.close()
        daemon = Daemon({"ORIGIN_ALLOWLIST": ORIGIN, "TVM_JWT_HS256_KEY": SIGNING_KEY,
                         "UPSTREAM_BASE_URL": base}).start()
        self.addCleanup(daemon.stop)
        signer = ProofSigner()
        token = daemon.json("POST", "/tvm/issue", {"dpopPublicJwk": signer.public_jwk}, {"Origin": ORIGIN})[2]["accessToken"]
        proof = signer.sign("GET", daemon.base + "/api/x", iat=time.time(), ath=ath_of(token))
        status, _, body = daemon.request("GET", "/api/x", headers={
            "Origin": ORIGIN, "Authorization": f"DPoP {token}", "DPoP": proof})
        self.assertEqual((status, json.loads(body)["error"]), (502, "upstream_error"))


class RateLimitTests(RelayCase):
    env = {"RATE_LIMIT_PER_MINUTE": "3", "TRUSTED_PROXIES": "127.0.0.1/32"}

    def call(self, origin: str = ORIGIN, forwarded_for: str | None = None) -> int:
        headers = self.credentials("GET", "/api/x", origin=origin)
        if forwarded_for:
            headers["X-Forwarded-For"] = forwarded_for
        return self.daemon.request("GET", "/api/x", headers=headers)[0]

    def test_per_origin(self) -> None:
        """Each origin has its own budget: one exhausted does not limit the other."""
        self.assertEqual([self.call() for _ in range(4)], [200, 200, 200, 429])
        self.assertEqual(self.call(OTHER_ORIGIN), 200)

    def test_per_forwarded_client_behind_trusted_proxy(self) -> None:
        """
        Behind a trusted proxy the client is the right-most untrusted
        X-Forwarded-For address: two clients have two budgets, and a spoofed
        left-most entry does not buy a new one.
        """
        self.assertEqual([self.call(forwarded_for="203.0.113.7") for _ in range(4)], [200, 200, 200, 429])
        self.assertEqual(self.call(forwarded_for="198.51.100.9"), 200)
        self.assertEqual(self.call(forwarded_for="10.9.9.9, 203.0.113.7"), 429)
