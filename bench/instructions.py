"""
User-space instructions per issuance of a real `twistd ets`, counted by
valgrind's callgrind: a figure that does not move with the machine's load
(the wall-clock figures of `make bench` move by a fifth from one minute to
the next on a shared VM), for comparing two builds of ETS.

    python bench/instructions.py [TWISTD] [N]

TWISTD is the twistd of a venv with ETS installed (default: this
interpreter's); N issuances (default 1000) are sent over 8 keep-alive
connections. The daemon is run twice under callgrind, with 200 and with
200 + N requests, and the difference is divided by N, so start-up and
shutdown cancel out. Kernel work (the socket system calls) is not counted.
About a minute and a half. Not part of `make bench`: it needs valgrind.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import ORIGIN, SIGNING_KEY, clean_env, free_port  # noqa: E402

CONNECTIONS = 8
WARM = 200


def issue(port: int, count: int, jwk: dict) -> None:
    """C{count} issuances over CONNECTIONS connections; raise unless every answer is 200."""
    body = json.dumps({"dpopPublicJwk": jwk})
    failures: list[int] = []

    def client(n: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        for _ in range(n):
            connection.request("POST", "/tvm/issue", body, {"Origin": ORIGIN, "Content-Type": "application/json"})
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                failures.append(answer.status)
        connection.close()

    threads = [threading.Thread(target=client, args=(count // CONNECTIONS,)) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} issuances failed: {sorted(set(failures))}")


def instructions(twistd: str, count: int, jwk: dict) -> int:
    """Instructions callgrind counts in a daemon that answers C{count} issuances."""
    port = free_port()
    env = clean_env({
        "ORIGIN_ALLOWLIST": ORIGIN, "TVM_JWT_HS256_KEY": SIGNING_KEY,
        "UPSTREAM_BASE_URL": "http://127.0.0.1:9", "UPSTREAM_SERVICE_SECRET": "bench",
        "LISTEN_ADDR": f"tcp:{port}:interface=127.0.0.1",
        "RATE_LIMIT_PER_MINUTE": "1000000", "RATE_LIMIT_BURST": "1000000",
    })
    with tempfile.TemporaryFile("w+") as log:
        daemon = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", twistd, "-n", "--pidfile=", "ets"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tempfile.gettempdir())
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if daemon.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("ETS did not start under valgrind")
                    time.sleep(0.2)
            issue(port, count, jwk)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(300)
        log.seek(0)
        found = re.search(r"Collected : ([\d,]+)", log.read())
    if found is None:
        raise RuntimeError("callgrind printed no total")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    import proofgen

    twistd = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(os.path.dirname(sys.executable), "twistd")
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    with tempfile.TemporaryDirectory() as tmp:
        jwk = proofgen.public_jwk(proofgen.new_key(os.path.join(tmp, "client.pem")))
    base = instructions(twistd, WARM, jwk)
    loaded = instructions(twistd, WARM + count, jwk)
    print(f"{twistd}: {(loaded - base) / count:,.0f} user-space instructions per issuance "
          f"({count} issuances, {CONNECTIONS} connections)")


if __name__ == "__main__":
    main()
