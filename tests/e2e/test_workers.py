"""
End to end: C{WORKERS=2} on a real C{twistd -n ets} (a master and two
worker processes on one socket, sharing a private Redis), and the
configurations it refuses.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.daemon import SIGNING_KEY, Daemon, free_port, run_twistd
from tests.support.redis_server import RedisServer

ORIGIN = "https://app.example"
PRODUCTION = {
    "ORIGIN_ALLOWLIST": ORIGIN,
    "TVM_JWT_HS256_KEY": SIGNING_KEY,
    "UPSTREAM_BASE_URL": "http://127.0.0.1:9",
}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class WorkersTests(SynchronousTestCase):
    """A master with two workers."""

    def setUp(self) -> None:
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.close)
        self.daemon = Daemon({**PRODUCTION, "STORE_URL": self.redis.url, "WORKERS": "2"})
        self.addCleanup(self.daemon.stop)
        self.daemon.start()

    def started_workers(self, count: int, bound: float = 10) -> list[int]:
        """The pids of the workers the master logged starting, once there are C{count}."""
        deadline = time.monotonic() + bound
        while True:
            pids = [int(p) for p in re.findall(r"started worker (\d+)", self.daemon.read_output())]
            if len(pids) >= count:
                return pids
            self.assertLess(time.monotonic(), deadline, f"not {count} workers started")
            time.sleep(0.05)

    def answering_pids(self, wanted: set[int], bound: float = 10) -> set[int]:
        """
        Send concurrent requests until every pid of C{wanted} has answered
        (the kernel picks the worker of each connection); return the pids
        seen.
        """
        seen: set[int] = set()
        deadline = time.monotonic() + bound

        def one(_: int) -> int:
            status, headers, _ = self.daemon.request("GET", "/ready")
            self.assertEqual(status, 200)
            return int(headers["x-ets-worker"])

        with ThreadPoolExecutor(8) as pool:
            while not wanted <= seen and time.monotonic() < deadline:
                seen.update(pool.map(one, range(16)))
        return seen

    def test_bothServeThenStop(self) -> None:
        """
        Requests are answered by both workers (their pids, in
        C{X-ETS-Worker}, differ and are not the master's); SIGTERM to the
        master stops every process, and the master exits 0.
        """
        workers = set(self.started_workers(2))
        self.assertEqual(len(workers), 2)
        self.assertNotIn(self.daemon.process.pid, workers)
        self.assertEqual(self.answering_pids(workers), workers)

        self.assertEqual(self.daemon.stop(), 0)
        self.assertFalse(any(alive(pid) for pid in workers))
        self.assertEqual(self.daemon.output.count("stopped (status 0)"), 2, self.daemon.output)

    def test_killedWorkerReplaced(self) -> None:
        """
        A worker killed with SIGKILL is replaced by a new one, which serves
        requests; the master's pid and exit status are unchanged by it.
        """
        first, second = self.started_workers(2)
        os.kill(first, signal.SIGKILL)
        replacement = self.started_workers(3)[2]
        self.assertNotIn(replacement, (first, second))
        seen = self.answering_pids({replacement, second})
        self.assertEqual(seen, {replacement, second})
        self.assertIn(f"worker {first} died", self.daemon.read_output())
        self.assertEqual(self.daemon.stop(), 0)
        self.assertFalse(alive(replacement) or alive(second))

    def test_orphansStop(self) -> None:
        """
        Workers whose master was killed outright (no SIGTERM to pass on)
        stop by themselves within a few seconds instead of holding the port.
        """
        workers = self.started_workers(2)
        self.answering_pids(set(workers))
        self.daemon.process.kill()
        self.daemon.process.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers):
            self.assertLess(time.monotonic(), deadline, "orphaned workers still running")
            time.sleep(0.1)


class RefusedTests(SynchronousTestCase):
    """Configurations C{WORKERS} > 1 cannot run, refused at start."""

    def assertRefused(self, env: dict[str, str], *expected: str) -> str:
        done = run_twistd({**PRODUCTION, "LISTEN_ADDR": f"127.0.0.1:{free_port()}", **env})
        self.assertEqual(done.returncode, 2, done.stderr)
        lines = done.stderr.strip().splitlines()
        self.assertEqual(len(lines), len(expected), done.stderr)
        for line, prefix in zip(lines, expected):
            self.assertTrue(line.startswith("ets: configuration error: " + prefix), line)
        self.assertNotIn("Traceback", done.stdout + done.stderr)
        return done.stdout + done.stderr

    def test_memoryStore(self) -> None:
        """
        C{WORKERS=2} with the memory store is refused with one line naming
        C{WORKERS} and the reason, exit status 2.
        """
        output = self.assertRefused({"WORKERS": "2"}, "WORKERS: more than 1 worker needs a shared STORE_URL")
        self.assertIn("per-process replay caches", output)

    def test_tlsAndMetrics(self) -> None:
        """
        With workers, an C{ssl:} listener and a metrics listener are each
        refused on a line of their own; the Redis password never shows.
        """
        output = self.assertRefused(
            {
                "WORKERS": "2",
                "STORE_URL": "redis://:pw-never-shown-77@127.0.0.1:1/0",
                "LISTEN_ADDR": "ssl:8443:privateKey=k.pem",
                "METRICS_LISTEN_ADDR": "127.0.0.1:9100",
            },
            "WORKERS: more than 1 worker needs a tcp, tcp6 or unix LISTEN_ADDR",
            "METRICS_LISTEN_ADDR: not available with WORKERS > 1",
        )
        self.assertNotIn("pw-never-shown-77", output)

    def test_portInUse(self) -> None:
        """
        A master that cannot bind C{LISTEN_ADDR} says so in one line and
        exits non-zero, starting no worker.
        """
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = run_twistd({
                **PRODUCTION, "WORKERS": "2", "STORE_URL": "redis://127.0.0.1:1/0",
                "LISTEN_ADDR": f"127.0.0.1:{port}",
            })
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        (line,) = done.stderr.strip().splitlines()
        self.assertTrue(line.startswith(f"ets: cannot listen on LISTEN_ADDR: Couldn't listen on 127.0.0.1:{port}"), line)
        self.assertIn("already in use", line)
        self.assertNotIn("started worker", done.stdout)


class EnvironmentTests(SynchronousTestCase):
    """What the master hands its workers."""

    def test_optionsWin(self) -> None:
        """
        Options given to the master on the command line reach the workers
        as their variables, over the environment's; unset options leave
        the environment alone.
        """
        from ets_twisted.workers import worker_environment

        env = worker_environment(
            {"STORE_URL": "redis://env:1/0", "WORKERS": "2", "PATH": "/bin"},
            {"store-url": "redis://option:1/0", "workers": None, "not-ets": "x"},
        )
        self.assertEqual(env, {"STORE_URL": "redis://option:1/0", "WORKERS": "2", "PATH": "/bin"})
