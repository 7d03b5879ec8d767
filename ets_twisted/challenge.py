"""
The bot-challenge check at issuance: a siteverify client.

Cloudflare Turnstile, hCaptcha and reCAPTCHA all speak the same protocol: the
server POSTs a form (C{secret}, C{response}, C{remoteip}, and for Turnstile
C{idempotency_key}) and gets back a JSON object whose C{success} member is
the verdict. L{ChallengeVerifier} asks once per call and never retries: the
browser can solve a fresh challenge, and a token is single-use anyway.

How answers map to SPEC codes (it fails closed: only the first row admits):

  - HTTP 2xx, a JSON object, C{"success": true}, and C{hostname} /
    C{action} equal to the expected ones where those are configured:
    admitted.
  - HTTP 2xx or 4xx, a JSON object, C{success} anything but C{true}, or a
    hostname / action mismatch: C{ets_failed} (403), the token was judged
    and refused. A 4xx whose body is such a verdict counts as a verdict,
    since some verifiers answer a bad token with 400.
  - Unless the verdict names C{internal-error}, C{missing-input-secret} or
    C{invalid-input-secret}: then the token was never judged (the verifier
    broke, or ETS is misconfigured), so C{ets_unavailable} (503) rather
    than telling the browser its challenge was bad.
  - HTTP 5xx whatever the body, any other non-2xx without a
    C{"success": false} body (a 404 from a wrong C{ETS_VERIFY_URL}, a 429,
    a redirect, which is never followed), a body that is not a JSON object
    or larger than L{MAX_ANSWER_BYTES}, a refused or reset connection, or no
    complete answer within the timeout: C{ets_unavailable} (503).

The timeout bounds the whole exchange, connecting, sending, the status line
and reading the body, so a verifier that trickles its answer cannot hold a
request open.

The secret and the token never appear in an error message or a log line.
Verifier error codes appear in the message only when they look like
siteverify codes (short lowercase words such as C{timeout-or-duplicate}).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Protocol as _Interface
from urllib.parse import urlsplit, urlunsplit

import attr
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from ets_twisted.errors import ETSError

#: Turnstile's own limit on the length of a response token.
MAX_TOKEN_LENGTH = 2048

#: A siteverify answer is a few hundred bytes; anything much larger is not one.
MAX_ANSWER_BYTES = 64 * 1024

#: Verdict codes meaning the token was never judged: retrying later, or the
#: operator fixing the secret, could change the outcome.
_NOT_JUDGED = frozenset({"internal-error", "missing-input-secret", "invalid-input-secret"})

# What a siteverify error code looks like; anything else stays out of messages.
_CODE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")
_MAX_CODES_SHOWN = 5

_log = Logger()


class FormPoster(_Interface):
    """
    The part of treq's L{HTTPClient} (or L{treq.testing.StubTreq}) used here.
    """

    def post(self, url: str, data: Any = None, **kwargs: Any) -> Deferred[Any]:
        ...


class _AnswerTooLarge(Exception):
    """
    The verifier sent more than L{MAX_ANSWER_BYTES}.
    """


class _BodyReader(Protocol):
    """
    Collect a response body up to a size limit, and stop the transport when
    cancelled so a stalled body does not keep the connection open.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.finished: Deferred[bytes] | None = Deferred(self._cancel)

    def _cancel(self, d: Deferred[bytes]) -> None:
        self.finished = None
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.finished is None:
            return
        self._size += len(data)
        if self._size > self._limit:
            d, self.finished = self.finished, None
            self.transport.stopProducing()
            d.errback(_AnswerTooLarge())
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished is None:
            return
        d, self.finished = self.finished, None
        # PotentialDataLoss: no length was declared and the server closed;
        # a truncated answer then fails to parse as JSON.
        if reason.check(ResponseDone, PotentialDataLoss):
            d.callback(b"".join(self._chunks))
        else:
            d.errback(reason)


def _read_body(response: IResponse) -> Deferred[tuple[int, bytes]]:
    if response.length == 0:
        return succeed((response.code, b""))
    reader = _BodyReader(MAX_ANSWER_BYTES)
    finished = reader.finished
    assert finished is not None
    response.deliverBody(reader)
    return finished.addCallback(lambda body: (response.code, body))


def _cancelled(failure: Failure) -> bool:
    """
    Whether C{failure} is the timeout cancelling the exchange; Twisted's
    client wraps the cancellation when it happens mid-request.
    """
    if failure.check(TimeoutError, CancelledError):
        return True
    if failure.check(ResponseNeverReceived, ResponseFailed):
        return any(r.check(CancelledError) for r in failure.value.reasons)
    return False


def _loggable(url: str) -> str:
    """
    C{url} without user information, query or fragment, where an operator
    might have put credentials.
    """
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _shown_codes(answer: dict[str, Any]) -> list[str]:
    codes = answer.get("error-codes")
    if not isinstance(codes, list):
        return []
    return [c for c in codes if isinstance(c, str) and _CODE.match(c)][:_MAX_CODES_SHOWN]


def _refusal(what: str, codes: list[str]) -> ETSError:
    if codes:
        what = f"{what} ({', '.join(codes)})"
    return ETSError("ets_failed", what)


def _unavailable(what: str) -> ETSError:
    return ETSError("ets_unavailable", what)


@attr.s(frozen=True, auto_attribs=True)
class ChallengeVerifier:
    """
    Check a bot-challenge response token with a siteverify endpoint.

    @ivar http: a treq client (L{treq.client.HTTPClient} or
        L{treq.testing.StubTreq}); called as C{post(url, data=, timeout=,
        reactor=, allow_redirects=False, unbuffered=True)}.
    @ivar reactor: the clock for the timeout.
    @ivar secret: the siteverify secret; kept out of C{repr}.
    @ivar verify_url: the siteverify endpoint.
    @ivar expected_hostname: when set (non-empty), the answer's C{hostname}
        must equal it (ignoring case, as DNS does).
    @ivar expected_action: when set (non-empty), the answer's C{action} must
        equal it exactly.
    @ivar timeout: seconds allowed for the whole exchange.
    """

    http: FormPoster
    reactor: IReactorTime
    secret: str = attr.ib(repr=False)
    verify_url: str
    expected_hostname: str | None
    expected_action: str | None
    timeout: float = 10.0

    def verify(self, response_token: object, remote_ip: str | None) -> Deferred[None]:
        """
        Ask the verifier about one response token.

        @param response_token: the C{etsToken} member of the request, as sent.
        @param remote_ip: the client's address, passed on as C{remoteip}.
        @return: fires with L{None} when admitted; fails with L{ETSError}
            C{ets_failed} or C{ets_unavailable} (see the module docstring).
        """
        if not isinstance(response_token, str) or not response_token:
            return fail(ETSError("ets_failed", "challenge token missing"))
        if len(response_token) > MAX_TOKEN_LENGTH:
            return fail(ETSError("ets_failed", "challenge token too long"))

        form = {
            "secret": self.secret,
            "response": response_token,
            # Turnstile de-duplicates retries by this key; a fresh one per
            # call, as each call is a new verification.
            "idempotency_key": str(uuid.uuid4()),
        }
        if remote_ip:
            form["remoteip"] = remote_ip

        try:
            d = self.http.post(
                self.verify_url,
                data=form,
                # treq's own timeout covers the wait for the status line;
                # addTimeout below covers the body as well.
                timeout=self.timeout,
                reactor=self.reactor,
                # A redirect is not a verdict, and following one could carry
                # the form elsewhere.
                allow_redirects=False,
                unbuffered=True,
            )
        except Exception:
            d = fail()
        d.addCallback(_read_body)
        d.addTimeout(self.timeout, self.reactor)
        d.addCallbacks(self._judge, self._unreachable)
        return d

    def _unreachable(self, failure: Failure) -> Failure:
        if _cancelled(failure):
            _log.warn(
                "siteverify at {url} gave no answer within {timeout} s",
                url=_loggable(self.verify_url),
                timeout=self.timeout,
            )
            return Failure(_unavailable("challenge verifier timed out"))
        # Only the exception's type and text: the form (secret, token) is
        # never part of a treq or Twisted connection error.
        _log.warn(
            "siteverify at {url} unreachable: {reason}",
            url=_loggable(self.verify_url),
            reason=f"{failure.type.__name__}: {failure.getErrorMessage()}",
        )
        return Failure(_unavailable("challenge verifier unreachable"))

    def _judge(self, status_and_body: tuple[int, bytes]) -> None:
        status, body = status_and_body
        if status >= 500:
            raise self._broken(f"HTTP {status}")
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):
            # RecursionError: deeply nested arrays fit in MAX_ANSWER_BYTES.
            answer = None
        if not isinstance(answer, dict):
            raise self._broken(f"HTTP {status}, not a JSON object")

        success = answer.get("success")
        if not 200 <= status < 300 and success is not False:
            # A 404 or 429 page, a redirect, or a "success" that came with an
            # error status: no trustworthy verdict either way.
            raise self._broken(f"HTTP {status} without a verdict")

        codes = _shown_codes(answer)
        if success is not True:
            if _NOT_JUDGED.intersection(codes):
                raise self._broken(f"could not judge ({', '.join(codes)})")
            raise _refusal("challenge rejected", codes)

        if self.expected_hostname:
            hostname = answer.get("hostname")
            if (
                not isinstance(hostname, str)
                or hostname.lower() != self.expected_hostname.lower()
            ):
                raise _refusal("challenge solved for another hostname", [])
        if self.expected_action:
            if answer.get("action") != self.expected_action:
                raise _refusal("challenge solved for another action", [])

    def _broken(self, what: str) -> ETSError:
        _log.warn(
            "siteverify at {url} answered badly: {what}",
            url=_loggable(self.verify_url),
            what=what,
        )
        return _unavailable(f"challenge verifier answered badly: {what}")
