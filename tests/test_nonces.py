"""
Tests for L{ets_twisted.nonces}.
"""

from __future__ import annotations

import string
from base64 import urlsafe_b64decode

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ets_twisted.errors import ETSError
from ets_twisted.nonces import NonceSource

SECRET = b"s" * 32


class NonceSourceTests(SynchronousTestCase):
    """
    L{NonceSource} mints stateless nonces that stay good for one step after
    their own.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_767_225_600)
        self.nonces = NonceSource(SECRET, self.clock, step_seconds=60)

    def test_currentAccepted(self) -> None:
        """
        The nonce handed out now is accepted now.
        """
        nonce = self.nonces.current()
        self.assertTrue(self.nonces.accepts(nonce))
        self.assertTrue(self.nonces.is_current(nonce))

    def test_shape(self) -> None:
        """
        A nonce is unpadded base64url of at least 128 bits, safe in a header
        and a JWT claim.
        """
        nonce = self.nonces.current()
        self.assertNotIn("=", nonce)
        self.assertTrue(set(nonce) <= set(string.ascii_letters + string.digits + "-_"))
        self.assertGreaterEqual(len(urlsafe_b64decode(nonce + "==")), 16)

    def test_previousStepAccepted(self) -> None:
        """
        A nonce from the previous step is still accepted, but is no longer
        current, so the answer should carry a fresh one.
        """
        nonce = self.nonces.current()
        self.clock.advance(60)
        self.assertTrue(self.nonces.accepts(nonce))
        self.assertFalse(self.nonces.is_current(nonce))

    def test_twoStepsOldRefused(self) -> None:
        """
        A nonce two steps old is refused.
        """
        nonce = self.nonces.current()
        self.clock.advance(120)
        self.assertFalse(self.nonces.accepts(nonce))

    def test_futureStepRefused(self) -> None:
        """
        Only the current and previous steps count, not the next one.
        """
        clock = Clock()
        clock.advance(1_767_225_600 + 60)
        later = NonceSource(SECRET, clock, step_seconds=60)
        self.assertFalse(self.nonces.accepts(later.current()))

    def test_garbageRefused(self) -> None:
        """
        Anything that is not the nonce string is refused without error:
        other strings, non-ASCII text, bytes, numbers, L{None}.
        """
        nonce = self.nonces.current()
        garbage = [
            "", "abc", nonce[:-1], nonce + "A", "é" * 22,
            nonce.encode("ascii"), None, 123, [nonce], {"nonce": nonce},
        ]
        for value in garbage:
            self.assertFalse(self.nonces.accepts(value), value)
            self.assertFalse(self.nonces.is_current(value), value)

    def test_otherSecretRefused(self) -> None:
        """
        A nonce minted under another secret is refused.
        """
        other = NonceSource(b"t" * 32, self.clock)
        self.assertFalse(self.nonces.accepts(other.current()))
        self.assertNotEqual(other.current(), self.nonces.current())

    def test_sharedSecretAccepted(self) -> None:
        """
        Processes configured with the same secret accept each other's
        nonces.
        """
        other = NonceSource(SECRET, self.clock)
        self.assertTrue(self.nonces.accepts(other.current()))

    def test_defaultSecretRandom(self) -> None:
        """
        Without a configured secret each source draws its own, so two such
        sources refuse each other's nonces.
        """
        one = NonceSource(None, self.clock)
        two = NonceSource(None, self.clock)
        self.assertTrue(one.accepts(one.current()))
        self.assertFalse(one.accepts(two.current()))

    def test_changesAtStepBoundary(self) -> None:
        """
        The nonce stays the same within a step and changes when the next
        step begins.
        """
        first = self.nonces.current()
        self.clock.advance(59.999)
        self.assertEqual(self.nonces.current(), first)
        self.clock.advance(0.001)
        second = self.nonces.current()
        self.assertNotEqual(second, first)
        self.clock.advance(60)
        self.assertNotIn(self.nonces.current(), (first, second))

    def test_stepAndChangedSince(self) -> None:
        """
        L{NonceSource.step} numbers the steps and
        L{NonceSource.changed_since} says when a fresh nonce is due.
        """
        step = self.nonces.step()
        self.assertEqual(step, 1_767_225_600 // 60)
        self.clock.advance(59)
        self.assertFalse(self.nonces.changed_since(step))
        self.clock.advance(1)
        self.assertTrue(self.nonces.changed_since(step))
        self.assertEqual(self.nonces.step(), step + 1)

    def test_checkRefusesWithFreshNonce(self) -> None:
        """
        L{NonceSource.check} refuses a missing or stale nonce with
        C{use_dpop_nonce} and hands out the current nonce in C{DPoP-Nonce}.
        """
        stale = self.nonces.current()
        self.clock.advance(120)
        for value in (None, stale):
            error = self.assertRaises(ETSError, self.nonces.check, value)
            self.assertEqual(error.code, "use_dpop_nonce")
            self.assertEqual(error.headers, {"DPoP-Nonce": self.nonces.current()})
        self.assertIsNone(self.nonces.check(self.nonces.current()))

    def test_badArguments(self) -> None:
        """
        A secret under 32 bytes or a step under a second is refused at
        construction.
        """
        self.assertRaises(ValueError, NonceSource, b"short", self.clock)
        self.assertRaises(ValueError, NonceSource, SECRET, self.clock, 0)
