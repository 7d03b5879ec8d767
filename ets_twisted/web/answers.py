"""
Writing answers: JSON bodies, SPEC errors and asynchronous rendering.

One place turns an L{ETSError} into its status, JSON body and
C{WWW-Authenticate}, so every route refuses the same way.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from .. import observe
from ..errors import ETSError
from ..stores import StoreUnavailable
from . import headers
from .headers import set_header

log = Logger()


def write_json(request: Request, status: int, body: dict[str, Any]) -> bytes:
    """
    Set the status and JSON headers of C{request} and return the body to
    write (C{render} returns it, or the caller writes it). An C{error}
    member is counted and logged as the answer's error code.
    """
    if "error" in body:
        observe.note_error(request, str(body["error"]))
    return write_json_bytes(request, status, json.dumps(body, separators=(",", ":")).encode("utf-8"))


def write_json_bytes(request: Request, status: int, data: bytes) -> bytes:
    """L{write_json} of a body already encoded."""
    request.setResponseCode(status)
    set_header(request, headers.CONTENT_TYPE, b"application/json")
    set_header(request, headers.CONTENT_LENGTH, b"%d" % (len(data),))
    return body_for(request, data)


def body_for(request: Request, data: bytes) -> bytes:
    """
    C{data}, or nothing for a HEAD request: its headers describe the body
    it does not get (twisted.web would otherwise warn, printing the whole
    resource tree into the log).
    """
    return b"" if request.method == b"HEAD" else data


def error_body(request: Request, error: ETSError, algs: str) -> bytes:
    """
    Prepare the answer for C{error}: status, headers (C{WWW-Authenticate} on
    401s, C{Cache-Control: no-store}) and the JSON body to write.

    @param algs: the C{algs} attribute of C{WWW-Authenticate}, e.g. C{ES256}.
    """
    for name, value in error.headers.items():
        request.setHeader(name, value)
    if error.status == 401:
        challenge = f'DPoP algs="{algs}"'
        if error.auth_error is not None:
            challenge = f'DPoP error="{error.auth_error}", algs="{algs}"'
        request.setHeader(b"www-authenticate", challenge.encode("ascii"))
    # Error answers depend on credentials and time: no cache may keep them.
    request.setHeader(b"cache-control", b"no-store")
    body: dict[str, Any] = {"error": error.code}
    if error.message:
        body["message"] = error.message
    return write_json(request, error.status, body)


def finish(request: Request, data: bytes) -> None:
    """Write C{data} and finish, unless the client has already gone."""
    if request.finished or request._disconnected:
        return
    request.write(data)
    request.finish()


def render_async(
    request: Request, work: Callable[[], Awaitable[bytes | None]], algs: str
) -> object:
    """
    Run C{work} (a coroutine function answering with the body bytes to
    write, or None when it wrote and finished the answer itself) and return
    C{NOT_DONE_YET}. An L{ETSError} becomes its SPEC answer; a store outage
    becomes C{503 store_unavailable}; anything unexpected is logged and
    answered 500 without a traceback reaching the client. A client that goes
    away cancels the work.
    """

    def answered(data: bytes | None) -> None:
        if data is not None:
            finish(request, data)

    def refused(failure: Failure) -> None:
        if failure.check(CancelledError) and request._disconnected:
            return
        if failure.check(ETSError):
            finish(request, error_body(request, failure.value, algs))
        elif failure.check(StoreUnavailable):
            observe.metrics_of(request).store_errors.inc()
            finish(request, error_body(request, ETSError("store_unavailable"), algs))
        else:
            log.failure("Unexpected failure answering a request", failure)
            if not request.startedWriting:
                finish(request, write_json(request, 500, {"error": "internal_error"}))
            elif not request.finished:
                request.loseConnection()

    coroutine = work()
    try:
        # Most answers need no waiting (the memory store answers at once):
        # the coroutine runs right here, and Deferred's machinery (about a
        # tenth of a cheap request) only takes over when it does wait.
        coroutine.send(None)
    except StopIteration as done:
        answered(done.value)
        return NOT_DONE_YET
    except Exception:
        refused(Failure())
        return NOT_DONE_YET
    # It waits for a Deferred (a Redis store, the challenge's siteverify):
    # resumed with None, the coroutine looks at that Deferred again and
    # waits on until it fires.
    d = Deferred.fromCoroutine(coroutine)
    d.addCallbacks(answered, refused)
    request.notifyFinish().addErrback(lambda _: d.cancel())
    return NOT_DONE_YET
