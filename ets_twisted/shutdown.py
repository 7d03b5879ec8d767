"""
Graceful shutdown: on SIGTERM stop accepting, let in-flight requests finish
for up to C{SHUTDOWN_GRACE_SECONDS}, then stop with exit status 0.

twistd's own SIGTERM handler stops the reactor at once and makes the process
die of the signal; operators (and their supervisors) expect a drain and a
clean exit instead.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.web.server import Request

log = Logger()


class Drain:
    """
    Counts requests in flight; L{idle} fires when none are left.

    @ivar draining: True once shutdown began; C{/ready} answers 503 then.
    """

    def __init__(self) -> None:
        self.active = 0
        self.draining = False
        self._waiters: list[Deferred[None]] = []

    def track(self, request: Request) -> None:
        """Count C{request} until it is finished or its client goes away."""
        self.active += 1
        request.notifyFinish().addBoth(self._finished)

    def _finished(self, _: object) -> None:
        self.active -= 1
        if self.active == 0:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def idle(self, clock: Any, grace: float) -> Deferred[None]:
        """Fire when no request is in flight, or after C{grace} seconds."""
        if self.active == 0:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d.addTimeout(grace, clock, onTimeoutCancel=lambda *_: None)


class GracefulShutdown(Service):
    """
    Owns the listening service; installs the SIGTERM handler once the
    reactor runs, and drains before the rest of the services stop.

    @param listener: the service that owns the listening socket; stopped
        first, so new connections are refused while in-flight ones finish.
    """

    def __init__(self, reactor: Any, drain: Drain, listener: IService, grace: float) -> None:
        self._reactor = reactor
        self._drain = drain
        self._listener = listener
        self._grace = grace

    def startService(self) -> None:
        super().startService()
        self._listener.startService()
        self._reactor.callWhenRunning(self._install)
        self._reactor.addSystemEventTrigger("before", "shutdown", self._before_shutdown)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._stop_listening()

    def _stop_listening(self) -> Deferred[None]:
        if not self._listener.running:
            return succeed(None)
        return maybeDeferred(self._listener.stopService)

    def _install(self) -> None:
        # After the reactor's own handlers, which it installs while starting.
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        log.info("SIGTERM: draining for up to {grace} s", grace=self._grace)
        self._reactor.callFromThread(self._reactor.stop)

    def _before_shutdown(self) -> Deferred[None]:
        self._drain.draining = True
        return self._stop_listening().addCallback(lambda _: self._drain.idle(self._reactor, self._grace))
