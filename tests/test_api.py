"""
Everything under API_PATH on real loopback sockets, time driven by a Clock:
every /api row of SPEC's error table (status, code, WWW-Authenticate), and
what the relay sends and streams.
"""

from __future__ import annotations

import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet import ssl
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ets_twisted import tokens
from tests.support.proofs import OMIT, ProofSigner, ath_of
from tests.support.tls import self_signed
from tests.support.upstream import Upstream
from twisted.web.server import Site
from tests.support.web import KEY, ORIGIN, SiteHarness, wait_until


class ApiCase(TestCase):
    """A site with a Clock for time, a recording upstream and a minted token."""

    env: dict[str, str] = {}

    @inlineCallbacks
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(time.time())
        self.upstream = Upstream(reactor)
        base = self.upstream.listen(reactor)
        self.addCleanup(self.upstream.port.stopListening)
        self.ets = SiteHarness(self, {"UPSTREAM_BASE_URL": base, "UPSTREAM_SERVICE_SECRET": "s3cr3t&x",
                                      **self.env}, clock=self.clock)
        self.signer = ProofSigner()
        answer = yield self.ets.issue({"dpopPublicJwk": self.signer.public_jwk})
        self.token = answer.json()["accessToken"]

    def proof(self, method: str = "GET", path: str = "/api/echo", **kwargs):
        kwargs.setdefault("ath", ath_of(self.token))
        return self.signer.sign(method, kwargs.pop("htu", self.ets.base + path),
                                iat=kwargs.pop("iat", self.clock.seconds()), **kwargs)

    def call(self, method: str = "GET", path: str = "/api/echo", *, token=None, proof=None,
             scheme="DPoP", origin=ORIGIN, body=None, headers=None):
        h = {}
        if origin is not None:
            h["Origin"] = origin
        token = self.token if token is None else token
        if token:
            h["Authorization"] = f"{scheme} {token}"
        proof = self.proof(method, path.split("?")[0]) if proof is None else proof
        if proof:
            h["DPoP"] = proof
        h.update(headers or {})
        return self.ets.request(method, path, body=body, headers=h)

    @inlineCallbacks
    def assertRefused(self, answer_d, status, code, auth_error="invalid_dpop_proof"):
        answer = yield answer_d
        self.assertEqual((answer.status, answer.code), (status, code), answer.body)
        self.assertEqual(answer.header("content-type"), "application/json")
        if status == 401:
            expected = 'DPoP algs="ES256"' if auth_error is None else f'DPoP error="{auth_error}", algs="ES256"'
            self.assertEqual(answer.header("www-authenticate"), expected)
        self.assertEqual(self.upstream.received, [], "a refused request reached the upstream")
        return answer


class CheckOrderTests(ApiCase):
    @inlineCallbacks
    def test_good_request_is_relayed(self):
        """
        A good request reaches the upstream with its path and query, exactly
        one key (the configured secret), without Authorization, DPoP or
        Cookie, with X-Forwarded-* and X-Request-Id; the answer keeps the
        upstream's own headers but not its CORS or cookies.
        """
        answer = yield self.call("GET", "/api/echo?q=1&key=client&b=2", headers={"Cookie": "c=1", "X-Custom": "v"})
        self.assertEqual(answer.status, 200, answer.body)
        [seen] = self.upstream.received
        self.assertEqual(seen["uri"], "/api/echo?q=1&b=2&key=s3cr3t%26x")
        for dropped in ("authorization", "dpop", "cookie"):
            self.assertNotIn(dropped, seen["headers"])
        self.assertEqual(seen["headers"]["x-custom"], ["v"])
        self.assertEqual(seen["headers"]["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(seen["headers"]["x-forwarded-proto"], ["http"])
        self.assertEqual(seen["headers"]["x-request-id"], [answer.header("x-request-id")])
        self.assertEqual(answer.header("access-control-allow-origin"), ORIGIN)
        self.assertEqual(answer.header("x-upstream"), "yes")
        self.assertIsNone(answer.header("set-cookie"))
        self.assertEqual(answer.json(), {"echo": seen["uri"]})

    @inlineCallbacks
    def test_plain_agent_path(self):
        """
        Without the direct path to the pool (a Twisted without the private
        parts it uses), the relay goes through Agent.request and sends the
        same request: path, query, key, Host, body.
        """
        relay = self.ets.site.resource.api.relay
        self.assertIsNotNone(relay._endpoint, "the direct path is in use by default")
        relay._endpoint = None
        answer = yield self.call("POST", "/api/echo?q=1#frag", body=b'{"a":1}',
                                 headers={"Content-Type": "application/json"})
        self.assertEqual(answer.status, 200, answer.body)
        [seen] = self.upstream.received
        self.assertEqual(seen["uri"], "/api/echo?q=1&key=s3cr3t%26x")
        self.assertEqual(seen["body"], b'{"a":1}')
        self.assertEqual(seen["headers"]["host"], [self.ets.config.upstream_base_url.split("//")[1]])

    @inlineCallbacks
    def test_post_body_relayed(self):
        """A POST body arrives at the upstream as sent."""
        answer = yield self.call("POST", "/api/echo", body=b'{"a":1}', headers={"Content-Type": "application/json"})
        self.assertEqual(answer.status, 200)
        self.assertEqual(self.upstream.received[0]["body"], b'{"a":1}')

    @inlineCallbacks
    def test_bearer_scheme(self):
        """Authorization: Bearer is accepted too (the proof is still required)."""
        answer = yield self.call(scheme="Bearer")
        self.assertEqual(answer.status, 200)

    def test_origin_not_allowed(self):
        """A foreign Origin: 403 origin_not_allowed."""
        return self.assertRefused(self.call(origin="https://evil.example"), 403, "origin_not_allowed")

    def test_method_not_allowed(self):
        """DELETE is not in ALLOWED_METHODS: 405."""
        return self.assertRefused(self.call("DELETE"), 405, "method_not_allowed")

    @inlineCallbacks
    def test_preflight(self):
        """A preflight answers 204 with the allowed methods, no token needed."""
        answer = yield self.ets.request("OPTIONS", "/api/echo", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
        self.assertEqual(answer.status, 204)
        self.assertEqual(answer.header("access-control-allow-methods"), "GET, POST")

    def test_missing_bearer(self):
        """No Authorization: 401 missing_bearer, WWW-Authenticate without an error."""
        return self.assertRefused(self.call(token=""), 401, "missing_bearer", None)

    def test_other_scheme(self):
        """Authorization: Basic is no token: 401 missing_bearer."""
        return self.assertRefused(self.call(scheme="Basic"), 401, "missing_bearer", None)

    def test_invalid_token(self):
        """A token that is not a JWT: 401 invalid_token."""
        return self.assertRefused(self.call(token="abc.def.ghi"), 401, "invalid_token", "invalid_token")

    def test_expired_token(self):
        """A token past its exp (and the skew): 401 invalid_token."""
        self.clock.advance(300 + 6)
        return self.assertRefused(self.call(), 401, "invalid_token", "invalid_token")

    def test_bad_claims(self):
        """A token of another issuer, signed with our key: 401 bad_claims."""
        token, _ = tokens.mint(tokens.KeyRing((KEY.encode(),)), jkt=self.signer.thumbprint,
                               issuer="someone-else", lifetime=300, now=self.clock.seconds())
        proof = self.proof(ath=ath_of(token))
        return self.assertRefused(self.call(token=token, proof=proof), 401, "bad_claims", "invalid_token")

    def test_missing_dpop(self):
        """No DPoP header: 401 missing_dpop."""
        return self.assertRefused(self.call(proof=""), 401, "missing_dpop")

    def test_two_dpop_headers(self):
        """Two DPoP headers: 401 missing_dpop."""
        return self.assertRefused(self.call(headers={"DPoP": [self.proof(), self.proof()]}), 401, "missing_dpop")

    def test_bad_dpop(self):
        """A proof that is not a JWS: 401 bad_dpop."""
        return self.assertRefused(self.call(proof="garbage"), 401, "bad_dpop")

    def test_bad_dpop_header(self):
        """alg not in DPOP_ALGS: 401 bad_dpop_header."""
        return self.assertRefused(self.call(proof=self.proof(extra_header={"alg": "ES384"})), 401, "bad_dpop_header")

    def test_bad_dpop_key(self):
        """A private JWK in the proof: 401 bad_dpop_key."""
        jwk = dict(self.signer.public_jwk, d="AAAA")
        return self.assertRefused(self.call(proof=self.proof(extra_header={"jwk": jwk})), 401, "bad_dpop_key")

    def test_bad_dpop_sig(self):
        """A tampered signature: 401 bad_dpop_sig."""
        proof = self.proof()
        head, payload, sig = proof.split(".")
        sig = ("A" if sig[0] != "A" else "B") + sig[1:]
        return self.assertRefused(self.call(proof=f"{head}.{payload}.{sig}"), 401, "bad_dpop_sig")

    def test_cnf_mismatch(self):
        """A proof by another key than the token's cnf.jkt: 401 cnf_mismatch."""
        other = ProofSigner().sign("GET", self.ets.base + "/api/echo", iat=self.clock.seconds(),
                                   ath=ath_of(self.token))
        return self.assertRefused(self.call(proof=other), 401, "cnf_mismatch")

    def test_htm_mismatch(self):
        """A proof for POST on a GET: 401 htm_mismatch."""
        return self.assertRefused(self.call(proof=self.proof("POST")), 401, "htm_mismatch")

    def test_htu_mismatch(self):
        """A proof for another path: 401 htu_mismatch."""
        return self.assertRefused(self.call(proof=self.proof(path="/api/other")), 401, "htu_mismatch")

    @inlineCallbacks
    def test_htu_ignores_query(self):
        """The query is not part of htu on either side."""
        answer = yield self.call("GET", "/api/echo?x=1", proof=self.proof(htu=self.ets.base + "/api/echo?y=2"))
        self.assertEqual(answer.status, 200)

    def test_missing_jti(self):
        """A proof without jti: 401 missing_dpop_jti."""
        return self.assertRefused(self.call(proof=self.proof(extra_claims={"jti": OMIT})), 401, "missing_dpop_jti")

    def test_missing_iat(self):
        """A proof without iat: 401 missing_dpop_iat."""
        return self.assertRefused(self.call(proof=self.proof(extra_claims={"iat": OMIT})), 401, "missing_dpop_iat")

    def test_iat_in_future(self):
        """A proof dated past the skew: 401 dpop_iat_in_future."""
        return self.assertRefused(self.call(proof=self.proof(iat=self.clock.seconds() + 6)), 401, "dpop_iat_in_future")

    def test_iat_too_old(self):
        """A proof that waited past DPOP_MAX_AGE_SECONDS: 401 dpop_iat_too_old."""
        proof = self.proof()
        self.clock.advance(250)
        token_ok = self.token  # still valid: 250 < 300
        proof = self.proof(iat=self.clock.seconds() - 301)
        return self.assertRefused(self.call(token=token_ok, proof=proof), 401, "dpop_iat_too_old")

    def test_ath_mismatch(self):
        """An ath of another token: 401 ath_mismatch."""
        return self.assertRefused(self.call(proof=self.proof(ath=ath_of("other"))), 401, "ath_mismatch")

    @inlineCallbacks
    def test_replay(self):
        """The same proof twice: the second is 401 replay and never reaches the upstream."""
        proof = self.proof()
        first = yield self.call(proof=proof)
        self.assertEqual(first.status, 200)
        second = yield self.call(proof=proof)
        self.assertEqual((second.status, second.code), (401, "replay"))
        self.assertEqual(len(self.upstream.received), 1)

    @inlineCallbacks
    def test_refused_proof_not_burnt(self):
        """A proof first sent with a bad token still works afterwards with the good one."""
        proof = self.proof()
        yield self.assertRefused(self.call(token="abc.def.ghi", proof=proof), 401, "invalid_token", "invalid_token")
        answer = yield self.call(proof=proof)
        self.assertEqual(answer.status, 200)

    def test_dot_segments_refused(self):
        """A path that climbs out of API_PATH with dot segments is a 404, never relayed."""
        return self.assertRefused(self.call("GET", "/api/%2e%2e/admin"), 404, "not_found")

    @inlineCallbacks
    def test_body_too_large(self):
        """A declared body over MAX_BODY_BYTES: 413 and the upstream saw nothing."""
        self.ets.site._api_body_cap = 100
        answer = yield self.call("POST", "/api/echo", body=b"x" * 101)
        self.assertEqual((answer.status, answer.code), (413, "body_too_large"))
        self.assertEqual(self.upstream.received, [])


class RequireAthTests(ApiCase):
    env = {"REQUIRE_ATH": "true"}

    def test_missing_ath_refused(self):
        """With REQUIRE_ATH, a proof without ath: 401 ath_mismatch."""
        proof = self.signer.sign("GET", self.ets.base + "/api/echo", iat=self.clock.seconds())
        return self.assertRefused(self.call(proof=proof), 401, "ath_mismatch")


class NonceTests(ApiCase):
    env = {"REQUIRE_DPOP_NONCE": "true"}

    @inlineCallbacks
    def test_nonce_flow(self):
        """
        Without a nonce: 401 use_dpop_nonce carrying DPoP-Nonce and no-store;
        with it: relayed; two steps later it is stale again.
        """
        # Start on a step boundary: the clock began at the wall time, and a
        # nonce minted late in its step would otherwise be stale after 61 s.
        self.clock.advance(60 - self.clock.seconds() % 60)
        answer = yield self.assertRefused(self.call(), 401, "use_dpop_nonce", "use_dpop_nonce")
        nonce = answer.header("dpop-nonce")
        self.assertTrue(nonce)
        self.assertEqual(answer.header("cache-control"), "no-store")
        ok = yield self.call(proof=self.proof(nonce=nonce))
        self.assertEqual(ok.status, 200)
        self.clock.advance(61)
        rotated = yield self.call(proof=self.proof(nonce=nonce))
        self.assertEqual(rotated.status, 200)
        self.assertNotEqual(rotated.header("dpop-nonce"), nonce)
        self.clock.advance(60)
        # The token is still valid (121 s < 300 s); the nonce is two steps old.
        stale = yield self.call(proof=self.proof(nonce=nonce))
        self.assertEqual((stale.status, stale.code), (401, "use_dpop_nonce"))


class RateLimitTests(ApiCase):
    env = {"RATE_LIMIT_PER_MINUTE": "2"}

    @inlineCallbacks
    def test_bucket_and_refill(self):
        """
        The issue call and the API have separate buckets; past the burst the
        API answers 429 with Retry-After, and one token refills after 30 s.
        """
        for remaining in ("1", "0"):
            answer = yield self.call()
            self.assertEqual((answer.status, answer.header("ratelimit-remaining")), (200, remaining))
        limited = yield self.call()
        self.assertEqual((limited.status, limited.code), (429, "rate_limited"))
        self.assertEqual(limited.header("retry-after"), "30")
        self.clock.advance(30)
        again = yield self.call()
        self.assertEqual(again.status, 200)

    @inlineCallbacks
    def test_per_origin(self):
        """Another allowed origin has its own bucket."""
        self.ets.config.origin_allowlist  # noqa: B018 - the harness allows one origin
        for _ in range(2):
            yield self.call()
        limited = yield self.call()
        self.assertEqual(limited.status, 429)
        self.assertEqual(len(self.upstream.received), 2)


class UpstreamFaultTests(ApiCase):
    @inlineCallbacks
    def test_slow_upstream_times_out(self):
        """An upstream silent past UPSTREAM_TIMEOUT_SECONDS: 504 upstream_timeout."""
        pending = self.call("GET", "/api/slow")
        yield wait_until(lambda: self.upstream.received)
        self.clock.advance(40)
        answer = yield pending
        self.assertEqual((answer.status, answer.code), (504, "upstream_timeout"))

    @inlineCallbacks
    def test_closed_port(self):
        """An upstream that refuses connections: 502 upstream_error."""
        yield self.upstream.port.stopListening()
        answer = yield self.call()
        self.assertEqual((answer.status, answer.code), (502, "upstream_error"))


class _Misbehaving(Protocol):
    """An 'upstream' that answers garbage, or resets the connection."""

    def dataReceived(self, data):
        if self.factory.mode == "garbage":
            self.transport.write(b"this is not HTTP\r\n\r\n")
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()


class MisbehavingUpstreamTests(TestCase):
    @inlineCallbacks
    def start(self, mode):
        factory = Factory.forProtocol(_Misbehaving)
        factory.mode = mode
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        ets = SiteHarness(self, UPSTREAM_BASE_URL=f"http://127.0.0.1:{port.getHost().port}")
        signer = ProofSigner()
        token = (yield ets.issue({"dpopPublicJwk": signer.public_jwk})).json()["accessToken"]
        proof = signer.sign("GET", ets.base + "/api/x", iat=time.time(), ath=ath_of(token))
        answer = yield ets.request("GET", "/api/x", headers={
            "Origin": ORIGIN, "Authorization": f"DPoP {token}", "DPoP": proof})
        return answer

    @inlineCallbacks
    def test_garbage(self):
        """An upstream answering something that is not HTTP: 502 upstream_error."""
        answer = yield self.start("garbage")
        self.assertEqual((answer.status, answer.code), (502, "upstream_error"))

    @inlineCallbacks
    def test_reset(self):
        """An upstream that resets the connection: 502 upstream_error."""
        answer = yield self.start("reset")
        self.assertEqual((answer.status, answer.code), (502, "upstream_error"))

    @inlineCallbacks
    def test_untrusted_https_upstream(self):
        """
        An HTTPS upstream whose certificate is not trusted is refused (the
        certificate is verified): 502 upstream_error.
        """
        cert = ssl.PrivateCertificate.loadPEM(self_signed("localhost"))
        site = Upstream(reactor)
        port = reactor.listenSSL(0, Site(site), cert.options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        ets = SiteHarness(self, UPSTREAM_BASE_URL=f"https://localhost:{port.getHost().port}")
        signer = ProofSigner()
        token = (yield ets.issue({"dpopPublicJwk": signer.public_jwk})).json()["accessToken"]
        proof = signer.sign("GET", ets.base + "/api/x", iat=time.time(), ath=ath_of(token))
        answer = yield ets.request("GET", "/api/x", headers={
            "Origin": ORIGIN, "Authorization": f"DPoP {token}", "DPoP": proof})
        self.assertEqual((answer.status, answer.code), (502, "upstream_error"))
        self.assertEqual(site.received, [])


class _Chunks(Protocol):
    def __init__(self):
        self.data = b""
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback(None)


class StreamingTests(ApiCase):
    @inlineCallbacks
    def open_stream(self):
        headers = {"Origin": ORIGIN, "Authorization": f"DPoP {self.token}",
                   "DPoP": self.proof("GET", "/api/stream")}
        response = yield self.ets.http.request("GET", self.ets.base + "/api/stream", headers=headers, unbuffered=True)
        yield wait_until(lambda: self.upstream.streams)
        chunks = _Chunks()
        response.deliverBody(chunks)
        return response, chunks

    @inlineCallbacks
    def test_events_arrive_as_sent(self):
        """Each server-sent event reaches the client before the stream ends."""
        response, chunks = yield self.open_stream()
        self.assertEqual(response.code, 200)
        self.upstream.send_event("one")
        yield wait_until(lambda: b"data: one" in chunks.data)
        self.assertFalse(chunks.done.called)
        self.upstream.send_event("two")
        yield wait_until(lambda: b"data: two" in chunks.data)
        self.upstream.end_stream()
        yield chunks.done

    @inlineCallbacks
    def test_client_disconnect_closes_upstream(self):
        """A client that goes away mid-stream makes ETS close the upstream connection."""
        response, chunks = yield self.open_stream()
        self.upstream.send_event("one")
        yield wait_until(lambda: b"data: one" in chunks.data)
        chunks.transport.stopProducing()
        yield self.upstream.stream_closed[-1]
        yield chunks.done

    @inlineCallbacks
    def test_silence_between_chunks_cuts_stream(self):
        """Silence between body chunks past the timeout ends the relayed answer."""
        response, chunks = yield self.open_stream()
        self.upstream.send_event("one")
        yield wait_until(lambda: b"data: one" in chunks.data)
        self.clock.advance(41)
        yield chunks.done
        yield self.upstream.stream_closed[-1]
