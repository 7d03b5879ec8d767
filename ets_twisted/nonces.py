"""
Server-issued DPoP nonces (RFC 9449 section 8), for C{REQUIRE_DPOP_NONCE}.

A nonce is a MAC of the current time step, so ETS keeps no state per client
or per nonce: whoever holds the secret can mint one and check one.
"""

from __future__ import annotations

import hmac
import secrets
from base64 import urlsafe_b64encode
from hashlib import sha256

from twisted.internet.interfaces import IReactorTime

from ets_twisted.errors import ETSError

#: 128 bits of MAC per nonce.
_NONCE_BYTES = 16

# Keeps these MACs apart from anything else the same secret might sign.
_CONTEXT = b"ets dpop-nonce\x00"


class NonceSource:
    """
    Mints and checks the C{DPoP-Nonce} values of one deployment.

    The nonce of a time step is the base64url of a truncated HMAC-SHA256 of
    the step number under the secret: unpredictable without the secret, the
    same for every client during a step. A nonce is accepted during its own
    step and the next one, so a client has between one and two steps to use
    the nonce it was given.

    By default the secret is random and belongs to this process alone.
    Several processes or hosts behind one address (C{WORKERS} > 1, a shared
    store) must be given the same configured secret, or a nonce minted by
    one is refused by the others.
    """

    def __init__(self, secret: bytes | None, clock: IReactorTime, step_seconds: int = 60) -> None:
        """
        @param secret: at least 32 bytes, or L{None} for a random secret of
            this process's own.
        @param clock: where the time comes from.
        @param step_seconds: how long one nonce is current.
        """
        if secret is None:
            secret = secrets.token_bytes(32)
        if len(secret) < 32:
            raise ValueError("the nonce secret must be at least 32 bytes")
        if step_seconds < 1:
            raise ValueError("step_seconds must be at least 1")
        self._secret = secret
        self._clock = clock
        self._step_seconds = step_seconds

    def step(self) -> int:
        """
        The number of the current time step.
        """
        return int(self._clock.seconds() // self._step_seconds)

    def changed_since(self, step: int) -> bool:
        """
        Whether the step is no longer C{step}, so a fresh C{DPoP-Nonce}
        should go out.
        """
        return self.step() != step

    def current(self) -> str:
        """
        The nonce to hand out now, for a C{DPoP-Nonce} header.
        """
        return self._nonce(self.step())

    def accepts(self, nonce: object) -> bool:
        """
        Whether C{nonce}, the C{nonce} claim of a proof, is the nonce of the
        current step or of the previous one.
        """
        # compare_digest takes str only when it is ASCII.
        if not isinstance(nonce, str) or not nonce.isascii():
            return False
        step = self.step()
        # Both comparisons always run, so timing does not tell which matched.
        current = hmac.compare_digest(nonce, self._nonce(step))
        previous = hmac.compare_digest(nonce, self._nonce(step - 1))
        return current | previous

    def is_current(self, nonce: object) -> bool:
        """
        Whether C{nonce} is the nonce of the current step; when an accepted
        nonce is not, the answer should carry a fresh one.
        """
        if not isinstance(nonce, str) or not nonce.isascii():
            return False
        return hmac.compare_digest(nonce, self.current())

    def check(self, nonce: object) -> None:
        """
        Refuse a proof whose nonce is missing or stale.

        @raise ETSError: C{use_dpop_nonce}, carrying a fresh C{DPoP-Nonce}.
        """
        if not self.accepts(nonce):
            raise ETSError(
                "use_dpop_nonce",
                "the proof needs the server's current nonce",
                headers={"DPoP-Nonce": self.current()},
            )

    def _nonce(self, step: int) -> str:
        mac = hmac.new(self._secret, _CONTEXT + step.to_bytes(8, "big", signed=True), sha256)
        return urlsafe_b64encode(mac.digest()[:_NONCE_BYTES]).rstrip(b"=").decode("ascii")
