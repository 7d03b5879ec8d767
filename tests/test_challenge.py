"""
Tests for L{ets_twisted.challenge}: the siteverify client behind
C{REQUIRE_ETS}, against the stand-in in L{tests.support.siteverify} over real
loopback sockets.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Generator

from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ets_twisted.challenge import MAX_ANSWER_BYTES, MAX_TOKEN_LENGTH, ChallengeVerifier
from ets_twisted.errors import ETSError
from tests.support.siteverify import (
    ERROR,
    FAIL_SECRET,
    GARBAGE,
    HANG,
    PASS_SECRET,
    SPENT_SECRET,
    STALL,
    FakeSiteverify,
)

# Tests run on the real reactor (the sockets are real); Trial drives it.
reactor: Any = _global_reactor

OWN_SECRET = "0x4AAAAAAAown-widget-secret-value"
TOKEN = "0.token-from-the-widget.abc"


class _LoopbackTestCase(TestCase):
    """
    A stand-in siteverify on a loopback port and a treq client whose pool is
    closed after each test.
    """

    # Everything here takes well under a second; a hang is a bug.
    timeout = 20

    def setUp(self) -> None:
        self.server = FakeSiteverify(good_tokens={TOKEN, "0.second-good-token"})
        _, self.url = self.server.listen(reactor)
        self.addCleanup(self.server.shutdown)
        # Not persistent: no idle connection outlives the test.
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    def verifier(
        self,
        secret: str = PASS_SECRET,
        hostname: str | None = None,
        action: str | None = None,
        clock: IReactorTime | None = None,
        timeout: float = 10.0,
    ) -> ChallengeVerifier:
        return ChallengeVerifier(
            http=self.http,
            reactor=clock if clock is not None else reactor,
            secret=secret,
            verify_url=self.url,
            expected_hostname=hostname,
            expected_action=action,
            timeout=timeout,
        )

    @inlineCallbacks
    def assertRefusal(
        self, d: Deferred[None], code: str
    ) -> Generator[Deferred[Any], Any, ETSError]:
        """
        Assert that C{d} fails with an L{ETSError} of C{code}.
        """
        error = yield self.assertFailure(d, ETSError)
        self.assertEqual(error.code, code, str(error))
        return error


class ProtocolTests(_LoopbackTestCase):
    """
    The siteverify protocol: what is sent, and which verdicts admit.
    """

    @inlineCallbacks
    def test_pass_secret_admits(self) -> Generator[Deferred[Any], Any, None]:
        """
        Cloudflare's always-pass test secret admits: C{verify} fires with
        L{None} after exactly one request.
        """
        result = yield self.verifier().verify(TOKEN, "203.0.113.9")
        self.assertIsNone(result)
        self.assertEqual(len(self.server.received), 1)

    @inlineCallbacks
    def test_fail_secret_refuses(self) -> Generator[Deferred[Any], Any, None]:
        """
        Cloudflare's always-fail test secret refuses with C{ets_failed}, and
        the verifier's error code is in the message.
        """
        error = yield self.assertRefusal(
            self.verifier(FAIL_SECRET).verify(TOKEN, None), "ets_failed"
        )
        self.assertEqual(error.status, 403)
        self.assertIn("invalid-input-response", error.message)

    @inlineCallbacks
    def test_spent_secret_refuses(self) -> Generator[Deferred[Any], Any, None]:
        """
        Cloudflare's "already spent" test secret refuses with C{ets_failed}
        naming C{timeout-or-duplicate}.
        """
        error = yield self.assertRefusal(
            self.verifier(SPENT_SECRET).verify(TOKEN, None), "ets_failed"
        )
        self.assertIn("timeout-or-duplicate", error.message)

    @inlineCallbacks
    def test_token_is_single_use(self) -> Generator[Deferred[Any], Any, None]:
        """
        A good token passes once; the same token presented again is refused
        as spent, because each call sends a fresh C{idempotency_key} and so
        never passes for a retry of the first.
        """
        verifier = self.verifier(OWN_SECRET)
        yield verifier.verify(TOKEN, None)
        error = yield self.assertRefusal(verifier.verify(TOKEN, None), "ets_failed")
        self.assertIn("timeout-or-duplicate", error.message)

    @inlineCallbacks
    def test_unknown_token_refused(self) -> Generator[Deferred[Any], Any, None]:
        """
        With a real secret, a token the verifier does not know is refused
        with C{ets_failed}.
        """
        yield self.assertRefusal(
            self.verifier(OWN_SECRET).verify("0.made-up", None), "ets_failed"
        )

    @inlineCallbacks
    def test_hostname_mismatch_refused(self) -> Generator[Deferred[Any], Any, None]:
        """
        With C{ETS_EXPECTED_HOSTNAME} set, a passing answer for another
        hostname is refused with C{ets_failed}.
        """
        self.server.hostname = "evil.example"
        yield self.assertRefusal(
            self.verifier(hostname="app.example").verify(TOKEN, None), "ets_failed"
        )

    @inlineCallbacks
    def test_hostname_match_admits(self) -> Generator[Deferred[Any], Any, None]:
        """
        The expected hostname admits, compared without regard to case as
        DNS names are.
        """
        self.server.hostname = "app.example"
        yield self.verifier(hostname="App.Example").verify(TOKEN, None)

    @inlineCallbacks
    def test_action_mismatch_refused(self) -> Generator[Deferred[Any], Any, None]:
        """
        With C{ETS_EXPECTED_ACTION} set, a passing answer for another widget
        action (or none) is refused with C{ets_failed}.
        """
        self.server.action = "login"
        yield self.assertRefusal(
            self.verifier(action="issue").verify(TOKEN, None), "ets_failed"
        )
        self.server.action = ""
        yield self.assertRefusal(
            self.verifier(action="issue").verify(TOKEN, None), "ets_failed"
        )

    @inlineCallbacks
    def test_action_match_admits(self) -> Generator[Deferred[Any], Any, None]:
        """
        The expected action admits.
        """
        self.server.action = "issue"
        yield self.verifier(hostname="localhost", action="issue").verify(TOKEN, None)

    @inlineCallbacks
    def test_form_fields(self) -> Generator[Deferred[Any], Any, None]:
        """
        The request is a form (C{application/x-www-form-urlencoded}) with
        exactly C{secret}, C{response}, C{remoteip} and a UUID4
        C{idempotency_key}.
        """
        yield self.verifier(OWN_SECRET).verify(TOKEN, "2001:db8::7")
        [form] = self.server.received
        self.assertEqual(
            sorted(form), ["idempotency_key", "remoteip", "response", "secret"]
        )
        self.assertEqual(form["secret"], OWN_SECRET)
        self.assertEqual(form["response"], TOKEN)
        self.assertEqual(form["remoteip"], "2001:db8::7")
        self.assertEqual(uuid.UUID(form["idempotency_key"]).version, 4)
        self.assertEqual(
            self.server.content_types, ["application/x-www-form-urlencoded"]
        )

    @inlineCallbacks
    def test_remoteip_omitted_when_unknown(self) -> Generator[Deferred[Any], Any, None]:
        """
        Without a client address no C{remoteip} field is sent (an empty one
        could be read as an address).
        """
        yield self.verifier().verify(TOKEN, None)
        self.assertNotIn("remoteip", self.server.received[0])

    @inlineCallbacks
    def test_idempotency_key_fresh_per_call(self) -> Generator[Deferred[Any], Any, None]:
        """
        Every call sends its own C{idempotency_key}.
        """
        verifier = self.verifier()
        yield verifier.verify(TOKEN, None)
        yield verifier.verify(TOKEN, None)
        keys = {form["idempotency_key"] for form in self.server.received}
        self.assertEqual(len(keys), 2)

    @inlineCallbacks
    def test_missing_token_refused_without_request(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """
        A missing, empty or non-string C{etsToken} is C{ets_failed} at once,
        without asking the verifier.
        """
        verifier = self.verifier()
        for token in (None, "", 42, ["a"], {"token": "a"}, True):
            yield self.assertRefusal(verifier.verify(token, None), "ets_failed")
        self.assertEqual(self.server.received, [])

    @inlineCallbacks
    def test_overlong_token_refused_without_request(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """
        A token longer than Turnstile's 2048 characters is C{ets_failed}
        without asking the verifier; one of exactly 2048 is sent.
        """
        verifier = self.verifier()
        yield self.assertRefusal(
            verifier.verify("x" * (MAX_TOKEN_LENGTH + 1), None), "ets_failed"
        )
        self.assertEqual(self.server.received, [])
        yield verifier.verify("x" * MAX_TOKEN_LENGTH, None)
        self.assertEqual(len(self.server.received), 1)

    def test_secret_not_in_repr(self) -> None:
        """
        The secret does not show in the verifier's C{repr}, so it cannot
        leak through a log line that prints the object.
        """
        self.assertNotIn(OWN_SECRET, repr(self.verifier(OWN_SECRET)))


class UnavailableTests(_LoopbackTestCase):
    """
    A verifier that cannot give a verdict: C{ets_unavailable}, never admit.
    """

    @inlineCallbacks
    def test_garbage_answer(self) -> Generator[Deferred[Any], Any, None]:
        """
        A 200 answer that is not JSON is C{ets_unavailable} (503).
        """
        self.server.mode = GARBAGE
        error = yield self.assertRefusal(
            self.verifier().verify(TOKEN, None), "ets_unavailable"
        )
        self.assertEqual(error.status, 503)

    @inlineCallbacks
    def test_server_error(self) -> Generator[Deferred[Any], Any, None]:
        """
        A 500 answer is C{ets_unavailable}.
        """
        self.server.mode = ERROR
        yield self.assertRefusal(self.verifier().verify(TOKEN, None), "ets_unavailable")

    @inlineCallbacks
    def test_closed_port(self) -> Generator[Deferred[Any], Any, None]:
        """
        A refused connection is C{ets_unavailable}.
        """
        yield self.server.shutdown()
        yield self.assertRefusal(self.verifier().verify(TOKEN, None), "ets_unavailable")

    @inlineCallbacks
    def test_wrong_secret(self) -> Generator[Deferred[Any], Any, None]:
        """
        C{invalid-input-secret} means ETS is misconfigured and the token was
        never judged: C{ets_unavailable}, not a 403 blaming the browser.
        """
        self.server.secret = "0x4AAAAAAAthe-right-one"
        yield self.assertRefusal(
            self.verifier(OWN_SECRET).verify(TOKEN, None), "ets_unavailable"
        )

    @inlineCallbacks
    def test_hang_times_out(self) -> Generator[Deferred[Any], Any, None]:
        """
        A verifier that never answers is C{ets_unavailable} once the timeout
        (10 s by default) has passed on the injected clock, not before.
        """
        self.server.mode = HANG
        clock = Clock()
        d = self.verifier(clock=clock).verify(TOKEN, None)
        yield self.server.next_request()
        clock.advance(9.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        error = yield self.assertRefusal(d, "ets_unavailable")
        self.assertIn("timed out", error.message)
        # ETS hung up: the timeout does not leave the connection open.
        yield self.server.idle()

    @inlineCallbacks
    def test_stalled_body_times_out(self) -> Generator[Deferred[Any], Any, None]:
        """
        The timeout bounds reading the body too: status and headers arriving
        in time do not let a trickling answer hold the request open.
        """
        self.server.mode = STALL
        clock = Clock()
        d = self.verifier(clock=clock).verify(TOKEN, None)
        timers = len(clock.getDelayedCalls())
        yield self.server.next_request()
        # treq cancels its own timer once the headers have arrived; wait for
        # that, so the clock runs out while the body is being read.
        while len(clock.getDelayedCalls()) == timers:
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertNoResult(d)
        clock.advance(10)
        error = self.failureResultOf(d, ETSError).value
        self.assertEqual(error.code, "ets_unavailable")
        self.assertIn("timed out", error.message)
        # ETS hung up: the stalled connection is not left open.
        yield self.server.idle()

    @inlineCallbacks
    def test_hang_times_out_on_real_reactor(self) -> Generator[Deferred[Any], Any, None]:
        """
        With the real reactor and a short timeout, a hanging verifier is
        C{ets_unavailable} after that timeout.
        """
        self.server.mode = HANG
        start = reactor.seconds()
        yield self.assertRefusal(
            self.verifier(timeout=0.5).verify(TOKEN, None), "ets_unavailable"
        )
        self.assertGreaterEqual(reactor.seconds() - start, 0.4)


class StatusMappingTests(_LoopbackTestCase):
    """
    Which (status, body) answers are verdicts and which mean "no verdict".
    """

    def answer(self, status: int, body: object) -> Deferred[None]:
        self.server.canned = (
            status,
            body if isinstance(body, bytes) else json.dumps(body).encode(),
        )
        return self.verifier().verify(TOKEN, None)

    @inlineCallbacks
    def test_4xx_verdict_refuses(self) -> Generator[Deferred[Any], Any, None]:
        """
        A 400 whose body is a C{"success": false} verdict is C{ets_failed}:
        the token was judged.
        """
        yield self.assertRefusal(
            self.answer(400, {"success": False, "error-codes": ["invalid-input-response"]}),
            "ets_failed",
        )

    @inlineCallbacks
    def test_4xx_without_verdict(self) -> Generator[Deferred[Any], Any, None]:
        """
        A 404 JSON error page (a wrong C{ETS_VERIFY_URL}) is not a verdict:
        C{ets_unavailable}.
        """
        answer = self.answer(404, {"error": "not_found"})
        yield self.assertRefusal(answer, "ets_unavailable")

    @inlineCallbacks
    def test_success_with_error_status(self) -> Generator[Deferred[Any], Any, None]:
        """
        C{"success": true} with a non-2xx status (403, or a 302 which is
        not followed) never admits: C{ets_unavailable}.
        """
        yield self.assertRefusal(self.answer(403, {"success": True}), "ets_unavailable")
        yield self.assertRefusal(self.answer(302, {"success": True}), "ets_unavailable")

    @inlineCallbacks
    def test_5xx_verdict_is_unavailable(self) -> Generator[Deferred[Any], Any, None]:
        """
        A 5xx is the verifier failing, whatever its body says:
        C{ets_unavailable}.
        """
        yield self.assertRefusal(
            self.answer(503, {"success": False, "error-codes": ["invalid-input-response"]}),
            "ets_unavailable",
        )

    @inlineCallbacks
    def test_internal_error_is_unavailable(self) -> Generator[Deferred[Any], Any, None]:
        """
        A 200 verdict naming C{internal-error} did not judge the token:
        C{ets_unavailable}.
        """
        yield self.assertRefusal(
            self.answer(200, {"success": False, "error-codes": ["internal-error"]}),
            "ets_unavailable",
        )

    @inlineCallbacks
    def test_success_must_be_true(self) -> Generator[Deferred[Any], Any, None]:
        """
        Only the JSON value C{true} admits: C{"true"}, C{1} or a missing
        C{success} are C{ets_failed}.
        """
        for answer in ({"success": "true"}, {"success": 1}, {}):
            yield self.assertRefusal(self.answer(200, answer), "ets_failed")

    @inlineCallbacks
    def test_not_an_object(self) -> Generator[Deferred[Any], Any, None]:
        """
        JSON that is not an object (an array, C{true}), an empty body,
        invalid UTF-8, or nesting too deep to parse is C{ets_unavailable}.
        """
        for body in ([{"success": True}], True, b"", b"\xff\xfe{", b"[" * 60000):
            yield self.assertRefusal(self.answer(200, body), "ets_unavailable")

    @inlineCallbacks
    def test_oversized_answer(self) -> Generator[Deferred[Any], Any, None]:
        """
        An answer larger than L{MAX_ANSWER_BYTES} is not read to the end:
        C{ets_unavailable}.
        """
        body = {"success": True, "padding": "x" * MAX_ANSWER_BYTES}
        yield self.assertRefusal(self.answer(200, body), "ets_unavailable")

    @inlineCallbacks
    def test_only_code_like_error_codes_shown(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """
        Error codes reach the message only when they look like siteverify
        codes; markup, long strings and non-strings are dropped.
        """
        codes = ["invalid-input-response", "<script>x</script>", "y" * 200, 7]
        error = yield self.assertRefusal(
            self.answer(200, {"success": False, "error-codes": codes}), "ets_failed"
        )
        self.assertEqual(error.message, "challenge rejected (invalid-input-response)")


class SecrecyTests(_LoopbackTestCase):
    """
    The secret and the token stay out of errors and logs.
    """

    @inlineCallbacks
    def test_secret_and_token_never_leak(self) -> Generator[Deferred[Any], Any, None]:
        """
        Across refusals and failures (rejected, misconfigured, garbage,
        unreachable), neither the secret nor the token appears in the
        error or in any log event.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def refused(secret: str) -> Deferred[ETSError]:
            return self.assertFailure(self.verifier(secret).verify(TOKEN, None), ETSError)

        errors = []
        self.server.secret = "0x4AAAAAAAthe-right-one"
        errors.append((yield refused(OWN_SECRET)))
        self.server.secret = None
        errors.append((yield refused(FAIL_SECRET)))
        self.server.mode = GARBAGE
        errors.append((yield refused(OWN_SECRET)))
        yield self.server.shutdown()
        errors.append((yield refused(OWN_SECRET)))

        texts = [str(e) for e in errors] + [repr(e) for e in errors]
        texts += [formatEvent(event) for event in events] + [repr(e) for e in events]
        self.assertTrue(any("siteverify at" in text for text in texts))
        for text in texts:
            self.assertNotIn(OWN_SECRET, text)
            self.assertNotIn(TOKEN, text)


class StandInTests(_LoopbackTestCase):
    """
    The stand-in itself follows Turnstile where the daemon's tests rely on it.
    """

    @inlineCallbacks
    def test_retry_with_same_idempotency_key(self) -> Generator[Deferred[Any], Any, None]:
        """
        A good token may be checked again with the C{idempotency_key} of its
        first check (Turnstile's retry rule); with another key it is spent.
        """
        verdicts = []
        for key in ("key-1", "key-1", "key-2"):
            form = {"secret": OWN_SECRET, "response": TOKEN, "idempotency_key": key}
            response = yield self.http.post(self.url, data=form)
            answer = yield response.json()
            verdicts.append((answer["success"], answer["error-codes"]))
        self.assertEqual(
            verdicts, [(True, []), (True, []), (False, ["timeout-or-duplicate"])]
        )


class StubTreqTests(SynchronousTestCase):
    """
    The verifier works with L{treq.testing.StubTreq}, in memory.
    """

    def test_stub_treq(self) -> None:
        """
        Given a C{StubTreq} over the stand-in, a pass is admitted and a fail
        refused, with no sockets and no real time.
        """
        server = FakeSiteverify()
        stub = StubTreq(server)
        clock = Clock()

        def verifier(secret: str) -> ChallengeVerifier:
            return ChallengeVerifier(
                http=stub,
                reactor=clock,
                secret=secret,
                verify_url="https://challenges.example/siteverify",
                expected_hostname="localhost",
                expected_action=None,
            )

        d = verifier(PASS_SECRET).verify(TOKEN, "198.51.100.1")
        stub.flush()
        self.assertIsNone(self.successResultOf(d))

        d = verifier(FAIL_SECRET).verify(TOKEN, "198.51.100.1")
        stub.flush()
        self.assertEqual(self.failureResultOf(d, ETSError).value.code, "ets_failed")
        self.assertEqual(clock.getDelayedCalls(), [])
