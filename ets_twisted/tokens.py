"""
ETS access tokens: HS256 JWTs bound to a DPoP key (SPEC, "POST /tvm/issue").

A token carries header C{kid} and claims C{iss}, C{aud} (C{"ets"}),
C{iat}, C{nbf}, C{exp}, a random C{jti} and C{cnf: {"jkt": ...}}.
L{verify} runs on every relayed request: it looks the key up by C{kid},
checks one HMAC, then the claims, against the caller's C{now} (never the
wall clock, so tests can drive time).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from typing import TYPE_CHECKING, Any, Iterable

import attr
import jwt

from ets_twisted.errors import ETSError
from ets_twisted.randomness import random_bytes

if TYPE_CHECKING:
    from ets_twisted.config import Config

ALGORITHM = "HS256"
AUDIENCE = "ets"

# A fixed label keeps the kid hash apart from any other use of the key.
_KID_LABEL = b"ets-twisted kid v1\x00"
# Our tokens are a few hundred characters; refuse absurd ones before parsing.
_MAX_TOKEN_LENGTH = 8192
_MAX_JTI_LENGTH = 256

# A JWS decoder that knows HS256 only: no other algorithm can be reached,
# whatever a token's header claims (algorithm confusion).
_JWS = jwt.PyJWS(algorithms=[ALGORITHM])


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def key_id(key: bytes) -> str:
    """
    The C{kid} of C{key}: the first 16 characters of the base64url SHA-256
    of a fixed label and the key. One-way, so it names the key without
    revealing it.
    """
    digest = hashlib.sha256(_KID_LABEL + key).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:16]


class KeyRing:
    """
    The signing keys, built from C{config.jwt_keys}: the first signs, all
    verify.

    @ivar signing_kid: the C{kid} of the signing key.
    """

    __slots__ = ("_keys", "signing_kid", "signing_header", "_signing_mac", "_verified")

    #: How many verified tokens L{verify} remembers (see L{remember}).
    VERIFIED_CACHE_SIZE = 1024

    def __init__(self, keys: Iterable[bytes]) -> None:
        """
        @param keys: the keys in priority order; the first signs.
        @raise ValueError: no keys were given.
        """
        by_kid: dict[str, bytes] = {}
        for key in keys:
            by_kid.setdefault(key_id(key), bytes(key))
        if not by_kid:
            raise ValueError("a key ring needs at least one key")
        self._keys = by_kid
        self.signing_kid = next(iter(by_kid))
        #: The encoded JWS header of every token this ring signs.
        self.signing_header = _b64(json.dumps(
            {"alg": ALGORITHM, "kid": self.signing_kid, "typ": "JWT"},
            separators=(",", ":"), sort_keys=True,
        ).encode("utf-8"))
        # Copied for each token: the key's HMAC pads are computed once.
        self._signing_mac = hmac.new(self.signing_key, digestmod=hashlib.sha256)
        self._verified: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_config(cls, config: Config) -> KeyRing:
        return cls(config.jwt_keys)

    @property
    def signing_key(self) -> bytes:
        return self._keys[self.signing_kid]

    def sign(self, signing_input: bytes) -> bytes:
        """The HS256 signature of C{signing_input} under the signing key."""
        mac = self._signing_mac.copy()
        mac.update(signing_input)
        return mac.digest()

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def lookup(self, kid: object) -> bytes | None:
        """
        The key named C{kid}, or L{None} when the ring has no such key.
        """
        if not isinstance(kid, str):
            return None
        return self._keys.get(kid)

    def verified_claims(self, token: str) -> dict[str, Any] | None:
        """
        The decoded claims of C{token} when its signature was verified by a
        key of this ring before, else None. The claims themselves (time,
        audience, issuer) are still checked on every call of L{verify}.
        """
        return self._verified.get(token)

    def remember(self, token: str, claims: dict[str, Any]) -> None:
        """
        Remember that C{token}'s header and signature passed (a token is
        reused for every call of its lifetime, so this saves the HMAC and
        the decoding). The ring's keys never change, so a remembered token
        stays verified; at most L{VERIFIED_CACHE_SIZE} are kept, the oldest
        forgotten first.
        """
        verified = self._verified
        if len(verified) >= self.VERIFIED_CACHE_SIZE:
            del verified[next(iter(verified))]
        verified[token] = claims

    def __repr__(self) -> str:
        # kids only: they are one-way hashes, safe to log.
        return f"<KeyRing kids={list(self._keys)!r}>"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class AccessToken:
    """
    A verified (or freshly minted) access token.

    @ivar jkt: the RFC 7638 thumbprint of the DPoP key it is bound to.
    @ivar jti: its random identifier.
    @ivar iat: when it was issued, epoch seconds.
    @ivar exp: when it expires, epoch seconds.
    @ivar claims: every claim, as decoded.
    """

    jkt: str
    jti: str
    iat: int
    exp: int
    claims: dict[str, Any] = attr.ib(eq=False, hash=False)


#: The compact JSON of a token's claims (as json.dumps writes them);
#: C{jti} is base64url, which needs no escaping.
_CLAIMS_JSON = '{"iss":%s,"aud":"%s","iat":%d,"nbf":%d,"exp":%d,"jti":"%s","cnf":{"jkt":%s}}'


def _json_text(text: str) -> str:
    # A thumbprint or an issuer is plain ASCII text (checked in one
    # C-speed call), which JSON quotes as is; anything else goes through
    # the encoder.
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return '"' + text + '"'
    return json.dumps(text)


def mint(
    ring: KeyRing, *, jkt: str, issuer: str, lifetime: int, now: float
) -> tuple[str, AccessToken]:
    """
    Mint an access token bound to C{jkt}, signed with the ring's first key.

    @param lifetime: seconds until C{exp}, at least 1.
    @param now: the current time, epoch seconds.
    @return: the compact JWT and what it says.
    """
    if lifetime < 1:
        raise ValueError("lifetime must be at least 1 second")
    iat = int(math.floor(now))
    jti = _b64(random_bytes(16)).decode("ascii")  # 128 bits, as secrets.token_urlsafe(16)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": AUDIENCE,
        "iat": iat,
        "nbf": iat,
        "exp": iat + lifetime,
        "jti": jti,
        "cnf": {"jkt": jkt},
    }
    # The JWS by hand: the same bytes pyjwt's encode makes (header members
    # sorted, compact JSON, unpadded base64url), without its per-call key
    # preparation (PEM/SSH sniffing of an HMAC secret), a quarter of the
    # cost of an issuance's own work. The claims are json.dumps's compact
    # text, put together from their parts (json.dumps builds an encoder
    # per call).
    payload = _CLAIMS_JSON % (_json_text(issuer), AUDIENCE, iat, iat, iat + lifetime, jti, _json_text(jkt))
    signing_input = ring.signing_header + b"." + _b64(payload.encode("utf-8"))
    token = (signing_input + b"." + _b64(ring.sign(signing_input))).decode("ascii")
    return token, AccessToken(jkt=jkt, jti=jti, iat=iat, exp=iat + lifetime, claims=claims)


def verify(ring: KeyRing, token: str, *, issuer: str, now: float, leeway: float) -> AccessToken:
    """
    Check an access token and return what it says.

    @param now: the current time, epoch seconds.
    @param leeway: seconds of clock tolerance on C{exp} and C{nbf}.

    @raise ETSError: C{invalid_token} for a malformed token, an unknown or
        missing C{kid}, any C{alg} but HS256, a bad signature, an expired or
        not yet valid token; C{bad_claims} for a wrong or missing C{aud} or
        C{iss}, or a missing or ill-typed C{iat}, C{exp}, C{jti}, C{cnf} or
        C{cnf.jkt}. Messages never quote the token.
    """
    if not isinstance(token, str) or len(token) > _MAX_TOKEN_LENGTH:
        raise ETSError("invalid_token", "malformed token")
    claims = ring.verified_claims(token)
    if claims is not None:
        return _check_claims(claims, issuer=issuer, now=now, leeway=leeway)
    try:
        header = _JWS.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise ETSError("invalid_token", "malformed token") from None
    if header.get("alg") != ALGORITHM:
        raise ETSError("invalid_token", "algorithm not allowed")
    if "crit" in header:
        # We never set critical extensions, so we understand none.
        raise ETSError("invalid_token", "unsupported critical header")
    key = ring.lookup(header.get("kid"))
    if key is None:
        raise ETSError("invalid_token", "unknown key id")
    try:
        payload = _JWS.decode_complete(token, key, algorithms=[ALGORITHM])["payload"]
    except jwt.InvalidSignatureError:
        raise ETSError("invalid_token", "bad signature") from None
    except (jwt.PyJWTError, ValueError, TypeError):
        raise ETSError("invalid_token", "malformed token") from None
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError):
        raise ETSError("invalid_token", "malformed claims") from None
    if not isinstance(claims, dict):
        raise ETSError("invalid_token", "malformed claims")
    access = _check_claims(claims, issuer=issuer, now=now, leeway=leeway)
    # Only a token that passed every check is remembered.
    ring.remember(token, claims)
    return access


def _check_claims(
    claims: dict[str, Any], *, issuer: str, now: float, leeway: float
) -> AccessToken:
    aud = claims.get("aud")
    if not (aud == AUDIENCE or (isinstance(aud, list) and AUDIENCE in aud)):
        raise ETSError("bad_claims", "wrong or missing aud")
    if claims.get("iss") != issuer:
        raise ETSError("bad_claims", "wrong or missing iss")
    exp = claims.get("exp")
    if not _is_time(exp):
        raise ETSError("bad_claims", "missing or ill-typed exp")
    iat = claims.get("iat")
    if not _is_time(iat):
        raise ETSError("bad_claims", "missing or ill-typed iat")
    nbf = claims.get("nbf")
    if nbf is not None and not _is_time(nbf):
        raise ETSError("bad_claims", "ill-typed nbf")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI_LENGTH:
        raise ETSError("bad_claims", "missing or ill-typed jti")
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if not isinstance(jkt, str) or not jkt:
        raise ETSError("bad_claims", "missing or ill-typed cnf.jkt")
    # RFC 7519 section 4.1.4: valid only *before* exp; pyjwt agrees.
    if exp <= now - leeway:
        raise ETSError("invalid_token", "token expired")
    if nbf is not None and nbf > now + leeway:
        raise ETSError("invalid_token", "token not yet valid")
    return AccessToken(jkt=jkt, jti=jti, iat=iat, exp=exp, claims=claims)


def _is_time(value: object) -> bool:
    # Integers only: we mint integers, and bool is an int in Python.
    return isinstance(value, int) and not isinstance(value, bool)
