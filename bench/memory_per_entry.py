"""
Bytes of memory per live replay entry and per active rate-limit key of the
C{memory:} store.

Usage::

    python bench/memory_per_entry.py [N]

Inserts N (default 200000) fresh keys into each store, all still live, and
prints the growth per key twice: as C{tracemalloc} counts it (bytes the
program asked for) and as the resident set grows (pages the allocator
touched, read from C{/proc/self/statm}). Each figure comes from a fresh
child process, since tracemalloc's own bookkeeping would swell the resident
set and memory freed by one run would be reused by the next.
"""

from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import sys
import tracemalloc
from typing import Callable

# Run as a script from the checkout: make ets_twisted importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402

from ets_twisted.stores import rate_key  # noqa: E402
from ets_twisted.stores.memory import MemoryStore  # noqa: E402


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _filler(kind: str, store: MemoryStore) -> Callable[[int], object]:
    if kind == "replay":
        # The caller's key: a 16-byte digest of the proof key and jti.
        return lambda n: store.replay.insert(
            hashlib.blake2b(n.to_bytes(8, "big"), digest_size=16).digest(), 300
        )
    return lambda n: store.limiter.take(
        rate_key("api", "https://app.example", f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"),
        60,
        60,
    )


def measure(kind: str, method: str, n: int) -> float:
    """
    Fill a fresh store of C{kind} with C{n} keys.

    @return: the bytes per key by C{method}, C{"tracemalloc"} or C{"rss"}.
    """
    # A fixed clock: every key is still live when the count is taken.
    store = MemoryStore(Clock())
    fill = _filler(kind, store)
    fill(n)  # a warm-up key, not counted: the stores make their first slot
    gc.collect()
    if method == "tracemalloc":
        tracemalloc.start()
        read = lambda: tracemalloc.get_traced_memory()[0]  # noqa: E731
    else:
        read = _rss
    before = read()
    for i in range(n):
        fill(i)
    gc.collect()
    after = read()
    held = len(store.replay) if kind == "replay" else len(store.limiter)
    assert held == n + 1, held
    return (after - before) / n


def main() -> None:
    if len(sys.argv) == 4:
        kind, method, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        print(measure(kind, method, n))
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    print(f"{n} live keys each, bytes per key")
    print(f"{'store':<10} {'tracemalloc':>12} {'RSS':>8}")
    for kind in ("replay", "limiter"):
        figures = [
            float(
                subprocess.run(
                    [sys.executable, __file__, kind, method, str(n)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            for method in ("tracemalloc", "rss")
        ]
        print(f"{kind:<10} {figures[0]:>12.1f} {figures[1]:>8.1f}")


if __name__ == "__main__":
    main()
