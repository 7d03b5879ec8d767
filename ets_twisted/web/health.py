"""C{/health} (liveness, no I/O) and C{/ready} (the store answers)."""

from __future__ import annotations

from typing import Callable

import attr
from twisted.web.server import Request

from ..stores import IStore
from .answers import render_async, write_json


def _get_or_head(request: Request) -> bytes | None:
    if request.method in (b"GET", b"HEAD"):
        return None
    request.setHeader(b"allow", b"GET, HEAD")
    return write_json(request, 405, {"error": "method_not_allowed"})


class HealthRoute:
    """Liveness: the process answers. Deliberately touches nothing else."""

    def render(self, request: Request) -> bytes:
        refused = _get_or_head(request)
        if refused is not None:
            return refused
        request.setHeader(b"cache-control", b"no-store")
        return write_json(request, 200, {"status": "ok"})


@attr.s(frozen=True, auto_attribs=True)
class ReadyRoute:
    """
    Readiness: 200 when the store answers a ping, 503 otherwise, and 503
    while C{draining()} says the process is shutting down.
    """

    store: IStore
    draining: Callable[[], bool] = lambda: False

    def render(self, request: Request) -> object:
        refused = _get_or_head(request)
        if refused is not None:
            return refused
        request.setHeader(b"cache-control", b"no-store")

        async def check() -> bytes:
            if not self.draining():
                try:
                    await self.store.ping()
                except Exception:
                    pass
                else:
                    return write_json(request, 200, {"status": "ok"})
            return write_json(request, 503, {"status": "unavailable"})

        return render_async(request, check, "")
