"""ets_twisted.randomness: pooled bytes from os.urandom."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ets_twisted import randomness


class RandomBytesTests(SynchronousTestCase):
    def test_lengths_and_no_repeats(self):
        """Across several refills of the pool, every draw has its length and none repeats."""
        draws = [randomness.random_bytes(16) for _ in range(3 * randomness._POOL_SIZE // 16 + 7)]
        self.assertEqual({len(d) for d in draws}, {16})
        self.assertEqual(len(set(draws)), len(draws))
        odd = [randomness.random_bytes(n) for n in (1, 7, 4096, 33)]
        self.assertEqual([len(d) for d in odd], [1, 7, 4096, 33])

    def test_from_urandom(self):
        """The bytes are os.urandom's, drawn a pool at a time."""
        calls = []

        def urandom(n):
            calls.append(n)
            return bytes(range(256)) * (n // 256)

        self.patch(randomness.os, "urandom", urandom)
        self.patch(randomness, "_pool", b"")
        self.patch(randomness, "_offset", 0)
        first = [randomness.random_bytes(16) for _ in range(16)]
        self.assertEqual(calls, [randomness._POOL_SIZE])
        self.assertEqual(b"".join(first), bytes(range(256)))
