"""
The C{redis://} store: the replay cache and the rate-limit buckets shared by
every ETS process (and host) that names the same Redis.

Both promises hold across processes because each is one atomic Redis
operation: a proof is recorded with C{SET key 1 NX PX ttl} (only the first
process to record it gets C{OK}), and a bucket is read and updated by one
server-side Lua script (L{BUCKET_SCRIPT}), which Redis runs with nothing
else interleaved.

Key layout (C{STORE_KEY_PREFIX} defaults to C{ets:}); the callers hand in
16-byte digests, so no key holds a raw IP address, origin or C{jti}:

  - C{<prefix>replay:<32 hex digits>}: a used proof, value C{1}, expiring
    with the proof's acceptance window;
  - C{<prefix>rate:<32 hex digits>}: a bucket's theoretical arrival time
    (GCRA, microseconds of Redis time), expiring when the bucket is full.

Failure: every operation is bounded by C{timeout} (waiting for a
connection, sending, the reply), and fails with L{StoreUnavailable}; the
web layer answers C{503 store_unavailable}. Once an operation has failed
and no connection is open, later ones fail at once instead of each waiting
out the timeout. txredisapi reconnects in the background with exponential
back-off (L{RECONNECT_INITIAL_DELAY} up to L{RECONNECT_MAX_DELAY}), so ETS
recovers by itself when Redis is back.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import attr
from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, fail, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from . import IRateLimiter, IReplayCache, IStore, RateDecision, StoreUnavailable

log = Logger()

#: Seconds any one Redis operation may take, from asking for a connection
#: to the reply. A request waits at most this long for the store, then gets
#: 503: long enough for a loaded Redis across a data centre, short enough
#: that a hung Redis never holds requests for long.
OPERATION_TIMEOUT = 1.0

#: Reconnection back-off, seconds: the first retry after a lost connection,
#: and the ceiling (txredisapi multiplies by e, with jitter, in between).
#: A short ceiling brings ETS back within seconds of Redis returning.
RECONNECT_INITIAL_DELAY = 0.2
RECONNECT_MAX_DELAY = 3.0

#: Connections per process. txredisapi pipelines every command of ours on
#: the first connection of its pool, so more would only be idle spares.
POOL_SIZE = 1

#: The token bucket, as GCRA on one key, in microseconds of Redis's clock.
#:
#: Redis's own TIME is the clock: every process on every host then reads
#: the same clock, so skew between ETS hosts cannot give a client extra
#: tokens. (Redis >= 5 replicates a script's effects, not the script, so a
#: script that reads TIME and then writes is safe to replicate.)
#:
#: The arithmetic is L{ets_twisted.stores.memory.MemoryRateLimiter}'s, in
#: microseconds instead of seconds; the TAT is stored with 17 significant
#: digits so it survives the round trip through a string exactly.
#:
#: KEYS[1]: the bucket. ARGV[1]: rate per minute. ARGV[2]: burst.
#: Returns {allowed (0/1), remaining, reset, retry_after}.
BUCKET_SCRIPT = b"""
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = 60000000 / tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local slack = 0.001 * interval
local tat = tonumber(redis.call('GET', KEYS[1]))
local start = now
if tat and tat > now then start = tat end
local allowed = 0
if start - now <= (burst - 1) * interval + slack then
  allowed = 1
  start = start + interval
  redis.call('SET', KEYS[1], string.format('%.17g', start),
             'PX', math.max(1, math.ceil((start - now) / 1000)))
end
local owed = start - now
local remaining = math.max(0, math.floor((burst * interval - owed + slack) / interval))
local reset = math.max(0, math.ceil((owed - slack) / 1000000))
local retry = math.max(1, math.ceil((owed - (burst - 1) * interval - slack) / 1000000))
return {allowed, remaining, reset, retry}
"""

BUCKET_SHA = hashlib.sha1(BUCKET_SCRIPT).hexdigest()


@attr.s(frozen=True, auto_attribs=True, repr=False)
class RedisAddress:
    """
    Where the Redis of a C{redis[s]://} URL is.

    The repr hides the password: addresses may end up in log lines.
    """

    host: str
    port: int
    db: int
    tls: bool
    username: str | None
    password: str | None

    def __repr__(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"<RedisAddress {scheme}://{self.host}:{self.port}/{self.db}>"


def parse_url(url: str) -> RedisAddress:
    """
    Split a C{STORE_URL} already validated by L{ets_twisted.config}.

    @raise ValueError: not a C{redis://} or C{rediss://} URL; the message
        never quotes the URL (it may hold a password).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("STORE_URL must be redis[s]://[[user]:password@]host[:port][/db]")
    path = parts.path.strip("/")
    return RedisAddress(
        host=parts.hostname,
        port=parts.port or 6379,
        db=int(path) if path else 0,
        tls=scheme == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


@implementer(IReplayCache)
@attr.s(frozen=True, auto_attribs=True)
class RedisReplayCache:
    """Used proofs as keys set with C{SET NX PX}."""

    _store: RedisStore

    def insert(self, key: bytes, ttl: float) -> Deferred[bool]:
        # Whole milliseconds, rounded up: never shorter than asked.
        ttl_ms = max(1, math.ceil(ttl * 1000))
        d = self._store.command("SET", self._store.key("replay", key), "1", "PX", ttl_ms, "NX")
        # SET NX answers OK when it set the key, nil when the key existed.
        return d.addCallback(lambda reply: reply is not None)


@implementer(IRateLimiter)
@attr.s(frozen=True, auto_attribs=True)
class RedisRateLimiter:
    """Token buckets updated by L{BUCKET_SCRIPT}, one key each."""

    _store: RedisStore

    def take(self, key: bytes, rate_per_minute: int, burst: int) -> Deferred[RateDecision]:
        if rate_per_minute < 1 or burst < 1:
            raise ValueError("rate_per_minute and burst must be at least 1")
        d = self._store.script(self._store.key("rate", key), rate_per_minute, burst)

        def decided(reply: list[int]) -> RateDecision:
            allowed, remaining, reset, retry_after = (int(v) for v in reply)
            return RateDecision(
                allowed=bool(allowed), limit=burst, remaining=remaining,
                reset=reset, retry_after=retry_after,
            )

        return d.addCallback(decided)


@implementer(IStore)
class RedisStore(Service):
    """
    The Redis store, as a service: it connects when started and
    disconnects when stopped.

    @ivar replay: the L{RedisReplayCache}.
    @ivar limiter: the L{RedisRateLimiter}.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        reactor: Any,
        timeout: float = OPERATION_TIMEOUT,
        tls_options: Callable[[str], Any] | None = None,
    ) -> None:
        """
        @param url: the C{STORE_URL}.
        @param prefix: the C{STORE_KEY_PREFIX}.
        @param reactor: the reactor, for timeouts.
        @param timeout: seconds each operation may take.
        @param tls_options: makes the TLS client options for a host name,
            for C{rediss://}; by default Twisted's C{optionsForClientTLS}
            (the system's trust roots, the host name checked).
        """
        self.address = parse_url(url)
        self._prefix = prefix.encode("utf-8")
        self._reactor = reactor
        self._timeout = timeout
        self._tls_options = tls_options
        self._redis: Any = None
        # Set when an operation failed: while it is set and no connection
        # is open, Redis is known to be away and operations fail at once.
        # Without a failure, a missing connection may just be reconnecting
        # (Redis or a proxy closed an idle one): operations wait for it,
        # within the timeout.
        self._failing = False
        self.replay = RedisReplayCache(self)
        self.limiter = RedisRateLimiter(self)

    def key(self, kind: str, digest: bytes) -> bytes:
        """The Redis key of a digest of the given kind."""
        return self._prefix + kind.encode("ascii") + b":" + digest.hex().encode("ascii")

    def startService(self) -> None:
        super().startService()
        import txredisapi  # it imports the global reactor: not at module level

        a = self.address
        tls: Any = False
        if a.tls:
            if self._tls_options is None:
                from twisted.internet.ssl import optionsForClientTLS

                tls = optionsForClientTLS(a.host)
            else:
                tls = self._tls_options(a.host)
        factory = _factory_class()(
            f"{a.host}:{a.port}", a.db or None, POOL_SIZE, True, txredisapi.ConnectionHandler,
            "utf-8", a.password, self._timeout, True, a.username,
        )
        factory.reconnect = True
        # txredisapi reports a failed first connection on this Deferred,
        # which a lazy pool's user never waits for; operations report it.
        factory.deferred.addErrback(lambda _: None)
        endpoint: Any = HostnameEndpoint(self._reactor, a.host, a.port, timeout=self._timeout)
        if tls:
            endpoint = _TLSEndpoint(endpoint, tls)
        factory.startConnecting(endpoint)
        self._redis = factory.handler
        log.info("Store: {address!r}", address=a)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        redis, self._redis = self._redis, None
        if redis is None:
            return None
        # Bounded like every operation: a hung Redis must not hold up the
        # shutdown either.
        d = redis.disconnect().addTimeout(self._timeout, self._reactor)
        return d.addErrback(lambda _: None)

    def command(self, *args: Any) -> Deferred[Any]:
        """
        Run one Redis command, bounded by the timeout.

        @return: a Deferred firing with the reply, or failing with
            L{StoreUnavailable}.
        """
        return self._send(*args).addCallbacks(self._succeeded, self._failed)

    def script(self, key: bytes, *args: Any) -> Deferred[Any]:
        """
        Run L{BUCKET_SCRIPT} on C{key} by its hash; on C{NOSCRIPT} (a
        restarted or flushed Redis forgets scripts) send it whole, which
        also loads it again for the next C{EVALSHA}.

        @return: a Deferred firing with the script's reply, or failing with
            L{StoreUnavailable}.
        """
        import txredisapi

        def unknown(failure: Failure) -> Any:
            if failure.check(txredisapi.ResponseError) and str(failure.value).startswith("NOSCRIPT"):
                return self._send("EVAL", BUCKET_SCRIPT, 1, key, *args)
            return failure

        d = self._send("EVALSHA", BUCKET_SHA, 1, key, *args).addErrback(unknown)
        return d.addCallbacks(self._succeeded, self._failed)

    def _send(self, *args: Any) -> Deferred[Any]:
        redis = self._redis
        if redis is None:
            return fail(StoreUnavailable("the Redis store is not running"))
        if self._failing and redis._factory.size == 0:
            # Known down and not reconnected yet: answer now rather than
            # let every request wait out the timeout.
            return fail(StoreUnavailable("Redis is unreachable"))
        d: Deferred[Any] = redis.execute_command(*args)
        # Covers the wait for a connection too, which txredisapi does not
        # bound while it reconnects.
        return d.addTimeout(self._timeout, self._reactor)

    def _succeeded(self, reply: Any) -> Any:
        if self._failing:
            self._failing = False
            log.info("Store: Redis answers again")
        return reply

    def _failed(self, failure: Failure) -> Failure:
        import txredisapi

        if failure.check(StoreUnavailable):
            return failure
        error = _describe(failure.value)
        if failure.check(TimeoutError, txredisapi.TimeoutError):
            why = "timed out"
            error = f"no answer within {self._timeout:g} s"
        elif failure.check(txredisapi.ConnectionError):
            why = "unreachable"
        elif failure.check(txredisapi.ResponseError):
            why = "refused the command"
        else:
            why = "failed"
        if not self._failing:
            self._failing = True
            # Only the error's class and first line: neither holds the URL
            # or the password.
            log.warn("Store: Redis {why} ({error}); answering 503 until it is back",
                     why=why, error=error)
        return Failure(StoreUnavailable(f"Redis {why}"))

    def ping(self) -> Deferred[None]:
        return self.command("PING").addCallback(lambda _: None)

    def close(self) -> Deferred[None]:
        if not self.running:
            return succeed(None)
        return maybeDeferred(self.stopService)


def _factory_class() -> type:
    """
    txredisapi's connection factory, made to never give up reconnecting.

    txredisapi stops reconnecting for good when C{AUTH} or C{SELECT} fails
    on a new connection, whatever the cause: a connection lost during that
    handshake (a Redis restarting, a hung Redis cut by the reply timeout)
    would leave ETS answering 503 until restarted. ETS keeps trying with the
    usual back-off instead; a wrong password is then retried every
    L{RECONNECT_MAX_DELAY} seconds and fixed without a restart too.
    """
    import txredisapi

    class Factory(txredisapi.RedisFactory):
        initialDelay = RECONNECT_INITIAL_DELAY
        maxDelay = RECONNECT_MAX_DELAY

        def stopTrying(self) -> Deferred[None]:
            return succeed(None)

    return Factory


@implementer(IStreamClientEndpoint)
@attr.s(frozen=True, auto_attribs=True)
class _TLSEndpoint:
    """
    TLS over another client endpoint, handing back the Redis protocol
    itself (txredisapi's pool needs it, not the TLS wrapper that Twisted's
    C{wrapClientTLS} would hand back).
    """

    wrapped: Any
    options: Any

    def connect(self, factory: Any) -> Deferred[Any]:
        d = self.wrapped.connect(TLSMemoryBIOFactory(self.options, True, factory))
        return d.addCallback(lambda tls: tls.wrappedProtocol)


def _describe(error: BaseException) -> str:
    text = str(error).splitlines()[0][:200] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
