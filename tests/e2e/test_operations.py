"""
What an operator relies on, on a real C{twistd -n ets}: the logs (JSON or
text) never hold a secret, the metrics listener counts what happened, and
SIGTERM drains in-flight answers before a clean exit.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.daemon import SIGNING_KEY, UPSTREAM_SECRET, Daemon, free_port
from tests.e2e.upstream import ThreadUpstream
from tests.support.proofs import ProofSigner, ath_of, b64

ORIGIN = "https://app.example"


class DaemonCase(SynchronousTestCase):
    env: dict[str, str] = {}

    def setUp(self) -> None:
        self.upstream = ThreadUpstream()
        self.addCleanup(self.upstream.close)
        self.metrics_port = free_port()
        self.daemon = Daemon({
            "ORIGIN_ALLOWLIST": ORIGIN,
            "TVM_JWT_HS256_KEY": SIGNING_KEY,
            "UPSTREAM_BASE_URL": self.upstream.base,
            "UPSTREAM_SERVICE_SECRET": UPSTREAM_SECRET,
            "METRICS_LISTEN_ADDR": f"127.0.0.1:{self.metrics_port}",
            **self.env,
        }).start()
        self.addCleanup(self.daemon.stop)
        self.signer = ProofSigner()

    def mint(self) -> str:
        status, _, body = self.daemon.json(
            "POST", "/tvm/issue", {"dpopPublicJwk": self.signer.public_jwk}, {"Origin": ORIGIN})
        self.assertEqual(status, 200, body)
        return body["accessToken"]

    def credentials(self, token: str, path: str, method: str = "GET") -> dict[str, str]:
        proof = self.signer.sign(method, self.daemon.base + path.split("?")[0], iat=time.time(), ath=ath_of(token))
        return {"Origin": ORIGIN, "Authorization": f"DPoP {token}", "DPoP": proof}

    def connection(self, timeout: float = 15) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.daemon.port, timeout=timeout)
        self.addCleanup(conn.close)
        return conn


class LogSecretsMixin:
    """A run with good and bad requests whose whole log is then searched."""

    def run_traffic(self) -> list[str]:
        """Good and bad requests; returns every secret-bearing string sent."""
        token = self.mint()
        good = self.credentials(token, "/api/echo")
        status, _, _ = self.daemon.request("GET", "/api/echo?q=query-secret-1&key=client-key-2", headers=good)
        self.assertEqual(status, 200)
        # The same proof again: a replay.
        self.assertEqual(self.daemon.request("GET", "/api/echo", headers=good)[0], 401)
        # A proof whose signature does not verify.
        bad = self.credentials(token, "/api/echo")
        head, payload, signature = bad["DPoP"].split(".")
        bad["DPoP"] = f"{head}.{payload}.{b64(b'x' * 64)}"
        status, _, body = self.daemon.request("GET", "/api/echo", headers=bad)
        self.assertEqual((status, json.loads(body)["error"]), (401, "bad_dpop_sig"))
        # A token signed with another key, several times: the WARN line.
        forged = token[: token.rindex(".") + 1] + b64(b"f" * 32)
        for _ in range(5):
            status, _, body = self.daemon.request("GET", "/api/echo", headers={
                **self.credentials(forged, "/api/echo"), "Authorization": f"Bearer {forged}"})
            self.assertEqual(json.loads(body)["error"], "invalid_token")
        self.daemon.request("POST", "/tvm/issue", b"{not json", {"Origin": ORIGIN})
        self.daemon.request("GET", "/nowhere?token=" + token)
        return [token, good["DPoP"], bad["DPoP"], forged, "query-secret-1", "client-key-2"]

    def assertNoSecrets(self, output: str, sent: list[str]) -> None:
        secrets = {
            "signing key": SIGNING_KEY,
            "upstream secret": UPSTREAM_SECRET,
            **{f"sent value {i}": v for i, v in enumerate(sent)},
        }
        for name, value in secrets.items():
            self.assertNotIn(value, output, f"the {name} is in the log")
        # Nor any long piece of a token or proof (a JWS part).
        for value in sent[:4]:
            for part in value.split("."):
                if len(part) > 16:
                    self.assertNotIn(part, output)


class JsonLogTests(LogSecretsMixin, DaemonCase):
    env = {"LOG_FORMAT": "json"}

    def test_json_log_parses_and_holds_no_secret(self) -> None:
        """
        With LOG_FORMAT=json every line the daemon prints is one JSON
        object; each request has an access line with its fields; a client
        failing signature checks gets a WARN line; and the whole log holds
        no token, proof, signing key, upstream secret or query.
        """
        sent = self.run_traffic()
        self.assertEqual(self.daemon.stop(), 0)
        lines = [json.loads(line) for line in self.daemon.output.splitlines() if line.strip()]
        self.assertTrue(all(isinstance(line, dict) for line in lines))
        access = [line for line in lines if line.get("namespace") == "ets.access"]
        self.assertEqual(len(access), 12, access)
        for line in access:
            for field in ("request_id", "method", "path", "status", "error", "duration_ms", "client_ip", "jkt"):
                self.assertIn(field, line)
            self.assertNotIn("?", line["path"])
        relayed = [line for line in access if line["status"] == 200 and line["path"] == "/api/echo"]
        self.assertEqual(relayed[0]["jkt"], self.signer.thumbprint[:8])
        self.assertEqual(sorted({line["error"] for line in access}), [
            "-", "bad_dpop_sig", "invalid_json", "invalid_token", "not_found", "replay"])
        warnings = [line for line in lines if line["level"] == "warn" and line["namespace"] == "ets.security"]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertEqual(warnings[0]["client_ip"], "127.0.0.1")
        self.assertNoSecrets(self.daemon.output, sent)


class TextLogTests(LogSecretsMixin, DaemonCase):
    env = {"LOG_FORMAT": "text"}

    def test_text_log_is_readable_and_holds_no_secret(self) -> None:
        """
        With LOG_FORMAT=text each request has one readable access line
        (method, path, status, code, duration, client, id, thumbprint), and
        the whole log holds no secret either.
        """
        sent = self.run_traffic()
        self.assertEqual(self.daemon.stop(), 0)
        self.assertRegex(
            self.daemon.output,
            r"\[ets\.access#info\] GET /api/echo 401 bad_dpop_sig [0-9.]+ms client=127\.0\.0\.1 "
            r"id=[0-9a-f]{32} jkt=" + re.escape(self.signer.thumbprint[:8]))
        self.assertIn("[ets.security#warn] client 127.0.0.1 failed 5 signature checks", self.daemon.output)
        self.assertNoSecrets(self.daemon.output, sent)


class MetricsListenerTests(DaemonCase):
    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
        }

    def test_metrics_listener_counts_requests(self) -> None:
        """
        METRICS_LISTEN_ADDR serves Prometheus text at /metrics, apart from
        the public listener (which answers 404 there); the counters follow
        good and refused requests.
        """
        token = self.mint()
        self.assertEqual(self.daemon.request("GET", "/api/echo", headers=self.credentials(token, "/api/echo"))[0], 200)
        self.assertEqual(self.daemon.request("GET", "/api/echo", headers={"Origin": ORIGIN})[0], 401)
        self.assertEqual(self.daemon.request("GET", "/metrics")[0], 404)
        got = self.scrape()
        self.assertEqual(got[("ets_tokens_issued_total", ())], 1)
        self.assertEqual(got[("ets_requests_total", (("route", "/api"), ("status", "200")))], 1)
        self.assertEqual(got[("ets_refusals_total", (("code", "missing_bearer"),))], 1)
        self.assertEqual(got[("ets_refusals_total", (("code", "not_found"),))], 1)
        self.assertEqual(got[("ets_upstream_latency_seconds_count", ())], 1)
        self.assertEqual(got[("ets_replay_cache_entries", ())], 1)


def refused(port: int) -> bool:
    """Whether a new connection to C{port} is refused."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


class ShutdownTests(DaemonCase):
    env = {"SHUTDOWN_GRACE_SECONDS": "4"}

    def start_stream(self) -> http.client.HTTPResponse:
        conn = self.connection()
        conn.request("GET", "/api/stream", headers=self.credentials(self.mint(), "/api/stream"))
        answer = conn.getresponse()
        self.assertEqual(answer.status, 200)
        self.upstream.event("before")
        self.assertEqual(answer.readline(), b"data: before\n")
        answer.readline()
        return answer

    def test_sigterm_drains_a_streamed_answer(self) -> None:
        """
        SIGTERM during a slow streamed answer: new connections are refused
        at once, /ready answers 503 on a connection already open, the stream
        still runs to its end, and the process exits 0 within the grace
        period.
        """
        kept = self.connection()
        kept.request("GET", "/ready")
        ready = kept.getresponse()
        self.assertEqual((ready.status, ready.read()), (200, b'{"status":"ok"}'))
        answer = self.start_stream()
        signalled = time.monotonic()
        self.daemon.process.send_signal(signal.SIGTERM)
        deadline = signalled + 2
        while not refused(self.daemon.port) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertTrue(refused(self.daemon.port), "still accepting after SIGTERM")
        kept.request("GET", "/ready")
        ready = kept.getresponse()
        self.assertEqual((ready.status, ready.read()), (503, b'{"status":"unavailable"}'))
        time.sleep(0.5)
        self.assertIsNone(self.daemon.process.poll(), "exited with an answer in flight")
        self.upstream.event("during")
        self.assertEqual(answer.readline(), b"data: during\n")
        answer.readline()
        self.upstream.end()
        self.assertEqual(answer.read(), b"")
        self.assertEqual(self.daemon.process.wait(timeout=5), 0)
        self.assertLess(time.monotonic() - signalled, 4)
        self.assertEqual(self.daemon.stop(), 0)
        self.assertNotIn("Traceback", self.daemon.output)

    def test_grace_period_bounds_the_drain(self) -> None:
        """
        An answer that outlives SHUTDOWN_GRACE_SECONDS is cut when the grace
        ends, and the process still exits 0 then, not later.
        """
        answer = self.start_stream()
        signalled = time.monotonic()
        self.daemon.process.send_signal(signal.SIGTERM)
        self.assertEqual(self.daemon.process.wait(timeout=10), 0)
        self.assertGreater(time.monotonic() - signalled, 3.5)
        self.assertLess(time.monotonic() - signalled, 6)
        with self.assertRaises(http.client.IncompleteRead):
            answer.read()
