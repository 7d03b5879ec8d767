"""
What the reverse-proxy recipes of docs/OPERATIONS.md must do, proven the
same way for each proxy: a real proxy program runs the documented file (only
its lines marked "site:" replaced) over TLS in front of a real
C{twistd -n ets}, and a DPoP-protected call and a server-sent event stream
pass through both.

The proxy runs as a foreground process of the test with every file of its
own in a scratch directory, on a free loopback port; a system-wide
installation of it is never touched.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

from twisted.trial.unittest import SkipTest

from tests.e2e.daemon import ORIGIN, UPSTREAM_SECRET, Daemon, free_port, production_env
from tests.e2e.upstream import ThreadUpstream
from tests.support.proofs import ProofSigner, ath_of
from tests.support.tls import self_signed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fill_site_lines(text: str, replacements: dict[str, str]) -> str:
    """
    C{text} with each line matching a pattern of C{replacements} (exactly
    one per pattern) replaced; everything else is the documented file, byte
    for byte.
    """
    for pattern, line in replacements.items():
        text, count = re.subn(pattern, line, text)
        assert count == 1, f"the recipe has no single line matching {pattern!r}"
    return text


def split_pem(pem: bytes) -> tuple[bytes, bytes]:
    """(private key PEM, certificate PEM) of L{self_signed}'s output."""
    marker = b"-----BEGIN CERTIFICATE-----"
    at = pem.index(marker)
    return pem[:at], pem[at:]


class ProxyRecipeTests:
    """
    Mixed into a C{SynchronousTestCase} per proxy, which sets C{program}
    and writes L{start_proxy}.
    """

    program: str

    def start_proxy(self, port: int, cert: str, key: str, ets: str) -> list[str]:
        """Write the proxy's configuration into C{self.tmp}; its command line."""
        raise NotImplementedError

    def check_proxy_log(self, request_id: str) -> None:
        """Assert that the proxy logged C{request_id} (where it can)."""

    def check_forwarded_for(self, chain: str) -> None:
        """Assert the X-Forwarded-For the upstream saw, after a spoofed one."""
        raise NotImplementedError

    def setUp(self) -> None:
        name = os.path.basename(self.program)
        if not os.path.exists(self.program):
            if os.environ.get("CI"):
                self.fail(f"{self.program} is missing: make test installs the Debian package {name}")
            raise SkipTest(f"{self.program} is missing (apt-get install {name})")
        self.upstream = ThreadUpstream()
        self.addCleanup(self.upstream.close)
        self.daemon = Daemon(production_env(
            self.upstream.base, TRUSTED_PROXIES="127.0.0.1/32", LOG_FORMAT="json")).start()
        self.addCleanup(self.daemon.stop)
        self.tmp = tempfile.mkdtemp(prefix=f"ets-{name}-")
        # A proxy's workers may drop root privileges: they must reach this folder.
        os.chmod(self.tmp, 0o755)
        self.addCleanup(shutil.rmtree, self.tmp, True)
        key, cert = split_pem(self_signed("localhost"))
        key_path, cert_path = os.path.join(self.tmp, "tls.key"), os.path.join(self.tmp, "tls.pem")
        with open(key_path, "wb") as f:
            f.write(key)
        with open(cert_path, "wb") as f:
            f.write(cert)
        os.chmod(key_path, 0o644)
        self.port = free_port()
        command = self.start_proxy(self.port, cert_path, key_path, f"127.0.0.1:{self.daemon.port}")
        self.proxy = subprocess.Popen(
            command, cwd=self.tmp, env={**os.environ, "HOME": self.tmp},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.addCleanup(self._stop_proxy)
        self._wait_for_proxy()
        self.tls = ssl.create_default_context(cafile=cert_path)
        self.tls.check_hostname = False
        self.base = f"https://127.0.0.1:{self.port}"

    def _wait_for_proxy(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proxy.poll() is not None:
                self.fail(f"{self.program} exited: {self.proxy.stdout.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.fail(f"{self.program} did not listen")

    def _stop_proxy(self) -> None:
        if self.proxy.poll() is None:
            self.proxy.terminate()
            try:
                self.proxy.wait(10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait()
        self.proxy.stdout.close()

    def file(self, name: str) -> str:
        try:
            with open(os.path.join(self.tmp, name)) as f:
                return f.read()
        except OSError:
            return ""

    def connection(self) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.tls, timeout=10)
        self.addCleanup(conn.close)
        return conn

    def mint(self, signer: ProofSigner) -> str:
        conn = self.connection()
        conn.request("POST", "/tvm/issue", body=json.dumps({"dpopPublicJwk": signer.public_jwk}),
                     headers={"Origin": ORIGIN, "Content-Type": "application/json"})
        answer = conn.getresponse()
        body = answer.read()
        self.assertEqual(answer.status, 200, body)
        return json.loads(body)["accessToken"]

    def credentials(self, signer: ProofSigner, token: str, path: str) -> dict[str, str]:
        # htu is the URL the browser used: the proxy's, over https.
        proof = signer.sign("GET", self.base + path, iat=time.time(), ath=ath_of(token))
        return {"Origin": ORIGIN, "Authorization": f"DPoP {token}", "DPoP": proof}

    def test_protected_call_through_the_proxy(self) -> None:
        """
        A call with a real token and a proof for the proxy's https URL
        passes the proxy and ETS and reaches the upstream with the secret,
        the client's address and scheme; the proxy's request id is ETS's
        (answer, upstream and access line).
        """
        signer = ProofSigner()
        token = self.mint(signer)
        conn = self.connection()
        headers = self.credentials(signer, token, "/api/echo")
        headers["X-Forwarded-For"] = "203.0.113.7"
        conn.request("GET", "/api/echo?q=1", headers=headers)
        answer = conn.getresponse()
        body = answer.read()
        self.assertEqual(answer.status, 200, body)
        seen = self.upstream.received[-1]
        self.assertEqual(seen["path"], f"/api/echo?q=1&key={UPSTREAM_SECRET}")
        self.assertEqual(seen["headers"]["x-forwarded-proto"], "https")
        self.assertEqual(seen["headers"]["x-forwarded-host"], f"127.0.0.1:{self.port}")
        self.check_forwarded_for(seen["headers"]["x-forwarded-for"])
        request_id = answer.getheader("X-Request-Id")
        self.assertEqual(seen["headers"]["x-request-id"], request_id)
        self.check_proxy_log(request_id)
        self.daemon.stop()
        [line] = [json.loads(l) for l in self.daemon.output.splitlines()
                  if '"ets.access"' in l and '"/api/echo"' in l]
        self.assertEqual((line["request_id"], line["status"]), (request_id, 200))
        self.assertEqual(line["client_ip"], seen["headers"]["x-forwarded-for"].split(",")[0])

    def test_event_stream_through_the_proxy(self) -> None:
        """
        Server-sent events from the upstream arrive one by one through ETS
        and the proxy while the stream is still open (no proxy buffering).
        """
        signer = ProofSigner()
        token = self.mint(signer)
        conn = self.connection()
        conn.request("GET", "/api/stream", headers=self.credentials(signer, token, "/api/stream"))
        answer = conn.getresponse()
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.getheader("Content-Type"), "text/event-stream")
        for event in ("first", "second", "third"):
            self.upstream.event(event)
            self.assertEqual(answer.readline(), f"data: {event}\n".encode())
            self.assertEqual(answer.readline(), b"\n")
        self.upstream.end()
        self.assertEqual(answer.read(), b"")
