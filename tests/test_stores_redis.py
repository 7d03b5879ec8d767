"""
Tests for L{ets_twisted.stores.redis} against a real, private C{redis-server}
(L{tests.support.redis_server}): the same promises as the memory store,
kept by Redis, and bounded failure when Redis goes away or hangs.
"""

from __future__ import annotations

import hashlib
import time

from twisted.internet import reactor
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from ets_twisted.app import make_store
from ets_twisted.config import Config
from ets_twisted.stores import IRateLimiter, IReplayCache, IStore, StoreUnavailable
from ets_twisted.stores.memory import MemoryRateLimiter, MemoryStore
from ets_twisted.stores.redis import BUCKET_SHA, RedisStore, parse_url
from tests.support.redis_server import RedisServer
from tests.support.tls import self_signed


def key(n: int) -> bytes:
    """A 16-byte digest standing for the n-th proof or client."""
    return hashlib.blake2b(n.to_bytes(8, "big"), digest_size=16).digest()


def sleep(seconds: float):
    return deferLater(reactor, seconds, lambda: None)


class RedisCase(TestCase):
    """A private Redis and a started store on it for each test."""

    timeout_seconds = 0.5
    password: str | None = None

    def setUp(self) -> None:
        self.server = RedisServer(password=self.password).start()
        self.addCleanup(self.server.close)
        self.store = self.make_store()

    def make_store(self, url: str | None = None, prefix: str = "ets:") -> RedisStore:
        store = RedisStore(url or self.server.url, prefix, reactor, timeout=self.timeout_seconds)
        store.startService()
        self.addCleanup(store.close)
        return store

    async def until_ready(self, store: RedisStore, bound: float = 5.0) -> float:
        """Wait until C{store} answers a ping; return how long it took."""
        started = time.monotonic()
        while True:
            try:
                await store.ping()
                return time.monotonic() - started
            except StoreUnavailable:
                if time.monotonic() - started > bound:
                    raise
                await sleep(0.05)


class ReplayTests(RedisCase):
    """The replay cache: each proof key is accepted once, everywhere."""

    def test_interfaces(self) -> None:
        """The store provides the same interfaces as the memory store."""
        verifyObject(IStore, self.store)
        verifyObject(IReplayCache, self.store.replay)
        verifyObject(IRateLimiter, self.store.limiter)

    async def test_newThenReplay(self) -> None:
        """A key is new once, then a replay; another key is new."""
        self.assertTrue(await self.store.replay.insert(key(1), 10))
        self.assertFalse(await self.store.replay.insert(key(1), 10))
        self.assertTrue(await self.store.replay.insert(key(2), 10))

    async def test_sharedBetweenStores(self) -> None:
        """
        Two stores (as in two processes) on one Redis share the cache: a key
        recorded through one is a replay through the other.
        """
        other = self.make_store()
        self.assertTrue(await self.store.replay.insert(key(1), 10))
        self.assertFalse(await other.replay.insert(key(1), 10))

    async def test_concurrentInsertsAdmitOne(self) -> None:
        """
        Many concurrent inserts of one key through two stores: exactly one
        is new (SET NX is atomic).
        """
        other = self.make_store()
        results = await gatherResults(
            [s.replay.insert(key(7), 10) for s in (self.store, other) for _ in range(20)]
        )
        self.assertEqual(results.count(True), 1)

    async def test_ttlNeverShorter(self) -> None:
        """
        The key lives for the ttl rounded up to whole milliseconds, and is
        new again once it has passed.
        """
        await self.store.replay.insert(key(1), 10.0004)
        (name,) = self.server.keys()
        self.assertEqual(name, "ets:replay:" + key(1).hex())
        pttl = int(self.server.cli("PTTL", name))
        self.assertTrue(9000 < pttl <= 10001, pttl)
        self.assertTrue(await self.store.replay.insert(key(2), 0.1))
        await sleep(0.2)
        self.assertTrue(await self.store.replay.insert(key(2), 0.1))

    async def test_prefixes(self) -> None:
        """
        Stores with different C{STORE_KEY_PREFIX}es do not share keys, and
        every key starts with its store's prefix.
        """
        other = self.make_store(prefix="tenant2:")
        self.assertTrue(await self.store.replay.insert(key(1), 10))
        self.assertTrue(await other.replay.insert(key(1), 10))
        await other.limiter.take(key(2), 60, 5)
        self.assertEqual(
            self.server.keys(),
            sorted(["ets:replay:" + key(1).hex(), "tenant2:replay:" + key(1).hex(),
                    "tenant2:rate:" + key(2).hex()]),
        )


class RateTests(RedisCase):
    """The token buckets: the memory store's semantics, shared."""

    async def test_sameAsMemory(self) -> None:
        """
        A burst and the refusals after it get the same decisions (allowed,
        remaining, reset, retry-after) as from the memory limiter.
        """
        memory = MemoryRateLimiter(Clock())
        for rate, burst in ((60, 3), (1, 2), (600, 1), (7, 4)):
            k = key(rate * 100 + burst)
            for _ in range(burst + 2):
                expected = self.successResultOf(memory.take(k, rate, burst))
                self.assertEqual(await self.store.limiter.take(k, rate, burst), expected, (rate, burst))

    async def test_refills(self) -> None:
        """A bucket refills at rate/60 per second (here 10 per second)."""
        self.assertTrue((await self.store.limiter.take(key(1), 600, 1)).allowed)
        refused = await self.store.limiter.take(key(1), 600, 1)
        self.assertFalse(refused.allowed)
        self.assertEqual(refused.retry_after, 1)
        await sleep(0.15)
        self.assertTrue((await self.store.limiter.take(key(1), 600, 1)).allowed)

    async def test_sharedAndConcurrent(self) -> None:
        """
        Two stores taking from one bucket at once admit exactly the burst:
        the script runs atomically in Redis.
        """
        other = self.make_store()
        decisions = await gatherResults(
            [s.limiter.take(key(3), 1, 10) for _ in range(30) for s in (self.store, other)]
        )
        self.assertEqual(sum(d.allowed for d in decisions), 10)

    async def test_idleBucketsExpire(self) -> None:
        """
        A bucket's key expires once the bucket would be full again, so
        Redis holds only active clients.
        """
        await self.store.limiter.take(key(4), 60, 3)
        (name,) = self.server.keys()
        self.assertEqual(name, "ets:rate:" + key(4).hex())
        self.assertTrue(0 < int(self.server.cli("PTTL", name)) <= 1000)
        await self.store.limiter.take(key(5), 6000, 1)
        await sleep(0.05)
        self.assertEqual(self.server.keys(), [name])

    async def test_scriptReloaded(self) -> None:
        """
        After Redis forgets its scripts (restart, SCRIPT FLUSH), the next
        take sends the script whole and EVALSHA works again after it.
        """
        await self.store.limiter.take(key(1), 60, 5)
        self.assertEqual(self.server.cli("SCRIPT", "EXISTS", BUCKET_SHA).strip(), "1")
        self.server.cli("SCRIPT", "FLUSH")
        decision = await self.store.limiter.take(key(1), 60, 5)
        self.assertEqual(decision.remaining, 3)
        self.assertEqual(self.server.cli("SCRIPT", "EXISTS", BUCKET_SHA).strip(), "1")

    def test_badArguments(self) -> None:
        """A rate or burst under 1 is a programming error, as in memory."""
        self.assertRaises(ValueError, self.store.limiter.take, key(1), 0, 1)
        self.assertRaises(ValueError, self.store.limiter.take, key(1), 1, 0)


class FailureTests(RedisCase):
    """
    Redis down or hung: every operation fails with L{StoreUnavailable}
    within the timeout, and the store recovers by itself.
    """

    async def assertUnavailable(self, bound: float) -> None:
        for make in (
            lambda: self.store.replay.insert(key(1), 10),
            lambda: self.store.limiter.take(key(1), 60, 5),
            self.store.ping,
        ):
            started = time.monotonic()
            with self.assertRaises(StoreUnavailable):
                await make()
            self.assertLess(time.monotonic() - started, bound)

    async def test_downThenBack(self) -> None:
        """
        Redis stopped: operations fail (fast: at most the timeout); Redis
        started again on the same address: the store answers again with no
        restart, and the replay cache works.
        """
        await self.store.ping()
        self.server.stop()
        await self.assertUnavailable(self.timeout_seconds + 0.5)
        # Once known down, failures are immediate.
        await self.assertUnavailable(0.1)
        self.server.start()
        self.assertLess(await self.until_ready(self.store), 5.0)
        self.assertTrue(await self.store.replay.insert(key(9), 10))
        self.assertTrue((await self.store.limiter.take(key(9), 60, 5)).allowed)

    async def test_hung(self) -> None:
        """
        A Redis that accepts but never answers (SIGSTOP) makes operations
        fail after the timeout instead of hanging requests; thawed, it
        serves again.
        """
        await self.store.ping()
        self.server.pause()
        try:
            await self.assertUnavailable(self.timeout_seconds + 0.5)
        finally:
            self.server.resume()
        await self.until_ready(self.store)
        self.assertTrue(await self.store.replay.insert(key(3), 10))

    async def test_neverReachable(self) -> None:
        """
        A store whose Redis is not running at start fails its operations
        within the timeout, without hanging.
        """
        self.server.stop()
        store = self.make_store()
        started = time.monotonic()
        with self.assertRaises(StoreUnavailable):
            await store.ping()
        self.assertLess(time.monotonic() - started, self.timeout_seconds + 0.5)

    async def test_stoppedStore(self) -> None:
        """A store that was stopped answers StoreUnavailable, at once."""
        await self.store.close()
        with self.assertRaises(StoreUnavailable):
            await self.store.ping()


class PasswordTests(RedisCase):
    """A Redis with C{requirepass}: the URL's password is used, never shown."""

    password = "s3cret-redis-pass"

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        super().setUp()

    async def test_password(self) -> None:
        """The password in C{STORE_URL} authenticates the connections."""
        self.assertTrue(await self.store.replay.insert(key(1), 10))

    async def test_downThenBackOnAnotherDatabase(self) -> None:
        """
        With a password and a database other than 0 (so every new
        connection sends AUTH and SELECT), the store still reconnects after
        Redis comes back, and writes to that database.
        """
        store = self.make_store(self.server.url[: -len("/0")] + "/1")
        await store.ping()
        self.server.stop()
        with self.assertRaises(StoreUnavailable):
            await store.ping()
        self.server.start()
        await self.until_ready(store)
        self.assertTrue(await store.replay.insert(key(1), 10))
        self.assertEqual(self.server.keys(), [])
        self.assertEqual(self.server.cli("-n", "1", "DBSIZE").strip(), "1")

    async def test_hungDuringHandshake(self) -> None:
        """
        A Redis that hangs long enough for a reconnection's AUTH to time
        out (txredisapi would then stop reconnecting for good) is still
        reconnected to once it answers again.
        """
        await self.store.ping()
        self.server.pause()
        try:
            # Long enough for every pooled connection to time out and be
            # cut, and for reconnections (0.2 s back-off), accepted by the
            # kernel, to time out in AUTH (0.5 s). Each failure is bounded.
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                started = time.monotonic()
                with self.assertRaises(StoreUnavailable):
                    await self.store.ping()
                self.assertLess(time.monotonic() - started, self.timeout_seconds + 0.5)
                await sleep(0.1)
        finally:
            self.server.resume()
        await self.until_ready(self.store)

    async def test_wrongPassword(self) -> None:
        """
        A wrong password makes the store unavailable, and no log event
        holds either password.
        """
        store = self.make_store(self.server.url.replace(self.password, "wrong-pass-4242"))
        with self.assertRaises(StoreUnavailable):
            await store.ping()
        text = repr(self.events) + repr(store.address)
        self.assertNotIn(self.password, text)
        self.assertNotIn("wrong-pass-4242", text)
        self.assertIn("Store: Redis", text)


class TLSTests(TestCase):
    """C{rediss://}: TLS to Redis, with the server certificate checked."""

    def setUp(self) -> None:
        self.server = RedisServer(tls=True).start()
        self.addCleanup(self.server.close)

    def make_store(self, trusted: bytes) -> RedisStore:
        root = Certificate.loadPEM(trusted)
        store = RedisStore(
            self.server.url, "ets:", reactor, timeout=0.5,
            tls_options=lambda host: optionsForClientTLS(host, trustRoot=root),
        )
        store.startService()
        self.addCleanup(store.close)
        return store

    async def test_tls(self) -> None:
        """With the server's certificate trusted, the store works over TLS."""
        store = self.make_store(self.server.certificate)
        self.assertTrue(await store.replay.insert(key(1), 10))
        self.assertEqual(self.server.keys(), ["ets:replay:" + key(1).hex()])

    async def test_untrusted(self) -> None:
        """A certificate ETS does not trust: unavailable, never used."""
        other = self_signed("localhost")
        store = self.make_store(other[other.index(b"-----BEGIN CERTIFICATE"):])
        with self.assertRaises(StoreUnavailable):
            await store.ping()
        self.assertEqual(self.server.keys(), [])


class UrlTests(SynchronousTestCase):
    """L{parse_url} and L{make_store}."""

    def test_forms(self) -> None:
        """Host, port, database, TLS and credentials come from the URL."""
        a = parse_url("rediss://user:p%40ss@Redis.example:6380/3")
        self.assertEqual(
            (a.host, a.port, a.db, a.tls, a.username, a.password),
            ("redis.example", 6380, 3, True, "user", "p@ss"),
        )
        b = parse_url("redis://:pw@10.0.0.1")
        self.assertEqual((b.port, b.db, b.tls, b.username, b.password), (6379, 0, False, None, "pw"))
        self.assertNotIn("pw", repr(b))
        self.assertNotIn("p@ss", repr(a))

    def test_notRedis(self) -> None:
        """Another scheme is a ValueError that does not quote the URL."""
        e = self.assertRaises(ValueError, parse_url, "http://:hunter2@h/")
        self.assertNotIn("hunter2", str(e))

    def test_makeStore(self) -> None:
        """C{STORE_URL} picks the store; the key prefix is applied."""
        base = dict(origin_allowlist=("https://a.example",), jwt_keys=(b"k" * 32,), upstream_base_url="http://u")
        self.assertIsInstance(make_store(Config(**base), Clock()), MemoryStore)
        store = make_store(Config(**base, store_url="redis://127.0.0.1:1/2", store_key_prefix="p:"), Clock())
        self.assertIsInstance(store, RedisStore)
        self.assertEqual(store.key("rate", b"\x01"), b"p:rate:01")
