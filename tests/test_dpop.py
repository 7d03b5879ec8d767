"""
Tests for L{ets_twisted.dpop}: the RFC 9449 proof rules in SPEC's order.
"""

from __future__ import annotations

from typing import Any, Callable

import attr
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial.unittest import SynchronousTestCase

from ets_twisted.dpop import (
    Proof,
    access_token_hash,
    normalize_htu,
    replay_key,
    replay_ttl,
    verify_proof,
)
from ets_twisted.errors import ETSError
from ets_twisted.jose import KeyCache
from tests.support.proofs import (
    ALGS,
    OMIT,
    ProofSigner,
    ath_of,
    b64,
    new_private_key,
    public_jwk,
    sign_bytes,
)

NOW = 1_767_225_600.0
MAX_AGE = 300.0
SKEW = 5.0
URL = "https://ets.example/api/x"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"


class ProofTestCase(SynchronousTestCase):
    """
    Shared set-up: one ES256 client key and a verifier with SPEC defaults.
    """

    def setUp(self) -> None:
        self.signer = ProofSigner("ES256")
        self.cache = KeyCache()

    def verify(self, proof: str, **kwargs: Any) -> Proof:
        options: dict[str, Any] = dict(
            method="GET",
            url=URL,
            now=NOW,
            algs=("ES256",),
            max_age=MAX_AGE,
            skew=SKEW,
            key_cache=self.cache,
        )
        options.update(kwargs)
        return verify_proof(proof, **options)

    def assertRefused(self, code: str, proof: str, **kwargs: Any) -> ETSError:
        with self.assertRaises(ETSError) as caught:
            self.verify(proof, **kwargs)
        error: ETSError = caught.exception
        self.assertEqual(error.code, code, error)
        self.assertEqual(error.status, 401)
        return error

    def proof(self, **kwargs: Any) -> str:
        return self.signer.sign("GET", URL, iat=NOW, **kwargs)


def _resign(other: Any) -> Callable[[str], str]:
    """
    Replace a proof's signature with one made by another key.
    """

    def post(token: str) -> str:
        signing_input = token.rsplit(".", 1)[0]
        return signing_input + "." + b64(sign_bytes(other, "ES256", signing_input.encode()))

    return post


@attr.s(auto_attribs=True, frozen=True)
class Defect:
    """
    One way to break one rule, composable with the others.
    """

    code: str
    header: dict[str, Any] = attr.Factory(dict)
    claims: dict[str, Any] = attr.Factory(dict)
    options: dict[str, Any] = attr.Factory(dict)
    post: Callable[[str], str] | None = None


class AcceptTests(ProofTestCase):
    """
    A proof that follows every rule is accepted and described.
    """

    def test_goodProof(self) -> None:
        """
        A good proof yields its key thumbprint, claims, and normalised htu.
        """
        proof = self.proof(jti="j-1", ath=ath_of(TOKEN), nonce="n-1")
        result = self.verify(
            proof, access_token=TOKEN, expected_jkt=self.signer.thumbprint, require_ath=True
        )
        self.assertEqual(
            result,
            Proof(
                jkt=self.signer.thumbprint,
                jti="j-1",
                iat=NOW,
                htm="GET",
                htu=URL,
                nonce="n-1",
                ath=ath_of(TOKEN),
            ),
        )

    def test_everyAlgorithm(self) -> None:
        """
        Proofs signed with each supported algorithm are accepted when that
        algorithm is allowed.
        """
        for alg in ALGS:
            signer = ProofSigner(alg)
            result = self.verify(signer.sign("GET", URL, iat=NOW), algs=ALGS)
            self.assertEqual(result.jkt, signer.thumbprint)

    def test_nonceAndAthNotStrings(self) -> None:
        """
        A non-string C{nonce} or C{ath} is reported as absent (when no access
        token is checked), leaving the nonce decision to the caller.
        """
        result = self.verify(self.proof(extra_claims={"nonce": 1, "ath": 2}))
        self.assertIsNone(result.nonce)
        self.assertIsNone(result.ath)

    def test_keyCached(self) -> None:
        """
        The proof key is parsed once and reused for the next proof.
        """
        self.verify(self.proof())
        self.verify(self.proof())
        self.assertEqual(len(self.cache), 1)


class RuleTests(ProofTestCase):
    """
    Each rule, row by row in SPEC's order, answers its own code.
    """

    def test_badDpop(self) -> None:
        """
        C{bad_dpop}: not a compact JWS, not base64url, or not JSON objects.
        """
        good = self.proof()
        header, payload, signature = good.split(".")
        for proof in [
            "",
            "not a jws",
            header + "." + payload,
            good + ".AA.AA",
            header + "=." + payload + "." + signature,
            b64(b"[]") + "." + payload + "." + signature,
            header + "." + b64(b"not json") + "." + signature,
            "A" * 9000,
        ]:
            self.assertRefused("bad_dpop", proof)

    def test_typ(self) -> None:
        """
        C{bad_dpop_header}: C{typ} missing or anything but exactly
        C{dpop+jwt}.
        """
        for typ in [OMIT, "JWT", "DPoP+JWT", "application/dpop+jwt", None, ["dpop+jwt"]]:
            self.assertRefused("bad_dpop_header", self.proof(extra_header={"typ": typ}))

    def test_alg(self) -> None:
        """
        C{bad_dpop_header}: C{alg} missing, not a string, or not allowed.
        """
        for alg in [OMIT, None, 256, "ES384", "es256"]:
            self.assertRefused("bad_dpop_header", self.proof(extra_header={"alg": alg}))

    def test_noneAndHmacNeverAllowed(self) -> None:
        """
        C{none} and HS256 are refused even if configuration lists them.
        """
        algs = ("none", "HS256", "ES256")
        for alg in ["none", "HS256"]:
            self.assertRefused("bad_dpop_header", self.proof(extra_header={"alg": alg}), algs=algs)

    def test_crit(self) -> None:
        """
        C{bad_dpop_header}: a C{crit} header names extensions we do not
        implement.
        """
        proof = self.proof(extra_header={"crit": ["b64"], "b64": False})
        self.assertRefused("bad_dpop_header", proof)

    def test_jwkMissingOrNotObject(self) -> None:
        """
        C{bad_dpop_key}: C{jwk} missing or not an object.
        """
        for jwk in [OMIT, None, "key", [self.signer.public_jwk]]:
            self.assertRefused("bad_dpop_key", self.proof(extra_header={"jwk": jwk}))

    def test_jwkPrivate(self) -> None:
        """
        C{bad_dpop_key}: a key with its private part is refused.
        """
        d = self.signer.private_key.private_numbers().private_value.to_bytes(32, "big")
        jwk = dict(self.signer.public_jwk, d=b64(d))
        self.assertRefused("bad_dpop_key", self.proof(extra_header={"jwk": jwk}))

    def test_jwkMalformed(self) -> None:
        """
        C{bad_dpop_key}: a malformed or off-curve key is refused.
        """
        jwk = self.signer.public_jwk
        for bad in [dict(jwk, x="AA"), dict(jwk, y=jwk["x"]), {"kty": "EC", "crv": "P-256"}]:
            self.assertRefused("bad_dpop_key", self.proof(extra_header={"jwk": bad}))

    def test_jwkNotMatchingAlg(self) -> None:
        """
        C{bad_dpop_key}: a key that does not fit C{alg}: a P-384 key under
        ES256, an RSA key under ES256.
        """
        algs = ("ES256", "ES384", "RS256")
        p384 = public_jwk(new_private_key("ES384"))
        rsa = public_jwk(new_private_key("RS256"))
        for jwk in [p384, rsa]:
            self.assertRefused("bad_dpop_key", self.proof(extra_header={"jwk": jwk}), algs=algs)

    def test_signature(self) -> None:
        """
        C{bad_dpop_sig}: a signature by another key, a tampered payload, a
        DER signature.
        """
        other = new_private_key("ES256")
        self.assertRefused("bad_dpop_sig", _resign(other)(self.proof()))
        header, payload, signature = self.proof().split(".")
        tampered = self.signer.sign("POST", URL, iat=NOW).split(".")[1]
        self.assertRefused("bad_dpop_sig", f"{header}.{tampered}.{signature}")

    def test_keyCachedOnlyOnceItSigned(self) -> None:
        """
        A proof whose signature does not verify leaves its key out of the
        key cache (a flood of made-up keys cannot evict real ones); a proof
        that verifies puts its key in, so its next proof parses nothing.
        """
        for _ in range(3):
            self.assertRefused("bad_dpop_sig", _resign(new_private_key("ES256"))(self.proof()))
        self.assertEqual(len(self.cache), 0)
        first = self.verify(self.proof())
        self.assertEqual(len(self.cache), 1)
        self.assertEqual(self.verify(self.proof()).jkt, first.jkt)
        self.assertEqual(len(self.cache), 1)

    def test_derSignature(self) -> None:
        """
        C{bad_dpop_sig}: an ES256 proof signed in DER rather than C{r || s}.
        """
        signing_input = self.proof().rsplit(".", 1)[0]
        der = self.signer.private_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        self.assertRefused("bad_dpop_sig", f"{signing_input}.{b64(der)}")

    def test_cnf(self) -> None:
        """
        C{cnf_mismatch}: the token is bound to another key.
        """
        other = ProofSigner("ES256").thumbprint
        self.assertRefused("cnf_mismatch", self.proof(), expected_jkt=other)
        self.assertRefused("cnf_mismatch", self.proof(), expected_jkt="")
        self.verify(self.proof(), expected_jkt=self.signer.thumbprint)

    def test_htm(self) -> None:
        """
        C{htm_mismatch}: missing, not a string, or not exactly the method
        (case-sensitive).
        """
        for htm in [OMIT, None, 1, "get", "POST", "GET "]:
            self.assertRefused("htm_mismatch", self.proof(extra_claims={"htm": htm}))

    def test_htu(self) -> None:
        """
        C{htu_mismatch}: missing, not a string, unparsable, or another URI.
        """
        for htu in [
            OMIT,
            None,
            ["https://ets.example/api/x"],
            "/api/x",
            "ets.example/api/x",
            "ftp://ets.example/api/x",
            "https://ets.example/api/y",
            "https://ets.example/api/x/",
            "https://ets.example/API/x",
            "http://ets.example/api/x",
            "https://ets.example:8443/api/x",
            "https://other.example/api/x",
            "https://ets.example/api/%zz",
        ]:
            self.assertRefused("htu_mismatch", self.proof(extra_claims={"htu": htu}))

    def test_htuRequestUrlUnusable(self) -> None:
        """
        C{htu_mismatch} (not a crash) when the request's own URI cannot be
        normalised, e.g. a bad Host header.
        """
        self.assertRefused("htu_mismatch", self.proof(), url="https://bad host/api/x")

    def test_jti(self) -> None:
        """
        C{missing_dpop_jti}: missing, not a string, empty, or over 256
        characters; 256 is accepted.
        """
        for jti in [OMIT, None, 7, "", "j" * 257]:
            self.assertRefused("missing_dpop_jti", self.proof(extra_claims={"jti": jti}))
        self.assertEqual(self.verify(self.proof(jti="j" * 256)).jti, "j" * 256)

    def test_iat(self) -> None:
        """
        C{missing_dpop_iat}: missing, or not a number (a string or a
        boolean is not).
        """
        for iat in [OMIT, None, str(NOW), True, False, [NOW]]:
            self.assertRefused("missing_dpop_iat", self.proof(extra_claims={"iat": iat}))

    def test_iatWindow(self) -> None:
        """
        C{dpop_iat_in_future} past C{now + skew}; C{dpop_iat_too_old} before
        C{now - max_age}; both edges are accepted, as are float times.
        """
        self.assertRefused("dpop_iat_in_future", self.signer.sign("GET", URL, iat=NOW + SKEW + 0.5))
        self.assertRefused("dpop_iat_in_future", self.signer.sign("GET", URL, iat=NOW + SKEW + 1))
        self.assertRefused("dpop_iat_too_old", self.signer.sign("GET", URL, iat=NOW - MAX_AGE - 0.5))
        self.assertRefused("dpop_iat_too_old", self.signer.sign("GET", URL, iat=NOW - MAX_AGE - 1))
        for iat in [NOW + SKEW, NOW - MAX_AGE, int(NOW), NOW + 0.25]:
            self.assertEqual(self.verify(self.signer.sign("GET", URL, iat=iat)).iat, iat)

    def test_ath(self) -> None:
        """
        C{ath_mismatch}: with an access token, a wrong or ill-typed C{ath};
        a missing one only when required. A right one passes.
        """
        for ath in [ath_of("another token"), "", 1, None, ath_of(TOKEN) + "A"]:
            proof = self.proof(extra_claims={"ath": ath})
            self.assertRefused("ath_mismatch", proof, access_token=TOKEN)
        self.assertRefused("ath_mismatch", self.proof(), access_token=TOKEN, require_ath=True)
        self.assertIsNone(self.verify(self.proof(), access_token=TOKEN).ath)
        good = self.proof(ath=ath_of(TOKEN))
        self.assertEqual(self.verify(good, access_token=TOKEN, require_ath=True).ath, ath_of(TOKEN))

    def test_athWithoutAccessToken(self) -> None:
        """
        Without an access token (issuance) C{ath} is not checked, even when
        required elsewhere.
        """
        result = self.verify(self.proof(ath="whatever"), require_ath=True)
        self.assertEqual(result.ath, "whatever")


class OrderTests(ProofTestCase):
    """
    When a proof breaks several rules, the first in SPEC's order answers.
    """

    def defects(self) -> list[Defect]:
        """
        One defect per rule after parsing, in SPEC's order.
        """
        private = dict(
            self.signer.public_jwk,
            d=b64(self.signer.private_key.private_numbers().private_value.to_bytes(32, "big")),
        )
        return [
            Defect("bad_dpop_header", header={"typ": "JWT"}),
            Defect("bad_dpop_key", header={"jwk": private}),
            Defect("bad_dpop_sig", post=_resign(new_private_key("ES256"))),
            Defect("cnf_mismatch", options={"expected_jkt": ProofSigner().thumbprint}),
            Defect("htm_mismatch", claims={"htm": "POST"}),
            Defect("htu_mismatch", claims={"htu": "https://ets.example/other"}),
            Defect("missing_dpop_jti", claims={"jti": ""}),
            Defect("missing_dpop_iat", claims={"iat": "yesterday"}),
            Defect("dpop_iat_in_future", claims={"iat": NOW + 60}),
            Defect("dpop_iat_too_old", claims={"iat": NOW - 3600}),
            Defect("ath_mismatch", claims={"ath": ath_of("other")}),
        ]

    def test_firstFailureAnswers(self) -> None:
        """
        For each rule, a proof breaking that rule and every later one is
        refused with that rule's code.
        """
        defects = self.defects()
        for index, first in enumerate(defects):
            header: dict[str, Any] = {}
            claims: dict[str, Any] = {}
            options: dict[str, Any] = {"access_token": TOKEN}
            posts = []
            # Later defects first, so the rule under test wins where two
            # defects touch the same member (iat).
            for defect in reversed(defects[index:]):
                header.update(defect.header)
                claims.update(defect.claims)
                options.update(defect.options)
                if defect.post is not None:
                    posts.append(defect.post)
            proof = self.proof(extra_header=header, extra_claims=claims)
            for post in posts:
                proof = post(proof)
            self.assertRefused(first.code, proof, **options)

    def test_badSignatureBeforeHtm(self) -> None:
        """
        A proof with both a bad signature and a wrong htm answers
        C{bad_dpop_sig}: claims of an unverified proof are not looked at.
        """
        proof = _resign(new_private_key("ES256"))(self.signer.sign("POST", URL, iat=NOW))
        self.assertRefused("bad_dpop_sig", proof)

    def test_parseBeforeEverything(self) -> None:
        """
        A proof whose payload is not JSON answers C{bad_dpop} even with a
        bad header.
        """
        header = self.proof(extra_header={"typ": "JWT"}).split(".")[0]
        self.assertRefused("bad_dpop", f"{header}.{b64(b'nope')}.AA")


class NormalizeHtuTests(SynchronousTestCase):
    """
    L{normalize_htu} applies RFC 3986 syntax- and scheme-based
    normalisation, ignoring query and fragment.
    """

    def test_equivalent(self) -> None:
        """
        URIs differing only in case of scheme/host, default or empty port,
        query, fragment, percent-encoding or dot segments are equal.
        """
        cases = [
            ("HTTPS://Example.COM:443/api/x?q=1#f", "https://example.com/api/x"),
            ("http://example.com:80/api", "http://example.com/api"),
            ("https://example.com:0443/api", "https://example.com/api"),
            ("https://example.com:/api", "https://example.com/api"),
            ("https://example.com", "https://example.com/"),
            ("https://example.com?q", "https://example.com/"),
            ("https://example.com#top", "https://example.com/"),
            ("https://example.com/%7euser/%2fx/%3a", "https://example.com/~user/%2Fx/%3A"),
            ("https://example.com/a%2Db%41", "https://example.com/a-bA"),
            ("https://example.com/a/./b/../c", "https://example.com/a/c"),
            ("https://example.com/a/b/..", "https://example.com/a/"),
            ("https://example.com/%2E%2E/a", "https://example.com/a"),
            ("https://example.com/caf\u00e9", "https://example.com/caf%C3%A9"),
            ("https://example.com/a b", "https://example.com/a%20b"),
            ("https://[::1]:443/x", "https://[::1]/x"),
            ("https://[::1]:8443/x", "https://[::1]:8443/x"),
            ("http://example.com:443/x", "http://example.com:443/x"),
            ("https://example.com:80/x", "https://example.com:80/x"),
            ("https://127.0.0.1:8080/x?y", "https://127.0.0.1:8080/x"),
        ]
        for url, normal in cases:
            self.assertEqual(normalize_htu(url), normal, url)
            self.assertEqual(normalize_htu(normal), normal, normal)

    def test_different(self) -> None:
        """
        Path case, trailing slashes, encoded slashes, scheme and port are
        significant.
        """
        base = normalize_htu("https://example.com/api/x")
        for url in [
            "https://example.com/API/x",
            "https://example.com/api/x/",
            "https://example.com/api%2Fx",
            "http://example.com/api/x",
            "https://example.com:8443/api/x",
            "https://example.com./api/x",
        ]:
            self.assertNotEqual(normalize_htu(url), base, url)

    def test_invalid(self) -> None:
        """
        Non-http(s), relative, host-less, user-info, bad-port and
        broken-escape URIs are a L{ValueError}.
        """
        for url in [
            "",
            "/api/x",
            "example.com/api",
            "ftp://example.com/",
            "javascript://example.com/",
            "https:///x",
            "https://user@example.com/",
            "https://user:pw@example.com/",
            "https://example.com:99999/",
            "https://example.com:8a/",
            "https://example.com::443/",
            "https://example.com/%zz",
            "https://example.com/%4",
            "https://exa mple.com/",
            "https://[::1/x",
            "https://[::1]x/",
            " https://example.com/",
            "https://ex%41mple.com/",
            "https://example.com/\ud800",
        ]:
            self.assertRaises(ValueError, normalize_htu, url)

    def test_throughVerify(self) -> None:
        """
        A proof for C{HTTPS://Example.COM:443/api/x?q=1#f} matches a request
        to C{https://example.com/api/x?other}.
        """
        signer = ProofSigner()
        proof = signer.sign("GET", "HTTPS://Example.COM:443/api/x?q=1#f", iat=NOW)
        result = verify_proof(
            proof,
            method="GET",
            url="https://example.com/api/x?other",
            now=NOW,
            algs=["ES256"],
            max_age=MAX_AGE,
            skew=SKEW,
            key_cache=KeyCache(),
        )
        self.assertEqual(result.htu, "https://example.com/api/x")


class ReplayTests(SynchronousTestCase):
    """
    L{replay_key} and L{replay_ttl} give the replay cache its key and TTL.
    """

    def test_keyShape(self) -> None:
        """
        The key is 16 bytes, stable, and differs per key and per jti.
        """
        key = replay_key("jkt-a", "jti-1")
        self.assertEqual(len(key), 16)
        self.assertEqual(replay_key("jkt-a", "jti-1"), key)
        self.assertNotEqual(replay_key("jkt-b", "jti-1"), key)
        self.assertNotEqual(replay_key("jkt-a", "jti-2"), key)

    def test_keyUnambiguous(self) -> None:
        """
        Moving characters between thumbprint and jti changes the key.
        """
        self.assertNotEqual(replay_key("ab", "c"), replay_key("a", "bc"))
        self.assertNotEqual(replay_key("a:", "b"), replay_key("a", ":b"))

    def test_keyOddJti(self) -> None:
        """
        A jti with a lone surrogate (which JSON allows) still gives a key.
        """
        self.assertEqual(len(replay_key("jkt", "\ud800")), 16)

    def test_ttl(self) -> None:
        """
        The TTL runs until C{iat + max_age + skew}, and is at least 1 s.
        """
        self.assertEqual(replay_ttl(NOW, NOW, MAX_AGE, SKEW), MAX_AGE + SKEW)
        self.assertEqual(replay_ttl(NOW + SKEW, NOW, MAX_AGE, SKEW), MAX_AGE + 2 * SKEW)
        self.assertEqual(replay_ttl(NOW - MAX_AGE, NOW, MAX_AGE, SKEW), SKEW)
        self.assertEqual(replay_ttl(NOW - MAX_AGE - SKEW, NOW, MAX_AGE, SKEW), 1.0)

    def test_accessTokenHash(self) -> None:
        """
        L{access_token_hash} is the RFC 9449 C{ath}: base64url SHA-256.
        """
        self.assertEqual(access_token_hash(TOKEN), ath_of(TOKEN))
        # RFC 9449 section 7.1 example.
        self.assertEqual(
            access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo",
        )
