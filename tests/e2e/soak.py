"""
A bounded soak of a real C{twistd -n ets}: mixed traffic from concurrent
clients for a set time, every answer checked, memory and file descriptors
sampled.

The traffic, in turns: good calls, streamed answers (server-sent events),
replays (a good proof sent twice), bad signatures, expired tokens, and
rate-limited bursts from one client address. Calls come from a fixed set of
client addresses (C{X-Forwarded-For} from a trusted proxy), each well under
its rate budget; each burst comes from one address that goes over it.

C{tests/e2e/test_soak.py} runs a short soak in CI. For a long one:

    .venv/bin/python -m tests.e2e.soak --seconds 600

prints the figures (requests, answers by status and code, peak RSS and
descriptors, and their level over the run).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import itertools
import json
import os
import threading
import time
from typing import Any

from ets_twisted import tokens
from ets_twisted.config import load
from tests.e2e.daemon import SIGNING_KEY, UPSTREAM_SECRET, Daemon
from tests.e2e.faulty_upstream import STREAM_EVENTS, FaultyUpstream
from tests.support.proofs import ProofSigner, ath_of

ORIGIN = "https://app.example"
ENV = {
    "ORIGIN_ALLOWLIST": ORIGIN,
    "TVM_JWT_HS256_KEY": SIGNING_KEY,
    "UPSTREAM_SERVICE_SECRET": UPSTREAM_SECRET,
    "TRUSTED_PROXIES": "127.0.0.1/32",
    "RATE_LIMIT_PER_MINUTE": "60",
    "RATE_LIMIT_BURST": "10",
}
#: Each kind of call and the answers it must get, in order.
EXPECTED: dict[str, list[tuple[int, str | None]]] = {
    "good": [(200, None)],
    "stream": [(200, None)],
    "replay": [(200, None), (401, "replay")],
    "bad_signature": [(401, "bad_dpop_sig")],
    "expired": [(401, "invalid_token")],
    "burst": [(200, None)] * 10 + [(429, "rate_limited")] * 5,
}
#: Tokens live 300 s (TOKEN_LIFETIME_SECONDS): a soak longer than that
#: mints again, as the SDK does.
TOKEN_REFRESH_SECONDS = 240.0
KINDS = ["good"] * 5 + ["stream", "replay", "bad_signature", "expired", "burst"]
#: Client addresses: calls cycle through these, so each stays well under
#: its budget (60 a minute) and the live rate-limit keys level off; bursts
#: have their own, each revisited only after its bucket has refilled.
CLIENTS = [f"10.{n // 250}.{n % 250}.1" for n in range(2000)]
BURSTERS = [f"192.0.{n // 250}.{n % 250 + 1}" for n in range(500)]


def sample(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open descriptors) of C{pid}."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    def __init__(self, daemon: Daemon, refresh_seconds: float = TOKEN_REFRESH_SECONDS) -> None:
        self.daemon = daemon
        self.refresh_seconds = refresh_seconds
        self.mints = 0
        self.signer = ProofSigner()
        self.forger = ProofSigner()
        self._token = ""
        self._minted_at = -float("inf")
        config = load({**ENV, "UPSTREAM_BASE_URL": "http://127.0.0.1:9"})
        self.expired, _ = tokens.mint(tokens.KeyRing.from_config(config), jkt=self.signer.thumbprint,
                                      issuer=config.token_issuer, lifetime=60, now=time.time() - 3600)
        self.answers: collections.Counter[tuple[int, str | None]] = collections.Counter()
        self.wrong: list[str] = []
        self.samples: list[tuple[float, int, int]] = []
        self._clients = itertools.cycle(CLIENTS)
        self._bursters = itertools.cycle(BURSTERS)
        self._lock = threading.Lock()

    def token(self) -> str:
        """The current access token, minted again (as the SDK does) well before it expires."""
        with self._lock:
            if time.monotonic() - self._minted_at > self.refresh_seconds:
                status, _, body = self.daemon.json(
                    "POST", "/tvm/issue", {"dpopPublicJwk": self.signer.public_jwk},
                    {"Origin": ORIGIN, "X-Forwarded-For": "198.51.100.1"})
                assert status == 200, body
                self._token, self._minted_at = body["accessToken"], time.monotonic()
                self.mints += 1
            return self._token

    def address(self, kind: str) -> str:
        with self._lock:
            return next(self._bursters if kind == "burst" else self._clients)

    def send(self, conn: http.client.HTTPConnection, mode: str, client: str, *,
             token: str, signer: ProofSigner | None = None, proof: str | None = None,
             ) -> tuple[int, str | None, str]:
        path = f"/api/{mode}"
        if proof is None:
            proof = (signer or self.signer).sign("GET", self.daemon.base + path, iat=time.time(),
                                                 ath=ath_of(token))
        conn.request("GET", path, headers={"Origin": ORIGIN, "Authorization": f"DPoP {token}",
                                           "DPoP": proof, "X-Forwarded-For": client})
        answer = conn.getresponse()
        body = answer.read()
        code = None
        if answer.status != 200:
            code = json.loads(body).get("error")
        elif mode == "stream" and body.count(b"data: ") != STREAM_EVENTS:
            code = f"stream with {body.count(b'data: ')} events"
        return answer.status, code, proof

    def one(self, conn: http.client.HTTPConnection, kind: str) -> list[tuple[int, str | None]]:
        """One call of C{kind} (several requests for replays and bursts)."""
        client = self.address(kind)
        token = self.expired if kind == "expired" else self.token()
        if kind == "replay":
            status, code, proof = self.send(conn, "ok", client, token=token)
            return [(status, code), self.send(conn, "ok", client, token=token, proof=proof)[:2]]
        if kind == "bad_signature":
            header = self.signer.sign("GET", self.daemon.base + "/api/ok", iat=time.time()).split(".")[0]
            forged = self.forger.sign("GET", self.daemon.base + "/api/ok", iat=time.time(),
                                      ath=ath_of(token)).split(".", 1)[1]
            return [self.send(conn, "ok", client, token=token, proof=f"{header}.{forged}")[:2]]
        mode = "stream" if kind == "stream" else "ok"
        count = len(EXPECTED[kind])
        return [self.send(conn, mode, client, token=token)[:2] for _ in range(count)]

    def client(self, deadline: float, offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.daemon.port, timeout=15)
        kinds = itertools.islice(itertools.cycle(KINDS), offset, None)
        try:
            while time.monotonic() < deadline:
                kind = next(kinds)
                got = self.one(conn, kind)
                with self._lock:
                    self.answers.update(got)
                    if got != EXPECTED[kind]:
                        self.wrong.append(f"{kind}: {got}")
        finally:
            conn.close()

    def run(self, seconds: float, clients: int = 6, every: float = 1.0) -> None:
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=self.client, args=(deadline, n)) for n in range(clients)]
        for t in threads:
            t.start()
        started = time.monotonic()
        while any(t.is_alive() for t in threads):
            self.samples.append((time.monotonic() - started, *sample(self.daemon.process.pid)))
            time.sleep(every)
        for t in threads:
            t.join()

    def report(self) -> dict[str, Any]:
        third = max(1, len(self.samples) // 3)
        first, last = self.samples[:third], self.samples[-third:]
        return {
            "requests": sum(self.answers.values()),
            "answers": {f"{s} {c or ''}".strip(): n for (s, c), n in sorted(self.answers.items(), key=str)},
            "wrong": len(self.wrong),
            "tokens_minted": self.mints,
            "peak_rss_kib": max(r for _, r, _ in self.samples),
            "peak_fds": max(f for _, _, f in self.samples),
            "rss_kib_first_third_max": max(r for _, r, _ in first),
            "rss_kib_last_third_max": max(r for _, r, _ in last),
            "fds_first_third_max": max(f for _, _, f in first),
            "fds_last_third_max": max(f for _, _, f in last),
            # The level over the run: the largest RSS and descriptor count
            # of each minute.
            "rss_kib_by_minute": [max(r for t, r, _ in self.samples if int(t // 60) == m)
                                  for m in sorted({int(t // 60) for t, _, _ in self.samples})],
            "fds_by_minute": [max(f for t, _, f in self.samples if int(t // 60) == m)
                              for m in sorted({int(t // 60) for t, _, _ in self.samples})],
        }


def start(upstream: FaultyUpstream) -> Daemon:
    return Daemon({**ENV, "UPSTREAM_BASE_URL": upstream.base}).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--clients", type=int, default=6)
    args = parser.parse_args()
    upstream = FaultyUpstream()
    daemon = start(upstream)
    try:
        soak = Soak(daemon)
        soak.run(args.seconds, args.clients, every=5.0)
        print(json.dumps(soak.report(), indent=2))
        for line in soak.wrong[:20]:
            print("WRONG", line)
    finally:
        print("daemon exit status", daemon.stop())
        upstream.close()


if __name__ == "__main__":
    main()
