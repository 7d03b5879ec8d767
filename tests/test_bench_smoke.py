"""
The benchmark's pieces still work (no timing is asserted): the proof
generator writes proofs ETS accepts, wrk runs the Lua script for about a
second against a real ETS daemon relaying to a real nginx, and the result
line parses and renders. C{make bench} itself is not part of the tests.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _load(name: str):
    """bench/NAME.py as a module of its own name (bench/ is not a package)."""
    if BENCH not in sys.path:
        sys.path.append(BENCH)  # run.py imports proofgen and report
    spec = importlib.util.spec_from_file_location(f"ets_bench_{name}", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BenchSmokeTests(SynchronousTestCase):
    def setUp(self) -> None:
        missing = [p for p in ("/usr/sbin/nginx", shutil.which("wrk"), shutil.which("taskset")) if not p or not os.path.exists(p)]
        if missing:
            if os.environ.get("CI"):
                self.fail("the benchmark needs nginx, wrk and taskset (scripts/system-deps.sh)")
            raise SkipTest("nginx, wrk or taskset missing")
        self.run_module = _load("run")
        self.report = _load("report")

    def test_proofs_through_wrk(self) -> None:
        """
        One second of the verified-relay case: every request carries its own
        proof, ETS admits each one (no errors), and the line parses.
        """
        bench = self.run_module.Bench(seconds=1, repeat=1)
        self.addCleanup(bench.close)
        nginx = bench.start_nginx()
        port, _ = bench.start_ets(nginx)
        token = bench.mint(port)
        outdir = bench.proofs(port, 8000, token)
        self.assertEqual(sorted(os.listdir(outdir)), ["proofs-1.txt", "proofs-2.txt"])
        result = bench.wrk(f"http://127.0.0.1:{port}{self.run_module.API_PATH}", 4, 1,
                           "proofs.lua", outdir, token, self.run_module.ORIGIN, "POST")
        self.assertGreater(result["requests"], 0)
        self.assertEqual(result["errors"], 0, result)
        self.assertFalse(result["failed"], result)
        self.assertLessEqual(result["sent"], result["proofs"])
        text = self.report.render({
            "seconds": 1, "repeat": 1, "versions": self.run_module.versions(),
            "relay": {"runs": {"ETS verified, 16 conns": [result]}, "rss_kib": {}},
        })
        self.assertIn("| ETS verified, 16 conns |", text)

    def test_exhausted_proofs_fail_the_run(self) -> None:
        """A thread that runs out of proofs makes ETS refuse, and the run is failed."""
        bench = self.run_module.Bench(seconds=1, repeat=1)
        self.addCleanup(bench.close)
        port, _ = bench.start_ets(bench.start_nginx())
        token = bench.mint(port)
        outdir = bench.proofs(port, 4, token)
        result = bench.wrk(f"http://127.0.0.1:{port}{self.run_module.API_PATH}", 2, 1,
                           "proofs.lua", outdir, token, self.run_module.ORIGIN, "POST")
        self.assertTrue(result["failed"], result)
        self.assertGreater(result["status_errors"], 0)

    def test_issuance_case(self) -> None:
        """The issuance case runs `twistd ets` under load, and both of its rows render."""
        bench = self.run_module.Bench(seconds=1, repeat=1)
        self.addCleanup(bench.close)
        [issue] = bench.issue_case()
        [run] = issue["runs"]
        self.assertGreater(run["requests"], 0)
        self.assertEqual(run["errors"], 0, run)
        self.assertRegex(issue["python"], r"^CPython 3\.\d+\.\d+ \(/.+, (static|shared libpython)\)$")
        text = self.report.render({"seconds": 1, "repeat": 1, "versions": self.run_module.versions(),
                                   "issue": issue, "issue_compare": issue})
        self.assertEqual(text.count(f"| POST /tvm/issue, {issue['python']} |"), 2)
        self.assertIn("per repetition (the two daemons take turns, a few seconds apart): 1.00; median 1.00.", text)
