"""
End to end: several real C{twistd -n ets} processes sharing one private
C{redis-server} (L{tests.support.redis_server}), as replicas behind a load
balancer would: one replay cache, one rate budget, and fail-closed answers
while Redis is away, with recovery and no restart when it is back.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.daemon import SIGNING_KEY, UPSTREAM_SECRET, Daemon
from tests.e2e.upstream import ThreadUpstream
from tests.support.proofs import ProofSigner, ath_of
from tests.support.redis_server import RedisServer

ORIGIN = "https://app.example"
#: Both processes stand behind one public address (a load balancer), so a
#: proof made for one is valid, as far as htu goes, at the other.
PUBLIC = "https://ets.example"
REDIS_PASSWORD = "e2e-redis-password-93d1"


class TwoProcesses(SynchronousTestCase):
    """Two ETS processes on one Redis."""

    env: dict[str, str] = {}

    def setUp(self) -> None:
        self.redis = RedisServer(password=REDIS_PASSWORD).start()
        self.addCleanup(self.redis.close)
        self.upstream = ThreadUpstream()
        self.addCleanup(self.upstream.close)
        env = {
            "ORIGIN_ALLOWLIST": ORIGIN,
            "TVM_JWT_HS256_KEY": SIGNING_KEY,
            "UPSTREAM_BASE_URL": self.upstream.base,
            "UPSTREAM_SERVICE_SECRET": UPSTREAM_SECRET,
            "PUBLIC_BASE_URL": PUBLIC,
            "STORE_URL": self.redis.url,
            **self.env,
        }
        self.a = Daemon(env)
        self.b = Daemon(env)
        for daemon in (self.a, self.b):
            self.addCleanup(self.assertNoSecret, daemon)
            self.addCleanup(daemon.stop)
            daemon.start()
        self.signer = ProofSigner()

    def assertNoSecret(self, daemon: Daemon) -> None:
        """Nothing either process logged holds the Redis password."""
        self.assertNotIn(REDIS_PASSWORD, daemon.output)

    def issue(self, daemon: Daemon) -> tuple[int, dict[str, str], dict]:
        return daemon.json("POST", "/tvm/issue", {"dpopPublicJwk": self.signer.public_jwk}, {"Origin": ORIGIN})

    def mint(self, daemon: Daemon) -> str:
        status, _, body = self.issue(daemon)
        self.assertEqual(status, 200, body)
        return body["accessToken"]

    def credentials(self, token: str, path: str = "/api/echo") -> dict[str, str]:
        proof = self.signer.sign("GET", PUBLIC + path, iat=time.time(), ath=ath_of(token))
        return {"Origin": ORIGIN, "Authorization": f"DPoP {token}", "DPoP": proof}

    def call(self, daemon: Daemon, headers: dict[str, str]) -> tuple[int, str | None]:
        status, _, body = daemon.request("GET", "/api/echo", headers=headers)
        code = json.loads(body).get("error") if status != 200 else None
        return status, code


class SharedStateTests(TwoProcesses):
    env = {"RATE_LIMIT_PER_MINUTE": "1", "RATE_LIMIT_BURST": "4"}

    def test_replayAcrossProcesses(self) -> None:
        """
        A proof accepted by one process is refused as C{replay} by the
        other; a token minted by one is good at the other with a fresh
        proof.
        """
        token = self.mint(self.a)
        headers = self.credentials(token)
        self.assertEqual(self.call(self.a, headers), (200, None))
        self.assertEqual(self.call(self.b, headers), (401, "replay"))
        self.assertEqual(self.call(self.b, self.credentials(token)), (200, None))

    def test_rateBudgetShared(self) -> None:
        """
        One client's budget (burst 4, 1 a minute) is spent across both
        processes: two at each, then both refuse with C{Retry-After}.
        """
        statuses = [self.issue(d)[0] for d in (self.a, self.b, self.a, self.b)]
        self.assertEqual(statuses, [200] * 4)
        for daemon in (self.a, self.b):
            status, headers, body = self.issue(daemon)
            self.assertEqual((status, body["error"]), (429, "rate_limited"))
            self.assertEqual(headers["ratelimit-remaining"], "0")
            self.assertGreaterEqual(int(headers["retry-after"]), 1)
            # Single processes name no worker (only WORKERS > 1 does).
            self.assertNotIn("x-ets-worker", headers)


class ConcurrentTests(TwoProcesses):
    env = {"RATE_LIMIT_PER_MINUTE": "1", "RATE_LIMIT_BURST": "25"}

    def test_hammerOneBucket(self) -> None:
        """
        80 concurrent issuance requests from one client, split over both
        processes, admit exactly the burst of 25: no over-admission.
        """
        daemons = [self.a, self.b] * 40
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda d: self.issue(d)[0], daemons))
        self.assertEqual(statuses.count(200), 25, statuses)
        self.assertEqual(statuses.count(429), 55, statuses)


class OutageTests(TwoProcesses):
    def test_outageAndRecovery(self) -> None:
        """
        Redis stopped: C{/api} and C{/tvm/issue} answer C{503
        store_unavailable} promptly, C{/ready} 503, C{/health} 200. Redis
        started again: both processes serve again, with no restart.
        """
        token = self.mint(self.a)
        self.redis.stop()
        for daemon in (self.a, self.b):
            started = time.monotonic()
            status, _, body = self.issue(daemon)
            self.assertEqual((status, body["error"]), (503, "store_unavailable"))
            self.assertEqual(self.call(daemon, self.credentials(token)), (503, "store_unavailable"))
            self.assertEqual(daemon.request("GET", "/ready")[0], 503)
            self.assertEqual(daemon.request("GET", "/health")[0], 200)
            # Bounded by the store's 1 s operation timeout, not hanging.
            self.assertLess(time.monotonic() - started, 5)

        self.redis.start()
        for daemon in (self.a, self.b):
            deadline = time.monotonic() + 10
            while daemon.request("GET", "/ready")[0] != 200:
                self.assertLess(time.monotonic(), deadline, "no recovery within 10 s")
                time.sleep(0.1)
            self.assertEqual(self.call(daemon, self.credentials(token)), (200, None))
        self.assertEqual(self.issue(self.b)[0], 200)
