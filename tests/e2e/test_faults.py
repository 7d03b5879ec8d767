"""
Upstream faults against a real C{twistd -n ets}: storms of requests to an
upstream that resets, stalls mid-body, answers garbage, closes early, stays
silent or answers 5xx, sent by concurrent clients.

Each request gets exactly one answer (the relayed status, 502 or 504; a
relayed answer whose upstream breaks off mid-body is cut, since its status
is already sent); the pool recovers (good calls succeed after the storm);
and nothing leaks: file descriptors return to where they were, and a second
storm grows memory by no more than a little.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.daemon import ORIGIN, Daemon, production_env
from tests.e2e.faulty_upstream import MODES, FaultyUpstream
from tests.e2e.test_relay import rss_kib
from tests.support.proofs import ProofSigner, ath_of

#: What each mode must end in: (status, whether the body is cut short).
EXPECTED = {
    "ok": (200, False),
    "error": (503, False),
    "reset": (502, False),
    "garbage": (502, False),
    "early": (200, True),
    "stall": (200, True),
    "silent": (504, False),
}
#: Calls per mode in one storm; the slow modes take the upstream timeout
#: each, so fewer of them keep the storm short.
PER_MODE = {"ok": 20, "error": 20, "reset": 20, "garbage": 20, "early": 20, "stall": 8, "silent": 8}
CLIENTS = 8
#: Generous: under a loaded test run a garbage answer must not turn into
#: a timeout.
TIMEOUT = 3


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class UpstreamFaultStormTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.upstream = FaultyUpstream(stall_seconds=TIMEOUT + 1.5)
        self.addCleanup(self.upstream.close)
        self.daemon = Daemon(production_env(
            self.upstream.base, UPSTREAM_TIMEOUT_SECONDS=str(TIMEOUT),
            RATE_LIMIT_PER_MINUTE="100000", RATE_LIMIT_BURST="100000",
        )).start()
        self.addCleanup(self.daemon.stop)
        self.signer = ProofSigner()
        self.token = self.daemon.mint(self.signer.public_jwk)

    def call(self, mode: str) -> tuple[str, int, bool, bytes]:
        """One call to C{/api/<mode>}: (mode, status, cut short, body)."""
        path = f"/api/{mode}"
        proof = self.signer.sign("GET", self.daemon.base + path, iat=time.time(), ath=ath_of(self.token))
        conn = http.client.HTTPConnection("127.0.0.1", self.daemon.port, timeout=15)
        try:
            conn.request("GET", path, headers={
                "Origin": ORIGIN, "Authorization": f"DPoP {self.token}", "DPoP": proof})
            answer = conn.getresponse()
            try:
                return mode, answer.status, False, answer.read()
            except http.client.IncompleteRead as e:
                return mode, answer.status, True, e.partial
        finally:
            conn.close()

    def storm(self) -> None:
        modes = [mode for mode in MODES for _ in range(PER_MODE[mode])]
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(self.call, modes))
        for mode, status, cut, body in results:
            self.assertEqual((status, cut), EXPECTED[mode], (mode, body[:200]))
            if status in (502, 504):
                self.assertEqual(json.loads(body)["error"],
                                 "upstream_error" if status == 502 else "upstream_timeout")
        self.assertEqual(len(results), len(modes))

    def settled_fds(self, pid: int, baseline: int) -> int:
        """The descriptor count once the upstream's stalls have ended."""
        deadline = time.monotonic() + 10
        fds = open_fds(pid)
        while fds > baseline + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            fds = open_fds(pid)
        return fds

    def test_fault_storms_get_one_answer_each_and_leak_nothing(self) -> None:
        pid = self.daemon.process.pid
        self.assertEqual(self.call("ok")[1], 200)
        baseline_fds = open_fds(pid)
        self.storm()
        self.assertLessEqual(self.settled_fds(pid, baseline_fds), baseline_fds + 2)
        rss_after_first = rss_kib(pid)
        self.storm()
        self.assertLessEqual(self.settled_fds(pid, baseline_fds), baseline_fds + 2)
        # A second storm like the first: memory stays level (4 MiB of slack
        # for the allocator).
        self.assertLess(rss_kib(pid) - rss_after_first, 4096)
        # The pool recovered: good calls go through.
        for _ in range(5):
            self.assertEqual(self.call("ok")[1], 200)
        self.daemon.stop()
        self.assertNotIn("Traceback", self.daemon.output)
