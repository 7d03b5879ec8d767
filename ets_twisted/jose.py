"""
The small part of JOSE that DPoP needs: strict base64url, public JWKs,
RFC 7638 thumbprints and compact JWS verification.

Everything here is pure Python on top of C{cryptography}; nothing imports
Twisted. Only public keys are ever accepted: a JWK carrying a private member
is refused, so a client that leaks its private key to us is told so instead
of being served.

Decisions worth knowing (see also L{parse_public_jwk}):

  - base64url is strict (RFC 7515 section 2): URL-safe alphabet, no padding,
    no whitespace, and the unused bits of the last character must be zero,
    so every byte string has exactly one accepted encoding and a key has
    exactly one thumbprint.
  - JSON in a JWS must be UTF-8, must not repeat a member name (RFC 7515
    section 4 lets a parser reject duplicates; we do, so nobody can show one
    value to us and another to a different parser) and must not contain
    C{NaN}, C{Infinity} or a number too large for a float.
  - The JWK members C{alg}, C{use}, C{key_ops}, C{kid} and C{ext} are
    ignored: the key type and curve alone decide which algorithms a key
    verifies, and WebCrypto exports add C{key_ops}/C{ext} to every key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import attr
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .memo import Memo

__all__ = [
    "SUPPORTED_ALGS",
    "MAX_JWS_LENGTH",
    "JWKError",
    "PublicKey",
    "KeyCache",
    "b64url_encode",
    "b64url_decode",
    "jwk_thumbprint",
    "parse_public_jwk",
    "split_compact_jws",
]

#: Every JWS algorithm this module can verify. C{none} and the HMAC
#: algorithms are deliberately absent: a proof must be signed by its own key.
SUPPORTED_ALGS: frozenset[str] = frozenset(
    {"ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256"}
)

#: The longest compact JWS L{split_compact_jws} looks at. A DPoP proof with
#: a 4096-bit RSA key is about 2 KiB; refusing anything past this before
#: decoding keeps a hostile header from costing us work.
MAX_JWS_LENGTH = 8192

#: JWK members that only a private (or symmetric) key has.
PRIVATE_MEMBERS: frozenset[str] = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

#: The RSA modulus sizes we accept, in bits. Below 2048 is too weak
#: (NIST SP 800-131A); above 4096 only makes every verification slower.
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 4096

_B64URL = re.compile(r"[A-Za-z0-9_-]*")

# For a base64url string of length 4n+2 (one byte in the last group) the last
# character carries 4 unused bits; for 4n+3 (two bytes) it carries 2. These
# are the characters whose unused bits are zero, i.e. the canonical ones.
_CANONICAL_LAST = {
    2: frozenset("AQgw"),
    3: frozenset("AEIMQUYcgkosw048"),
}


def b64url_encode(data: bytes) -> str:
    """
    Encode bytes as unpadded base64url (RFC 7515 section 2).

    @param data: the bytes to encode.
    @return: the encoding, ASCII text without C{=} padding.
    """
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str | bytes) -> bytes:
    """
    Decode strict unpadded base64url.

    @param text: the encoding, as text or ASCII bytes.
    @return: the decoded bytes.
    @raise ValueError: when C{text} holds anything but the URL-safe
        alphabet (padding and whitespace included), has an impossible length,
        or is not the canonical encoding of its bytes.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii")
    elif not isinstance(text, str):
        raise ValueError("base64url input must be text")
    if _B64URL.fullmatch(text) is None:
        raise ValueError("not base64url")
    remainder = len(text) % 4
    if remainder == 1:
        raise ValueError("impossible base64url length")
    if remainder and text[-1] not in _CANONICAL_LAST[remainder]:
        raise ValueError("non-canonical base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class JWKError(ValueError):
    """
    A JWK we will not use.

    @ivar unsupported: C{True} when the key is well-formed but refused by
        policy (key type, curve or algorithm not allowed, RSA modulus or
        exponent out of range): SPEC's C{unsupported_jwk}. C{False} when the
        key is malformed, off its curve or carries private members: SPEC's
        C{invalid_jwk}.
    """

    def __init__(self, message: str, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _KeyType:
    """
    What a supported C{kty}/C{crv} pair means.

    @ivar algs: the JWS algorithms a key of this type verifies.
    @ivar size: the exact length in bytes of each coordinate (EC) or of the
        public key (OKP); 0 for RSA, whose size varies.
    @ivar prime: the field prime the coordinates must stay below (EC, OKP).
    @ivar curve: the C{cryptography} curve (EC only).
    """

    algs: frozenset[str]
    size: int = 0
    prime: int = 0
    curve: Any = None


_P256 = 2**256 - 2**224 + 2**192 + 2**96 - 1
_P384 = 2**384 - 2**128 - 2**96 + 2**32 - 1
_P521 = 2**521 - 1
_P25519 = 2**255 - 19

_KEY_TYPES: dict[tuple[str, str | None], _KeyType] = {
    ("EC", "P-256"): _KeyType(frozenset({"ES256"}), 32, _P256, ec.SECP256R1()),
    ("EC", "P-384"): _KeyType(frozenset({"ES384"}), 48, _P384, ec.SECP384R1()),
    ("EC", "P-521"): _KeyType(frozenset({"ES512"}), 66, _P521, ec.SECP521R1()),
    ("OKP", "Ed25519"): _KeyType(frozenset({"EdDSA"}), 32, _P25519),
    ("RSA", None): _KeyType(frozenset({"RS256", "PS256"})),
}

# RFC 7638 section 3.2: the required members of each key type, already in
# lexicographic order, which is the order of the canonical JSON.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}

# One instance of each algorithm parameter, shared by every verification.
_SHA256 = hashes.SHA256()
_ECDSA = {
    "ES256": ec.ECDSA(_SHA256),
    "ES384": ec.ECDSA(hashes.SHA384()),
    "ES512": ec.ECDSA(hashes.SHA512()),
}
_PKCS1 = padding.PKCS1v15()
# RFC 7518 section 3.5: MGF1 with the same hash, salt as long as the hash.
_PSS = padding.PSS(mgf=padding.MGF1(_SHA256), salt_length=32)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class PublicKey:
    """
    A parsed public JWK, ready to verify signatures.

    @ivar kty: the JWK key type: C{"EC"}, C{"OKP"} or C{"RSA"}.
    @ivar crv: the curve name, or L{None} for RSA.
    @ivar thumbprint: the RFC 7638 SHA-256 thumbprint, base64url.
    @ivar key: the C{cryptography} public key object.
    @ivar algs: the JWS algorithms this key can verify.
    @ivar signature_size: the exact length in bytes of a valid signature.
    """

    kty: str
    crv: str | None
    thumbprint: str
    key: Any
    algs: frozenset[str]
    signature_size: int

    def verify(self, alg: str, signing_input: bytes, signature: bytes) -> bool:
        """
        Check a JWS signature made with this key.

        @param alg: the JWS C{alg} the signature claims.
        @param signing_input: the ASCII bytes C{header "." payload}.
        @param signature: the decoded signature; for ECDSA the JOSE form
            C{r || s} (a DER signature is refused).
        @return: C{True} only when C{alg} fits this key and the signature
            verifies; C{False} otherwise, never an exception.
        """
        if alg not in self.algs or len(signature) != self.signature_size:
            return False
        try:
            if self.kty == "EC":
                half = self.signature_size // 2
                der = encode_dss_signature(
                    int.from_bytes(signature[:half], "big"),
                    int.from_bytes(signature[half:], "big"),
                )
                self.key.verify(der, signing_input, _ECDSA[alg])
            elif self.kty == "OKP":
                self.key.verify(signature, signing_input)
            elif alg == "RS256":
                self.key.verify(signature, signing_input, _PKCS1, _SHA256)
            else:
                self.key.verify(signature, signing_input, _PSS, _SHA256)
        except (InvalidSignature, ValueError):
            return False
        return True


def _required_members(jwk: Mapping[str, Any]) -> tuple[str, ...]:
    """
    Read the RFC 7638 required members of a JWK.

    @param jwk: the JWK object.
    @return: the values of the required members in lexicographic member
        order. Since C{kty} is among them, the tuple identifies the
        thumbprint input exactly and serves as a cache key.
    @raise JWKError: when C{kty} is unknown (unsupported) or a required
        member is missing or not a string (malformed).
    """
    kty = jwk.get("kty")
    if not isinstance(kty, str):
        raise JWKError("kty missing or not a string")
    names = _REQUIRED.get(kty)
    if names is None:
        raise JWKError("key type not supported", unsupported=True)
    # Every request with a key comes here (twice for an issuance): a list
    # and a plain loop rather than generators.
    values = tuple([jwk.get(name) for name in names])
    for value in values:
        if not isinstance(value, str):
            name = names[values.index(value)]
            raise JWKError(f"{name} missing or not a string")
    return values  # type: ignore[return-value]


def _thumbprint_of(kty: str, values: tuple[str, ...]) -> str:
    """
    Compute an RFC 7638 thumbprint from L{_required_members}' answer.

    @param kty: the key type, selecting the member names.
    @param values: the member values, in member order.
    @return: base64url of the SHA-256 of the canonical JSON.
    """
    # sort_keys is a no-op on an already ordered dict but states the rule;
    # ensure_ascii=False because RFC 7638 section 3.3 forbids needless
    # escapes (and the UTF-8 of a lone surrogate is refused as a ValueError).
    canonical = json.dumps(
        dict(zip(_REQUIRED[kty], values)),
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=False,
    )
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """
    Compute the RFC 7638 SHA-256 thumbprint of a JWK.

    Only the required members' presence and type are checked; the values are
    taken as they are (use L{parse_public_jwk} to validate a key).

    @param jwk: the JWK object.
    @return: the thumbprint, base64url.
    @raise JWKError: when the key type is unknown or a required member is
        missing or not a string.
    """
    if not isinstance(jwk, Mapping):
        raise JWKError("a JWK must be a JSON object")
    values = _required_members(jwk)
    try:
        return _thumbprint_of(jwk["kty"], values)
    except UnicodeEncodeError:
        raise JWKError("member is not valid Unicode") from None


def _check_private(jwk: Mapping[str, Any]) -> None:
    """
    Refuse a JWK that carries any private or symmetric key member.

    @raise JWKError: (malformed) when one is present.
    """
    if not PRIVATE_MEMBERS.isdisjoint(jwk.keys()):
        raise JWKError("the JWK holds private key material")


def _decode_member(name: str, value: str, size: int = 0) -> bytes:
    """
    Decode one base64url member, optionally of an exact length.

    @raise JWKError: (malformed) when not strict base64url or of the wrong
        length.
    """
    try:
        raw = b64url_decode(value)
    except ValueError:
        raise JWKError(f"{name} is not base64url") from None
    if size and len(raw) != size:
        raise JWKError(f"{name} must be {size} bytes")
    return raw


def _load_key(kty: str, spec: _KeyType, jwk: Mapping[str, Any]) -> tuple[Any, int]:
    """
    Build the C{cryptography} key from validated members.

    @return: the key and the exact signature size in bytes.
    @raise JWKError: when the material is malformed, off its curve, or (RSA)
        out of the accepted size range.
    """
    if kty == "EC":
        x = int.from_bytes(_decode_member("x", jwk["x"], spec.size), "big")
        y = int.from_bytes(_decode_member("y", jwk["y"], spec.size), "big")
        # cryptography reduces coordinates modulo p, so x + p would load as
        # x: refuse it, or one key would have several thumbprints.
        if x >= spec.prime or y >= spec.prime:
            raise JWKError("coordinate out of range")
        try:
            ec_key = ec.EllipticCurvePublicNumbers(x, y, spec.curve).public_key()
        except ValueError:
            raise JWKError("the point is not on the curve") from None
        return ec_key, 2 * spec.size
    if kty == "OKP":
        raw = _decode_member("x", jwk["x"], spec.size)
        # RFC 8032 section 5.1.3: y (the low 255 bits) must be below p.
        if int.from_bytes(raw, "little") & (2**255 - 1) >= spec.prime:
            raise JWKError("non-canonical Ed25519 key")
        return ed25519.Ed25519PublicKey.from_public_bytes(raw), 64
    n_raw = _decode_member("n", jwk["n"])
    e_raw = _decode_member("e", jwk["e"])
    # RFC 7518 section 6.3.1: minimal big-endian, no leading zero octet.
    if not n_raw or not e_raw or n_raw[0] == 0 or e_raw[0] == 0:
        raise JWKError("n and e must be minimal big-endian integers")
    n = int.from_bytes(n_raw, "big")
    bits = n.bit_length()
    if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS:
        raise JWKError(
            f"RSA modulus of {bits} bits, outside {RSA_MIN_BITS}-{RSA_MAX_BITS}",
            unsupported=True,
        )
    # A huge public exponent would make each verification as slow as a
    # private-key operation; like Go's crypto/rsa we stay within 32 bits.
    if len(e_raw) > 4:
        raise JWKError("RSA public exponent too large", unsupported=True)
    e = int.from_bytes(e_raw, "big")
    if n % 2 == 0:
        raise JWKError("RSA modulus is even")
    try:
        rsa_key = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise JWKError("invalid RSA public key") from None
    return rsa_key, len(n_raw)


def _parse(jwk: Mapping[str, Any], values: tuple[str, ...], allowed: Iterable[str]) -> PublicKey:
    """
    Parse a JWK whose private-member check and required members are done.
    """
    kty: str = jwk["kty"]
    crv = jwk["crv"] if kty != "RSA" else None
    spec = _KEY_TYPES.get((kty, crv))
    if spec is None:
        raise JWKError("curve not supported", unsupported=True)
    # Policy before parsing: a key type nobody may use is not worth decoding.
    if spec.algs.isdisjoint(allowed):
        raise JWKError("no allowed algorithm fits this key", unsupported=True)
    key, signature_size = _load_key(kty, spec, jwk)
    return PublicKey(
        kty=kty,
        crv=crv,
        thumbprint=_thumbprint_of(kty, values),
        key=key,
        algs=spec.algs,
        signature_size=signature_size,
    )


def parse_public_jwk(jwk: object, allowed_algs: Iterable[str]) -> PublicKey:
    """
    Parse and validate a public JWK.

    Supported: EC P-256/P-384/P-521 (ES256/ES384/ES512) with coordinates of
    the curve's exact length and on the curve, OKP Ed25519 (EdDSA), and RSA
    (RS256, PS256) with a modulus of 2048 to 4096 bits and an exponent that
    fits 32 bits.

    @param jwk: the decoded JSON value claiming to be a JWK.
    @param allowed_algs: the JWS algorithms the caller accepts; the key must
        fit at least one of them.
    @return: the parsed key.
    @raise JWKError: with C{unsupported=True} when the key type, curve or
        size is refused by policy or fits none of C{allowed_algs}; with
        C{unsupported=False} when it is malformed, off its curve, or holds
        private members.
    """
    if not isinstance(jwk, Mapping):
        raise JWKError("a JWK must be a JSON object")
    _check_private(jwk)
    return _parse(jwk, _required_members(jwk), frozenset(allowed_algs))


class KeyCache:
    """
    A bounded least-recently-used cache of parsed public keys.

    Keys are cached by their RFC 7638 thumbprint input (the required
    members), so a client's key is decoded, curve-checked and hashed once
    rather than on every request. The private-member check and the allowed
    algorithms are still applied on every call: a cached key never lets a
    private JWK through. Failures are not cached, so junk cannot evict good
    keys faster than it could anyway. Like the rest of ETS it runs on the
    reactor thread and takes no lock.

    @ivar size: the most keys kept.
    """

    def __init__(self, size: int = 4096) -> None:
        if size < 1:
            raise ValueError("cache size must be positive")
        self.size = size
        self._keys: OrderedDict[tuple[str, ...], PublicKey] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, jwk: object, allowed_algs: Iterable[str], remember: bool = True) -> PublicKey:
        """
        Parse a public JWK, or find it parsed already.

        @param jwk: as for L{parse_public_jwk}.
        @param allowed_algs: as for L{parse_public_jwk}.
        @param remember: whether a newly parsed key is cached now; callers
            that have yet to verify a signature with it pass C{False} and
            call L{remember} after, so that a flood of proofs with made-up
            keys cannot evict the keys of real clients.
        @return: the parsed key; the same object for the same key while it
            stays cached.
        @raise JWKError: as L{parse_public_jwk} does.
        """
        if not isinstance(jwk, Mapping):
            raise JWKError("a JWK must be a JSON object")
        _check_private(jwk)
        values = _required_members(jwk)
        cached = self._keys.get(values)
        if cached is not None:
            if cached.algs.isdisjoint(allowed_algs):
                raise JWKError("no allowed algorithm fits this key", unsupported=True)
            self._keys.move_to_end(values)
            return cached
        key = _parse(jwk, values, frozenset(allowed_algs))
        if remember:
            self._keep(values, key)
        return key

    def remember(self, jwk: Mapping[str, Any], key: PublicKey) -> None:
        """Cache C{key}, parsed from C{jwk} by L{get}, once it proved itself."""
        self._keep(_required_members(jwk), key)

    def _keep(self, values: tuple[str, ...], key: PublicKey) -> None:
        self._keys[values] = key
        self._keys.move_to_end(values)
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    # 1e400 parses as infinity: as unusable as a literal Infinity.
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates,
    parse_constant=_refuse_constant,
    parse_float=_finite_float,
)


def _json_object(part: str, what: str) -> dict[str, Any]:
    """
    Decode one base64url part of a JWS as a UTF-8 JSON object.

    @raise ValueError: when it is not one.
    """
    try:
        value = _DECODER.decode(b64url_decode(part).decode("utf-8"))
    except RecursionError:
        # Deeply nested arrays exhaust the C scanner's recursion budget.
        raise ValueError(f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def _decoded_header(encoded: str) -> dict[str, Any]:
    """
    L{_json_object} of a JWS header, remembered: a client's proofs all carry
    the same header (typ, alg, its key). Callers get their own (shallow)
    copy; the nested values, such as C{jwk}, are shared and must be treated
    as read-only.
    """
    return dict(_headers(encoded))


_headers: Memo[str, dict[str, Any]] = Memo(lambda encoded: _json_object(encoded, "header"), max_length=1024)


def split_compact_jws(
    token: str | bytes, max_length: int = MAX_JWS_LENGTH
) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """
    Split and decode a compact JWS without checking its signature.

    @param token: the compact serialisation C{header.payload.signature}.
    @param max_length: the longest token looked at.
    @return: the header object, the payload object, the signing input
        (ASCII bytes of C{header.payload}) and the decoded signature.
    @raise ValueError: when the token is too long, not three strict
        base64url parts, or the header or payload is not a JSON object (see
        the module docstring for what JSON is accepted).
    """
    if isinstance(token, bytes):
        token = token.decode("ascii")
    elif not isinstance(token, str):
        raise ValueError("a JWS must be text")
    if len(token) > max_length:
        raise ValueError("JWS too long")
    if token.count(".") != 2:
        raise ValueError("a compact JWS has exactly three parts")
    encoded_header, encoded_payload, encoded_signature = token.split(".")
    header = _decoded_header(encoded_header)
    payload = _json_object(encoded_payload, "payload")
    signature = b64url_decode(encoded_signature)
    # The parts are base64url, hence ASCII, by now.
    signing_input = token[: len(encoded_header) + 1 + len(encoded_payload)].encode("ascii")
    return header, payload, signing_input, signature
