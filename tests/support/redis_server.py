"""
A private C{redis-server} for tests: a free loopback port, no persistence,
stopped when the test is over.

Tests never rely on a Redis someone left running: each one that needs Redis
starts its own here. L{RedisServer.stop} and L{RedisServer.start} again use
the same port, which is how the outage tests take Redis away and bring it
back.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

from tests.e2e.daemon import free_port

#: Where Debian's redis-server package puts it; scripts/system-deps.sh
#: installs it on a fresh machine.
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


class RedisServer:
    """
    One C{redis-server} process on 127.0.0.1.

    @ivar port: its port, kept across L{stop} and L{start}.
    @ivar url: the C{STORE_URL} that names it.
    """

    def __init__(self, password: str | None = None, tls: bool = False) -> None:
        """
        @param password: set as C{requirepass} and put in L{url}.
        @param tls: serve TLS only, with a fresh self-signed certificate
            for C{localhost} (its PEM in L{certificate}); L{url} is then
            C{rediss://}.
        """
        if not os.access(REDIS_SERVER, os.X_OK):
            raise RuntimeError(
                f"no redis-server at {REDIS_SERVER}: run scripts/system-deps.sh "
                "(apt-get install redis-server)"
            )
        self.port = free_port()
        self.password = password
        auth = f":{password}@" if password else ""
        self._dir = tempfile.mkdtemp(prefix="ets-redis-")
        self.tls = tls
        if tls:
            from tests.support.tls import self_signed

            pem = self_signed("localhost")
            self.certificate = pem[pem.index(b"-----BEGIN CERTIFICATE") :]
            self._pem = os.path.join(self._dir, "server.pem")
            with open(self._pem, "wb") as f:
                f.write(pem)
            self.url = f"rediss://{auth}localhost:{self.port}/0"
        else:
            self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10) -> RedisServer:
        """Start the server and wait until it answers PING."""
        args = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self._dir,
            "--logfile", os.path.join(self._dir, "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", self._pem, "--tls-key-file", self._pem,
                     "--tls-ca-cert-file", self._pem, "--tls-auth-clients", "no"]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        """Stop the server (SIGKILL: an outage, not a clean shutdown)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused server (SIGCONT)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def cli(self, *args: str) -> str:
        """
        Run one command with C{redis-cli} (installed with redis-server, from
        the same Debian package family) and return its raw output.
        """
        env = dict(os.environ)
        if self.password:
            # REDISCLI_AUTH keeps the password off the command line.
            env["REDISCLI_AUTH"] = self.password
        done = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port), "--raw",
             *(["--tls", "--insecure"] if self.tls else []), *args],
            env=env, capture_output=True, text=True, timeout=10,
        )
        return done.stdout

    def ping(self) -> bool:
        """Whether the server answers PING."""
        try:
            return self.cli("PING").strip() == "PONG"
        except (OSError, subprocess.TimeoutExpired):
            return False

    def keys(self) -> list[str]:
        """Every key of database 0 (a test store holds a handful)."""
        return sorted(k for k in self.cli("KEYS", "*").splitlines() if k)
