"""
A short soak in CI (see L{tests.e2e.soak} for the long one): mixed good and
bad traffic against a real daemon; every answer is the expected one, and
memory and descriptors level off.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.faulty_upstream import FaultyUpstream
from tests.e2e.soak import Soak, start

SECONDS = 20


class ShortSoakTests(SynchronousTestCase):
    def test_mixed_traffic(self) -> None:
        upstream = FaultyUpstream()
        self.addCleanup(upstream.close)
        daemon = start(upstream)
        self.addCleanup(daemon.stop)
        # Minting again every 5 s exercises what a long soak does past the
        # tokens' 300 s.
        soak = Soak(daemon, refresh_seconds=5)
        soak.run(SECONDS, clients=4, every=0.5)
        report = soak.report()
        self.assertEqual(soak.wrong, [], report)
        self.assertGreater(report["requests"], 500, report)
        self.assertGreaterEqual(report["tokens_minted"], 3, report)
        for kind in ("200", "401 replay", "401 bad_dpop_sig", "401 invalid_token", "429 rate_limited"):
            self.assertIn(kind, report["answers"], report)
        # Level: the last third of the run holds no more than the first
        # third plus a little (the first third includes the warm-up).
        self.assertLessEqual(report["rss_kib_last_third_max"], report["rss_kib_first_third_max"] + 6144, report)
        self.assertLessEqual(report["fds_last_third_max"], report["fds_first_third_max"] + 4, report)
        self.assertEqual(daemon.stop(), 0)
        self.assertNotIn("Traceback", daemon.output)
