"""
Keys and DPoP proofs for tests, made with C{cryptography} directly.

Nothing here uses L{ets_twisted.jose} or L{ets_twisted.dpop}: the proofs are
built independently of the code they test.

    signer = ProofSigner("ES256")
    proof = signer.sign("GET", "https://ets.example/api/x", iat=clock.seconds(),
                        ath=ath_of(token))
    cnf = {"jkt": signer.thumbprint}
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any, Mapping

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

#: Every algorithm L{ProofSigner} can sign with.
ALGS = ("ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256")

#: Pass as a value in C{extra_header} / C{extra_claims} to drop that member.
OMIT: Any = object()

_CURVES = {
    "ES256": (ec.SECP256R1, hashes.SHA256, 32),
    "ES384": (ec.SECP384R1, hashes.SHA384, 48),
    "ES512": (ec.SECP521R1, hashes.SHA512, 66),
}

# RSA key generation takes tens of milliseconds: make one and share it.
_rsa_key: rsa.RSAPrivateKey | None = None


def b64(data: bytes) -> str:
    """
    Unpadded base64url, as JOSE writes it.
    """
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def ath_of(token: str) -> str:
    """
    The RFC 9449 C{ath} claim for an access token.
    """
    return b64(hashlib.sha256(token.encode("ascii")).digest())


def shared_rsa_key() -> rsa.RSAPrivateKey:
    """
    A 2048-bit RSA private key, generated once per test process.
    """
    global _rsa_key
    if _rsa_key is None:
        _rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _rsa_key


def _int_b64(value: int, size: int | None = None) -> str:
    length = size if size is not None else (value.bit_length() + 7) // 8
    return b64(value.to_bytes(length, "big"))


def public_jwk(private_key: Any) -> dict[str, str]:
    """
    The public JWK of a C{cryptography} private key (EC, Ed25519 or RSA).
    """
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        numbers = private_key.public_key().public_numbers()
        size = (private_key.curve.key_size + 7) // 8
        crv = {256: "P-256", 384: "P-384", 521: "P-521"}[private_key.curve.key_size]
        return {
            "kty": "EC",
            "crv": crv,
            "x": _int_b64(numbers.x, size),
            "y": _int_b64(numbers.y, size),
        }
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
    numbers = private_key.public_key().public_numbers()
    return {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}


def thumbprint(jwk: Mapping[str, str]) -> str:
    """
    RFC 7638 thumbprint, computed the plain way.
    """
    required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
    members = {name: jwk[name] for name in required[jwk["kty"]]}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    return b64(hashlib.sha256(canonical.encode("utf-8")).digest())


def new_private_key(alg: str) -> Any:
    """
    A fresh private key for C{alg} (RSA keys are shared, see
    L{shared_rsa_key}).
    """
    if alg in _CURVES:
        return ec.generate_private_key(_CURVES[alg][0]())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg in ("RS256", "PS256"):
        return shared_rsa_key()
    raise ValueError(f"no key for {alg!r}")


def sign_bytes(private_key: Any, alg: str, data: bytes) -> bytes:
    """
    Sign C{data} as JWS C{alg} does; ECDSA signatures come out as JOSE
    C{r || s}.
    """
    if alg in _CURVES:
        _, hash_type, size = _CURVES[alg]
        r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(hash_type())))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    signature: bytes
    if alg == "EdDSA":
        signature = private_key.sign(data)
    elif alg == "RS256":
        signature = private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "PS256":
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        signature = private_key.sign(data, pss, hashes.SHA256())
    else:
        raise ValueError(f"cannot sign with {alg!r}")
    return signature


def encode_jws(header: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    """
    The unsigned C{header.payload} part of a compact JWS, compact JSON.
    """
    return (
        b64(json.dumps(header, separators=(",", ":")).encode("utf-8"))
        + "."
        + b64(json.dumps(payload, separators=(",", ":")).encode("utf-8"))
    )


def _merged(base: dict[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    for name, value in (extra or {}).items():
        if value is OMIT:
            base.pop(name, None)
        else:
            base[name] = value
    return base


class ProofSigner:
    """
    A DPoP client key that signs proofs.

    @ivar alg: the JWS algorithm signed with.
    @ivar private_key: the C{cryptography} private key.
    @ivar public_jwk: its public JWK.
    @ivar thumbprint: its RFC 7638 thumbprint.
    """

    def __init__(self, alg: str = "ES256", private_key: Any = None) -> None:
        self.alg = alg
        self.private_key = private_key if private_key is not None else new_private_key(alg)
        self.public_jwk = public_jwk(self.private_key)
        self.thumbprint = thumbprint(self.public_jwk)

    def header(self, extra_header: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """
        A proof header for this key, with C{extra_header} applied.
        """
        base = {"typ": "dpop+jwt", "alg": self.alg, "jwk": dict(self.public_jwk)}
        return _merged(base, extra_header)

    def sign_raw(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
        """
        Sign any header and claims as a compact JWS with this key.
        """
        signing_input = encode_jws(header, claims)
        signature = sign_bytes(self.private_key, self.alg, signing_input.encode("ascii"))
        return signing_input + "." + b64(signature)

    def sign(
        self,
        htm: str,
        htu: str,
        *,
        iat: float,
        jti: str | None = None,
        ath: str | None = None,
        nonce: str | None = None,
        extra_header: Mapping[str, Any] | None = None,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """
        A DPoP proof for one request.

        @param htm: the request method.
        @param htu: the request URI.
        @param iat: the issue time, epoch seconds.
        @param jti: the proof identifier; a random one when L{None}.
        @param ath: the C{ath} claim (see L{ath_of}), left out when L{None}.
        @param nonce: the C{nonce} claim, left out when L{None}.
        @param extra_header: header members to add, replace, or drop (with
            L{OMIT}).
        @param extra_claims: claims to add, replace, or drop (with L{OMIT}).
        @return: the compact JWS.
        """
        claims: dict[str, Any] = {
            "htm": htm,
            "htu": htu,
            "iat": iat,
            "jti": jti if jti is not None else secrets.token_urlsafe(16),
        }
        if ath is not None:
            claims["ath"] = ath
        if nonce is not None:
            claims["nonce"] = nonce
        return self.sign_raw(self.header(extra_header), _merged(claims, extra_claims))
