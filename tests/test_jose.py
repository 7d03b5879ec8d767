"""
Tests for L{ets_twisted.jose}: base64url, public JWKs, thumbprints, JWS.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from twisted.trial.unittest import SynchronousTestCase

from ets_twisted.jose import (
    SUPPORTED_ALGS,
    JWKError,
    KeyCache,
    PublicKey,
    b64url_decode,
    b64url_encode,
    jwk_thumbprint,
    parse_public_jwk,
    split_compact_jws,
)
from tests.support.proofs import (
    ALGS,
    b64,
    encode_jws,
    new_private_key,
    public_jwk,
    sign_bytes,
)

# RFC 7638 section 3.1.
RFC7638_JWK = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFF"
        "xuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt"
        "7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6"
        "qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINH"
        "aQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

P521_PRIME = 2**521 - 1


def ec_jwk(alg: str = "ES256") -> dict[str, Any]:
    return public_jwk(new_private_key(alg))


class Base64urlTests(SynchronousTestCase):
    """
    L{b64url_encode} and L{b64url_decode} speak strict RFC 7515 base64url.
    """

    def test_roundTrip(self) -> None:
        """
        Every length of input survives encoding and decoding, without padding.
        """
        for length in range(10):
            data = bytes(range(250, 250 - length, -1))
            encoded = b64url_encode(data)
            self.assertNotIn("=", encoded)
            self.assertEqual(b64url_decode(encoded), data)
            self.assertEqual(b64url_decode(encoded.encode("ascii")), data)

    def test_urlSafeAlphabet(self) -> None:
        """
        C{-} and C{_} are accepted; C{+} and C{/} (plain base64) are not.
        """
        self.assertEqual(b64url_decode("-_8"), b"\xfb\xff")
        self.assertRaises(ValueError, b64url_decode, "+/8")

    def test_refusesPaddingAndWhitespace(self) -> None:
        """
        Padding, whitespace and line breaks are refused, not skipped.
        """
        for text in ["QQ==", "QQ=", " QQ", "QQ ", "Q Q", "QQ\n", "QUJD\nREVG"]:
            self.assertRaises(ValueError, b64url_decode, text)

    def test_refusesImpossibleLength(self) -> None:
        """
        A length of 4n+1 characters cannot encode whole bytes.
        """
        self.assertRaises(ValueError, b64url_decode, "QUJDR")

    def test_refusesNonCanonical(self) -> None:
        """
        Non-zero unused bits in the last character are refused, so each byte
        string has exactly one accepted encoding.
        """
        self.assertEqual(b64url_decode("QQ"), b"A")
        self.assertRaises(ValueError, b64url_decode, "QR")
        self.assertEqual(b64url_decode("QUI"), b"AB")
        self.assertRaises(ValueError, b64url_decode, "QUJ")

    def test_refusesNonAscii(self) -> None:
        """
        Non-ASCII text or bytes are a L{ValueError}.
        """
        self.assertRaises(ValueError, b64url_decode, "QQé")
        self.assertRaises(ValueError, b64url_decode, b"QQ\xff")
        self.assertRaises(ValueError, b64url_decode, "QQ\uff10")


class ThumbprintTests(SynchronousTestCase):
    """
    L{jwk_thumbprint} follows RFC 7638.
    """

    def test_rfc7638Example(self) -> None:
        """
        The RFC 7638 section 3.1 example key has the RFC's thumbprint.
        """
        self.assertEqual(jwk_thumbprint(RFC7638_JWK), RFC7638_THUMBPRINT)

    def test_parsedKeyCarriesThumbprint(self) -> None:
        """
        A parsed key's thumbprint is the RFC 7638 one.
        """
        key = parse_public_jwk(RFC7638_JWK, ["RS256"])
        self.assertEqual(key.thumbprint, RFC7638_THUMBPRINT)

    def test_onlyRequiredMembersCount(self) -> None:
        """
        Optional members (C{alg}, C{kid}, C{use}, ...) and member order do not
        change the thumbprint.
        """
        jwk = ec_jwk()
        decorated = dict(reversed(list(jwk.items())), kid="k", use="sig", alg="ES256")
        self.assertEqual(jwk_thumbprint(decorated), jwk_thumbprint(jwk))

    def test_eachKeyType(self) -> None:
        """
        EC, OKP and RSA thumbprints hash the canonical JSON of their required
        members.
        """
        cases = [
            ({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AQ"},
             '{"crv":"P-256","kty":"EC","x":"AA","y":"AQ"}'),
            ({"kty": "OKP", "crv": "Ed25519", "x": "AA"}, '{"crv":"Ed25519","kty":"OKP","x":"AA"}'),
            ({"kty": "RSA", "n": "AA", "e": "AQAB"}, '{"e":"AQAB","kty":"RSA","n":"AA"}'),
        ]
        for jwk, canonical in cases:
            expected = b64(hashlib.sha256(canonical.encode()).digest())
            self.assertEqual(jwk_thumbprint(jwk), expected)

    def test_missingOrIllTypedMember(self) -> None:
        """
        A missing or non-string required member is a malformed JWK.
        """
        malformed: list[dict[str, Any]] = [
            {"kty": "EC", "crv": "P-256", "x": "AA"},
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": 1},
            {"kty": "RSA", "n": "AA"},
            {"crv": "Ed25519", "x": "AA"},
            {"kty": 1},
        ]
        for jwk in malformed:
            with self.assertRaises(JWKError) as caught:
                jwk_thumbprint(jwk)
            self.assertFalse(caught.exception.unsupported)

    def test_unknownKeyType(self) -> None:
        """
        A key type without an RFC 7638 member list is unsupported.
        """
        with self.assertRaises(JWKError) as caught:
            jwk_thumbprint({"kty": "oct", "k": "AA"})
        self.assertTrue(caught.exception.unsupported)


class RoundTripTests(SynchronousTestCase):
    """
    Every supported algorithm verifies signatures made by C{cryptography}.
    """

    def test_eachAlgorithm(self) -> None:
        """
        For ES256, ES384, ES512, EdDSA, RS256 and PS256 a good signature
        verifies and a signature over other data does not.
        """
        for alg in ALGS:
            private = new_private_key(alg)
            key = parse_public_jwk(public_jwk(private), [alg])
            self.assertIsInstance(key, PublicKey)
            self.assertIn(alg, key.algs)
            signature = sign_bytes(private, alg, b"header.payload")
            self.assertTrue(key.verify(alg, b"header.payload", signature), alg)
            self.assertFalse(key.verify(alg, b"header.payloae", signature), alg)

    def test_keyMetadata(self) -> None:
        """
        Parsed keys report their type, curve and the algorithms they verify.
        """
        cases = {
            "ES256": ("EC", "P-256", {"ES256"}),
            "ES384": ("EC", "P-384", {"ES384"}),
            "ES512": ("EC", "P-521", {"ES512"}),
            "EdDSA": ("OKP", "Ed25519", {"EdDSA"}),
            "RS256": ("RSA", None, {"RS256", "PS256"}),
        }
        for alg, (kty, crv, algs) in cases.items():
            key = parse_public_jwk(public_jwk(new_private_key(alg)), SUPPORTED_ALGS)
            self.assertEqual((key.kty, key.crv, key.algs), (kty, crv, algs))

    def test_rsaPaddingsAreDistinct(self) -> None:
        """
        An RS256 signature does not pass as PS256, nor the reverse.
        """
        private = new_private_key("RS256")
        key = parse_public_jwk(public_jwk(private), ["RS256", "PS256"])
        rs = sign_bytes(private, "RS256", b"data")
        ps = sign_bytes(private, "PS256", b"data")
        self.assertTrue(key.verify("RS256", b"data", rs))
        self.assertTrue(key.verify("PS256", b"data", ps))
        self.assertFalse(key.verify("PS256", b"data", rs))
        self.assertFalse(key.verify("RS256", b"data", ps))

    def test_pssSaltLength(self) -> None:
        """
        PS256 requires the 32-byte salt of RFC 7518; another salt is refused.
        """
        private = new_private_key("PS256")
        key = parse_public_jwk(public_jwk(private), ["PS256"])
        signature = private.sign(
            b"data", padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20), hashes.SHA256()
        )
        self.assertFalse(key.verify("PS256", b"data", signature))

    def test_derSignatureRefused(self) -> None:
        """
        An ES256 signature in DER (what C{cryptography} and OpenSSL emit) is
        refused: JOSE wants raw C{r || s}.
        """
        private = new_private_key("ES256")
        key = parse_public_jwk(public_jwk(private), ["ES256"])
        der = private.sign(b"data", ec.ECDSA(hashes.SHA256()))
        self.assertFalse(key.verify("ES256", b"data", der))

    def test_wrongSignatureLength(self) -> None:
        """
        An ECDSA signature one byte short or long is refused, not padded.
        """
        private = new_private_key("ES256")
        key = parse_public_jwk(public_jwk(private), ["ES256"])
        signature = sign_bytes(private, "ES256", b"data")
        self.assertFalse(key.verify("ES256", b"data", signature[1:]))
        self.assertFalse(key.verify("ES256", b"data", b"\0" + signature))
        self.assertFalse(key.verify("ES256", b"data", b""))

    def test_algorithmMustFitKey(self) -> None:
        """
        A key verifies only its own algorithms: a P-256 key does not verify
        as ES384, nor an RSA key as ES256.
        """
        private = new_private_key("ES256")
        key = parse_public_jwk(public_jwk(private), ["ES256"])
        signature = sign_bytes(private, "ES256", b"data")
        self.assertFalse(key.verify("ES384", b"data", signature))
        self.assertFalse(key.verify("none", b"data", b""))
        self.assertFalse(key.verify("HS256", b"data", signature))

    def test_garbageSignature(self) -> None:
        """
        Zeroes, all-ones and other junk of the right length are C{False},
        never an exception.
        """
        for alg in ALGS:
            key = parse_public_jwk(public_jwk(new_private_key(alg)), [alg])
            for junk in (bytes(key.signature_size), b"\xff" * key.signature_size):
                self.assertFalse(key.verify(alg, b"data", junk), alg)


class ParseRefusalTests(SynchronousTestCase):
    """
    L{parse_public_jwk} refuses keys it must not use, telling policy
    refusals (C{unsupported}) from broken keys.
    """

    def assertRefused(self, jwk: object, unsupported: bool, algs: Any = SUPPORTED_ALGS) -> None:
        with self.assertRaises(JWKError) as caught:
            parse_public_jwk(jwk, algs)
        self.assertIs(caught.exception.unsupported, unsupported, caught.exception)

    def test_privateMembers(self) -> None:
        """
        Any private or symmetric member (C{d}, C{p}, C{q}, C{dp}, C{dq},
        C{qi}, C{oth}, C{k}) makes the key invalid, whatever its type.
        """
        for member in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"]:
            self.assertRefused(dict(ec_jwk(), **{member: "AA"}), unsupported=False)
            self.assertRefused(dict(RFC7638_JWK, **{member: "AA"}), unsupported=False)

    def test_notAnObject(self) -> None:
        """
        A JWK that is not a JSON object is invalid.
        """
        for jwk in [None, "jwk", 1, ["kty", "EC"]]:
            self.assertRefused(jwk, unsupported=False)

    def test_offCurve(self) -> None:
        """
        A point that is not on its curve is invalid.
        """
        jwk = ec_jwk()
        y = int.from_bytes(b64url_decode(jwk["y"]), "big")
        jwk["y"] = b64((y ^ 1).to_bytes(32, "big"))
        self.assertRefused(jwk, unsupported=False)

    def test_coordinateOutOfRange(self) -> None:
        """
        A coordinate at or above the field prime is invalid even though it
        reduces to a point on the curve (P-521 leaves room for one).
        """
        jwk = ec_jwk("ES512")
        x = int.from_bytes(b64url_decode(jwk["x"]), "big")
        parse_public_jwk(jwk, ["ES512"])
        jwk["x"] = b64((x + P521_PRIME).to_bytes(66, "big"))
        self.assertRefused(jwk, unsupported=False)

    def test_coordinateLength(self) -> None:
        """
        Coordinates must have the curve's exact byte length: no dropped
        leading zero, no extra one.
        """
        for alg, size in [("ES256", 32), ("ES384", 48), ("ES512", 66)]:
            jwk = ec_jwk(alg)
            x = b64url_decode(jwk["x"])
            self.assertEqual(len(x), size)
            self.assertRefused(dict(jwk, x=b64(b"\0" + x)), unsupported=False)
            self.assertRefused(dict(jwk, x=b64(x[1:])), unsupported=False)

    def test_badBase64(self) -> None:
        """
        A coordinate or modulus that is not strict base64url is invalid.
        """
        jwk = ec_jwk()
        self.assertRefused(dict(jwk, x=jwk["x"] + "="), unsupported=False)
        self.assertRefused(dict(jwk, y="!" + jwk["y"][1:]), unsupported=False)
        self.assertRefused(dict(RFC7638_JWK, n=RFC7638_JWK["n"] + "=="), unsupported=False)

    def test_ed25519(self) -> None:
        """
        An Ed25519 key must be 32 bytes and canonically encoded.
        """
        jwk = public_jwk(new_private_key("EdDSA"))
        self.assertRefused(dict(jwk, x=b64(bytes(31))), unsupported=False)
        non_canonical = (2**255 - 19 + 1).to_bytes(32, "little")
        self.assertRefused(dict(jwk, x=b64(non_canonical)), unsupported=False)

    def test_unsupportedTypesAndCurves(self) -> None:
        """
        Key types and curves outside the list are unsupported, not invalid.
        """
        x = b64(bytes(32))
        for jwk in [
            {"kty": "EC", "crv": "secp256k1", "x": x, "y": x},
            {"kty": "OKP", "crv": "X25519", "x": x},
            {"kty": "OKP", "crv": "Ed448", "x": x},
            {"kty": "oct"},
        ]:
            self.assertRefused(jwk, unsupported=True)

    def test_rsaTooSmall(self) -> None:
        """
        An RSA key of 1024 bits is unsupported (policy), not invalid.
        """
        small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.assertRefused(public_jwk(small), unsupported=True)

    def test_rsaLimits(self) -> None:
        """
        An RSA modulus above 4096 bits or an exponent above 32 bits is
        unsupported; a modulus or exponent with a leading zero octet, or an
        even modulus, is invalid.
        """
        n = b64url_decode(RFC7638_JWK["n"])
        self.assertRefused(dict(RFC7638_JWK, n=b64(b"\x01" + bytes(512) + b"\x01")), unsupported=True)
        self.assertRefused(dict(RFC7638_JWK, e=b64(b"\x01" + bytes(3) + b"\x01")), unsupported=True)
        self.assertRefused(dict(RFC7638_JWK, n=b64(b"\0" + n)), unsupported=False)
        self.assertRefused(dict(RFC7638_JWK, e="AAEAAQ"), unsupported=False)
        self.assertRefused(dict(RFC7638_JWK, n=b64(n[:-1] + b"\x02")), unsupported=False)

    def test_noAllowedAlgorithmFits(self) -> None:
        """
        A good key that fits none of the allowed algorithms is unsupported:
        a P-256 key when only ES384 is allowed, RSA when only ES256 is.
        """
        self.assertRefused(ec_jwk("ES256"), unsupported=True, algs=["ES384"])
        self.assertRefused(RFC7638_JWK, unsupported=True, algs=["ES256"])
        self.assertRefused(ec_jwk("ES256"), unsupported=True, algs=[])

    def test_optionalMembersIgnored(self) -> None:
        """
        WebCrypto's C{key_ops}/C{ext} and a stray C{alg} do not change the
        outcome: the key's type and curve decide.
        """
        jwk = dict(ec_jwk(), key_ops=["verify"], ext=True, alg="RS256")
        key = parse_public_jwk(jwk, ["ES256"])
        self.assertEqual(key.algs, {"ES256"})


class KeyCacheTests(SynchronousTestCase):
    """
    L{KeyCache} parses each key once and stays bounded.
    """

    def test_sameObject(self) -> None:
        """
        The same key, even as another dict with other optional members, gives
        back the same parsed object.
        """
        cache = KeyCache()
        jwk = ec_jwk()
        first = cache.get(jwk, ["ES256"])
        self.assertIs(cache.get(dict(jwk), ["ES256"]), first)
        self.assertIs(cache.get(dict(jwk, kid="x"), ["ES256"]), first)
        self.assertEqual(len(cache), 1)

    def test_privateMemberOnCachedKey(self) -> None:
        """
        A key already cached is still refused when it arrives with a private
        member.
        """
        cache = KeyCache()
        private = new_private_key("ES256")
        jwk = public_jwk(private)
        cache.get(jwk, ["ES256"])
        d = b64(private.private_numbers().private_value.to_bytes(32, "big"))
        with self.assertRaises(JWKError) as caught:
            cache.get(dict(jwk, d=d), ["ES256"])
        self.assertFalse(caught.exception.unsupported)

    def test_allowedAlgsOnCachedKey(self) -> None:
        """
        A cached key is still refused when its algorithm is not allowed on
        this call.
        """
        cache = KeyCache()
        jwk = ec_jwk()
        cache.get(jwk, ["ES256"])
        with self.assertRaises(JWKError) as caught:
            cache.get(jwk, ["ES384"])
        self.assertTrue(caught.exception.unsupported)

    def test_failuresNotCached(self) -> None:
        """
        A refused key is refused again and takes no room.
        """
        cache = KeyCache()
        jwk = ec_jwk()
        jwk["y"] = jwk["x"]
        for _ in range(2):
            self.assertRaises(JWKError, cache.get, jwk, ["ES256"])
        self.assertEqual(len(cache), 0)

    def test_rememberLater(self) -> None:
        """
        C{remember=False} parses without caching; L{KeyCache.remember} then
        caches that very object.
        """
        cache = KeyCache()
        jwk = ec_jwk()
        key = cache.get(jwk, ["ES256"], remember=False)
        self.assertEqual(len(cache), 0)
        self.assertIsNot(cache.get(jwk, ["ES256"], remember=False), key)
        cache.remember(jwk, key)
        self.assertEqual(len(cache), 1)
        self.assertIs(cache.get(jwk, ["ES256"], remember=False), key)

    def test_bounded(self) -> None:
        """
        The cache never holds more than its size, evicting the least
        recently used key: a key used again stays, the oldest unused goes.
        """
        cache = KeyCache(size=3)
        a, b, c, d = (ec_jwk() for _ in range(4))
        parsed = {name: cache.get(jwk, ["ES256"]) for name, jwk in zip("abc", (a, b, c))}
        cache.get(a, ["ES256"])
        cache.get(d, ["ES256"])
        self.assertEqual(len(cache), 3)
        self.assertIs(cache.get(a, ["ES256"]), parsed["a"])
        self.assertIs(cache.get(c, ["ES256"]), parsed["c"])
        self.assertIsNot(cache.get(b, ["ES256"]), parsed["b"])
        self.assertEqual(len(cache), 3)

    def test_evictedKeyParsedAgain(self) -> None:
        """
        An evicted key is parsed again into an equal, new object.
        """
        cache = KeyCache(size=1)
        a, b = ec_jwk(), ec_jwk()
        first = cache.get(a, ["ES256"])
        cache.get(b, ["ES256"])
        again = cache.get(a, ["ES256"])
        self.assertIsNot(again, first)
        self.assertEqual(again, first)


class SplitCompactJWSTests(SynchronousTestCase):
    """
    L{split_compact_jws} takes apart a compact JWS and refuses anything else.
    """

    def test_split(self) -> None:
        """
        The header and payload come back decoded, with the exact signing
        input and the decoded signature.
        """
        signing_input = encode_jws({"alg": "ES256"}, {"a": [1, 2.5, None, True]})
        token = signing_input + "." + b64(b"sig")
        header, payload, signed, signature = split_compact_jws(token)
        self.assertEqual(header, {"alg": "ES256"})
        self.assertEqual(payload, {"a": [1, 2.5, None, True]})
        self.assertEqual(signed, signing_input.encode("ascii"))
        self.assertEqual(signature, b"sig")

    def test_wrongNumberOfParts(self) -> None:
        """
        Anything but three dot-separated parts is refused (JWE has five).
        """
        good = encode_jws({}, {})
        for token in [good, good + ".AA.AA", good + ".AA.AA.AA.AA", "", "..."]:
            self.assertRaises(ValueError, split_compact_jws, token)

    def test_tooLong(self) -> None:
        """
        A token over 8192 characters is refused before any decoding.
        """
        good = encode_jws({"pad": "x" * 6000}, {}) + "."
        split_compact_jws(good)
        self.assertRaises(ValueError, split_compact_jws, good + "A" * (8193 - len(good)))

    def test_notJSONObjects(self) -> None:
        """
        A header or payload that is not a JSON object is refused.
        """
        objects = b64(b"{}")
        for bad in [b"[]", b"1", b'"s"', b"null", b"{", b"", b"\xff{}", b"\xef\xbb\xbf{}"]:
            self.assertRaises(ValueError, split_compact_jws, f"{b64(bad)}.{objects}.")
            self.assertRaises(ValueError, split_compact_jws, f"{objects}.{b64(bad)}.")

    def test_nonJSONConstants(self) -> None:
        """
        C{NaN}, C{Infinity} and numbers that overflow to infinity are refused.
        """
        for payload in [b'{"iat":NaN}', b'{"iat":Infinity}', b'{"iat":-Infinity}', b'{"iat":1e400}']:
            self.assertRaises(ValueError, split_compact_jws, f"{b64(b'{}')}.{b64(payload)}.")

    def test_duplicateMembers(self) -> None:
        """
        A repeated member name, at any depth, is refused.
        """
        for header in [b'{"alg":"ES256","alg":"none"}', b'{"jwk":{"x":"a","x":"b"}}']:
            self.assertRaises(ValueError, split_compact_jws, f"{b64(header)}.{b64(b'{}')}.")

    def test_deepNesting(self) -> None:
        """
        Deeply nested JSON is a L{ValueError}, not a L{RecursionError}.
        """
        payload = b'{"a":' + b"[" * 4000 + b"]" * 4000 + b"}"
        self.assertRaises(ValueError, split_compact_jws, f"{b64(b'{}')}.{b64(payload)}.")

    def test_paddedParts(self) -> None:
        """
        Padded or non-base64url parts are refused.
        """
        header = b64(b'{"a":1}')
        self.assertNotEqual(len(header) % 4, 0)
        self.assertRaises(ValueError, split_compact_jws, f"{header}=.{b64(b'{}')}.")
        self.assertRaises(ValueError, split_compact_jws, f"{header}.{b64(b'{}')}.AA==")

    def test_notText(self) -> None:
        """
        ASCII bytes are accepted as text; other types and non-ASCII are not.
        """
        token = encode_jws({}, {}) + "."
        self.assertEqual(split_compact_jws(token.encode("ascii"))[0], {})
        self.assertRaises(ValueError, split_compact_jws, token.encode("ascii") + b"\xff")
        self.assertRaises(ValueError, split_compact_jws, 42)
