"""
C{POST /tvm/issue}: mint an access token bound to the caller's public key.

The order (after admission) is cheap local checks first, then the paid and
single-use ones: JSON body -> key (from C{dpopPublicJwk}, or from a verified
DPoP proof, thumbprints equal when both are sent) -> bot challenge -> the
proof's C{jti} recorded -> mint. A challenge token is spent only once the key
is known to be good, and a proof is burnt only once everything else passed.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import attr
from twisted.web.server import Request

from .. import jose, observe, tokens
from ..challenge import ChallengeVerifier
from ..config import Config
from ..errors import ETSError
from ..stores import IStore
from . import headers, proofs
from .admission import Admission, client_ip, is_preflight, public_url
from .answers import render_async, write_json_bytes
from .headers import set_header
from .proofs import single_proof

#: SPEC: the issuance body is at most 8 KiB.
MAX_ISSUE_BODY = 8192

#: The answer of an issuance: token, lifetime, server time.
_ISSUED = b'{"accessToken":"%s","expiresIn":%d,"tokenType":"DPoP","serverTime":%d}'


def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object. @raise ETSError: C{invalid_json}."""
    try:
        body = json.loads(request.content.read(MAX_ISSUE_BODY + 1))
    except ValueError:
        raise ETSError("invalid_json", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ETSError("invalid_json", "the body is not a JSON object")
    return body


def key_from_jwk(jwk: object, cache: jose.KeyCache, algs: tuple[str, ...]) -> jose.PublicKey:
    """Parse C{dpopPublicJwk}, mapping JWK problems to SPEC's 400 codes."""
    try:
        # Not cached yet: only once the token is minted (see IssueRoute).
        return cache.get(jwk, algs, remember=False)
    except jose.JWKError as e:
        raise ETSError("unsupported_jwk" if e.unsupported else "invalid_jwk", str(e)) from None


@attr.s(auto_attribs=True)
class IssueRoute:
    """The C{/tvm/issue} route."""

    config: Config
    admission: Admission
    ring: tokens.KeyRing
    key_cache: jose.KeyCache
    store: IStore
    challenge: ChallengeVerifier | None
    now: Callable[[], float]

    def render(self, request: Request) -> object:
        return render_async(request, lambda: self._issue(request), ",".join(self.config.dpop_algs))

    async def _issue(self, request: Request) -> bytes:
        config = self.config
        origin = self.admission.origin(request)
        if is_preflight(request):
            return self.admission.preflight(request)
        self.admission.method(request)
        await self.admission.rate(request, origin)
        body = read_json_object(request)
        now = self.now()

        jkt = None
        body_key = None
        if "dpopPublicJwk" in body:
            body_key = key_from_jwk(body["dpopPublicJwk"], self.key_cache, config.dpop_algs)
            jkt = body_key.thumbprint
        proof_text = single_proof(request)
        proof = None
        if proof_text is not None:
            proof = proofs.verify(
                proof_text, config, self.key_cache, method="POST",
                url=public_url(request, config.public_base_url, config.trusted_proxies),
                now=now, expected_jkt=jkt,
            )
            jkt = proof.jkt
        if jkt is None:
            raise ETSError("invalid_jwk", "send dpopPublicJwk or a DPoP proof header")
        observe.note_thumbprint(request, jkt)
        metrics = observe.metrics_of(request)

        if self.challenge is not None:
            try:
                await self.challenge.verify(
                    body.get("etsToken"), client_ip(request, config.trusted_proxies)
                )
            except ETSError as e:
                metrics.count_challenge(e.code)
                raise
            metrics.count_challenge(None)
        if proof is not None:
            await proofs.spend(proof, config, self.store, now)

        token, _ = tokens.mint(
            self.ring, jkt=jkt, issuer=config.token_issuer,
            lifetime=config.token_lifetime_seconds, now=now,
        )
        metrics.tokens_issued.inc()
        if body_key is not None:
            # A key that got its token (origin, rate, challenge passed) is
            # kept parsed: its proofs come next, and a client minting again
            # with the same key skips the parse.
            self.key_cache.remember(body["dpopPublicJwk"], body_key)
        set_header(request, headers.CACHE_CONTROL, b"no-store")
        set_header(request, headers.PRAGMA, b"no-cache")
        # What json.dumps would write, without an encoder built per answer:
        # a token is base64url and dots, which JSON quotes as they are.
        return write_json_bytes(request, 200, _ISSUED % (
            token.encode("ascii"), config.token_lifetime_seconds, int(now)))
