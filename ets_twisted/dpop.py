"""
The DPoP proof rules of RFC 9449, in SPEC's order.

L{verify_proof} checks everything about a proof that needs nothing but the
proof and the request: parse, header, key, signature, C{cnf} binding,
C{htm}, C{htu}, C{jti}, C{iat} window and C{ath}. The nonce and the replay
cache need shared state, so the caller checks them afterwards with what
L{Proof} carries (L{replay_key}, L{replay_ttl}). Each failure is an
L{ETSError} with SPEC's code; the first failing rule answers.

Nothing here imports Twisted.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Collection

import attr

from ets_twisted.errors import ETSError
from ets_twisted.memo import Memo
from ets_twisted.jose import SUPPORTED_ALGS, JWKError, KeyCache, b64url_encode, split_compact_jws

__all__ = [
    "Proof",
    "MAX_JTI_LENGTH",
    "access_token_hash",
    "normalize_htu",
    "replay_key",
    "replay_ttl",
    "verify_proof",
]

#: The proof header C{typ} RFC 9449 section 4.2 requires.
DPOP_TYP = "dpop+jwt"

#: The longest C{jti} accepted, in characters (SPEC).
MAX_JTI_LENGTH = 256


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Proof:
    """
    A DPoP proof that passed every stateless check.

    @ivar jkt: the RFC 7638 thumbprint of the proof's key.
    @ivar jti: the proof's unique identifier.
    @ivar iat: the proof's issue time, epoch seconds.
    @ivar htm: the HTTP method the proof was made for.
    @ivar htu: the URI the proof was made for, normalised by
        L{normalize_htu}.
    @ivar nonce: the C{nonce} claim, or L{None} when absent or not a string;
        the caller checks it.
    @ivar ath: the C{ath} claim, or L{None} when absent or not a string.
    """

    jkt: str
    jti: str
    iat: float
    htm: str
    htu: str
    nonce: str | None
    ath: str | None


def access_token_hash(token: str) -> str:
    """
    The C{ath} value for an access token (RFC 9449 section 4.2).

    @param token: the access token as sent.
    @return: base64url of the SHA-256 of its ASCII encoding.
    @raise UnicodeEncodeError: when the token is not ASCII.
    """
    return b64url_encode(hashlib.sha256(token.encode("ascii")).digest())


def replay_key(jkt: str, jti: str) -> bytes:
    """
    The replay-cache key of a proof: unique per (key, C{jti}) pair.

    Replay is judged per key (SPEC), so two clients choosing the same C{jti}
    do not collide. The cache keeps only this digest, never the C{jti}.

    @param jkt: the proof key's thumbprint.
    @param jti: the proof's C{jti}.
    @return: 16 bytes: SHA-256 of the length-prefixed pair, truncated.
    """
    # The length prefix keeps ("ab", "c") and ("a", "bc") apart whatever the
    # characters; surrogatepass because JSON lets a jti hold lone surrogates.
    thumbprint = jkt.encode("utf-8", "surrogatepass")
    data = b"%d:%s%s" % (len(thumbprint), thumbprint, jti.encode("utf-8", "surrogatepass"))
    return hashlib.sha256(data).digest()[:16]


def replay_ttl(iat: float, now: float, max_age: float, skew: float) -> float:
    """
    How long a used proof must be remembered.

    @param iat: the proof's C{iat}.
    @param now: the current time, epoch seconds.
    @param max_age: C{DPOP_MAX_AGE_SECONDS}.
    @param skew: C{DPOP_CLOCK_SKEW_SECONDS}.
    @return: the seconds until the proof falls out of the acceptance window
        (with the skew as margin for clocks that differ between workers), at
        least 1.
    """
    return max(1.0, iat + max_age + skew - now)


_SCHEME_DEFAULT_PORTS = {"http": "80", "https": "443"}

# RFC 3986 appendix B, restricted to URIs with an authority.
_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)(?:[?#].*)?", re.DOTALL)
# reg-name (without percent-encoding, which no DNS name needs) or IPv6.
_HOST = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=-]+|\[[0-9A-Fa-f:.]+\]")
_PORT = re.compile(r"[0-9]*")
# A path needing no percent-encoding work at all.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/-]*")
# What the percent-encoding pass rewrites: an escape (maybe broken), or a
# character RFC 3986 does not allow in a path.
_PATH_FIXUP = re.compile(r"%([0-9A-Fa-f]{2})?|[^A-Za-z0-9._~!$&'()*+,;=:@/-]")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _fix_path_char(match: re.Match[str]) -> str:
    text = match.group(0)
    if text[0] == "%":
        hex_pair = match.group(1)
        if hex_pair is None:
            raise ValueError("broken percent-encoding")
        char = chr(int(hex_pair, 16))
        # RFC 3986 section 6.2.2.2: decode unreserved, upper-case the rest.
        return char if char in _UNRESERVED else "%" + hex_pair.upper()
    # A character a URI may not hold (non-ASCII, space, ...): encode its
    # UTF-8 as a browser does (RFC 3987 section 3.1).
    return "".join("%%%02X" % byte for byte in text.encode("utf-8"))


def _remove_dot_segments(path: str) -> str:
    """
    RFC 3986 section 5.2.4 for an absolute path.
    """
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    if segments[-1] in (".", ".."):
        # "/a/b/.." names the directory "/a/", not "/a".
        kept.append("")
    return "/" + "/".join(kept)


def normalize_htu(url: str) -> str:
    """
    Normalise an HTTP URI for the C{htu} comparison (RFC 9449 section 4.3,
    RFC 3986 sections 6.2.2 and 6.2.3).

    Query and fragment are dropped; scheme and host are lower-cased; the
    default port (80 for http, 443 for https) and an empty port are dropped;
    an empty path becomes C{/}; percent-escapes of unreserved characters are
    decoded and the others upper-cased; characters a URI may not hold are
    percent-encoded as UTF-8; dot segments are removed. Used on both sides:
    the proof's C{htu} and the URI ETS computes for the request.

    @param url: an absolute C{http} or C{https} URI.
    @return: the normalised URI, C{scheme://host[:port]/path}.
    @raise ValueError: when C{url} is not an absolute http(s) URI with a
        host, or holds user information, a bad port or a broken escape.
    """
    return _normalized(url)


def _normalize_htu(url: str) -> str:
    match = _URI.fullmatch(url)
    if match is None:
        raise ValueError("not an absolute URI with an authority")
    scheme, authority, path = match.groups()
    scheme = scheme.lower()
    default_port = _SCHEME_DEFAULT_PORTS.get(scheme)
    if default_port is None:
        raise ValueError("only http and https URIs are accepted")
    if "@" in authority:
        raise ValueError("user information is not accepted")
    if authority.startswith("["):
        end = authority.find("]") + 1
        host, port = authority[:end], authority[end:]
    else:
        host, colon, port = authority.partition(":")
        port = colon + port
    if not host or _HOST.fullmatch(host) is None:
        raise ValueError("bad host")
    host = host.lower()
    if port:
        if port[0] != ":" or _PORT.fullmatch(port, 1) is None:
            raise ValueError("bad port")
        port = port[1:]
        if port:
            number = int(port)
            if number > 65535:
                raise ValueError("port out of range")
            port = "" if str(number) == default_port else f":{number}"
    if not path:
        path = "/"
    elif _PLAIN_PATH.fullmatch(path) is None:
        path = _PATH_FIXUP.sub(_fix_path_char, path)
    if "/." in path:
        path = _remove_dot_segments(path)
    return f"{scheme}://{host}{port}{path}"


def _same(a: str, b: str) -> bool:
    """
    Compare two strings in constant time (for equal lengths).
    """
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def verify_proof(
    proof: str,
    *,
    method: str,
    url: str,
    now: float,
    algs: Collection[str],
    max_age: float,
    skew: float,
    key_cache: KeyCache,
    access_token: str | None = None,
    expected_jkt: str | None = None,
    require_ath: bool = False,
) -> Proof:
    """
    Check a DPoP proof against the request it came with.

    Rules run in SPEC's order and the first failure answers: parse, header,
    key, signature, C{cnf}, C{htm}, C{htu}, C{jti}, C{iat} window, C{ath}.
    Nonce and replay are left to the caller.

    @param proof: the C{DPoP} header value.
    @param method: the request method, compared exactly with C{htm}.
    @param url: the URI ETS computes for the request; query and fragment
        are ignored.
    @param now: the current time, epoch seconds.
    @param algs: the allowed JWS algorithms (C{DPOP_ALGS}); C{none} and the
        HMAC algorithms are never accepted whatever this holds.
    @param max_age: the oldest acceptable C{iat}, in seconds before C{now}.
    @param skew: how far after C{now} an C{iat} may be, in seconds.
    @param key_cache: where parsed proof keys are kept.
    @param access_token: the access token sent with the proof, if any; the
        C{ath} claim is checked only when this is given.
    @param expected_jkt: the access token's C{cnf.jkt}, if any.
    @param require_ath: refuse a proof without C{ath} (with C{access_token}).
    @return: the checked proof.
    @raise ETSError: with C{bad_dpop}, C{bad_dpop_header}, C{bad_dpop_key},
        C{bad_dpop_sig}, C{cnf_mismatch}, C{htm_mismatch}, C{htu_mismatch},
        C{missing_dpop_jti}, C{missing_dpop_iat}, C{dpop_iat_in_future},
        C{dpop_iat_too_old} or C{ath_mismatch}.
    """
    try:
        header, claims, signing_input, signature = split_compact_jws(proof)
    except ValueError:
        raise ETSError("bad_dpop", "the proof is not a compact JWS of JSON objects") from None

    if header.get("typ") != DPOP_TYP:
        raise ETSError("bad_dpop_header", "typ must be dpop+jwt")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in SUPPORTED_ALGS or alg not in algs:
        raise ETSError("bad_dpop_header", "alg is not allowed")
    # RFC 7515 section 4.1.11: we understand no extension, so any "crit"
    # (b64=false among them) makes the proof one we cannot process.
    if "crit" in header:
        raise ETSError("bad_dpop_header", "crit is not supported")

    try:
        key = key_cache.get(header.get("jwk"), (alg,), remember=False)
    except JWKError as e:
        raise ETSError("bad_dpop_key", str(e)) from None

    if not key.verify(alg, signing_input, signature):
        raise ETSError("bad_dpop_sig", "the proof signature does not verify")

    if expected_jkt is not None and not (
        isinstance(expected_jkt, str) and _same(key.thumbprint, expected_jkt)
    ):
        raise ETSError("cnf_mismatch", "the proof key is not the token's key")
    # Only a key that signed its proof (for the token it came with) is worth
    # keeping parsed: made-up keys cannot evict those of real clients.
    key_cache.remember(header["jwk"], key)

    htm = claims.get("htm")
    if not isinstance(htm, str) or htm != method:
        raise ETSError("htm_mismatch", "htm is not the request method")

    htu = claims.get("htu")
    if not isinstance(htu, str):
        raise ETSError("htu_mismatch", "htu missing or not a string")
    try:
        normal_htu = normalize_htu(htu)
    except ValueError:
        raise ETSError("htu_mismatch", "htu is not an http(s) URI") from None
    try:
        request_url = normalize_htu(url)
    except ValueError:
        # The request's own URI is unusable (a strange Host header): no
        # proof can match it.
        raise ETSError("htu_mismatch", "the request URI cannot be compared") from None
    if normal_htu != request_url:
        raise ETSError("htu_mismatch", "htu is not the request URI")

    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
        raise ETSError("missing_dpop_jti", "jti missing, empty, too long or not a string")

    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, (int, float)):
        raise ETSError("missing_dpop_iat", "iat missing or not a number")
    if iat > now + skew:
        raise ETSError("dpop_iat_in_future", "iat is in the future")
    if iat < now - max_age:
        raise ETSError("dpop_iat_too_old", "iat is too old")

    ath = claims.get("ath")
    if access_token is not None:
        if "ath" in claims:
            expected = _expected_ath(access_token)
            if not isinstance(ath, str) or expected is None or not _same(ath, expected):
                raise ETSError("ath_mismatch", "ath is not the access token's hash")
        elif require_ath:
            raise ETSError("ath_mismatch", "ath is required")

    nonce = claims.get("nonce")
    return Proof(
        jkt=key.thumbprint,
        jti=jti,
        iat=iat,
        htm=htm,
        htu=normal_htu,
        nonce=nonce if isinstance(nonce, str) else None,
        ath=ath if isinstance(ath, str) else None,
    )


def _expected_ath(access_token: str) -> str | None:
    """
    The C{ath} a proof must carry, or L{None} when no proof can match
    (a non-ASCII access token, which no valid token is). Remembered for
    the last tokens seen: a token is sent with every call of its lifetime.
    """
    return _aths(access_token)


def _ath_of(access_token: str) -> str | None:
    try:
        return access_token_hash(access_token)
    except UnicodeEncodeError:
        return None


#: A client sends the same few URIs again and again; a token is sent with
#: every call of its lifetime.
_normalized: Memo[str, str] = Memo(_normalize_htu)
_aths: Memo[str, str | None] = Memo(_ath_of, size=1024, max_length=8192)

