"""
Bounded memos for what the hot path computes again and again from the same
small inputs (a client's proof header, its token's hash, a peer address).
"""

from __future__ import annotations

from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """
    C{compute}, remembered for up to C{size} keys. When full the memo is
    cleared, not pruned: a burst of one-off keys costs the working set one
    recomputation, and memory stays bounded without bookkeeping per key.
    Exceptions are not remembered.

    @param max_length: text keys longer than this are computed and not
        remembered, so junk input cannot fill the memo with large keys.
    """

    def __init__(self, compute: Callable[[K], V], size: int = 4096, max_length: int = 512) -> None:
        self._compute = compute
        self._size = size
        self._max_length = max_length
        self._values: dict[K, V] = {}

    def __call__(self, key: K) -> V:
        try:
            return self._values[key]
        except KeyError:
            pass
        value = self._compute(key)
        if not isinstance(key, str) or len(key) <= self._max_length:
            if len(self._values) >= self._size:
                self._values.clear()
            self._values[key] = value
        return value

    def __len__(self) -> int:
        return len(self._values)


class PerSecond(Generic[V]):
    """
    C{compute} of a time's whole second, remembered for the latest second:
    timestamps of log lines and answers are formatted once a second rather
    than once each.
    """

    def __init__(self, compute: Callable[[int], V]) -> None:
        self._compute = compute
        self._second: int | None = None
        self._value: V | None = None

    def __call__(self, now: float) -> V:
        second = int(now)
        if second != self._second:
            self._second, self._value = second, self._compute(second)
        return self._value  # type: ignore[return-value]
