"""
The DPoP proof of a request, as both routes take it: found (exactly one
C{DPoP} header), verified under the configured rules, and spent (its C{jti}
recorded) once everything else has passed.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from .. import dpop
from ..config import Config
from ..errors import ETSError
from ..jose import KeyCache
from ..stores import IStore


def single_proof(request: Request) -> str | None:
    """
    The one C{DPoP} header of a request, None when there is none.

    @raise ETSError: C{missing_dpop} when it is repeated or folded with commas.
    """
    values = request.requestHeaders.getRawHeaders(b"dpop")
    if values is None:
        return None
    if len(values) != 1 or b"," in values[0]:
        raise ETSError("missing_dpop", "exactly one DPoP header is required")
    return values[0].decode("latin-1")


def verify(
    proof: str, config: Config, key_cache: KeyCache, *, method: str, url: str, now: float, **rules: Any
) -> dpop.Proof:
    """
    L{dpop.verify_proof} under C{config}'s algorithms and time window;
    C{rules} are the route's own (C{expected_jkt}, C{access_token},
    C{require_ath}).
    """
    return dpop.verify_proof(
        proof,
        method=method,
        url=url,
        now=now,
        algs=config.dpop_algs,
        max_age=config.dpop_max_age_seconds,
        skew=config.dpop_clock_skew_seconds,
        key_cache=key_cache,
        **rules,
    )


async def spend(proof: dpop.Proof, config: Config, store: IStore, now: float) -> None:
    """
    Record C{proof}'s C{jti} for as long as the proof could be accepted.

    @raise ETSError: C{replay} when it was recorded already.
    """
    ttl = dpop.replay_ttl(proof.iat, now, config.dpop_max_age_seconds, config.dpop_clock_skew_seconds)
    if not await store.replay.insert(dpop.replay_key(proof.jkt, proof.jti), ttl):
        raise ETSError("replay")
