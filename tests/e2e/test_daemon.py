"""
End to end: the installed C{twistd ets} as a real process on a real socket.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import jwt
from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.daemon import SIGNING_KEY, TWISTD, UPSTREAM_SECRET, Daemon, clean_env, free_port, run_twistd
from tests.support.proofs import ProofSigner, ath_of, thumbprint

ORIGIN = "https://app.example"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRODUCTION = {
    "ORIGIN_ALLOWLIST": ORIGIN,
    "TVM_JWT_HS256_KEY": SIGNING_KEY,
    "UPSTREAM_BASE_URL": "http://127.0.0.1:9",
    "UPSTREAM_SERVICE_SECRET": UPSTREAM_SECRET,
}
SECRET_VARIABLES = ("TVM_JWT_HS256_KEY", "UPSTREAM_SERVICE_SECRET", "ETS_SECRET_KEY")


class InstalledPackageTests(SynchronousTestCase):
    def test_daemon_uses_installed_package(self) -> None:
        """
        The tests drive the non-editable install (the path users take): from
        outside the source tree, C{ets_twisted} and the SDK come from
        site-packages.
        """
        with tempfile.TemporaryDirectory() as cwd:
            out = subprocess.run(
                [sys.executable, "-c",
                 "import ets_twisted, importlib.resources as r; print(ets_twisted.__file__); "
                 "print(r.files('ets_twisted').joinpath('sdk', 'tvm.mjs').is_file())"],
                cwd=cwd, env=clean_env({}), capture_output=True, text=True, check=True,
            ).stdout.split()
        self.assertIn("site-packages", out[0])
        self.assertEqual(out[1], "True")


class ProductionDaemonTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.daemon = Daemon(PRODUCTION).start()
        self.addCleanup(self.daemon.stop)

    def test_health_and_ready(self) -> None:
        """/health and /ready answer 200 {"status":"ok"}; unknown paths a JSON 404."""
        self.assertEqual(self.daemon.json("GET", "/health")[::2], (200, {"status": "ok"}))
        self.assertEqual(self.daemon.json("GET", "/ready")[::2], (200, {"status": "ok"}))
        self.assertEqual(self.daemon.json("GET", "/nope")[::2], (404, {"error": "not_found"}))

    def test_issue_mints_verifiable_token(self) -> None:
        """
        POST /tvm/issue with a public JWK answers a token that pyjwt verifies
        with the configured key: HS256, kid not the key, SPEC's claims, and
        cnf.jkt the RFC 7638 thumbprint of the key sent.
        """
        signer = ProofSigner("ES256")
        status, headers, body = self.daemon.json(
            "POST", "/tvm/issue", {"dpopPublicJwk": signer.public_jwk}, {"Origin": ORIGIN}
        )
        self.assertEqual(status, 200)
        self.assertEqual(headers["cache-control"], "no-store")
        self.assertEqual(headers["access-control-allow-origin"], ORIGIN)
        self.assertEqual((body["expiresIn"], body["tokenType"]), (300, "DPoP"))
        token = body["accessToken"]
        header = jwt.get_unverified_header(token)
        self.assertEqual(header["alg"], "HS256")
        self.assertNotIn(SIGNING_KEY, header["kid"])
        claims = jwt.decode(token, SIGNING_KEY, algorithms=["HS256"], audience="ets", issuer="ets")
        self.assertEqual(claims["cnf"], {"jkt": thumbprint(signer.public_jwk)})
        self.assertEqual(claims["exp"] - claims["iat"], 300)
        self.assertGreaterEqual(len(claims["jti"]), 22)
        self.assertLessEqual(abs(claims["iat"] - body["serverTime"]), 1)

    def test_sdk_served_from_package_data(self) -> None:
        """
        /sdk/tvm.mjs is the repository's sdk/tvm.mjs, as JavaScript, readable
        from any origin, with an ETag that answers 304.
        """
        status, headers, body = self.daemon.request("GET", "/sdk/tvm.mjs")
        self.assertEqual(status, 200)
        with open(os.path.join(ROOT, "sdk", "tvm.mjs"), "rb") as f:
            self.assertEqual(body, f.read())
        self.assertEqual(headers["content-type"], "text/javascript; charset=utf-8")
        self.assertEqual(headers["access-control-allow-origin"], "*")
        self.assertIn("max-age", headers["cache-control"])
        status, _, body = self.daemon.request("GET", "/sdk/tvm.mjs", headers={"If-None-Match": headers["etag"]})
        self.assertEqual((status, body), (304, b""))
        status, headers, _ = self.daemon.request("GET", "/sdk/tvm.d.ts")
        self.assertEqual(status, 200)

    def test_head_requests_answer_headers_only_and_log_no_secret(self) -> None:
        """
        HEAD on /health, the SDK and an unknown path answers headers only,
        and nothing of the configuration (the upstream secret, the signing
        key) reaches the log.
        """
        for path in ("/health", "/sdk/tvm.mjs", "/nope"):
            status, headers, body = self.daemon.request("HEAD", path)
            self.assertEqual(body, b"")
            self.assertGreater(int(headers["content-length"]), 0)
        self.daemon.stop()
        self.assertNotIn(UPSTREAM_SECRET, self.daemon.output)
        self.assertNotIn(SIGNING_KEY, self.daemon.output)
        self.assertNotIn("message body", self.daemon.output)

    def test_sigterm_stops_cleanly(self) -> None:
        """SIGTERM stops the daemon with exit status 0 and no traceback."""
        self.assertEqual(self.daemon.stop(), 0)
        self.assertNotIn("Traceback", self.daemon.output)


class TacTests(SynchronousTestCase):
    def test_tac_file_runs_the_same_service(self) -> None:
        """`twistd -ny ets.tac` configured from the environment serves /health."""
        port = free_port()
        env = clean_env({**PRODUCTION, "LISTEN_ADDR": f"127.0.0.1:{port}"})
        with tempfile.TemporaryDirectory() as cwd:
            process = subprocess.Popen(
                [TWISTD, "-n", "--pidfile=", "-y", os.path.join(ROOT, "ets.tac")],
                env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            daemon = Daemon({}, port=port)
            try:
                import time
                import urllib.request

                for _ in range(100):
                    try:
                        with urllib.request.urlopen(daemon.base + "/health", timeout=2) as a:
                            self.assertEqual(a.status, 200)
                            break
                    except OSError:
                        time.sleep(0.1)
                else:
                    self.fail("ets.tac did not serve /health")
            finally:
                process.terminate()
                self.assertEqual(process.wait(15), 0)
                process.stdout.close()


class DevelopmentModeTests(SynchronousTestCase):
    def test_no_configuration_is_a_working_demo(self) -> None:
        """
        With no configuration the daemon says it is in development mode,
        mints tokens for its own origin, and relays an SDK-style call (token
        and proof) to its built-in echo upstream.
        """
        daemon = Daemon({}).start()
        self.addCleanup(daemon.stop)
        origin = f"http://127.0.0.1:{daemon.port}"
        signer = ProofSigner()
        status, _, body = daemon.json("POST", "/tvm/issue", {"dpopPublicJwk": signer.public_jwk}, {"Origin": origin})
        self.assertEqual(status, 200, body)
        token = body["accessToken"]
        proof = signer.sign("POST", daemon.base + "/api/echo", iat=time.time(), ath=ath_of(token))
        status, _, echo = daemon.json("POST", "/api/echo?x=1", {"hello": "ets"}, {
            "Origin": origin, "Authorization": f"DPoP {token}", "DPoP": proof})
        self.assertEqual(status, 200, echo)
        self.assertEqual((echo["method"], echo["path"], echo["query"]), ("POST", "/api/echo", "x=1"))
        self.assertEqual(json.loads(echo["body"]), {"hello": "ets"})
        self.assertNotIn("authorization", echo["headers"])
        self.assertIn("DEVELOPMENT MODE", daemon.read_output())
        status, headers, page = daemon.request("GET", "/demo/")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/html"))


class BadConfigurationTests(SynchronousTestCase):
    """
    Each bad configuration stops the daemon at start: non-zero exit, one line
    naming the variable, no traceback, no secret in the output.
    """

    secret = "a-secret-value-that-must-not-leak"

    def assertRefused(self, env: dict[str, str], variable: str, args: tuple[str, ...] = ()) -> None:
        result = run_twistd(env, args)
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0, output)
        self.assertIn(variable, output)
        self.assertNotIn("Traceback", output)
        for name in SECRET_VARIABLES:
            if env.get(name):
                self.assertNotIn(env[name], output)

    def test_short_signing_key(self) -> None:
        """A signing key under 32 bytes is refused without printing it."""
        self.assertRefused({**PRODUCTION, "TVM_JWT_HS256_KEY": "short-secret-key"}, "TVM_JWT_HS256_KEY")

    def test_partial_configuration(self) -> None:
        """Two of the three required variables is an error, not development mode."""
        env = {k: v for k, v in PRODUCTION.items() if k != "ORIGIN_ALLOWLIST"}
        self.assertRefused(env, "ORIGIN_ALLOWLIST")

    def test_upstream_with_path(self) -> None:
        """UPSTREAM_BASE_URL must be an origin: a path is refused."""
        self.assertRefused({**PRODUCTION, "UPSTREAM_BASE_URL": "http://up.example/v1"}, "UPSTREAM_BASE_URL")

    def test_bad_listen_addr(self) -> None:
        """An unusable LISTEN_ADDR is named."""
        self.assertRefused({**PRODUCTION, "LISTEN_ADDR": "nonsense"}, "LISTEN_ADDR")

    def test_unknown_dpop_alg(self) -> None:
        """DPOP_ALGS only takes SPEC's algorithms."""
        self.assertRefused({**PRODUCTION, "DPOP_ALGS": "ES256,HS256"}, "DPOP_ALGS")

    def test_workers_need_shared_store(self) -> None:
        """WORKERS > 1 with the memory store is refused."""
        self.assertRefused({**PRODUCTION, "WORKERS": "2"}, "WORKERS")

    def test_challenge_needs_secret(self) -> None:
        """REQUIRE_ETS without ETS_SECRET_KEY is refused."""
        self.assertRefused({**PRODUCTION, "REQUIRE_ETS": "true"}, "ETS_SECRET_KEY")

    def test_option_wins_over_environment(self) -> None:
        """A bad option is refused even when the environment's value is good."""
        self.assertRefused(
            {**PRODUCTION, "RATE_LIMIT_PER_MINUTE": "60"}, "RATE_LIMIT_PER_MINUTE",
            ("--rate-limit-per-minute", "lots"),
        )

    def test_port_in_use(self) -> None:
        """
        A LISTEN_ADDR that cannot be bound: one line and exit status 1, not
        a process that runs without listening.
        """
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = run_twistd({**PRODUCTION, "LISTEN_ADDR": f"127.0.0.1:{port}"})
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        (line,) = done.stderr.strip().splitlines()
        self.assertTrue(line.startswith(f"ets: cannot listen on LISTEN_ADDR: Couldn't listen on 127.0.0.1:{port}"), line)
        self.assertNotIn("Traceback", done.stdout)

    def test_several_problems_one_line_each(self) -> None:
        """Every problem is reported, each on its own line."""
        result = run_twistd({**PRODUCTION, "TOKEN_LIFETIME_SECONDS": "-1", "LOG_FORMAT": "xml"})
        lines = [l for l in result.stderr.splitlines() if "configuration error" in l]
        self.assertEqual(len(lines), 2, result.stderr)
