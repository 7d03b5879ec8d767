"""
Property tests: whatever arrives, the JOSE and DPoP code answers with its
defined errors, never with a crash and never with a false acceptance.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ets_twisted.dpop import Proof, normalize_htu, verify_proof
from ets_twisted.errors import ETSError
from ets_twisted.jose import (
    SUPPORTED_ALGS,
    JWKError,
    KeyCache,
    PublicKey,
    b64url_decode,
    b64url_encode,
    parse_public_jwk,
    split_compact_jws,
)
from tests.support.proofs import OMIT, ProofSigner, b64

NOW = 1_767_225_600.0
URL = "https://ets.example/api/x"

#: Every code a proof check may answer with.
PROOF_CODES = frozenset(
    {
        "bad_dpop",
        "bad_dpop_header",
        "bad_dpop_key",
        "bad_dpop_sig",
        "cnf_mismatch",
        "htm_mismatch",
        "htu_mismatch",
        "missing_dpop_jti",
        "missing_dpop_iat",
        "dpop_iat_in_future",
        "dpop_iat_too_old",
        "ath_mismatch",
    }
)

quick = settings(max_examples=250, deadline=None)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)

b64_text = st.binary(max_size=80).map(b64)

jwk_values = st.one_of(
    json_values,
    b64_text,
    st.sampled_from(
        ["EC", "OKP", "RSA", "oct", "P-256", "P-384", "P-521", "Ed25519", "X25519", "AQAB", ""]
    ),
)

jwks = st.dictionaries(
    st.one_of(
        st.sampled_from(["kty", "crv", "x", "y", "n", "e", "d", "k", "alg", "use", "oth"]),
        st.text(max_size=5),
    ),
    jwk_values,
    max_size=7,
)

# A proof from a real key whose header and claims may each be replaced by
# arbitrary JSON or dropped.
member_mutations = st.dictionaries(
    st.sampled_from(["typ", "alg", "jwk", "crit", "htm", "htu", "iat", "jti", "ath", "nonce"]),
    st.one_of(st.just(OMIT), json_values),
    max_size=4,
)

_signer = ProofSigner("ES256")
_one_proof = _signer.sign("GET", URL, iat=NOW)


def _jws_of(parts: tuple[Any, Any, bytes]) -> str:
    """
    A compact JWS of any two JSON values and a signature.
    """
    header, payload, signature = parts
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    )


def _verify(proof: Any, cache: KeyCache, **kwargs: Any) -> Proof:
    options: dict[str, Any] = dict(
        method="GET",
        url=URL,
        now=NOW,
        algs=("ES256",),
        max_age=300.0,
        skew=5.0,
        key_cache=cache,
    )
    options.update(kwargs)
    return verify_proof(proof, **options)


class JoseProperties(SynchronousTestCase):
    """
    L{ets_twisted.jose} only ever raises L{ValueError} (or L{JWKError}).
    """

    @quick
    @given(st.one_of(st.text(), st.binary()))
    def test_b64urlDecode(self, data: str | bytes) -> None:
        """
        Decoding arbitrary input gives bytes whose encoding is the input (the
        accepted encoding is canonical), or a L{ValueError}.
        """
        try:
            decoded = b64url_decode(data)
        except ValueError:
            return
        text = data.decode("ascii") if isinstance(data, bytes) else data
        self.assertEqual(b64url_encode(decoded), text)

    @quick
    @given(st.binary())
    def test_b64urlRoundTrip(self, data: bytes) -> None:
        """
        Every byte string survives encoding then decoding.
        """
        self.assertEqual(b64url_decode(b64url_encode(data)), data)

    @quick
    @given(
        st.one_of(
            st.text(),
            st.binary(),
            st.lists(st.one_of(b64_text, st.text(max_size=30)), max_size=5).map(".".join),
            st.tuples(json_values, json_values, st.binary(max_size=64)).map(_jws_of),
        )
    )
    def test_splitCompactJWS(self, token: str | bytes) -> None:
        """
        Splitting arbitrary input gives two dicts and two byte strings, or a
        L{ValueError}.
        """
        try:
            header, payload, signing_input, signature = split_compact_jws(token)
        except ValueError:
            return
        self.assertIsInstance(header, dict)
        self.assertIsInstance(payload, dict)
        self.assertIsInstance(signing_input, bytes)
        self.assertIsInstance(signature, bytes)

    @quick
    @given(st.one_of(jwks, json_values))
    def test_parsePublicJwk(self, jwk: Any) -> None:
        """
        Parsing an arbitrary JSON value as a JWK gives a public key or a
        L{JWKError}; the key cache behaves the same.
        """
        for parse in (parse_public_jwk, KeyCache().get):
            try:
                key = parse(jwk, SUPPORTED_ALGS)
            except JWKError as e:
                self.assertIsInstance(e.unsupported, bool)
            else:
                self.assertIsInstance(key, PublicKey)
                self.assertFalse(set(jwk) & {"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

    @quick
    @given(st.text())
    def test_normalizeHtu(self, tail: str) -> None:
        """
        Normalising arbitrary text answers a L{ValueError} or a URI that
        normalises to itself.
        """
        for url in (tail, "https://" + tail, "http://ets.example/" + tail):
            try:
                normal = normalize_htu(url)
            except ValueError:
                continue
            self.assertEqual(normalize_htu(normal), normal)


class ProofProperties(SynchronousTestCase):
    """
    L{verify_proof} only ever raises L{ETSError} with a 401 proof code, and
    accepts only proofs that follow every rule.
    """

    def assertRefused(self, proof: Any, **kwargs: Any) -> None:
        with self.assertRaises(ETSError) as caught:
            _verify(proof, KeyCache(), **kwargs)
        self.assertIn(caught.exception.code, PROOF_CODES)
        self.assertEqual(caught.exception.status, 401)

    @quick
    @given(st.one_of(st.text(), st.lists(b64_text, min_size=3, max_size=3).map(".".join)))
    def test_arbitraryText(self, proof: str) -> None:
        """
        Arbitrary text is refused with a proof code.
        """
        self.assertRefused(proof, access_token="token")

    @quick
    @given(member_mutations, member_mutations)
    def test_mutatedMembers(self, header: dict[str, Any], claims: dict[str, Any]) -> None:
        """
        A proof signed by a real key, with header members and claims replaced
        by arbitrary JSON or dropped, is refused with a proof code unless
        what remains still follows every rule.
        """
        header_changes = {k: v for k, v in header.items() if k in {"typ", "alg", "jwk", "crit"}}
        claim_changes = {k: v for k, v in claims.items() if k not in header_changes}
        proof = _signer.sign(
            "GET", URL, iat=NOW, extra_header=header_changes, extra_claims=claim_changes
        )
        try:
            result = _verify(proof, KeyCache(), access_token="token")
        except ETSError as e:
            self.assertIn(e.code, PROOF_CODES)
            return
        self.assertEqual(result.jkt, _signer.thumbprint)
        self.assertEqual(result.htm, "GET")
        self.assertEqual(result.htu, URL)
        self.assertIsInstance(result.jti, str)
        self.assertTrue(NOW - 300 <= result.iat <= NOW + 5)

    @quick
    @given(st.data())
    def test_oneCharacterChanged(self, data: st.DataObject) -> None:
        """
        Changing any one character of a good proof makes it refused.
        """
        # One proof for every example: hypothesis replays examples, and a
        # fresh signature (random in ECDSA) would change what it draws.
        proof = _one_proof
        index = data.draw(st.integers(0, len(proof) - 1))
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
        char = data.draw(st.sampled_from(alphabet).filter(lambda c: c != proof[index]))
        self.assertRefused(proof[:index] + char + proof[index + 1 :])
