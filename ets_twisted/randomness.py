"""
Random bytes for the ids minted on every request (request ids, token
C{jti}s).

Each C{os.urandom} call is a system call, and an issuance made two of them
(a few per cent of its CPU time on a VM). These come from the same source,
drawn 4 KiB at a time. Like the rest of ETS they are taken in the reactor
thread only. Worker processes are started afresh (not forked), so no two
processes share a pool.
"""

from __future__ import annotations

import os

_POOL_SIZE = 4096
_pool = b""
_offset = 0


def random_bytes(n: int) -> bytes:
    """C{n} bytes from the operating system's random source (n <= 4096)."""
    global _pool, _offset
    if _offset + n > len(_pool):
        _pool, _offset = os.urandom(_POOL_SIZE), 0
    start = _offset
    _offset = start + n
    return _pool[start:_offset]
