"""
The ETS benchmark (C{make bench}): runs every case and writes
C{docs/BENCHMARKS.md}.

    python bench/run.py [--out docs/BENCHMARKS.md] [--only CASE,...]

Environment:
  BENCH_SECONDS  length of each wrk run (default 10)
  BENCH_REPEAT   repetitions of each load case; medians are reported (default 3)
  BENCH_PREFILLS comma-separated live replay entries to prefill (default 10000,100000,1000000)
  BENCH_COMPARE_TWISTD  another interpreter's twistd (with ETS installed) whose issuance
                 is measured too, next to this interpreter's (make bench passes the
                 development venv's)

Layout (two cores): ETS and the pass-through baseline pinned to core 0
(C{taskset -c 0}); wrk, nginx (the upstream) and the streaming upstream on
core 1. Everything listens on 127.0.0.1 and every process is started and
stopped here; nginx runs with its own prefix in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import proofgen  # noqa: E402

NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
WRK = os.environ.get("WRK", shutil.which("wrk") or "/usr/bin/wrk")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
ORIGIN = "http://bench.example"
SIGNING_KEY = "bench-signing-key-0123456789-abcdefghijklmnop"
SECRET = "bench-upstream-secret"
# Gateway on core 0, load and upstreams on core 1 (both on 0 on a 1-core machine).
ETS_CORE, LOAD_CORE = "0", ("1" if (os.cpu_count() or 1) > 1 else "0")
WRK_THREADS = 2
API_PATH = "/api/bench"

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{{"ok":true,"items":[1,2,3],"note":"a small JSON answer"}}';
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    from ets_twisted.config import VARIABLES

    dropped = {v.env for v in VARIABLES} | {"PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(extra)
    return env


class Bench:
    def __init__(self, seconds: float, repeat: int, log: Any = sys.stderr) -> None:
        self.seconds = seconds
        self.repeat = repeat
        self.tmp = tempfile.mkdtemp(prefix="ets-bench-")
        os.chmod(self.tmp, 0o755)
        self.processes: list[subprocess.Popen] = []
        self.log = log
        self.key = proofgen.new_key(os.path.join(self.tmp, "client.pem"))
        self.jwk = proofgen.public_jwk(self.key)
        self.rates: dict[str, float] = {}

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.log, flush=True)

    # -- processes ---------------------------------------------------------

    def spawn(self, args: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        out = open(os.path.join(self.tmp, f"{name}.log"), "w")
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.tmp)
        out.close()
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start_nginx(self) -> int:
        port = free_port()
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(self.tmp, d), exist_ok=True)
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(tmp=self.tmp, port=port))
        process = self.spawn(["taskset", "-c", LOAD_CORE, NGINX, "-p", self.tmp, "-c", conf,
                              "-e", os.path.join(self.tmp, "nginx-error.log")], "nginx")
        wait_port(port, process, "nginx")
        return port

    def start_upstream(self) -> int:
        port = free_port()
        process = self.spawn(["taskset", "-c", LOAD_CORE, sys.executable,
                              os.path.join(HERE, "upstream.py"), str(port)], "upstream")
        wait_port(port, process, "streaming upstream")
        return port

    def start_passthrough(self, upstream: int) -> int:
        port = free_port()
        env = clean_env({"PASSTHROUGH_LISTEN": f"tcp:{port}:interface=127.0.0.1",
                         "UPSTREAM": f"http://127.0.0.1:{upstream}"})
        process = self.spawn(["taskset", "-c", ETS_CORE, TWISTD, "-n", "--pidfile=", "-y",
                              os.path.join(HERE, "passthrough.tac")], "passthrough", env)
        wait_port(port, process, "pass-through proxy")
        return port

    def start_redis(self) -> int:
        port = free_port()
        redis = shutil.which("redis-server") or "/usr/bin/redis-server"
        process = self.spawn([redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", self.tmp], "redis")
        wait_port(port, process, "redis-server")
        return port

    def start_ets(self, upstream: int, prefill: int = 0, name: str = "ets", cores: str = ETS_CORE,
                  plugin: bool = False, twistd: str = TWISTD, **extra: str) -> tuple[int, subprocess.Popen]:
        port = free_port()
        env = clean_env({
            "ORIGIN_ALLOWLIST": ORIGIN,
            "TVM_JWT_HS256_KEY": SIGNING_KEY,
            "UPSTREAM_BASE_URL": f"http://127.0.0.1:{upstream}",
            "UPSTREAM_SERVICE_SECRET": SECRET,
            "LISTEN_ADDR": f"tcp:{port}:interface=127.0.0.1",
            "RATE_LIMIT_PER_MINUTE": "1000000",
            "RATE_LIMIT_BURST": "1000000",
            "BENCH_PREFILL": str(prefill),
            **extra,
        })
        # The plugin itself (twistd ets) where nothing is prefilled and the
        # daemon may start worker processes of its own.
        target = ["ets"] if plugin else ["-y", os.path.join(HERE, "ets_prefilled.tac")]
        process = self.spawn(["taskset", "-c", cores, twistd, "-n", "--pidfile=", *target], name, env)
        wait_port(port, process, name)
        return port, process

    # -- requests ----------------------------------------------------------

    def mint(self, port: int) -> str:
        body = json.dumps({"dpopPublicJwk": self.jwk}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/tvm/issue", data=body, method="POST",
                                     headers={"Origin": ORIGIN, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as answer:
            return json.loads(answer.read())["accessToken"]

    def proofs(self, port: int, count: int, token: str, method: str = "POST") -> str:
        outdir = os.path.join(self.tmp, f"proofs-{port}")
        shutil.rmtree(outdir, ignore_errors=True)
        proofgen.write_files(self.key, outdir, count, WRK_THREADS, method,
                             f"http://127.0.0.1:{port}{API_PATH}", token)
        return outdir

    def wrk(self, url: str, connections: int, seconds: float, script: str, *args: str,
            cores: str = LOAD_CORE) -> dict[str, Any]:
        command = ["taskset", "-c", cores, WRK, f"-t{WRK_THREADS}", f"-c{connections}",
                   f"-d{seconds:g}s", "--timeout", "5s", "-s", os.path.join(HERE, script), url, "--", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
        match = re.search(r"^BENCH_RESULT (.*)$", done.stdout, re.M)
        if match is None:
            raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
        result = json.loads(match.group(1))
        result["errors"] = result["status_errors"] + result["socket_errors"]
        result["failed"] = result["errors"] > 0 or result["sent"] > result["proofs"] > 0
        return result

    def load(self, case: str, port: int, connections: int, pid: int, *, ets: bool) -> dict[str, Any]:
        """
        One wrk run of the relay cases: fresh token and proofs for ETS. Also
        the server's CPU time per request (process C{pid}), which stays
        meaningful when something else on the machine takes CPU away.
        """
        url = f"http://127.0.0.1:{port}{API_PATH}"
        if ets:
            token = self.mint(port)
            # Twice the fastest rate seen so far: a thread must not run out.
            expected = max(list(self.rates.values()) + [2000.0])
            count = int(expected * self.seconds * 2) + 4000
            outdir = self.proofs(port, count, token)
            before = cpu_seconds(pid)
            result = self.wrk(url, connections, self.seconds, "proofs.lua", outdir, token, ORIGIN, "POST")
            shutil.rmtree(outdir, ignore_errors=True)
        else:
            outdir = self.static_proof
            before = cpu_seconds(pid)
            result = self.wrk(url, connections, self.seconds, "proofs.lua", outdir, self.static_token,
                              ORIGIN, "POST", "reuse")
        result["cpu_us_per_request"] = 1e6 * (cpu_seconds(pid) - before) / max(1, result["requests"])
        result["cpu_share"] = (cpu_seconds(pid) - before) / (result["duration_us"] / 1e6)
        if not result["failed"] and ets:
            self.rates[case] = result["rps"]
        self.say(f"{case}: {result['rps']:.0f} req/s p50 {result['p50_ms']:.2f} ms "
                 f"p99 {result['p99_ms']:.2f} ms errors {result['errors']} "
                 f"cpu {result['cpu_us_per_request']:.0f} us/req ({100 * result['cpu_share']:.0f}% of a core)"
                 + (f" (proofs {result['proofs']}, sent {result['sent']})" if ets else ""))
        return result

    def warm(self, port: int) -> None:
        token = self.mint(port)
        outdir = self.proofs(port, 4000, token)
        self.wrk(f"http://127.0.0.1:{port}{API_PATH}", 16, 1, "proofs.lua", outdir, token, ORIGIN, "POST")
        shutil.rmtree(outdir, ignore_errors=True)

    # -- cases -------------------------------------------------------------

    def relay_cases(self, prefills: list[int]) -> dict[str, Any]:
        nginx = self.start_nginx()
        nginx_pid = self.processes[-1].pid
        passthrough = self.start_passthrough(nginx)
        passthrough_pid = self.processes[-1].pid
        ets, ets_process = self.start_ets(nginx)
        # The bytes of a real request for the cases that check nothing.
        self.static_token = self.mint(ets)
        self.static_proof = self.proofs(ets, WRK_THREADS, self.static_token)
        self.static_proof = shutil.copytree(self.static_proof, os.path.join(self.tmp, "static-proof"))
        prefilled = {}
        for n in prefills:
            self.say(f"starting ETS with {n} live replay entries")
            port, process = self.start_ets(nginx, n, name=f"ets-{n}")
            prefilled[n] = (port, process)
        for port in [ets] + [p for p, _ in prefilled.values()]:
            self.warm(port)
        self.wrk(f"http://127.0.0.1:{passthrough}{API_PATH}", 16, 1, "proofs.lua", self.static_proof,
                 self.static_token, ORIGIN, "POST", "reuse")
        runs: dict[str, list[dict[str, Any]]] = {}
        for r in range(self.repeat):
            self.say(f"repetition {r + 1}/{self.repeat}")
            plan = [
                ("direct upstream (nginx), 64 conns", nginx, 64, nginx_pid, False),
                ("treq pass-through, 16 conns", passthrough, 16, passthrough_pid, False),
                ("ETS verified, 16 conns", ets, 16, ets_process.pid, True),
                ("treq pass-through, 64 conns", passthrough, 64, passthrough_pid, False),
                ("ETS verified, 64 conns", ets, 64, ets_process.pid, True),
            ] + [(f"ETS verified, {n:,} live replay entries, 64 conns", port, 64, process.pid, True)
                 for n, (port, process) in prefilled.items()]
            for case, port, connections, pid, is_ets in plan:
                runs.setdefault(case, []).append(self.load(case, port, connections, pid, ets=is_ets))
        rss = {n: rss_kib(process.pid) for n, (_, process) in prefilled.items()}
        rss[0] = rss_kib(ets_process.pid)
        return {"runs": runs, "rss_kib": rss}

    def issue_case(self, *twistds: str) -> list[dict[str, Any]]:
        """
        Issuance on each of C{twistds} (default: this interpreter's): one
        daemon each, all pinned to the same core and loaded one at a time,
        taking turns within each repetition so that each ratio between them
        compares runs a few seconds apart.
        """
        nginx = self.start_nginx()
        jwk = json.dumps(self.jwk, separators=(",", ":"))
        daemons = []
        for twistd in twistds or (TWISTD,):
            # `twistd ets` itself: its log writer is the one an operator gets.
            port, process = self.start_ets(nginx, name=f"ets-issue-{len(self.processes)}",
                                           plugin=True, twistd=twistd)
            self.wrk(f"http://127.0.0.1:{port}/tvm/issue", 16, 1, "issue.lua", jwk, ORIGIN)
            daemons.append((port, process, {"runs": [], "python": interpreter(twistd)}))
        for r in range(self.repeat):
            for port, process, case in daemons:
                before = cpu_seconds(process.pid)
                result = self.wrk(f"http://127.0.0.1:{port}/tvm/issue", 64, self.seconds, "issue.lua", jwk, ORIGIN)
                used = cpu_seconds(process.pid) - before
                result["cpu_us_per_request"] = 1e6 * used / max(1, result["requests"])
                result["cpu_share"] = used / (result["duration_us"] / 1e6)
                result["failed"] = result["errors"] > 0
                self.say(f"issue ({case['python']}): {result['rps']:.0f} tokens/s p99 {result['p99_ms']:.2f} ms "
                         f"errors {result['errors']} cpu {result['cpu_us_per_request']:.0f} us/token")
                case["runs"].append(result)
        for _, process, _ in daemons:
            self.stop(process)
        return [case for _, _, case in daemons]

    def scale_case(self) -> dict[str, Any]:
        """
        WORKERS=2 next to WORKERS=1, both on a Redis store. Nothing is pinned
        here: two workers need both cores, which wrk, nginx and Redis share.
        """
        if not (shutil.which("redis-server") or os.path.exists("/usr/bin/redis-server")):
            return {"error": "redis-server is not installed"}
        both = "0,1" if LOAD_CORE != ETS_CORE else ETS_CORE
        nginx = self.start_nginx()
        redis = self.start_redis()
        daemons = {}
        for workers in (1, 2):
            try:
                daemons[workers] = self.start_ets(
                    nginx, name=f"ets-workers-{workers}", cores=both, plugin=True,
                    STORE_URL=f"redis://127.0.0.1:{redis}/{workers}", WORKERS=str(workers))[0]
            except RuntimeError as e:
                with open(os.path.join(self.tmp, f"ets-workers-{workers}.log")) as f:
                    tail = f.read()[-2000:]
                return {"error": f"WORKERS={workers} did not start: {e}\n{tail}"}
        for port in daemons.values():
            self.warm(port)
        runs: dict[str, list[dict[str, Any]]] = {}
        for r in range(self.repeat):
            for workers, port in daemons.items():
                token = self.mint(port)
                expected = max(list(self.rates.values()) + [2000.0]) * workers
                outdir = self.proofs(port, int(expected * self.seconds * 2) + 4000, token)
                result = self.wrk(f"http://127.0.0.1:{port}{API_PATH}", 64, self.seconds, "proofs.lua",
                                  outdir, token, ORIGIN, "POST", cores=both)
                shutil.rmtree(outdir, ignore_errors=True)
                case = f"ETS verified, Redis store, WORKERS={workers}, 64 conns"
                self.say(f"{case}: {result['rps']:.0f} req/s p99 {result['p99_ms']:.2f} ms errors {result['errors']}")
                runs.setdefault(case, []).append(result)
        return {"runs": runs}

    def sse_case(self, events: int = 200, gap_ms: int = 10) -> dict[str, Any]:
        upstream = self.start_upstream()
        port, _ = self.start_ets(upstream, name="ets-sse")
        token = self.mint(port)
        results: dict[str, list[dict[str, float]]] = {"direct": [], "ets": []}
        for r in range(-1, self.repeat):  # -1: a warm-up round, not reported
            for via in ("direct", "ets"):
                target = port if via == "ets" else upstream
                headers = {"Origin": ORIGIN}
                if via == "ets":
                    proof = next(proofgen.proofs(self.key, 1, "GET", f"http://127.0.0.1:{port}/api/sse", token))
                    headers.update({"Authorization": f"DPoP {token}", "DPoP": proof})
                n = events if r >= 0 else 10
                latencies = sse_latencies(target, f"/api/sse?n={n}&gap_ms={gap_ms}", headers)
                if len(latencies) != n:
                    raise RuntimeError(f"SSE via {via}: {len(latencies)} of {n} events")
                if r >= 0:
                    results[via].append(percentiles(latencies))
            if r < 0:
                continue
            self.say(f"sse: direct p99 {results['direct'][-1]['p99_ms']:.3f} ms, "
                     f"ETS p99 {results['ets'][-1]['p99_ms']:.3f} ms")
        return results

    def big_case(self, mib: int = 1024) -> dict[str, Any]:
        upstream = self.start_upstream()
        port, process = self.start_ets(upstream, name="ets-big")
        token = self.mint(port)
        runs = []
        for r in range(self.repeat):
            proof = next(proofgen.proofs(self.key, 1, "GET", f"http://127.0.0.1:{port}/api/big", token))
            before = rss_kib(process.pid)
            peak = [before]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], rss_kib(process.pid))
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.monotonic()
            try:
                status, received = read_all(port, f"/api/big?mib={mib}", {
                    "Origin": ORIGIN, "Authorization": f"DPoP {token}", "DPoP": proof})
            finally:
                stop.set()
                sampler.join()
            elapsed = time.monotonic() - started
            run = {"status": status, "bytes": received, "seconds": elapsed,
                   "rss_before_mib": before / 1024, "rss_peak_mib": peak[0] / 1024,
                   "growth_mib": (peak[0] - before) / 1024,
                   "failed": status != 200 or received != mib * 1024 * 1024}
            self.say(f"1 GiB: {received} bytes in {elapsed:.1f} s, RSS {before / 1024:.1f} -> "
                     f"peak {peak[0] / 1024:.1f} MiB")
            runs.append(run)
        return {"runs": runs}

    def memory_case(self, n: int = 200_000) -> dict[str, Any]:
        script = os.path.join(HERE, "memory_per_entry.py")
        figures = {}
        for kind in ("replay", "limiter"):
            figures[kind] = {
                method: float(subprocess.run(
                    ["taskset", "-c", ETS_CORE, sys.executable, script, kind, method, str(n)],
                    check=True, capture_output=True, text=True, env=clean_env({}),
                ).stdout)
                for method in ("tracemalloc", "rss")
            }
            self.say(f"memory {kind}: {figures[kind]}")
        return {"n": n, "bytes_per_key": figures}


def http_head(port: int, path: str, headers: dict[str, str], method: str = "GET") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def read_head(stream: Any) -> tuple[int, dict[str, str]]:
    status = int(stream.readline().split()[1])
    headers = {}
    while True:
        line = stream.readline().decode("latin-1").strip()
        if not line:
            return status, headers
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()


def sse_latencies(port: int, path: str, headers: dict[str, str]) -> list[float]:
    """Milliseconds from the upstream's write of each event to its arrival here."""
    sock = http_head(port, path, headers)
    stream = sock.makefile("rb", buffering=0)
    status, head = read_head(stream)
    if status != 200:
        raise RuntimeError(f"SSE answered {status}: {stream.read(2000)!r}")
    chunked = head.get("transfer-encoding", "").lower() == "chunked"
    latencies = []
    buffer = b""
    while True:
        if chunked:
            size = int(stream.readline().strip(), 16)
            if size == 0:
                break
            data = b""
            while len(data) < size + 2:
                data += stream.read(size + 2 - len(data))
            data = data[:-2]
        else:
            data = stream.read(65536)
            if not data:
                break
        now = time.monotonic_ns()
        buffer += data
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if event.startswith(b"data: "):
                latencies.append((now - int(event[6:])) / 1e6)
    sock.close()
    return latencies


def read_all(port: int, path: str, headers: dict[str, str]) -> tuple[int, int]:
    """Read a Content-Length or chunked answer as fast as possible; (status, body bytes)."""
    sock = http_head(port, path, headers)
    stream = sock.makefile("rb")
    status, head = read_head(stream)
    received = 0
    buffer = bytearray(1024 * 1024)
    if "content-length" in head:
        left = int(head["content-length"])
        while left:
            n = stream.readinto(memoryview(buffer)[: min(left, len(buffer))])
            if not n:
                break
            received += n
            left -= n
    else:
        while True:
            size = int(stream.readline().strip(), 16)
            if size == 0:
                break
            left = size
            while left:
                n = stream.readinto(memoryview(buffer)[: min(left, len(buffer))])
                if not n:
                    raise RuntimeError("cut mid-chunk")
                left -= n
            received += size
            stream.readline()
    sock.close()
    return status, received


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": ordered[-1]}


def interpreter(twistd: str) -> str:
    """
    The Python that runs C{twistd} (a venv's script): version, path, and
    whether it is linked to a shared libpython (slower: position-independent
    interpreter code) or is one static binary.
    """
    python = os.path.join(os.path.dirname(twistd), "python")
    code = ("import os, sys; maps = open('/proc/self/maps').read(); "
            "print(sys.version.split()[0], os.path.realpath(sys.executable), "
            "'shared libpython' if 'libpython' in maps else 'static')")
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30)
        version, path, linked = done.stdout.split(" ", 2)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return "?"
    return f"CPython {version} ({path}, {linked.strip()})"


def versions() -> dict[str, str]:
    import cryptography
    import treq
    import twisted

    def first_line(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    wanted = ("Architecture", "CPU(s)", "Model name", "Thread(s) per core", "Hypervisor vendor", "L2 cache", "L3 cache")
    return {
        "lscpu": "\n".join(line for line in lscpu.splitlines() if line.split(":")[0].strip() in wanted),
        "kernel": platform.release(),
        "python": interpreter(TWISTD),
        "twisted": twisted.__version__,
        "treq": treq.__version__,
        "cryptography": cryptography.__version__,
        "nginx": first_line([NGINX, "-v"]),
        "wrk": first_line([WRK, "-v"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--only", default="relay,issue,sse,big,memory,scale")
    args = parser.parse_args()
    seconds = float(os.environ.get("BENCH_SECONDS", "10"))
    repeat = int(os.environ.get("BENCH_REPEAT", "3"))
    prefills = [int(n) for n in os.environ.get("BENCH_PREFILLS", "10000,100000,1000000").split(",") if n]
    only = set(args.only.split(","))
    bench = Bench(seconds, repeat)
    started = time.monotonic()
    results: dict[str, Any] = {"seconds": seconds, "repeat": repeat, "versions": versions()}
    try:
        if "memory" in only:
            results["memory"] = bench.memory_case()
        if "relay" in only:
            results["relay"] = bench.relay_cases(prefills)
        if "issue" in only:
            other = os.environ.get("BENCH_COMPARE_TWISTD")
            if other and os.path.exists(other) and os.path.realpath(other) != os.path.realpath(TWISTD):
                results["issue"], results["issue_compare"] = bench.issue_case(TWISTD, other)
            else:
                [results["issue"]] = bench.issue_case()
        if "sse" in only:
            results["sse"] = bench.sse_case()
        if "big" in only:
            results["big"] = bench.big_case()
        if "scale" in only:
            try:
                results["scale"] = bench.scale_case()
            except RuntimeError as e:  # the scale-out case must not sink the rest
                results["scale"] = {"error": str(e)}
    finally:
        bench.close()
    results["elapsed_s"] = time.monotonic() - started
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    import report

    with open(args.out, "w") as f:
        f.write(report.render(results))
    bench.say(f"wrote {args.out} in {results['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
