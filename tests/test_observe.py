"""
Metrics, access logs and request ids, on the real Resource tree over
loopback sockets (L{SiteHarness}), plus the log-format and failure-watch
units.
"""

from __future__ import annotations

import io
import json
import time

from prometheus_client.parser import text_string_to_metric_families
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import LogLevel, Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ets_twisted import logs, observe
from ets_twisted.metrics import metrics_site
from tests.support.proofs import ProofSigner, ath_of
from tests.support.upstream import Upstream
from tests.support.web import ORIGIN, SiteHarness

UPSTREAM_SECRET = "obs-upstream-secret-93b1"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text parsed into {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class ObservedSiteCase(TestCase):
    """A site with a recording upstream, its access events captured."""

    env: dict[str, str] = {}

    def setUp(self) -> None:
        self.upstream = Upstream(reactor)
        base = self.upstream.listen(reactor)
        # The test upstream's own (Twisted default) access line would show
        # the secret ETS sends it; only ETS's lines are under test.
        self.upstream.site.log = lambda request: None
        self.addCleanup(self.upstream.port.stopListening)
        self.ets = SiteHarness(self, {"UPSTREAM_BASE_URL": base,
                                      "UPSTREAM_SERVICE_SECRET": UPSTREAM_SECRET, **self.env})
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.signer = ProofSigner()

    def access(self) -> list[dict]:
        """The fields of every access line so far."""
        return [e["ets"] for e in self.events if e.get("log_namespace") == "ets.access"]

    @inlineCallbacks
    def good_call(self, path: str = "/api/echo?q=secret-query-value"):
        answer = yield self.ets.issue({"dpopPublicJwk": self.signer.public_jwk})
        self.assertEqual(answer.status, 200, answer.body)
        token = answer.json()["accessToken"]
        proof = self.signer.sign("GET", self.ets.base + path.split("?")[0], iat=time.time(), ath=ath_of(token))
        answer = yield self.ets.request("GET", path, headers={
            "Origin": ORIGIN, "Authorization": f"DPoP {token}", "DPoP": proof})
        self.assertEqual(answer.status, 200, answer.body)
        return token, proof, answer


class MetricsTests(ObservedSiteCase):
    @inlineCallbacks
    def scrape(self):
        """GET /metrics from the metrics listener of this site's figures."""
        port = reactor.listenTCP(0, metrics_site(self.ets.site.observer.metrics), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        http = HTTPClient(Agent(reactor, pool=pool))
        response = yield http.get(f"http://127.0.0.1:{port.getHost().port}/metrics")
        self.assertEqual(response.code, 200)
        self.assertIn(b"text/plain", response.headers.getRawHeaders(b"content-type")[0])
        text = yield response.text()
        return samples(text)

    @inlineCallbacks
    def test_counters_show_good_and_bad_requests(self):
        """
        After one minted token, one relayed call, two refusals and a 404,
        the scraped counters say so: tokens issued, requests by route and
        status, refusals by SPEC code, one upstream latency observation, no
        relay left in flight, and the replay cache holding the used proof.
        """
        yield self.good_call()
        yield self.ets.issue({"dpopPublicJwk": self.signer.public_jwk}, origin="https://evil.example")
        yield self.ets.request("GET", "/api/echo", headers={"Origin": ORIGIN})
        yield self.ets.request("GET", "/nowhere")
        got = yield self.scrape()
        self.assertEqual(got[("ets_tokens_issued_total", ())], 1)
        self.assertEqual(got[("ets_requests_total", (("route", "/tvm/issue"), ("status", "200")))], 1)
        self.assertEqual(got[("ets_requests_total", (("route", "/tvm/issue"), ("status", "403")))], 1)
        self.assertEqual(got[("ets_requests_total", (("route", "/api"), ("status", "200")))], 1)
        self.assertEqual(got[("ets_requests_total", (("route", "/api"), ("status", "401")))], 1)
        self.assertEqual(got[("ets_requests_total", (("route", "other"), ("status", "404")))], 1)
        self.assertEqual(got[("ets_refusals_total", (("code", "origin_not_allowed"),))], 1)
        self.assertEqual(got[("ets_refusals_total", (("code", "missing_bearer"),))], 1)
        self.assertEqual(got[("ets_refusals_total", (("code", "not_found"),))], 1)
        self.assertEqual(got[("ets_refusals_total", (("code", "replay"),))], 0)
        self.assertEqual(got[("ets_upstream_latency_seconds_count", ())], 1)
        self.assertEqual(got[("ets_relays_in_flight", ())], 0)
        self.assertEqual(got[("ets_replay_cache_entries", ())], 1)
        self.assertEqual(got[("ets_store_errors_total", ())], 0)
        self.assertEqual(got[("ets_challenge_verifications_total", (("result", "success"),))], 0)

    @inlineCallbacks
    def test_in_flight_relay_is_counted(self):
        """A stream still open upstream shows as one relay in flight."""
        answer = yield self.ets.issue({"dpopPublicJwk": self.signer.public_jwk})
        token = answer.json()["accessToken"]
        proof = self.signer.sign("GET", self.ets.base + "/api/stream", iat=time.time(), ath=ath_of(token))
        pending = self.ets.request("GET", "/api/stream", headers={
            "Origin": ORIGIN, "Authorization": f"DPoP {token}", "DPoP": proof})
        from tests.support.web import wait_until

        yield wait_until(lambda: self.upstream.streams)
        got = yield self.scrape()
        self.assertEqual(got[("ets_relays_in_flight", ())], 1)
        self.upstream.end_stream()
        yield pending
        got = yield self.scrape()
        self.assertEqual(got[("ets_relays_in_flight", ())], 0)


class AccessLogTests(ObservedSiteCase):
    @inlineCallbacks
    def test_one_line_per_request_with_fields(self):
        """
        Each request gives one access line with its id (the one echoed in
        X-Request-Id), method, path without the query, status, error code,
        duration, client IP and the key's thumbprint prefix; the line never
        holds the query, the token, the proof or the upstream secret.
        """
        token, proof, answer = yield self.good_call()
        refused = yield self.ets.request("GET", "/api/echo?x=1", headers={"Origin": ORIGIN})
        lines = self.access()
        self.assertEqual(len(lines), 3, lines)
        issued, relayed, missing = lines
        self.assertEqual((issued["method"], issued["path"], issued["status"]), ("POST", "/tvm/issue", 200))
        self.assertEqual(issued["jkt"], self.signer.thumbprint[:8])
        self.assertEqual(relayed["request_id"], answer.header("x-request-id"))
        self.assertEqual(relayed["path"], "/api/echo")
        self.assertEqual((relayed["status"], relayed["error"]), (200, "-"))
        self.assertEqual(relayed["jkt"], self.signer.thumbprint[:8])
        self.assertEqual(relayed["client_ip"], "127.0.0.1")
        self.assertIsInstance(relayed["duration_ms"], float)
        self.assertEqual((missing["status"], missing["error"]), (401, "missing_bearer"))
        self.assertEqual(missing["request_id"], refused.header("x-request-id"))
        # The events are what Logger.info would have made of them.
        event = next(e for e in self.events if e.get("log_namespace") == "ets.access")
        made: list = []
        Logger(namespace="ets.access", observer=made.append).info(
            "{ets_access_line}", ets_access_line=event["ets_access_line"], ets=event["ets"])
        self.assertLessEqual(set(made[0]), set(event))
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertLess(abs(event["log_time"] - time.time()), 60)
        self.assertEqual(formatEvent(event), observe.access_line(issued))
        everything = "".join(logs.event_as_json(e) for e in self.events)
        for secret in (token, proof, UPSTREAM_SECRET, "secret-query-value"):
            self.assertNotIn(secret, everything)

    @inlineCallbacks
    def test_every_route_echoes_a_request_id(self):
        """/health, the SDK, a 404 and /api all answer a fresh X-Request-Id."""
        ids = set()
        for path in ("/health", "/sdk/tvm.mjs", "/nope", "/api/x"):
            answer = yield self.ets.request("GET", path)
            rid = answer.header("x-request-id")
            self.assertRegex(rid or "", r"^[0-9a-f]{32}$", path)
            ids.add(rid)
        self.assertEqual(len(ids), 4)

    @inlineCallbacks
    def test_untrusted_request_id_is_replaced(self):
        """A client's own X-Request-Id is not believed without TRUSTED_PROXIES."""
        answer = yield self.ets.request("GET", "/health", headers={"X-Request-Id": "forged-id"})
        self.assertNotEqual(answer.header("x-request-id"), "forged-id")
        self.assertNotEqual(self.access()[-1]["request_id"], "forged-id")

    @inlineCallbacks
    def test_early_413_is_logged(self):
        """A body refused before it is read still gets an access line and an id."""
        answer = yield self.ets.request("POST", "/tvm/issue", body=b"x" * 9000,
                                        headers={"Origin": ORIGIN})
        self.assertEqual(answer.status, 413)
        [line] = self.access()
        self.assertEqual((line["status"], line["error"], line["path"]), (413, "body_too_large", "/tvm/issue"))
        self.assertEqual(line["request_id"], answer.header("x-request-id"))


class TrustedProxyLogTests(ObservedSiteCase):
    env = {"TRUSTED_PROXIES": "127.0.0.1/32"}

    @inlineCallbacks
    def test_proxy_request_id_and_client_are_used(self):
        """
        Behind a trusted proxy, its X-Request-Id is the request's id (echoed
        and relayed upstream) and the client IP is the forwarded one.
        """
        token, proof, _ = yield self.good_call()
        proof = self.signer.sign("GET", self.ets.base + "/api/echo", iat=time.time(), ath=ath_of(token))
        answer = yield self.ets.request("GET", "/api/echo", headers={
            "Origin": ORIGIN, "Authorization": f"DPoP {token}", "DPoP": proof,
            "X-Request-Id": "proxy-id-42", "X-Forwarded-For": "203.0.113.9"})
        self.assertEqual(answer.header("x-request-id"), "proxy-id-42")
        self.assertEqual(self.upstream.received[-1]["headers"]["x-request-id"], ["proxy-id-42"])
        line = self.access()[-1]
        self.assertEqual((line["request_id"], line["client_ip"]), ("proxy-id-42", "203.0.113.9"))


class FailingClientTests(ObservedSiteCase):
    @inlineCallbacks
    def test_repeated_bad_tokens_warn_once(self):
        """
        Five invalid_token refusals from one client within a minute give one
        WARN line naming the client, not one per refusal.
        """
        for _ in range(7):
            answer = yield self.ets.request("GET", "/api/echo", headers={
                "Origin": ORIGIN, "Authorization": "DPoP not.a.token", "DPoP": "x"})
            self.assertEqual(answer.code, "invalid_token")
        warnings = [e for e in self.events if e.get("log_namespace") == "ets.security"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["log_level"], LogLevel.warn)
        self.assertIn("127.0.0.1", logs.event_as_json(warnings[0]))


class FailureWatchTests(SynchronousTestCase):
    def test_threshold_within_window(self):
        """Four failures do not warn, the fifth does; spread over more than a minute they never do."""
        clock = Clock()
        watch = observe.FailureWatch(clock)
        self.assertEqual([watch.failed("a") for _ in range(5)], [False] * 4 + [True])
        slow = [watch.failed("b") or clock.advance(20) for _ in range(10)]
        self.assertEqual(slow, [None] * 10)

    def test_warns_again_after_window(self):
        """A client that keeps failing is named again once a minute, not on every failure."""
        clock = Clock()
        watch = observe.FailureWatch(clock)
        results = []
        for _ in range(40):
            results.append(watch.failed("a"))
            clock.advance(2)
        self.assertEqual(sum(results), 2)

    def test_memory_is_bounded(self):
        """However many clients fail, only max_clients are remembered."""
        watch = observe.FailureWatch(Clock(), max_clients=100)
        for i in range(5000):
            watch.failed(f"10.0.{i // 256}.{i % 256}")
        self.assertEqual(len(watch), 100)


