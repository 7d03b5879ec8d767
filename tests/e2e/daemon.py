"""
A real C{twistd -n ets} process for end-to-end tests.

The daemon runs from the venv's C{twistd} with a scratch directory as its
working directory, so it uses the installed package (and its package data),
not the source tree.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, Mapping, Sequence

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

#: A production configuration that tests extend.
SIGNING_KEY = "e2e-signing-key-that-is-long-enough-0123456789"
UPSTREAM_SECRET = "e2e-upstream-secret-7f3a9c"


#: The browser origin production configurations allow.
ORIGIN = "https://app.example"


def production_env(upstream_base: str, **extra: str) -> dict[str, str]:
    """A production configuration relaying to C{upstream_base}, plus C{extra}."""
    return {
        "ORIGIN_ALLOWLIST": ORIGIN,
        "TVM_JWT_HS256_KEY": SIGNING_KEY,
        "UPSTREAM_BASE_URL": upstream_base,
        "UPSTREAM_SERVICE_SECRET": UPSTREAM_SECRET,
        **extra,
    }


def free_port() -> int:
    """A loopback port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """
    The test process's environment without any ETS variable, plus C{extra}.
    C{PYTHONPATH} goes too (C{trial -j} sets it to the source tree), so the
    daemon runs the installed package.
    """
    from ets_twisted.config import VARIABLES

    dropped = {v.env for v in VARIABLES} | {"PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(extra)
    return env


def run_twistd(env: Mapping[str, str], args: tuple[str, ...] = (), timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run C{twistd -n ets} to completion (for configurations that must fail)."""
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run(
            [TWISTD, "-n", "--pidfile=", "ets", *args],
            env=clean_env(env), cwd=cwd, capture_output=True, text=True, timeout=timeout,
        )


class Daemon:
    """
    One running daemon. Use L{start}; call L{stop} (tests add it as cleanup).
    Its whole output is kept in L{output} after it stops.
    """

    def __init__(
        self, env: Mapping[str, str], port: int | None = None, twistd: str = TWISTD,
        command: Sequence[str] | None = None, cwd: str | None = None, user: int | None = None,
    ) -> None:
        """
        @param command: the whole command line, instead of C{twistd -n ets}.
        @param cwd: the working directory, instead of a scratch one.
        @param user: the uid to run as (the process starts as root).
        """
        self.twistd = twistd
        self.command = list(command or [twistd, "-n", "--pidfile=", "ets"])
        self.cwd = cwd
        self.user = user
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = clean_env({"LISTEN_ADDR": f"127.0.0.1:{self.port}", **env})
        self._cwd = tempfile.TemporaryDirectory()
        self._log = open(os.path.join(self._cwd.name, "twistd.out"), "w+")
        self.process: subprocess.Popen[bytes] | None = None
        self.output = ""

    def start(self, timeout: float = 20) -> Daemon:
        """Start the process and wait until C{/health} answers."""
        self.process = subprocess.Popen(
            self.command, env=self.env, cwd=self.cwd or self._cwd.name,
            stdout=self._log, stderr=subprocess.STDOUT,
            user=self.user, group=self.user, extra_groups=[] if self.user is not None else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"twistd exited early:\n{self.read_output()}")
            try:
                if self.request("GET", "/health")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"twistd did not answer /health:\n{self.output}")

    def request(
        self, method: str, path: str, body: bytes | None = None,
        headers: Mapping[str, str] | None = None, timeout: float = 10,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request on a fresh connection: (status, headers, body)."""
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:
                return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()
        except urllib.error.HTTPError as answer:
            return answer.code, {k.lower(): v for k, v in answer.headers.items()}, answer.read()

    def json(self, method: str, path: str, payload: Any = None, headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        """A JSON request; the answer body parsed as JSON."""
        body = None if payload is None else json.dumps(payload).encode()
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        status, answer_headers, data = self.request(method, path, body, all_headers)
        return status, answer_headers, json.loads(data) if data else None

    def mint(self, public_jwk: Mapping[str, Any], origin: str = ORIGIN) -> str:
        """An access token for C{public_jwk} from C{/tvm/issue}."""
        status, _, body = self.json("POST", "/tvm/issue", {"dpopPublicJwk": public_jwk}, {"Origin": origin})
        if status != 200:
            raise AssertionError(f"/tvm/issue answered {status}: {body}")
        return body["accessToken"]

    def read_output(self) -> str:
        self._log.flush()
        self._log.seek(0)
        self.output = self._log.read()
        return self.output

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, wait, and return the exit status."""
        if self.process is None or self._log.closed:
            return self.process.returncode if self.process else None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.read_output()
        self._log.close()
        self._cwd.cleanup()
        return self.process.returncode
