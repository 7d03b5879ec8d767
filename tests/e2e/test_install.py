"""
The install path users take: a non-editable C{pip install .} into a brand
new virtual environment gives a working C{twistd ets}.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.daemon import SIGNING_KEY, Daemon, clean_env
from tests.support.proofs import ProofSigner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ORIGIN = "https://app.example"


class FreshVenvTests(SynchronousTestCase):
    def test_pip_install_serves_health_issue_and_sdk(self) -> None:
        """
        A fresh venv with only `pip install <repo>` (its declared
        dependencies, nothing else) runs `twistd -n ets` with a production
        configuration that serves /health, /tvm/issue and /sdk/tvm.mjs.
        """
        with tempfile.TemporaryDirectory() as tmp:
            venv = os.path.join(tmp, "venv")
            env = clean_env({})
            subprocess.run([sys.executable, "-m", "venv", venv], check=True, env=env)
            python = os.path.join(venv, "bin", "python")
            install = subprocess.run(
                [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", ROOT],
                env=env, cwd=tmp, capture_output=True, text=True, timeout=540,
            )
            self.assertEqual(install.returncode, 0, install.stderr[-2000:])
            daemon = Daemon(
                {"ORIGIN_ALLOWLIST": ORIGIN, "TVM_JWT_HS256_KEY": SIGNING_KEY,
                 "UPSTREAM_BASE_URL": "http://127.0.0.1:9"},
                twistd=os.path.join(venv, "bin", "twistd"),
            ).start()
            try:
                self.assertEqual(daemon.json("GET", "/health")[::2], (200, {"status": "ok"}))
                status, _, body = daemon.json(
                    "POST", "/tvm/issue", {"dpopPublicJwk": ProofSigner().public_jwk}, {"Origin": ORIGIN})
                self.assertEqual(status, 200, body)
                status, headers, sdk = daemon.request("GET", "/sdk/tvm.mjs")
                self.assertEqual(status, 200)
                with open(os.path.join(ROOT, "sdk", "tvm.mjs"), "rb") as f:
                    self.assertEqual(sdk, f.read())
            finally:
                self.assertEqual(daemon.stop(), 0)
