"""
The C{memory:} store: the replay cache and the rate-limit buckets of one
process.

Both are sized for many live entries: no request scans the whole store.
Expiry goes through a L{_Wheel} that files keys under whole-second deadlines
and hands back only keys whose deadline has passed, a bounded number per
call. Each entry costs its key, one dict slot and its packed copy in the
wheel, plus one float per rate-limit key; C{bench/memory_per_entry.py}
measures it at 100 to 140 bytes per key. Nothing per key is an object the
garbage collector tracks, so a large store does not slow collections.
"""

from __future__ import annotations

import heapq
from array import array
from math import ceil, floor
from typing import Hashable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ets_twisted.stores import IRateLimiter, IReplayCache, IStore, RateDecision

#: How many due keys one call may visit. It bounds the housekeeping a single
#: request pays for, and stays well above the one key a call can add, so
#: the backlog of expired keys shrinks as long as requests come.
DRAIN_BUDGET = 64

#: How much of a token the bucket arithmetic forgives: 60 / rate is rarely
#: exact in binary, and clock values near 1.7e9 carry only about 0.2 us of
#: precision, so exact comparisons would be off by one now and then.
_SLACK = 1e-3

# See MemoryRateLimiter on folding keys.
_SIXTY_BITS = (1 << 60) - 1


class _Slot:
    """
    The keys filed under one whole-second deadline.

    Replay entries map to their slot's C{deadline} (one int object shared
    by every key of the slot) instead of an expiry of their own, so an
    expiry costs one pointer per key, not a float.

    The keys themselves are packed where they can be: 16-byte keys (the
    replay digests) back to back in a C{bytearray}, ints that fit 64 bits
    (the folded rate-limit keys) in an C{array}; anything else in a list.
    Neither container holds Python objects, so the garbage collector never
    walks them: with a million live keys a full collection would otherwise
    visit a million list slots (and, had the replay dict held the slot
    objects, a million dict values) every time it runs.
    """

    __slots__ = ("deadline", "packed", "ints", "others")

    def __init__(self, deadline: int) -> None:
        self.deadline = deadline
        self.packed: bytearray | None = None
        self.ints: array[int] | None = None
        self.others: list[Hashable] | None = None

    def add(self, key: Hashable) -> None:
        if type(key) is bytes and len(key) == _PACKED:
            if self.packed is None:
                self.packed = bytearray()
            self.packed += key
        elif type(key) is int and 0 <= key <= _MAX_PACKED_INT:
            if self.ints is None:
                self.ints = array("Q")
            self.ints.append(key)
        else:
            if self.others is None:
                self.others = []
            self.others.append(key)

    def pop(self) -> Hashable | None:
        """One of the keys, taken out; None when there are none left."""
        if self.others:
            return self.others.pop()
        if self.ints:
            return self.ints.pop()
        packed = self.packed
        if packed:
            key = bytes(packed[-_PACKED:])
            del packed[-_PACKED:]
            return key
        return None

    @property
    def keys(self) -> list[Hashable]:
        """Every key still filed here, in filing order within each kind."""
        packed = self.packed or b""
        return [
            *(self.others or ()),
            *(self.ints or ()),
            *(bytes(packed[i : i + _PACKED]) for i in range(0, len(packed), _PACKED)),
        ]


# Keys packed by _Slot: bytes of this length, and ints of up to 64 bits.
_PACKED = 16
_MAX_PACKED_INT = (1 << 64) - 1


class _Wheel:
    """
    Keys filed by whole-second deadline, handed back once that second has
    passed.

    A heap of deadlines (one int per slot, not per key) says which slot is
    next, so a drain visits due slots only, from the earliest.
    """

    def __init__(self) -> None:
        self._heap: list[int] = []
        self._slots: dict[int, _Slot] = {}

    def file(self, key: Hashable, due: float) -> _Slot:
        """
        File C{key} under the first whole second at or after C{due}.

        @return: the slot it was filed in.
        """
        deadline = ceil(due)
        slot = self._slots.get(deadline)
        if slot is None:
            slot = self._slots[deadline] = _Slot(deadline)
            heapq.heappush(self._heap, deadline)
        slot.add(key)
        return slot

    def due(self, now: float, budget: int) -> list[tuple[Hashable, _Slot]]:
        """
        Take up to C{budget} keys whose deadline is at or before C{now} out
        of the wheel.

        @return: each key with the slot it was filed in.
        """
        found: list[tuple[Hashable, _Slot]] = []
        while len(found) < budget and self._heap and self._heap[0] <= now:
            slot = self._slots[self._heap[0]]
            while len(found) < budget:
                key = slot.pop()
                if key is None:
                    heapq.heappop(self._heap)
                    del self._slots[slot.deadline]
                    break
                found.append((key, slot))
        return found


@implementer(IReplayCache)
class MemoryReplayCache:
    """
    A replay cache in a dict: key to the deadline of its L{_Slot} (the
    slot's own int object, shared by all its keys). Keys and values are
    bytes and ints, so the dict holds nothing the garbage collector tracks
    and a collection never walks it.

    A key is remembered for its ttl rounded up to the next whole second of
    the clock: at least the ttl, less than a second more.
    """

    def __init__(self, clock: IReactorTime, drain_budget: int = DRAIN_BUDGET) -> None:
        """
        @param clock: where the time comes from.
        @param drain_budget: how many expired keys one call may forget.
        """
        self._clock = clock
        self._budget = drain_budget
        self._entries: dict[bytes, int] = {}
        self._wheel = _Wheel()

    def __len__(self) -> int:
        """
        How many keys are held, including expired ones not yet forgotten.
        """
        return len(self._entries)

    def insert(self, key: bytes, ttl: float) -> Deferred[bool]:
        now = self._clock.seconds()
        self._drain(now)
        deadline = self._entries.get(key)
        # An expired key not yet drained counts as new.
        if deadline is not None and deadline > now:
            return succeed(False)
        self._entries[key] = self._wheel.file(key, now + ttl).deadline
        return succeed(True)

    def _drain(self, now: float) -> None:
        entries = self._entries
        for key, slot in self._wheel.due(now, self._budget):
            # A key inserted again after it expired is filed in a later slot
            # as well; only its latest filing may forget it.
            if entries.get(key) == slot.deadline:
                del entries[key]  # type: ignore[arg-type]


@implementer(IRateLimiter)
class MemoryRateLimiter:
    """
    Token buckets kept as one float per key: GCRA's theoretical arrival time
    (TAT), the moment the bucket will be full again.

    This is exactly a token bucket: at time C{now} a bucket holds
    C{burst - max(0, TAT - now) / interval} tokens, where C{interval} is
    C{60 / rate_per_minute}, and taking a token moves TAT one interval on.
    A key whose TAT has passed is full, the same as a key never seen, so it
    is forgotten: memory follows the number of active clients.

    Each key is filed in the wheel once, at the TAT it had then. When that
    second comes the key is forgotten if it is full; if it was taken from
    since, it is filed again at its new TAT.

    Keys are held folded to 60 bits, the most a 32-byte Python int holds
    (a 16-byte C{bytes} takes 49, 64 once the allocator rounds it up). Two
    active keys that fold alike share a bucket: the odds are n / 2**60 per
    new key among n active ones, and at worst a client is limited early.
    """

    def __init__(self, clock: IReactorTime, drain_budget: int = DRAIN_BUDGET) -> None:
        """
        @param clock: where the time comes from.
        @param drain_budget: how many due keys one call may visit.
        """
        self._clock = clock
        self._budget = drain_budget
        self._tats: dict[int, float] = {}
        self._wheel = _Wheel()

    def __len__(self) -> int:
        """
        How many keys are held, including full ones not yet forgotten.
        """
        return len(self._tats)

    def take(self, key: bytes, rate_per_minute: int, burst: int) -> Deferred[RateDecision]:
        if rate_per_minute < 1 or burst < 1:
            raise ValueError("rate_per_minute and burst must be at least 1")
        now = self._clock.seconds()
        self._drain(now)
        interval = 60.0 / rate_per_minute
        slack = _SLACK * interval

        folded = _fold(key)
        tat = self._tats.get(folded)
        start = now if tat is None or tat < now else tat
        # Admitted while at least one token is left: the bucket is short of
        # full by at most burst - 1 tokens.
        allowed = start - now <= (burst - 1) * interval + slack
        if allowed:
            start += interval
            self._tats[folded] = start
            if tat is None:
                self._wheel.file(folded, start)
        # Seconds until full; in token terms, burst - (tokens left) intervals.
        owed = start - now
        return succeed(
            RateDecision(
                allowed=allowed,
                limit=burst,
                remaining=max(0, floor((burst * interval - owed + slack) / interval)),
                reset=max(0, ceil(owed - slack)),
                retry_after=max(1, ceil(owed - (burst - 1) * interval - slack)),
            )
        )

    def _drain(self, now: float) -> None:
        tats = self._tats
        for key, _ in self._wheel.due(now, self._budget):
            tat = tats[key]  # type: ignore[index]
            if tat <= now:
                del tats[key]
            else:
                self._wheel.file(key, tat)


def _fold(key: bytes) -> int:
    """
    60 bits of a digest, as an int.
    """
    return int.from_bytes(key[:8], "big") & _SIXTY_BITS


@implementer(IStore)
class MemoryStore:
    """
    The C{memory:} store: state for one process, lost when it stops.

    @ivar replay: the L{MemoryReplayCache}.
    @ivar limiter: the L{MemoryRateLimiter}.
    """

    def __init__(self, clock: IReactorTime) -> None:
        """
        @param clock: where the time comes from, usually the reactor.
        """
        self.replay = MemoryReplayCache(clock)
        self.limiter = MemoryRateLimiter(clock)

    def ping(self) -> Deferred[None]:
        """
        Memory always answers.
        """
        return succeed(None)

    def close(self) -> Deferred[None]:
        """
        Nothing to release.
        """
        return succeed(None)
