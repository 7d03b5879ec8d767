"""
Tests for L{ets_twisted.tokens}.
"""

from __future__ import annotations

import base64
import json
import warnings
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.warnings import InsecureKeyLengthWarning
from twisted.trial.unittest import SynchronousTestCase

from ets_twisted.config import load
from ets_twisted.errors import ETSError
from ets_twisted.tokens import AccessToken, KeyRing, key_id, mint, verify

KEY = b"k" * 32
OLD_KEY = b"o" * 48
NOW = 1767225600.25
JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
LIFETIME = 300
LEEWAY = 5


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def good_claims(**changes: Any) -> dict[str, Any]:
    """
    The claims L{mint} would write at L{NOW}, with C{changes} (a value of
    L{None} removes the claim).
    """
    iat = int(NOW)
    claims: dict[str, Any] = {
        "iss": "ets",
        "aud": "ets",
        "iat": iat,
        "nbf": iat,
        "exp": iat + LIFETIME,
        "jti": "AAAAAAAAAAAAAAAAAAAAAA",
        "cnf": {"jkt": JKT},
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def sign(
    claims: dict[str, Any],
    key: Any = KEY,
    algorithm: str = "HS256",
    header: dict[str, Any] | None = None,
) -> str:
    """
    A compact JWS of C{claims}, with C{kid} of L{KEY} unless C{header}
    says otherwise.
    """
    headers: dict[str, Any] = {"kid": key_id(KEY)}
    headers.update(header or {})
    with warnings.catch_warnings():
        # HS384/HS512 with our 32-byte key: the point of those tests.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.PyJWS().encode(
            json.dumps(claims).encode(), key, algorithm=algorithm, headers=headers
        )


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """
    A compact token assembled by hand (for headers pyjwt will not sign).
    """
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


class TokenTestCase(SynchronousTestCase):
    ring = KeyRing([KEY])

    def verify(self, token: str, ring: KeyRing | None = None, **kwargs: Any) -> AccessToken:
        options: dict[str, Any] = {"issuer": "ets", "now": NOW, "leeway": LEEWAY}
        options.update(kwargs)
        return verify(ring or self.ring, token, **options)

    def assertRefused(self, code: str, token: str, **kwargs: Any) -> ETSError:
        """
        L{verify} refuses C{token} with C{code}, without quoting it.
        """
        error = self.assertRaises(ETSError, self.verify, token, **kwargs)
        self.assertEqual(error.code, code)
        for text in (str(error), repr(error), error.message or ""):
            if len(token) > 8:
                self.assertNotIn(token, text)
            self.assertNotIn(KEY.decode(), text)
        return error


class KeyIdTests(SynchronousTestCase):
    """
    L{key_id} names a key without revealing it.
    """

    def test_shape(self) -> None:
        """
        A kid is 16 base64url characters, stable for a key, different for
        another key, and not the key or part of it.
        """
        kid = key_id(KEY)
        self.assertEqual(len(kid), 16)
        self.assertRegex(kid, r"^[A-Za-z0-9_-]{16}$")
        self.assertEqual(kid, key_id(KEY))
        self.assertNotEqual(kid, key_id(OLD_KEY))
        self.assertNotIn("kkkk", kid)
        self.assertNotIn(kid, b64(KEY))

    def test_ring(self) -> None:
        """
        The ring's first key signs; every key is found by its kid; the
        ring's repr names kids only.
        """
        ring = KeyRing([KEY, OLD_KEY, KEY])
        self.assertEqual(ring.signing_kid, key_id(KEY))
        self.assertEqual(ring.signing_key, KEY)
        self.assertEqual(ring.kids, (key_id(KEY), key_id(OLD_KEY)))
        self.assertEqual(ring.lookup(key_id(OLD_KEY)), OLD_KEY)
        self.assertIsNone(ring.lookup("nope"))
        self.assertIsNone(ring.lookup(None))
        self.assertIsNone(ring.lookup(7))
        self.assertNotIn("kkkk", repr(ring))

    def test_emptyRing(self) -> None:
        """
        A ring needs a key.
        """
        self.assertRaises(ValueError, KeyRing, [])

    def test_fromConfig(self) -> None:
        """
        A ring is built from the configuration's keys, first one signing.
        """
        config = load(
            {
                "ORIGIN_ALLOWLIST": "https://a.example",
                "UPSTREAM_BASE_URL": "https://u.example",
                "TVM_JWT_HS256_KEY": f"{OLD_KEY.decode()},{KEY.decode()}",
            }
        )
        ring = KeyRing.from_config(config)
        self.assertEqual(ring.signing_key, OLD_KEY)
        self.assertEqual(ring.kids, (key_id(OLD_KEY), key_id(KEY)))


class MintTests(TokenTestCase):
    """
    L{mint} writes the SPEC's token.
    """

    def test_header(self) -> None:
        """
        The header is HS256, typ JWT, with the signing key's kid.
        """
        token, _ = mint(self.ring, jkt=JKT, issuer="ets", lifetime=LIFETIME, now=NOW)
        self.assertEqual(
            jwt.get_unverified_header(token), {"alg": "HS256", "typ": "JWT", "kid": key_id(KEY)}
        )

    def test_claims(self) -> None:
        """
        The claims are iss, aud "ets", integer iat/nbf/exp from C{now}, a
        random jti and cnf.jkt; the returned record says the same.
        """
        token, minted = mint(
            self.ring, jkt=JKT, issuer="https://ets.example", lifetime=60, now=NOW
        )
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        iat = int(NOW)
        self.assertEqual(
            claims,
            {
                "iss": "https://ets.example",
                "aud": "ets",
                "iat": iat,
                "nbf": iat,
                "exp": iat + 60,
                "jti": minted.jti,
                "cnf": {"jkt": JKT},
            },
        )
        self.assertEqual(
            minted, AccessToken(jkt=JKT, jti=minted.jti, iat=iat, exp=iat + 60, claims=claims)
        )
        self.assertEqual(minted.claims, claims)

    def test_same_bytes_as_pyjwt(self) -> None:
        """
        The hand-assembled token is byte for byte what pyjwt's encode makes
        of the same claims (compact JSON, header members sorted), for
        issuers that JSON quotes as they are and for ones it must escape.
        """
        for issuer in ["ets", "https://ets.example/a?b=c", 'say "hi"', "back\\slash",
                       "tab\there", "caf\u00e9", "\u2603 snow", "del\x7f"]:
            token, minted = mint(self.ring, jkt=JKT, issuer=issuer, lifetime=60, now=NOW)
            expected = jwt.encode(minted.claims, KEY, algorithm="HS256",
                                  headers={"kid": key_id(KEY), "typ": "JWT"}, sort_headers=True)
            self.assertEqual(token, expected, issuer)

    def test_jti(self) -> None:
        """
        The jti carries at least 128 random bits: 22+ base64url characters,
        different each time.
        """
        jtis = {
            mint(self.ring, jkt=JKT, issuer="ets", lifetime=1, now=NOW)[1].jti for _ in range(50)
        }
        self.assertEqual(len(jtis), 50)
        for jti in jtis:
            self.assertGreaterEqual(len(base64.urlsafe_b64decode(jti + "==")), 16)

    def test_lifetime(self) -> None:
        """
        A lifetime under one second is a programming error.
        """
        self.assertRaises(ValueError, mint, self.ring, jkt=JKT, issuer="ets", lifetime=0, now=NOW)


class RoundTripTests(TokenTestCase):
    """
    What L{mint} writes, L{verify} reads back.
    """

    def test_roundTrip(self) -> None:
        """
        A fresh token verifies and gives back the minted record.
        """
        token, minted = mint(self.ring, jkt=JKT, issuer="ets", lifetime=LIFETIME, now=NOW)
        verified = self.verify(token)
        self.assertEqual(verified, minted)
        self.assertEqual(verified.claims, minted.claims)
        self.assertEqual(verified.jkt, JKT)

    def test_otherIssuer(self) -> None:
        """
        A token minted for one issuer verifies under that issuer only.
        """
        token, _ = mint(self.ring, jkt=JKT, issuer="gw-a", lifetime=LIFETIME, now=NOW)
        self.assertEqual(self.verify(token, issuer="gw-a").jkt, JKT)
        self.assertRefused("bad_claims", token, issuer="gw-b")

    def test_rotation(self) -> None:
        """
        A token signed by an old key verifies with a ring listing that key
        second, and is refused by a ring without it.
        """
        old_ring = KeyRing([OLD_KEY])
        token, _ = mint(old_ring, jkt=JKT, issuer="ets", lifetime=LIFETIME, now=NOW)
        self.assertEqual(self.verify(token, ring=KeyRing([KEY, OLD_KEY])).jkt, JKT)
        self.assertRefused("invalid_token", token, ring=KeyRing([KEY]))

    def test_audienceList(self) -> None:
        """
        An aud given as a list containing "ets" is accepted (RFC 7519).
        """
        self.assertEqual(self.verify(sign(good_claims(aud=["x", "ets"]))).jkt, JKT)

    def test_withoutNbf(self) -> None:
        """
        nbf is optional: without it, only exp bounds the token.
        """
        self.assertEqual(self.verify(sign(good_claims(nbf=None))).jkt, JKT)


class InvalidTokenTests(TokenTestCase):
    """
    Malformed, wrongly signed and out-of-date tokens are C{invalid_token}.
    """

    def test_garbage(self) -> None:
        """
        Strings that are not compact JWS tokens are refused.
        """
        header = b64(json.dumps({"alg": "HS256", "kid": key_id(KEY)}).encode())
        for token in [
            "",
            "abc",
            "a.b",
            "a.b.c",
            "....",
            "ñ.ñ.ñ",
            "Bearer x.y.z",
            f"{header}.!!!.abc",
            f"{header}.{b64(b'not json')}.{b64(b'sig')}",
            unsigned({"alg": "HS256", "kid": key_id(KEY)}, good_claims())[:-1] + "@",
            b64(b"[1,2]") + "." + b64(b"{}") + ".",
            b64(b"null") + "." + b64(b"{}") + ".",
            "x" * 10000,
            sign(good_claims())[:-20],
        ]:
            self.assertRefused("invalid_token", token)

    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.text(),
            st.lists(st.text(alphabet="AZaz09-_=.{}\"", max_size=40), max_size=4).map(".".join),
        )
    )
    def test_fuzz(self, token: str) -> None:
        """
        Whatever string arrives, L{verify} answers with an L{ETSError}
        (never another exception).
        """
        error = self.assertRaises(ETSError, self.verify, token)
        self.assertIn(error.code, ("invalid_token", "bad_claims"))

    def test_notAString(self) -> None:
        """
        Something other than a string is refused, not crashed on.
        """
        self.assertRefused("invalid_token", b"a.b.c")  # type: ignore[arg-type]

    def test_payloadNotObject(self) -> None:
        """
        A correctly signed payload that is not a JSON object is refused.
        """
        token = jwt.PyJWS().encode(b"[1]", KEY, algorithm="HS256", headers={"kid": key_id(KEY)})
        self.assertRefused("invalid_token", token)

    def test_tamperedSignature(self) -> None:
        """
        A changed signature, or a changed payload under the old signature,
        is refused.
        """
        token, _ = mint(self.ring, jkt=JKT, issuer="ets", lifetime=LIFETIME, now=NOW)
        header, payload, signature = token.split(".")
        flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
        self.assertRefused("invalid_token", f"{header}.{payload}.{flipped}")
        other = b64(json.dumps(good_claims(cnf={"jkt": "attacker"})).encode())
        self.assertRefused("invalid_token", f"{header}.{other}.{signature}")
        self.assertRefused("invalid_token", f"{header}.{payload}.")

    def test_wrongKey(self) -> None:
        """
        A token signed with another key under our kid is refused.
        """
        self.assertRefused("invalid_token", sign(good_claims(), key=b"x" * 32))

    def test_kid(self) -> None:
        """
        A missing, unknown or non-string kid is refused.
        """
        token = jwt.PyJWS().encode(json.dumps(good_claims()).encode(), KEY, algorithm="HS256")
        self.assertRefused("invalid_token", token)
        self.assertRefused("invalid_token", sign(good_claims(), header={"kid": "unknown"}))
        self.assertRefused("invalid_token", sign(good_claims(), header={"kid": key(KEY)}))
        self.assertRefused("invalid_token", unsigned({"alg": "HS256", "kid": 1}, good_claims()))

    def test_algNone(self) -> None:
        """
        C{alg: none} (in any case) with or without a signature is refused.
        """
        for alg in ["none", "None", "NONE", ""]:
            self.assertRefused(
                "invalid_token", unsigned({"alg": alg, "kid": key_id(KEY)}, good_claims())
            )
        self.assertRefused("invalid_token", unsigned({"kid": key_id(KEY)}, good_claims()))

    def test_otherHmac(self) -> None:
        """
        A token signed with our key but HS384 or HS512 is refused: HS256 is
        pinned.
        """
        for alg in ["HS384", "HS512"]:
            self.assertRefused("invalid_token", sign(good_claims(), algorithm=alg))

    def test_asymmetric(self) -> None:
        """
        RS256 and ES256 tokens are refused, whether really signed with a
        private key or forged by HMAC-ing with our key (algorithm confusion).
        """
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        self.assertRefused("invalid_token", sign(good_claims(), key=rsa_key, algorithm="RS256"))
        self.assertRefused("invalid_token", sign(good_claims(), key=ec_key, algorithm="ES256"))
        hmac_signed = sign(good_claims()).split(".")
        for alg in ["RS256", "ES256", "PS256", "EdDSA"]:
            forged = unsigned({"alg": alg, "kid": key_id(KEY)}, good_claims())
            header = forged.split(".")[0]
            self.assertRefused("invalid_token", ".".join([header] + hmac_signed[1:]))

    def test_crit(self) -> None:
        """
        A critical header extension is refused: ETS understands none.
        """
        token = sign(good_claims(), header={"crit": ["exp"], "exp": 1})
        self.assertRefused("invalid_token", token)

    def test_expiry(self) -> None:
        """
        A token is good until C{exp + leeway}, refused from then on.
        """
        token, minted = mint(self.ring, jkt=JKT, issuer="ets", lifetime=LIFETIME, now=NOW)
        self.assertEqual(self.verify(token, now=minted.exp + LEEWAY - 0.001), minted)
        self.assertRefused("invalid_token", token, now=minted.exp + LEEWAY)
        self.assertEqual(self.verify(token, now=minted.exp - 0.001, leeway=0), minted)
        self.assertRefused("invalid_token", token, now=minted.exp, leeway=0)
        self.assertRefused("invalid_token", token, now=minted.exp + 3600)

    def test_notBefore(self) -> None:
        """
        A token is refused before C{nbf - leeway}, good from then on.
        """
        token, minted = mint(self.ring, jkt=JKT, issuer="ets", lifetime=LIFETIME, now=NOW)
        nbf = minted.claims["nbf"]
        self.assertEqual(self.verify(token, now=nbf - LEEWAY), minted)
        self.assertRefused("invalid_token", token, now=nbf - LEEWAY - 0.001)
        self.assertEqual(self.verify(token, now=nbf, leeway=0), minted)
        self.assertRefused("invalid_token", token, now=nbf - 0.001, leeway=0)


class BadClaimsTests(TokenTestCase):
    """
    Well-signed tokens with wrong or missing claims are C{bad_claims}.
    """

    def test_wrongAudience(self) -> None:
        """
        An aud other than "ets", or none, is refused.
        """
        for aud in ["other", ["other"], "ETS", 1, None]:
            self.assertRefused("bad_claims", sign(good_claims(aud=aud)))

    def test_wrongIssuer(self) -> None:
        """
        An iss other than the configured issuer, or none, is refused.
        """
        for iss in ["other", "", ["ets"], None]:
            self.assertRefused("bad_claims", sign(good_claims(iss=iss)))

    def test_missing(self) -> None:
        """
        Each missing required claim is refused.
        """
        for name in ["aud", "iss", "exp", "iat", "jti", "cnf"]:
            claims = good_claims()
            del claims[name]
            self.assertRefused("bad_claims", sign(claims))
        self.assertRefused("bad_claims", sign(good_claims(cnf={})))

    def test_illTyped(self) -> None:
        """
        Claims of the wrong type are refused.
        """
        iat = int(NOW)
        for changes in [
            {"exp": "soon"},
            {"exp": True},
            {"exp": float(iat + LIFETIME)},
            {"iat": "now"},
            {"nbf": "now"},
            {"jti": 5},
            {"jti": ""},
            {"jti": "j" * 257},
            {"cnf": "jkt"},
            {"cnf": [JKT]},
            {"cnf": {"jkt": 5}},
            {"cnf": {"jkt": ""}},
        ]:
            self.assertRefused("bad_claims", sign(good_claims(**changes)))

    def test_claimsBeforeTime(self) -> None:
        """
        An expired token with bad claims says bad_claims: the claims are
        checked first, so the answer names the lasting problem.
        """
        self.assertRefused("bad_claims", sign(good_claims(aud="x")), now=NOW + 10 * LIFETIME)


def key(value: bytes) -> str:
    """
    The key itself as a kid: what a careless implementation might use.
    """
    return value.decode()
