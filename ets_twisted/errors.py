"""
The SPEC's error codes, as one exception type.

Every refusal in ETS is an L{ETSError} carrying its SPEC code; the web layer
turns it into the JSON answer, the status and C{WWW-Authenticate} in one
place (L{ets_twisted.web.answers}).
"""

from __future__ import annotations

#: SPEC code -> HTTP status.
STATUS: dict[str, int] = {
    "invalid_json": 400,
    "unsupported_jwk": 400,
    "invalid_jwk": 400,
    "origin_not_allowed": 403,
    "ets_failed": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "rate_limited": 429,
    "missing_bearer": 401,
    "invalid_token": 401,
    "bad_claims": 401,
    "missing_dpop": 401,
    "bad_dpop": 401,
    "bad_dpop_header": 401,
    "bad_dpop_key": 401,
    "bad_dpop_sig": 401,
    "cnf_mismatch": 401,
    "htm_mismatch": 401,
    "htu_mismatch": 401,
    "missing_dpop_jti": 401,
    "missing_dpop_iat": 401,
    "dpop_iat_in_future": 401,
    "dpop_iat_too_old": 401,
    "ath_mismatch": 401,
    "use_dpop_nonce": 401,
    "replay": 401,
    "upstream_error": 502,
    "ets_unavailable": 503,
    "store_unavailable": 503,
    "upstream_timeout": 504,
}

# The RFC 6750 / RFC 9449 error attribute of WWW-Authenticate for each 401.
# missing_bearer has none: no credentials were sent (RFC 6750 section 3.1).
_TOKEN_ERRORS = frozenset({"invalid_token", "bad_claims"})


class ETSError(Exception):
    """
    A refusal with its SPEC code.

    @ivar code: the SPEC error code, a key of L{STATUS}.
    @ivar message: an optional human-readable explanation; never holds a
        secret, a token or a proof.
    @ivar headers: extra answer headers (C{Retry-After}, C{DPoP-Nonce}, ...).
    """

    def __init__(
        self, code: str, message: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        if code not in STATUS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(code if message is None else f"{code}: {message}")
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    @property
    def status(self) -> int:
        return STATUS[self.code]

    @property
    def auth_error(self) -> str | None:
        """
        The C{error} attribute of C{WWW-Authenticate} for a 401, or L{None}
        when the answer is not a 401 or no credentials were sent.
        """
        if self.status != 401 or self.code == "missing_bearer":
            return None
        if self.code in _TOKEN_ERRORS:
            return "invalid_token"
        if self.code == "use_dpop_nonce":
            return "use_dpop_nonce"
        return "invalid_dpop_proof"
