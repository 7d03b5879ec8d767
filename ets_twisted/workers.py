"""
C{WORKERS=N}: one master process, N worker processes on one listening socket.

The master opens the listening socket (so it may bind a privileged port
before twistd drops privileges), never accepts on it, and starts N copies
of C{twistd -n ets} that inherit it (C{childFDs}) and adopt it with
C{reactor.adoptStreamPort}: the kernel hands each new connection to one of
them. The master restarts a worker that dies, passes SIGTERM on to every
worker (each drains as L{ets_twisted.shutdown} does) and exits 0 once all
have stopped.

A worker learns its socket from C{ETS_WORKER_SOCKET} (C{fd:family}) in its
environment, set by the master only; it takes the configuration from its
environment, into which the master copies the command-line options. A
worker whose master is gone (killed with SIGKILL, say) stops by itself.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Mapping

import attr

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .shutdown import cannot_listen

log = Logger()

#: Environment variables the master sets for its workers (internal: not
#: configuration, and not in the SPEC's table).
SOCKET_ENV = "ETS_WORKER_SOCKET"
PARENT_ENV = "ETS_WORKER_PARENT"

#: The answer header naming the worker process that answered (WORKERS > 1).
WORKER_HEADER = b"x-ets-worker"

#: A worker that dies within this many seconds of its start is restarted
#: after a growing delay (up to L{MAX_RESTART_DELAY}), so a worker that
#: cannot start does not spin the master; one that ran longer is restarted
#: at once.
QUICK_DEATH = 5.0
MAX_RESTART_DELAY = 10.0

#: Seconds the master waits for its workers after passing SIGTERM on,
#: beyond their own drain time, before it kills them.
STOP_MARGIN = 5.0

_FAMILIES = {IPv4Address: socket.AF_INET, IPv6Address: socket.AF_INET6, UNIXAddress: socket.AF_UNIX}


@attr.s(frozen=True, auto_attribs=True)
class WorkerSocket:
    """
    What a worker inherits from its master.

    @ivar fd: the listening socket's file descriptor.
    @ivar family: its address family (C{socket.AF_INET}, ...).
    @ivar parent: the master's pid, or None when unknown.
    """

    fd: int
    family: int
    parent: int | None


def worker_socket(environ: Mapping[str, str]) -> WorkerSocket | None:
    """
    The inherited listening socket of a worker, or None in a process the
    master did not start.
    """
    value = environ.get(SOCKET_ENV)
    if not value:
        return None
    fd, family = value.split(":")
    parent = environ.get(PARENT_ENV)
    return WorkerSocket(int(fd), int(family), int(parent) if parent else None)


def worker_environment(environ: Mapping[str, str], options: Mapping[str, str | None]) -> dict[str, str]:
    """
    The environment of a worker: the master's, with every C{twistd ets}
    option given on the command line copied into its variable (an option
    wins over the environment, as in the master).
    """
    from .config import VARIABLES

    env = dict(environ)
    for v in VARIABLES:
        value = options.get(v.option)
        if value is not None:
            env[v.env] = value
    return env


class _Worker(ProcessProtocol):
    """One worker process, as the master sees it."""

    def __init__(self, master: Master, slot: int) -> None:
        self.master = master
        self.slot = slot
        self.pid: int | None = None
        self.started = 0.0

    def processEnded(self, reason: Failure) -> None:
        self.master._ended(self, reason)


class Master(Service):
    """
    The master process of C{WORKERS=N}: owns the listening socket and the
    workers.

    @param reactor: provides C{spawnProcess} and time.
    @param listen_addr: the C{LISTEN_ADDR} endpoint string.
    @param count: how many workers to run.
    @param env: the workers' environment (see L{worker_environment}).
    @param grace: C{SHUTDOWN_GRACE_SECONDS}: how long a worker may drain.
    """

    def __init__(self, reactor: Any, listen_addr: str, count: int, env: Mapping[str, str], grace: float) -> None:
        self._reactor = reactor
        self._listen_addr = listen_addr
        self._count = count
        self._env = dict(env)
        self._grace = grace
        self._port: Any = None
        self._workers: dict[int, _Worker] = {}
        self._delays: dict[int, float] = {}
        self._stopping = False
        self._all_ended: list[Deferred[None]] = []

    def privilegedStartService(self) -> None:
        # Bound here, before twistd drops privileges (--uid), like twistd's
        # own listeners; the workers start unprivileged in startService.
        super().privilegedStartService()
        d = serverFromString(self._reactor, self._listen_addr).listen(Factory())
        failures: list[Failure] = []
        d.addCallbacks(self._listening, failures.append)
        if failures:
            cannot_listen(failures[0].getErrorMessage())

    def _listening(self, port: Any) -> None:
        # The master never accepts: every connection goes to a worker.
        port.stopReading()
        self._port = port
        log.info("Master {pid}: listening on {address}", pid=os.getpid(), address=port.getHost())

    def startService(self) -> None:
        if self._port is None:
            self.privilegedStartService()
        super().startService()
        self._reactor.callWhenRunning(self._install)
        for slot in range(self._count):
            self._spawn(slot)

    def _install(self) -> None:
        # twistd's own SIGTERM handler would stop the reactor and then kill
        # the master with the signal again (a non-zero exit); this one
        # stops it, the workers drain, and the master exits 0.
        signal.signal(signal.SIGTERM, lambda *_: self._reactor.callFromThread(self._reactor.stop))

    def _spawn(self, slot: int) -> None:
        if self._stopping:
            return
        fd = self._port.fileno()
        family = _FAMILIES[type(self._port.getHost())]
        env = {**self._env, SOCKET_ENV: f"{fd}:{family}", PARENT_ENV: str(os.getpid())}
        worker = _Worker(self, slot)
        worker.started = self._reactor.seconds()
        # twistd's own entry point, run by this interpreter: the worker is
        # the same `twistd -n ets` whatever the master was started as.
        args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "ets"]
        process = self._reactor.spawnProcess(
            worker, sys.executable, args, env=env, childFDs={0: 0, 1: 1, 2: 2, fd: fd},
        )
        worker.pid = process.pid
        self._workers[slot] = worker
        log.info("Master: started worker {pid} ({slot} of {count})",
                 pid=process.pid, slot=slot + 1, count=self._count)

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        if self._workers.get(worker.slot) is worker:
            del self._workers[worker.slot]
        status = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        how = f"signal {sig}" if sig else f"status {status}"
        if self._stopping:
            log.info("Master: worker {pid} stopped ({how})", pid=worker.pid, how=how)
            if not self._workers:
                waiters, self._all_ended = self._all_ended, []
                for d in waiters:
                    d.callback(None)
            return
        lived = self._reactor.seconds() - worker.started
        delay = 0.0
        if lived < QUICK_DEATH:
            delay = min(MAX_RESTART_DELAY, max(0.5, 2 * self._delays.get(worker.slot, 0.25)))
        self._delays[worker.slot] = delay
        log.warn("Master: worker {pid} died ({how}); starting another in {delay:.1f} s",
                 pid=worker.pid, how=how, delay=delay)
        self._reactor.callLater(delay, self._spawn, worker.slot)

    def stopService(self) -> Any:
        super().stopService()
        self._stopping = True
        for worker in list(self._workers.values()):
            self._signal(worker, signal.SIGTERM)
        if self._workers:
            ended: Deferred[None] = Deferred()
            self._all_ended.append(ended)
            killer = self._reactor.callLater(self._grace + STOP_MARGIN, self._kill_all)
            ended.addBoth(lambda r: killer.cancel() if killer.active() else None)
            done: Deferred[None] = ended
        else:
            done = succeed(None)
        return done.addCallback(lambda _: self._close())

    def _kill_all(self) -> None:
        for worker in list(self._workers.values()):
            log.warn("Master: worker {pid} did not stop in time; killing it", pid=worker.pid)
            self._signal(worker, signal.SIGKILL)

    def _signal(self, worker: _Worker, signum: int) -> None:
        if worker.pid is not None:
            try:
                os.kill(worker.pid, signum)
            except ProcessLookupError:
                pass

    def _close(self) -> Any:
        port, self._port = self._port, None
        return port.stopListening() if port is not None else None


class AdoptedPort(Service):
    """
    A worker's listener: the master's socket, adopted. Stopping it stops
    this worker's accepting; the socket stays open in the other processes.
    """

    def __init__(self, reactor: Any, fd: int, family: int, factory: Any) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family
        self._factory = factory
        self._port: Any = None

    def startService(self) -> None:
        super().startService()
        self._port = self._reactor.adoptStreamPort(self._fd, self._family, self._factory)
        # adoptStreamPort works on a duplicate; the inherited one is ours to close.
        os.close(self._fd)

    def stopService(self) -> Any:
        super().stopService()
        port, self._port = self._port, None
        return port.stopListening() if port is not None else None


class OrphanWatch(Service):
    """
    Stops a worker whose master has gone (its parent pid changed): nobody
    would pass SIGTERM on or restart it, and it would hold the port.
    """

    def __init__(self, reactor: Any, parent: int) -> None:
        self._reactor = reactor
        self._parent = parent
        self._loop = LoopingCall(self._check)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        self._loop.start(1.0, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _check(self) -> None:
        if os.getppid() != self._parent:
            log.warn("Worker {pid}: the master is gone; stopping", pid=os.getpid())
            self._loop.stop()
            self._reactor.stop()


def tag_requests(site: Any) -> None:
    """
    Make every answer of C{site} carry L{WORKER_HEADER} with this process's
    pid, so that operators (and tests) can tell which worker answered.
    """
    pid = str(os.getpid()).encode("ascii")
    base = site.requestFactory

    class WorkerRequest(base):  # type: ignore[misc, valid-type]
        def process(self) -> None:
            self.setHeader(WORKER_HEADER, pid)
            super().process()

    site.requestFactory = WorkerRequest
