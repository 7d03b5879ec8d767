"""
Where ETS keeps state: the DPoP replay cache and the rate-limit buckets.

Two stores sit behind these interfaces: L{ets_twisted.stores.memory} for one
process, and a Redis store for several. Every operation answers with a
L{Deferred} so that either can be dropped in. A store that cannot answer
fails that Deferred with L{StoreUnavailable}; the web layer turns it into
C{503 store_unavailable}, since the SPEC has ETS fail closed rather than
fall back to per-process memory.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import attr
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class StoreUnavailable(Exception):
    """
    The store could not answer: unreachable, timed out, or closed.
    """


@attr.s(frozen=True, auto_attribs=True)
class RateDecision:
    """
    The answer of a rate limiter to one request.

    @ivar allowed: whether the request may go on.
    @ivar limit: the bucket size (C{RATE_LIMIT_BURST}).
    @ivar remaining: whole tokens left after this request.
    @ivar reset: whole seconds, at least 0, until the bucket is full again.
    @ivar retry_after: whole seconds, at least 1, until the next request
        would be admitted; meaningful when the request is refused.
    """

    allowed: bool
    limit: int
    remaining: int
    reset: int
    retry_after: int

    def headers(self) -> dict[str, str]:
        """
        The answer headers the SPEC asks for: C{RateLimit-*} on every
        answer, C{Retry-After} as well on a refusal.
        """
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


class IReplayCache(Interface):
    """
    Remembers which DPoP proofs have been used.
    """

    def insert(key: bytes, ttl: float) -> Deferred[bool]:
        """
        Record C{key} unless it is already recorded, atomically.

        @param key: a 16-byte digest made by the caller (of the proof key's
            thumbprint and the C{jti}), never raw client data.
        @param ttl: seconds to remember the key for; a store may remember it
            up to one second longer, never shorter.
        @return: a Deferred firing with C{True} when the key was new (and is
            now recorded), C{False} when it was already recorded (a replay),
            or failing with L{StoreUnavailable}.
        """


class IRateLimiter(Interface):
    """
    Token buckets, one per key.

    A bucket holds up to C{burst} tokens and refills at C{rate_per_minute / 60}
    tokens per second; a key never seen, or idle long enough, is full. Each
    admitted request takes one token, so a request admitted at the limit
    leaves the key empty.
    """

    def take(key: bytes, rate_per_minute: int, burst: int) -> Deferred[RateDecision]:
        """
        Take a token from the bucket of C{key} if it has one.

        @param key: a digest from L{rate_key}.
        @param rate_per_minute: the sustained rate, at least 1.
        @param burst: the bucket size, at least 1.
        @return: a Deferred firing with a L{RateDecision}, or failing with
            L{StoreUnavailable}.
        """


class IStore(Interface):
    """
    One place holding the replay cache and the rate-limit buckets.
    """

    replay = Attribute("The L{IReplayCache}.")
    limiter = Attribute("The L{IRateLimiter}.")

    def ping() -> Deferred[None]:
        """
        Check that the store answers, for C{/ready}.

        @return: a Deferred firing with L{None}, or failing with
            L{StoreUnavailable}.
        """

    def close() -> Deferred[None]:
        """
        Release the store's connections; called once, on shutdown.
        """


def rate_key(route_class: str, origin: str, client_ip: str) -> bytes:
    """
    The rate-limit key of a request: a 16-byte digest of its route class,
    C{Origin} and client IP.

    Stores keep only the digest, which also bounds the size of a key. It is
    not a secret: whoever can read the store can test guesses of the inputs.

    @param route_class: C{"issue"} or C{"api"}.
    @param origin: the request's C{Origin}.
    @param client_ip: the client address as the SPEC defines it.
    """
    digest = hashlib.blake2b(digest_size=16, person=b"ets rate key")
    for field in (route_class, origin, client_ip):
        data = field.encode("utf-8", "surrogateescape")
        # A length before each field, so ("a", "bc") and ("ab", "c") differ.
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.digest()
