"""
Graceful shutdown: on SIGTERM stop accepting, let in-flight requests finish
for up to C{SHUTDOWN_GRACE_SECONDS}, then stop with exit status 0.

twistd's own SIGTERM handler stops the reactor at once and makes the process
die of the signal; operators (and their supervisors) expect a drain and a
clean exit instead.
"""

from __future__ import annotations

import signal
import sys
import weakref
from typing import Any, NoReturn

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.server import Request

log = Logger()


def cannot_listen(reason: str) -> NoReturn:
    """
    Stop the start of a process that cannot bind C{LISTEN_ADDR}: one line
    and a non-zero exit, as for bad configuration, rather than a process
    that runs without listening.
    """
    sys.__stderr__.write(f"ets: cannot listen on LISTEN_ADDR: {reason}\n")
    raise SystemExit(1)


class Drain:
    """
    Counts requests in flight; L{idle} fires when none are left.

    @ivar draining: True once shutdown began; C{/ready} answers 503 then.
    """

    def __init__(self) -> None:
        self.active = 0
        self.draining = False
        self._waiters: list[Deferred[None]] = []
        # The connections that carried a request, closed after the drain.
        self._channels: weakref.WeakSet[Any] = weakref.WeakSet()

    def track(self, request: Request, finished: Deferred[None] | None = None) -> None:
        """
        Count C{request} until it is finished or its client goes away.

        @param finished: its C{notifyFinish()} when the caller has one
            already (one Deferred per request rather than two).
        """
        self.active += 1
        self._channels.add(request.channel)
        (request.notifyFinish() if finished is None else finished).addBoth(self._finished)

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

    async def close_connections(self, clock: Any, bound: float) -> None:
        """
        Close every open connection once its pending output is written, and
        wait up to C{bound} seconds for them to go. The reactor's own
        shutdown drops connections without writing what is buffered: the end
        of an answer that just finished would be lost.
        """
        open_ = [c for c in self._channels if _is_open(c)]
        for channel in open_:
            channel.transport.loseConnection()
        waited = 0.0
        while waited < bound and any(_is_open(c) for c in open_):
            await deferLater(clock, 0.02, lambda: None)
            waited += 0.02


def _is_open(channel: Any) -> bool:
    transport = getattr(channel, "transport", None)
    return transport is not None and not getattr(transport, "disconnected", True)


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
        self._stopping: Deferred[None] | None = None

    def privilegedStartService(self) -> None:
        # Bound here, before twistd drops privileges (--uid), as twistd's
        # own listeners are.
        super().privilegedStartService()
        try:
            self._listener.privilegedStartService()
        except (CannotListenError, OSError) as e:
            cannot_listen(str(e))

    def startService(self) -> None:
        super().startService()
        self._listener.startService()
        self._reactor.callWhenRunning(self._install)
        self._reactor.addSystemEventTrigger("before", "shutdown", self._before_shutdown)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._stop_listening()

    def _stop_listening(self) -> Deferred[None]:
        # Called twice on SIGTERM (the drain trigger and twistd's own
        # stopService, both "before shutdown"): the listener is stopped once,
        # and both wait for it. Stopping it a second time while the first
        # stop is under way fails, which used to end the drain at once.
        if self._stopping is None:
            self._stopping = (
                maybeDeferred(self._listener.stopService) if self._listener.running else succeed(None)
            )
            self._stopping.addErrback(lambda f: log.failure("Stopping the listener failed", f))
        stopped: Deferred[None] = Deferred()
        self._stopping.addBoth(lambda _: stopped.callback(None))
        return stopped

    def _install(self) -> None:
        # After the reactor's own handlers, which it installs while starting.
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        log.info("SIGTERM: draining for up to {grace} s", grace=self._grace)
        self._reactor.callFromThread(self._reactor.stop)

    def _before_shutdown(self) -> Deferred[None]:
        self._drain.draining = True
        d = self._stop_listening()
        d.addCallback(lambda _: self._drain.idle(self._reactor, self._grace))
        d.addCallback(lambda _: Deferred.fromCoroutine(self._drain.close_connections(self._reactor, 1.0)))
        return d
