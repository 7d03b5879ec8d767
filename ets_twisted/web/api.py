"""
Everything under C{API_PATH}: credentials checked in SPEC's order, then the
relay.

origin -> (preflight) -> method -> rate limit -> token present -> token
valid -> proof present -> proof (parse, header, key, signature, cnf, htm,
htu, jti, iat, ath) -> nonce -> replay -> relay. Nothing before the replay
check writes to the replay cache, so a refused request never burns a proof.
"""

from __future__ import annotations

import re
from typing import Callable

import attr
from twisted.web.server import Request

from .. import jose, observe, tokens
from ..config import Config
from ..errors import ETSError
from ..nonces import NonceSource
from ..stores import IStore
from . import proofs
from .admission import Admission, header, is_preflight, is_trusted_peer, peer_ip, public_url
from .answers import render_async, write_json
from .proofs import single_proof
from .relay import Forwarding, Relay

_AUTHORIZATION = re.compile(r"^(DPoP|Bearer) +([A-Za-z0-9\-._~+/]+=*)$", re.IGNORECASE)
# "." and ".." segments, also percent-encoded: a browser resolves them before
# sending, so a path holding one is a crafted attempt to leave API_PATH
# once the upstream normalises it.
_DOT_SEGMENT = re.compile(rb"(^|/)(\.|%2e){1,2}(/|$)", re.IGNORECASE)


def access_token(request: Request) -> str:
    """
    The token of C{Authorization: DPoP <jwt>} or C{Bearer <jwt>}.

    @raise ETSError: C{missing_bearer} when there is no such header (or more
        than one).
    """
    values = request.requestHeaders.getRawHeaders(b"authorization")
    if not values or len(values) != 1:
        raise ETSError("missing_bearer")
    match = _AUTHORIZATION.match(values[0].decode("latin-1").strip())
    if match is None:
        raise ETSError("missing_bearer", "Authorization must be DPoP <token> or Bearer <token>")
    return match.group(2)


@attr.s(auto_attribs=True)
class ApiRoute:
    """The C{API_PATH} route: verify, then relay."""

    config: Config
    admission: Admission
    ring: tokens.KeyRing
    key_cache: jose.KeyCache
    store: IStore
    nonces: NonceSource | None
    relay: Relay
    now: Callable[[], float]

    def render(self, request: Request) -> object:
        return render_async(request, lambda: self._api(request), ",".join(self.config.dpop_algs))

    async def _api(self, request: Request) -> bytes | None:
        config = self.config
        forwarding, url = self._forwarding(request)
        request.setHeader(b"x-request-id", forwarding.request_id)
        origin = self.admission.origin(request)
        if is_preflight(request):
            return self.admission.preflight(request)
        self.admission.method(request)
        if _DOT_SEGMENT.search(request.path):
            return write_json(request, 404, {"error": "not_found"})
        await self.admission.rate(request, origin)

        token = access_token(request)
        now = self.now()
        access = tokens.verify(
            self.ring, token, issuer=config.token_issuer, now=now,
            leeway=config.dpop_clock_skew_seconds,
        )
        observe.note_thumbprint(request, access.jkt)
        proof_text = single_proof(request)
        if proof_text is None:
            raise ETSError("missing_dpop")
        proof = proofs.verify(
            proof_text, config, self.key_cache, method=request.method.decode("latin-1"),
            url=url, now=now, access_token=token, expected_jkt=access.jkt,
            require_ath=config.require_ath,
        )
        if self.nonces is not None:
            self.nonces.check(proof.nonce)
            if not self.nonces.is_current(proof.nonce):
                # The step changed: hand the next nonce out before the
                # client's one stops being accepted.
                request.setHeader(b"dpop-nonce", self.nonces.current().encode("ascii"))
                request.setHeader(b"cache-control", b"no-store")
        await proofs.spend(proof, config, self.store, now)
        await self.relay.relay(request, forwarding)
        return None

    def _forwarding(self, request: Request) -> tuple[Forwarding, str]:
        """The forwarding headers, and the public URL (for C{htu} as well)."""
        config = self.config
        trusted = is_trusted_peer(request, config.trusted_proxies)
        chain = peer_ip(request)
        incoming = header(request, b"x-forwarded-for")
        if trusted and incoming:
            chain = f"{incoming}, {chain}"
        # The id of the access line (a trusted proxy's, else a fresh one).
        request_id = observe.request_id(request, config.trusted_proxies)
        url = public_url(request, config.public_base_url, config.trusted_proxies)
        proto, _, rest = url.partition("://")
        host = rest.split("/", 1)[0]
        return Forwarding(
            client_chain=chain.encode("latin-1"),
            proto=proto.encode("latin-1"),
            host=host.encode("latin-1"),
            request_id=request_id.encode("latin-1"),
        ), url
