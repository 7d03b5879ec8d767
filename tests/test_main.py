"""
Tests for L{ets_twisted.__main__}.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from ets_twisted.__main__ import USAGE, main
from ets_twisted.config import load


def run(argv: list[str]) -> tuple[int, str, str]:
    """
    Run L{main} with C{argv}; return the status, stdout and stderr.
    """
    out, err = io.StringIO(), io.StringIO()
    status = main(argv, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def assignments(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines())


class GenerateSecretsTests(SynchronousTestCase):
    """
    C{python -m ets_twisted generate-secrets} prints fresh secrets.
    """

    def test_assignments(self) -> None:
        """
        Two shell-ready assignments are printed, one per line, each value at
        least 32 bytes of base64url (no quoting needed).
        """
        status, out, err = run(["generate-secrets"])
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(len(out.splitlines()), 2)
        values = assignments(out)
        self.assertEqual(list(values), ["TVM_JWT_HS256_KEY", "UPSTREAM_SERVICE_SECRET"])
        for value in values.values():
            self.assertRegex(value, r"^[A-Za-z0-9_-]+$")
            self.assertGreaterEqual(len(value.encode()), 32)
            self.assertGreaterEqual(len(base64.urlsafe_b64decode(value + "==")), 32)
        self.assertNotEqual(values["TVM_JWT_HS256_KEY"], values["UPSTREAM_SERVICE_SECRET"])

    def test_fresh(self) -> None:
        """
        Each call prints new values.
        """
        first = assignments(run(["generate-secrets"])[1])
        second = assignments(run(["generate-secrets"])[1])
        for name in first:
            self.assertNotEqual(first[name], second[name])

    def test_accepted(self) -> None:
        """
        The printed values pass ETS's own configuration checks.
        """
        values = assignments(run(["generate-secrets"])[1])
        env = dict(
            values,
            ORIGIN_ALLOWLIST="https://app.example.com",
            UPSTREAM_BASE_URL="https://api.example.com",
        )
        config = load(env)
        self.assertEqual(config.jwt_keys, (values["TVM_JWT_HS256_KEY"].encode(),))
        self.assertEqual(config.upstream_service_secret, values["UPSTREAM_SERVICE_SECRET"])

    def test_usage(self) -> None:
        """
        Anything else prints the usage line on stderr and exits 2.
        """
        for argv in [[], ["generate"], ["generate-secrets", "extra"], ["--help"]]:
            status, out, err = run(argv)
            self.assertEqual((status, out), (2, ""), argv)
            self.assertEqual(err, USAGE + "\n")

    def test_module(self) -> None:
        """
        C{python -m ets_twisted generate-secrets} runs as a program.
        """
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        result = subprocess.run(
            [sys.executable, "-m", "ets_twisted", "generate-secrets"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            sorted(assignments(result.stdout)), ["TVM_JWT_HS256_KEY", "UPSTREAM_SERVICE_SECRET"]
        )
        result = subprocess.run(
            [sys.executable, "-m", "ets_twisted"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 2)
        self.assertIn("usage:", result.stderr)
