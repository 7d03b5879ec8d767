"""
POST /tvm/issue and the small routes, on a real loopback socket: every
issuance row of SPEC's error table with its status, code and
WWW-Authenticate.
"""

from __future__ import annotations

import time

import jwt
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.proofs import OMIT, ProofSigner
from tests.support.siteverify import FAIL_SECRET, GARBAGE, PASS_SECRET, FakeSiteverify
from tests.support.web import KEY, ORIGIN, SiteHarness

ALGS = 'DPoP algs="ES256"'


class IssueTests(TestCase):
    def setUp(self) -> None:
        self.ets = SiteHarness(self)
        self.signer = ProofSigner()

    def htu(self) -> str:
        return self.ets.base + "/tvm/issue"

    def proof(self, **kwargs: object) -> str:
        return self.signer.sign("POST", kwargs.pop("htu", self.htu()), iat=kwargs.pop("iat", time.time()), **kwargs)

    @inlineCallbacks
    def assertRefused(self, answer_d, status: int, code: str, auth_error: str | None = "absent"):
        answer = yield answer_d
        self.assertEqual((answer.status, answer.code), (status, code), answer.body)
        self.assertEqual(answer.header("content-type"), "application/json")
        if status == 401:
            expected = ALGS if auth_error is None else f'DPoP error="{auth_error}", algs="ES256"'
            self.assertEqual(answer.header("www-authenticate"), expected)
        else:
            self.assertIsNone(answer.header("www-authenticate"))
        return answer

    @inlineCallbacks
    def test_jwk_body_mints_token(self) -> None:
        """A public JWK in the body gets a 200 token answer bound to its thumbprint, not cached."""
        answer = yield self.ets.issue({"dpopPublicJwk": self.signer.public_jwk})
        self.assertEqual(answer.status, 200)
        body = answer.json()
        self.assertEqual(set(body), {"accessToken", "expiresIn", "tokenType", "serverTime"})
        claims = jwt.decode(body["accessToken"], KEY, algorithms=["HS256"], audience="ets")
        self.assertEqual(claims["cnf"]["jkt"], self.signer.thumbprint)
        self.assertEqual(answer.header("cache-control"), "no-store")
        self.assertEqual(answer.header("access-control-allow-origin"), ORIGIN)
        self.assertIn("Origin", answer.header("vary"))
        self.assertIn("DPoP-Nonce", answer.header("access-control-expose-headers"))

    @inlineCallbacks
    def test_proof_header_mints_token(self) -> None:
        """A DPoP proof header instead of a JWK: the key is taken from the verified proof."""
        answer = yield self.ets.issue({}, headers={"DPoP": self.proof()})
        self.assertEqual(answer.status, 200, answer.body)
        claims = jwt.decode(answer.json()["accessToken"], KEY, algorithms=["HS256"], audience="ets")
        self.assertEqual(claims["cnf"]["jkt"], self.signer.thumbprint)

    @inlineCallbacks
    def test_proof_and_matching_jwk(self) -> None:
        """Both a JWK and a proof of the same key are accepted."""
        answer = yield self.ets.issue({"dpopPublicJwk": self.signer.public_jwk}, headers={"DPoP": self.proof()})
        self.assertEqual(answer.status, 200, answer.body)

    def test_cnf_mismatch(self):
        """A JWK and a proof of different keys: 401 cnf_mismatch."""
        other = ProofSigner().public_jwk
        return self.assertRefused(
            self.ets.issue({"dpopPublicJwk": other}, headers={"DPoP": self.proof()}),
            401, "cnf_mismatch", "invalid_dpop_proof")

    @inlineCallbacks
    def test_replay(self):
        """The same proof twice at issuance: the second is 401 replay."""
        proof = self.proof()
        first = yield self.ets.issue({}, headers={"DPoP": proof})
        self.assertEqual(first.status, 200)
        yield self.assertRefused(self.ets.issue({}, headers={"DPoP": proof}), 401, "replay", "invalid_dpop_proof")

    @inlineCallbacks
    def test_refused_proof_is_not_burnt(self):
        """A good proof sent with a bad body is not recorded: it still works afterwards."""
        proof = self.proof()
        yield self.assertRefused(
            self.ets.issue({"dpopPublicJwk": ProofSigner().public_jwk}, headers={"DPoP": proof}),
            401, "cnf_mismatch", "invalid_dpop_proof")
        answer = yield self.ets.issue({}, headers={"DPoP": proof})
        self.assertEqual(answer.status, 200)

    def test_invalid_json(self):
        """A body that is not JSON: 400 invalid_json."""
        return self.assertRefused(self.ets.issue(body=b"{nope"), 400, "invalid_json")

    def test_json_not_object(self):
        """A JSON array is not a JSON object: 400 invalid_json."""
        return self.assertRefused(self.ets.issue([1, 2]), 400, "invalid_json")

    def test_no_key(self):
        """Neither a JWK nor a proof: 400 invalid_jwk."""
        return self.assertRefused(self.ets.issue({}), 400, "invalid_jwk")

    def test_unsupported_jwk_curve(self):
        """A P-384 key when only ES256 is allowed: 400 unsupported_jwk."""
        return self.assertRefused(
            self.ets.issue({"dpopPublicJwk": ProofSigner("ES384").public_jwk}), 400, "unsupported_jwk")

    def test_unsupported_jwk_type(self):
        """An RSA key when only ES256 is allowed: 400 unsupported_jwk."""
        return self.assertRefused(
            self.ets.issue({"dpopPublicJwk": ProofSigner("RS256").public_jwk}), 400, "unsupported_jwk")

    def test_invalid_jwk_private(self):
        """A JWK with the private member d: 400 invalid_jwk."""
        jwk = dict(self.signer.public_jwk, d="AAAA")
        return self.assertRefused(self.ets.issue({"dpopPublicJwk": jwk}), 400, "invalid_jwk")

    def test_invalid_jwk_off_curve(self):
        """A point not on the curve: 400 invalid_jwk."""
        jwk = dict(self.signer.public_jwk, y=ProofSigner().public_jwk["x"])
        return self.assertRefused(self.ets.issue({"dpopPublicJwk": jwk}), 400, "invalid_jwk")

    def test_invalid_jwk_not_object(self):
        """dpopPublicJwk that is not an object: 400 invalid_jwk."""
        return self.assertRefused(self.ets.issue({"dpopPublicJwk": "key"}), 400, "invalid_jwk")

    @inlineCallbacks
    def test_origin_missing(self):
        """No Origin: 403 origin_not_allowed and no CORS headers."""
        answer = yield self.assertRefused(self.ets.issue({}, origin=None), 403, "origin_not_allowed")
        self.assertIsNone(answer.header("access-control-allow-origin"))

    @inlineCallbacks
    def test_origin_not_allowed(self):
        """An origin not exactly in the allowlist: 403 origin_not_allowed, no CORS headers."""
        answer = yield self.assertRefused(
            self.ets.issue({}, origin=ORIGIN + ".evil.example"), 403, "origin_not_allowed")
        self.assertIsNone(answer.header("access-control-allow-origin"))

    @inlineCallbacks
    def test_method_not_allowed(self):
        """GET /tvm/issue: 405 method_not_allowed with Allow."""
        answer = yield self.assertRefused(
            self.ets.request("GET", "/tvm/issue", headers={"Origin": ORIGIN}), 405, "method_not_allowed")
        self.assertEqual(answer.header("allow"), "POST")

    @inlineCallbacks
    def test_plain_options_is_not_preflight(self):
        """OPTIONS without Access-Control-Request-Method is an ordinary method: 405."""
        yield self.assertRefused(
            self.ets.request("OPTIONS", "/tvm/issue", headers={"Origin": ORIGIN}), 405, "method_not_allowed")

    @inlineCallbacks
    def test_preflight(self):
        """A real preflight answers 204 with the CORS grants."""
        answer = yield self.ets.request("OPTIONS", "/tvm/issue", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, dpop, x-trace"})
        self.assertEqual(answer.status, 204)
        self.assertEqual(answer.header("access-control-allow-origin"), ORIGIN)
        self.assertIn("POST", answer.header("access-control-allow-methods"))
        allowed = answer.header("access-control-allow-headers")
        for name in ("Authorization", "Content-Type", "DPoP", "x-trace"):
            self.assertIn(name, allowed)
        self.assertLessEqual(int(answer.header("access-control-max-age")), 7200)

    def test_preflight_bad_origin(self):
        """A preflight from a foreign origin: 403 origin_not_allowed."""
        return self.assertRefused(self.ets.request("OPTIONS", "/tvm/issue", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}),
            403, "origin_not_allowed")

    @inlineCallbacks
    def test_body_too_large_declared(self):
        """A declared body over 8 KiB: 413 body_too_large, with CORS for an allowed origin."""
        answer = yield self.assertRefused(self.ets.issue(body=b"x" * 9000), 413, "body_too_large")
        self.assertEqual(answer.header("access-control-allow-origin"), ORIGIN)

    def test_proof_repeated(self):
        """Two DPoP headers: 401 missing_dpop."""
        return self.assertRefused(
            self.ets.issue({}, headers={"DPoP": [self.proof(), self.proof()]}), 401, "missing_dpop", "invalid_dpop_proof")

    def test_proof_folded(self):
        """DPoP values folded with a comma: 401 missing_dpop."""
        return self.assertRefused(
            self.ets.issue({}, headers={"DPoP": self.proof() + "," + self.proof()}), 401, "missing_dpop", "invalid_dpop_proof")

    def test_bad_dpop(self):
        """A proof that is not a compact JWS: 401 bad_dpop."""
        return self.assertRefused(self.ets.issue({}, headers={"DPoP": "not.a.jws!"}), 401, "bad_dpop", "invalid_dpop_proof")

    def test_bad_dpop_header(self):
        """typ not dpop+jwt: 401 bad_dpop_header."""
        return self.assertRefused(self.ets.issue({}, headers={"DPoP": self.proof(extra_header={"typ": "JWT"})}),
                                  401, "bad_dpop_header", "invalid_dpop_proof")

    def test_bad_dpop_key(self):
        """No jwk in the proof header: 401 bad_dpop_key."""
        return self.assertRefused(self.ets.issue({}, headers={"DPoP": self.proof(extra_header={"jwk": OMIT})}),
                                  401, "bad_dpop_key", "invalid_dpop_proof")

    def test_bad_dpop_sig(self):
        """A proof signed by another key than its jwk: 401 bad_dpop_sig."""
        proof = self.proof(extra_header={"jwk": ProofSigner().public_jwk})
        return self.assertRefused(self.ets.issue({}, headers={"DPoP": proof}), 401, "bad_dpop_sig", "invalid_dpop_proof")

    def test_htm_mismatch(self):
        """A proof for GET sent on POST: 401 htm_mismatch."""
        proof = self.signer.sign("GET", self.htu(), iat=time.time())
        return self.assertRefused(self.ets.issue({}, headers={"DPoP": proof}), 401, "htm_mismatch", "invalid_dpop_proof")

    def test_htu_mismatch(self):
        """A proof for another URI: 401 htu_mismatch."""
        return self.assertRefused(self.ets.issue({}, headers={"DPoP": self.proof(htu=self.ets.base + "/api")}),
                                  401, "htu_mismatch", "invalid_dpop_proof")

    def test_missing_jti(self):
        """A proof without jti: 401 missing_dpop_jti."""
        return self.assertRefused(self.ets.issue({}, headers={"DPoP": self.proof(extra_claims={"jti": OMIT})}),
                                  401, "missing_dpop_jti", "invalid_dpop_proof")

    def test_missing_iat(self):
        """A proof with a string iat: 401 missing_dpop_iat."""
        return self.assertRefused(self.ets.issue({}, headers={"DPoP": self.proof(extra_claims={"iat": "now"})}),
                                  401, "missing_dpop_iat", "invalid_dpop_proof")

    def test_iat_in_future(self):
        """A proof from a minute ahead: 401 dpop_iat_in_future."""
        return self.assertRefused(self.ets.issue({}, headers={"DPoP": self.proof(iat=time.time() + 60)}),
                                  401, "dpop_iat_in_future", "invalid_dpop_proof")

    def test_iat_too_old(self):
        """A proof older than DPOP_MAX_AGE_SECONDS: 401 dpop_iat_too_old."""
        return self.assertRefused(self.ets.issue({}, headers={"DPoP": self.proof(iat=time.time() - 600)}),
                                  401, "dpop_iat_too_old", "invalid_dpop_proof")


class IssueRateLimitTests(TestCase):
    @inlineCallbacks
    def test_rate_limited(self):
        """Past the burst: 429 rate_limited with Retry-After and RateLimit-* headers."""
        ets = SiteHarness(self, RATE_LIMIT_PER_MINUTE="2")
        jwk = {"dpopPublicJwk": ProofSigner().public_jwk}
        for remaining in ("1", "0"):
            answer = yield ets.issue(jwk)
            self.assertEqual(answer.status, 200)
            self.assertEqual(answer.header("ratelimit-remaining"), remaining)
        answer = yield ets.issue(jwk)
        self.assertEqual((answer.status, answer.code), (429, "rate_limited"))
        self.assertGreaterEqual(int(answer.header("retry-after")), 1)
        self.assertEqual(answer.header("ratelimit-limit"), "2")
        self.assertEqual(answer.header("access-control-allow-origin"), ORIGIN)


class IssueChallengeTests(TestCase):
    def start(self, secret: str, mode: str | None = None) -> SiteHarness:
        self.verifier = FakeSiteverify()
        if mode is not None:
            self.verifier.mode = mode
        _, url = self.verifier.listen(reactor)
        self.addCleanup(self.verifier.shutdown)
        return SiteHarness(self, REQUIRE_ETS="true", ETS_SECRET_KEY=secret, ETS_VERIFY_URL=url)

    @inlineCallbacks
    def test_passing_challenge(self):
        """With REQUIRE_ETS and a passing verifier, a token is minted and the form was sent."""
        ets = self.start(PASS_SECRET)
        answer = yield ets.issue({"dpopPublicJwk": ProofSigner().public_jwk, "etsToken": "tok"})
        self.assertEqual(answer.status, 200, answer.body)
        self.assertEqual(self.verifier.received[0]["response"], "tok")

    @inlineCallbacks
    def test_failing_challenge(self):
        """A refused challenge: 403 ets_failed, no token, and the key is not kept parsed."""
        ets = self.start(FAIL_SECRET)
        answer = yield ets.issue({"dpopPublicJwk": ProofSigner().public_jwk, "etsToken": "tok"})
        self.assertEqual((answer.status, answer.code), (403, "ets_failed"))
        self.assertEqual(len(ets.site.resource.routes[b"/tvm/issue"].key_cache), 0)

    @inlineCallbacks
    def test_minted_key_kept_parsed(self):
        """A key that got its token is kept parsed for its proofs to come."""
        ets = self.start(PASS_SECRET)
        signer = ProofSigner()
        answer = yield ets.issue({"dpopPublicJwk": signer.public_jwk, "etsToken": "tok"})
        self.assertEqual(answer.status, 200, answer.body)
        cache = ets.site.resource.routes[b"/tvm/issue"].key_cache
        self.assertEqual(len(cache), 1)
        self.assertEqual(cache.get(signer.public_jwk, ["ES256"], remember=False).thumbprint, signer.thumbprint)

    @inlineCallbacks
    def test_missing_challenge(self):
        """No etsToken with REQUIRE_ETS: 403 ets_failed without asking the verifier."""
        ets = self.start(PASS_SECRET)
        answer = yield ets.issue({"dpopPublicJwk": ProofSigner().public_jwk})
        self.assertEqual((answer.status, answer.code), (403, "ets_failed"))
        self.assertEqual(self.verifier.received, [])

    @inlineCallbacks
    def test_challenge_not_spent_on_bad_key(self):
        """A bad key is refused before the single-use challenge token is spent."""
        ets = self.start(PASS_SECRET)
        answer = yield ets.issue({"dpopPublicJwk": {"kty": "oct"}, "etsToken": "tok"})
        self.assertEqual(answer.code, "unsupported_jwk")
        self.assertEqual(self.verifier.received, [])

    @inlineCallbacks
    def test_verifier_unreachable(self):
        """A verifier that answers garbage: 503 ets_unavailable (fails closed)."""
        ets = self.start(PASS_SECRET, mode=GARBAGE)
        answer = yield ets.issue({"dpopPublicJwk": ProofSigner().public_jwk, "etsToken": "tok"})
        self.assertEqual((answer.status, answer.code), (503, "ets_unavailable"))


class SmallRoutesTests(TestCase):
    def setUp(self) -> None:
        self.ets = SiteHarness(self)

    @inlineCallbacks
    def test_health_ready_notfound(self):
        """/health and /ready answer ok; any other path is a JSON 404."""
        for path in ("/health", "/ready"):
            answer = yield self.ets.request("GET", path)
            self.assertEqual((answer.status, answer.json()), (200, {"status": "ok"}))
        answer = yield self.ets.request("GET", "/tvm/other")
        self.assertEqual((answer.status, answer.json()), (404, {"error": "not_found"}))

    @inlineCallbacks
    def test_health_refuses_post(self):
        """POST /health: 405 method_not_allowed."""
        answer = yield self.ets.request("POST", "/health")
        self.assertEqual((answer.status, answer.code), (405, "method_not_allowed"))

    @inlineCallbacks
    def test_sdk_etag(self):
        """The SDK answers with an ETag; If-None-Match with it answers 304; HEAD has no body."""
        answer = yield self.ets.request("GET", "/sdk/tvm.mjs")
        self.assertEqual(answer.header("content-type"), "text/javascript; charset=utf-8")
        self.assertIn("createGatewayClient", answer.body.decode())
        again = yield self.ets.request("GET", "/sdk/tvm.mjs", headers={"If-None-Match": answer.header("etag")})
        self.assertEqual((again.status, again.body), (304, b""))
        head = yield self.ets.request("HEAD", "/sdk/tvm.d.ts")
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(head.header("access-control-allow-origin"), "*")
