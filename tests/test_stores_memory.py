"""
Tests for L{ets_twisted.stores} and the C{memory:} store.
"""

from __future__ import annotations

import hashlib

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ets_twisted.stores import (
    IRateLimiter,
    IReplayCache,
    IStore,
    RateDecision,
    StoreUnavailable,
    rate_key,
)
from ets_twisted.stores.memory import (
    MemoryRateLimiter,
    MemoryReplayCache,
    MemoryStore,
)


def key(n: int) -> bytes:
    """
    A 16-byte digest standing for the n-th proof or client.
    """
    return hashlib.blake2b(n.to_bytes(8, "big"), digest_size=16).digest()


class CountingDue:
    """
    Wraps a wheel's C{due} to record how many keys each drain visits.
    """

    def __init__(self, due):
        self._due = due
        self.visited: list[int] = []

    def __call__(self, now, budget):
        found = self._due(now, budget)
        self.visited.append(len(found))
        return found


class ReplayCacheTests(SynchronousTestCase):
    """
    L{MemoryReplayCache} records each proof once, for its ttl.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.cache = MemoryReplayCache(self.clock)

    def insert(self, k: bytes, ttl: float = 10) -> bool:
        return self.successResultOf(self.cache.insert(k, ttl))

    def test_interface(self) -> None:
        """
        The cache provides L{IReplayCache}.
        """
        verifyObject(IReplayCache, self.cache)

    def test_newThenReplay(self) -> None:
        """
        A key is new the first time and a replay the second.
        """
        self.assertTrue(self.insert(key(1)))
        self.assertFalse(self.insert(key(1)))
        self.assertTrue(self.insert(key(2)))

    def test_replayUntilTtl(self) -> None:
        """
        A key stays a replay until its ttl has passed, then is new again,
        and is then recorded afresh.
        """
        self.insert(key(1), ttl=10)
        self.clock.advance(9.999)
        self.assertFalse(self.insert(key(1), ttl=10))
        self.clock.advance(0.001)
        self.assertTrue(self.insert(key(1), ttl=10))
        self.clock.advance(9.9)
        self.assertFalse(self.insert(key(1), ttl=10))
        self.clock.advance(0.1)
        self.assertTrue(self.insert(key(1), ttl=10))

    def test_ttlRoundedUp(self) -> None:
        """
        A key inserted between whole seconds is remembered until the whole
        second after its ttl: never shorter than the ttl, less than a second
        longer.
        """
        self.clock.advance(0.5)
        self.insert(key(1), ttl=10)
        self.clock.advance(10)
        self.assertFalse(self.insert(key(1), ttl=10))
        self.clock.advance(0.5)
        self.assertTrue(self.insert(key(1), ttl=10))

    def test_expiredNotYetDrained(self) -> None:
        """
        A key past its ttl is new even while it is still held, waiting for
        the drain.
        """
        cache = MemoryReplayCache(self.clock, drain_budget=0)
        self.successResultOf(cache.insert(key(1), 10))
        self.clock.advance(10)
        self.assertEqual(len(cache), 1)
        self.assertTrue(self.successResultOf(cache.insert(key(1), 10)))
        self.assertFalse(self.successResultOf(cache.insert(key(1), 10)))

    def test_reinsertedKeySurvivesOldFiling(self) -> None:
        """
        Draining the slot of a key's first, expired filing does not forget
        the key once it has been recorded again.
        """
        cache = MemoryReplayCache(self.clock, drain_budget=1)
        self.successResultOf(cache.insert(key(0), 1))
        self.successResultOf(cache.insert(key(1), 1))
        self.clock.advance(1)
        # The drain of this call forgets key(1) only; key(0), expired but
        # still held, is recorded again and keeps its old filing.
        self.assertTrue(self.successResultOf(cache.insert(key(0), 10)))
        # This call's drain meets key(0) in its old slot.
        self.successResultOf(cache.insert(key(2), 10))
        self.assertEqual(len(cache), 2)
        self.assertFalse(self.successResultOf(cache.insert(key(0), 10)))

    def test_expiredForgotten(self) -> None:
        """
        Expired keys are forgotten as later inserts come, so memory follows
        the keys still live.
        """
        for n in range(100):
            self.insert(key(n), ttl=5)
        self.assertEqual(len(self.cache), 100)
        self.clock.advance(5)
        # One insert forgets at most DRAIN_BUDGET (64) of them; two do.
        self.insert(key(1000), ttl=5)
        self.insert(key(1001), ttl=5)
        self.assertEqual(len(self.cache), 2)

    def test_drainLeavesLiveEntries(self) -> None:
        """
        A drain forgets the expired keys and only those.
        """
        for n in range(50):
            self.insert(key(n), ttl=10)
        self.clock.advance(5)
        for n in range(50, 80):
            self.insert(key(n), ttl=10)
        self.clock.advance(5)
        self.insert(key(1000), ttl=10)
        self.assertEqual(len(self.cache), 31)
        for n in range(50, 80):
            self.assertFalse(self.insert(key(n), ttl=10))
        self.assertEqual(self.cache._wheel._slots[15].keys, [key(n) for n in range(50, 80)])

    def test_drainVisitsDueSlotsOnly(self) -> None:
        """
        Expiry does not scan the cache: each drain visits only the keys
        whose whole-second slot has passed.
        """
        counting = self.cache._wheel.due = CountingDue(self.cache._wheel.due)
        # 20 keys a second for 30 seconds: 600 live keys with a ttl of 30.
        for second in range(30):
            for n in range(20):
                self.insert(key(second * 100 + n), ttl=30)
            self.clock.advance(1)
        self.assertEqual(len(self.cache), 600)
        self.assertEqual(sum(counting.visited), 0)
        # From now on each second expires the 20 keys of one slot.
        for second in range(10):
            counting.visited.clear()
            self.insert(key(10**6 + second), ttl=30)
            self.assertEqual(counting.visited, [20])
            self.assertEqual(len(self.cache), 600 - 20 * (second + 1) + second + 1)
            self.clock.advance(1)

    def test_drainBounded(self) -> None:
        """
        One insert forgets at most the drain budget of expired keys; the
        rest go with the following inserts.
        """
        cache = MemoryReplayCache(self.clock, drain_budget=8)
        for n in range(20):
            self.successResultOf(cache.insert(key(n), 1))
        self.clock.advance(1)
        self.successResultOf(cache.insert(key(100), 1))
        self.assertEqual(len(cache), 20 - 8 + 1)
        self.successResultOf(cache.insert(key(101), 1))
        self.assertEqual(len(cache), 20 - 16 + 2)
        self.successResultOf(cache.insert(key(102), 1))
        self.assertEqual(len(cache), 3)


class RateLimiterTests(SynchronousTestCase):
    """
    L{MemoryRateLimiter} is a token bucket per key.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = MemoryRateLimiter(self.clock)

    def take(self, k: bytes = b"k" * 16, rate: int = 60, burst: int = 5) -> RateDecision:
        return self.successResultOf(self.limiter.take(k, rate, burst))

    def test_interface(self) -> None:
        """
        The limiter provides L{IRateLimiter}.
        """
        verifyObject(IRateLimiter, self.limiter)

    def test_burstThenRefused(self) -> None:
        """
        A new key admits C{burst} requests at once, counting down
        C{remaining}; the next is refused with a C{retry_after} of at least
        one second.
        """
        remaining = [self.take().remaining for _ in range(5)]
        self.assertEqual(remaining, [4, 3, 2, 1, 0])
        refused = self.take()
        self.assertEqual(
            refused, RateDecision(allowed=False, limit=5, remaining=0, reset=5, retry_after=1)
        )

    def test_admittedAtLimitLeavesEmpty(self) -> None:
        """
        The request admitted with the last token leaves the key empty:
        the very next one is refused.
        """
        for _ in range(2):
            self.take(burst=3)
        last = self.take(burst=3)
        self.assertTrue(last.allowed)
        self.assertEqual(last.remaining, 0)
        self.assertFalse(self.take(burst=3).allowed)

    def test_refill(self) -> None:
        """
        An empty key gets one token back every 60 / rate seconds, and
        C{retry_after} says how long to wait, rounded up.
        """
        for _ in range(2):
            self.take(rate=6, burst=2)
        refused = self.take(rate=6, burst=2)
        self.assertFalse(refused.allowed)
        self.assertEqual(refused.retry_after, 10)
        self.clock.advance(9.5)
        refused = self.take(rate=6, burst=2)
        self.assertFalse(refused.allowed)
        self.assertEqual(refused.retry_after, 1)
        self.clock.advance(0.5)
        admitted = self.take(rate=6, burst=2)
        self.assertTrue(admitted.allowed)
        self.assertEqual(admitted.remaining, 0)
        self.assertFalse(self.take(rate=6, burst=2).allowed)

    def test_sustainedRate(self) -> None:
        """
        Past the burst a key is admitted at the sustained rate and no
        faster.
        """
        for _ in range(5):
            self.take()
        admitted = 0
        for _ in range(600):
            self.clock.advance(0.1)
            admitted += self.take().allowed
        self.assertEqual(admitted, 60)

    def test_remainingAndReset(self) -> None:
        """
        C{remaining} counts the whole tokens left and C{reset} the whole
        seconds until the bucket is full again, with fractional refills.
        """
        self.assertEqual(
            self.take(burst=10),
            RateDecision(allowed=True, limit=10, remaining=9, reset=1, retry_after=1),
        )
        for _ in range(3):
            decision = self.take(burst=10)
        self.assertEqual((decision.remaining, decision.reset), (6, 4))
        self.clock.advance(2.5)
        decision = self.take(burst=10)
        # 10 - 1.5 tokens owed before, 7.5 left after: 7 whole.
        self.assertEqual((decision.remaining, decision.reset), (7, 3))

    def test_epochClockInexactInterval(self) -> None:
        """
        The arithmetic holds with epoch-sized clock values and an interval
        (60 / 7 s) that binary floats cannot represent.
        """
        self.clock.advance(1_767_225_600.123)
        decisions = [self.take(rate=7, burst=7) for _ in range(8)]
        self.assertEqual([d.allowed for d in decisions], [True] * 7 + [False])
        self.assertEqual([d.remaining for d in decisions], [6, 5, 4, 3, 2, 1, 0, 0])
        self.assertEqual(decisions[-1].retry_after, 9)
        self.assertEqual(decisions[-1].reset, 60)
        self.clock.advance(60 / 7)
        self.assertEqual(self.take(rate=7, burst=7).remaining, 0)

    def test_keysIndependent(self) -> None:
        """
        Emptying one key leaves another full.
        """
        for _ in range(5):
            self.take(key(1))
        self.assertFalse(self.take(key(1)).allowed)
        self.assertEqual(self.take(key(2)).remaining, 4)

    def test_idleKeysForgotten(self) -> None:
        """
        A key is forgotten once it would be full again, and a forgotten key
        starts full.
        """
        for _ in range(3):
            self.take(key(1))
        self.take(key(2))
        self.assertEqual(len(self.limiter), 2)
        self.clock.advance(2)
        self.take(key(3))
        # key(2) is full again; key(1) still owes a second.
        self.assertEqual(len(self.limiter), 2)
        self.clock.advance(1)
        self.take(key(3))
        self.assertEqual(len(self.limiter), 1)
        self.assertEqual(self.take(key(1)).remaining, 4)

    def test_activeKeyKept(self) -> None:
        """
        A key taken from after it was filed is kept, with its state, when
        its first deadline comes.
        """
        self.take(key(1))
        self.clock.advance(0.5)
        self.take(key(1))
        self.clock.advance(0.5)
        # Due now at its first filing (second 1) but still owed a second.
        self.take(key(2))
        self.assertEqual(len(self.limiter), 2)
        self.assertEqual(self.take(key(1)).remaining, 3)

    def test_drainVisitsDueKeysOnly(self) -> None:
        """
        Forgetting idle keys does not scan the limiter: a drain visits only
        keys filed under seconds that have passed.
        """
        counting = self.limiter._wheel.due = CountingDue(self.limiter._wheel.due)
        for second in range(10):
            for n in range(30):
                self.take(key(second * 100 + n), burst=60)
            self.clock.advance(1)
        # Each second's keys were due a second after they were taken.
        self.assertEqual(len(self.limiter), 30)
        self.assertEqual(sum(counting.visited), 270)
        self.assertLessEqual(max(counting.visited), 30)

    def test_badArguments(self) -> None:
        """
        A rate or burst below one is a programming error.
        """
        self.assertRaises(ValueError, self.limiter.take, key(1), 0, 5)
        self.assertRaises(ValueError, self.limiter.take, key(1), 60, 0)


class RateDecisionTests(SynchronousTestCase):
    """
    L{RateDecision.headers} gives the SPEC's rate-limit headers.
    """

    def test_admitted(self) -> None:
        """
        An admitted request carries the C{RateLimit-*} headers and no
        C{Retry-After}.
        """
        decision = RateDecision(allowed=True, limit=60, remaining=59, reset=1, retry_after=1)
        self.assertEqual(
            decision.headers(),
            {"RateLimit-Limit": "60", "RateLimit-Remaining": "59", "RateLimit-Reset": "1"},
        )

    def test_refused(self) -> None:
        """
        A refused request carries C{Retry-After} as well.
        """
        decision = RateDecision(allowed=False, limit=60, remaining=0, reset=60, retry_after=2)
        self.assertEqual(decision.headers()["Retry-After"], "2")
        self.assertEqual(decision.headers()["RateLimit-Remaining"], "0")


class RateKeyTests(SynchronousTestCase):
    """
    L{rate_key} turns a client's identity into a short digest.
    """

    def test_digest(self) -> None:
        """
        The key is 16 bytes, the same for the same inputs, and does not hold
        the raw client data.
        """
        k = rate_key("api", "https://app.example", "192.0.2.1")
        self.assertEqual(len(k), 16)
        self.assertEqual(k, rate_key("api", "https://app.example", "192.0.2.1"))
        self.assertNotIn(b"192.0.2.1", k)

    def test_framing(self) -> None:
        """
        Moving characters from one field to the next gives another key.
        """
        self.assertNotEqual(rate_key("a", "bc", "x"), rate_key("ab", "c", "x"))
        self.assertNotEqual(rate_key("api", "o", "1.2"), rate_key("api", "o1", ".2"))
        self.assertNotEqual(rate_key("", "", "a"), rate_key("", "a", ""))

    def test_fieldsMatter(self) -> None:
        """
        Route class, origin and client IP each change the key.
        """
        base = rate_key("api", "https://a.example", "192.0.2.1")
        self.assertNotEqual(base, rate_key("issue", "https://a.example", "192.0.2.1"))
        self.assertNotEqual(base, rate_key("api", "https://b.example", "192.0.2.1"))
        self.assertNotEqual(base, rate_key("api", "https://a.example", "192.0.2.2"))

    def test_unencodable(self) -> None:
        """
        Any string is accepted, including lone surrogates from odd headers.
        """
        self.assertEqual(len(rate_key("api", "\udcff", "::1")), 16)


class MemoryStoreTests(SynchronousTestCase):
    """
    L{MemoryStore} bundles the memory cache and limiter.
    """

    def test_interface(self) -> None:
        """
        The store provides L{IStore}, with the memory cache and limiter.
        """
        store = MemoryStore(Clock())
        verifyObject(IStore, store)
        verifyObject(IReplayCache, store.replay)
        verifyObject(IRateLimiter, store.limiter)

    def test_pingAndClose(self) -> None:
        """
        Memory is always ready, and closing it succeeds.
        """
        store = MemoryStore(Clock())
        self.assertIsNone(self.successResultOf(store.ping()))
        self.assertIsNone(self.successResultOf(store.close()))

    def test_sharedClock(self) -> None:
        """
        Cache and limiter read the injected clock.
        """
        clock = Clock()
        store = MemoryStore(clock)
        self.successResultOf(store.replay.insert(key(1), 1))
        clock.advance(1)
        self.assertTrue(self.successResultOf(store.replay.insert(key(1), 1)))

    def test_storeUnavailable(self) -> None:
        """
        L{StoreUnavailable} is an ordinary exception the web layer can catch.
        """
        self.assertTrue(issubclass(StoreUnavailable, Exception))
