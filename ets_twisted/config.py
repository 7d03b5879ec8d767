"""
ETS configuration: one frozen L{Config} built from the environment and the
C{twistd ets} options.

Every variable of the SPEC's configuration table is listed, in the SPEC's
order, in L{VARIABLES}; the twistd C{Options} class generates its
C{optParameters} from that list. L{load} reads each variable (an option
wins over the environment; empty or blank values count as unset),
validates it, collects every problem and raises one L{ConfigError} that
names each bad variable on its own line. A secret's value never appears in
a problem, in C{repr(config)} or in L{redacted}.

Decisions the SPEC leaves open (to be carried into the docs):

  - Origins, the upstream and the public base URL are normalised the way a
    browser serialises an origin: scheme and host lower-cased, a default
    port (C{:80} for http, C{:443} for https) dropped. The allowlist is then
    compared as exact strings with the C{Origin} header.
  - C{PUBLIC_BASE_URL} is C{scheme://host[:port]} with an optional path
    prefix (for a proxy that mounts ETS below a path); a trailing slash is
    dropped; a query or fragment is refused.
  - C{STORE_URL} is C{memory:} or C{redis[s]://[[user]:password@]host[:port][/db]};
    a query string is refused. It may carry a password, so it is treated as
    a secret: problems never quote it and the password is hidden in reprs.
  - Development mode: when C{ORIGIN_ALLOWLIST}, C{TVM_JWT_HS256_KEY} and
    C{UPSTREAM_BASE_URL} are all unset, L{load} returns a config with
    C{dev_mode=True} and a random in-memory signing key. Setting only some
    of them is an error, so a production configuration never slips into
    development mode. Development mode with C{WORKERS} > 1 is refused: each
    worker would draw its own random key.
  - C{ALLOWED_METHODS} refuses C{CONNECT} (it cannot be relayed) and
    C{TRACE} (it echoes the request, a classic cross-site tracing aid).
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Callable, Mapping, TypeVar
from urllib.parse import SplitResult, urlsplit

import attr

T = TypeVar("T")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Variable:
    """
    One configuration variable.

    @ivar env: the environment variable name, e.g. C{LISTEN_ADDR}.
    @ivar option: the C{twistd ets} option name, e.g. C{listen-addr}.
    @ivar help: one line for C{--help}.
    @ivar secret: whether the value is a secret: never quoted in a problem,
        never shown in a repr.
    """

    env: str
    option: str
    help: str
    secret: bool = False


def _var(env: str, help: str, secret: bool = False) -> Variable:
    return Variable(env=env, option=env.lower().replace("_", "-"), help=help, secret=secret)


#: Every SPEC configuration variable, in the SPEC's order.
VARIABLES: tuple[Variable, ...] = (
    _var("LISTEN_ADDR", "host:port, :port or a Twisted endpoint string [default: :8080]"),
    _var("ORIGIN_ALLOWLIST", "comma-separated exact origins (scheme://host[:port]) [required]"),
    _var(
        "TVM_JWT_HS256_KEY",
        "token signing key, >= 32 bytes; comma-separated to rotate (first signs) [required]",
        secret=True,
    ),
    _var("UPSTREAM_BASE_URL", "upstream origin, scheme://host[:port], no path [required]"),
    _var(
        "UPSTREAM_SERVICE_SECRET", "upstream secret, sent as the key query parameter", secret=True
    ),
    _var("REQUIRE_ETS", "verify the bot-challenge token at issuance [default: false]"),
    _var("ETS_SECRET_KEY", "siteverify secret [required with REQUIRE_ETS]", secret=True),
    _var("ETS_VERIFY_URL", "siteverify endpoint [default: Cloudflare Turnstile]"),
    _var("ETS_EXPECTED_HOSTNAME", "hostname the siteverify answer must name"),
    _var("ETS_EXPECTED_ACTION", "action the siteverify answer must name"),
    _var("TOKEN_LIFETIME_SECONDS", "access-token lifetime [default: 300]"),
    _var("TOKEN_ISSUER", "iss claim of access tokens [default: ets]"),
    _var("RATE_LIMIT_PER_MINUTE", "sustained requests per minute per key [default: 60]"),
    _var("RATE_LIMIT_BURST", "rate-limit bucket size [default: the per-minute rate]"),
    _var("UPSTREAM_TIMEOUT_SECONDS", "wait for upstream headers and between chunks [default: 40]"),
    _var("API_PATH", "public path prefix relayed upstream [default: /api]"),
    _var("ALLOWED_METHODS", "comma-separated methods relayed [default: GET,POST]"),
    _var("MAX_BODY_BYTES", "request-body cap under API_PATH [default: 10485760]"),
    _var("PUBLIC_BASE_URL", "browser-visible base URL of ETS, for htu checks"),
    _var("TRUSTED_PROXIES", "comma-separated CIDRs of trusted reverse proxies"),
    _var("DPOP_ALGS", "comma-separated DPoP proof algorithms [default: ES256]"),
    _var("DPOP_MAX_AGE_SECONDS", "oldest acceptable proof iat [default: 300]"),
    _var("DPOP_CLOCK_SKEW_SECONDS", "how far in the future a proof iat may be [default: 5]"),
    _var("REQUIRE_ATH", "demand the ath claim in proofs [default: false]"),
    _var("REQUIRE_DPOP_NONCE", "demand server-issued DPoP nonces [default: false]"),
    _var(
        "STORE_URL",
        "memory: or redis[s]://[:password@]host[:port][/db] [default: memory:]",
        secret=True,
    ),
    _var("STORE_KEY_PREFIX", "namespace of every Redis key [default: ets:]"),
    _var("WORKERS", "processes sharing the listening socket [default: 1]"),
    _var("SHUTDOWN_GRACE_SECONDS", "time in-flight relays get after SIGTERM [default: 10]"),
    _var("METRICS_LISTEN_ADDR", "listener for Prometheus /metrics (same forms as LISTEN_ADDR)"),
    _var("LOG_FORMAT", "text or json [default: text]"),
)

_BY_ENV = {v.env: v for v in VARIABLES}

#: The three variables whose absence, all together, selects development mode.
_PRODUCTION_TRIO = ("ORIGIN_ALLOWLIST", "TVM_JWT_HS256_KEY", "UPSTREAM_BASE_URL")

DEFAULT_ETS_VERIFY_URL = "https://challenges.cloudflare.com/turnstile/v0/siteverify"
DPOP_ALGORITHMS = ("ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256")
# Paths ETS answers itself; API_PATH must not shadow or sit below them.
_RESERVED_PATHS = ("/tvm", "/health", "/ready", "/sdk", "/demo")
_MIN_KEY_BYTES = 32


class ConfigError(Exception):
    """
    The configuration is unusable.

    @ivar problems: one line per problem, C{VARIABLE_NAME: what is wrong};
        never holds a secret's value.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def _hidden(value: str | None) -> str:
    return "None" if value is None else "'<redacted>'"


def _hidden_keys(keys: tuple[bytes, ...]) -> str:
    return f"<{len(keys)} redacted key{'s' if len(keys) != 1 else ''}>"


def _hidden_store_url(url: str) -> str:
    return repr(redact_url(url))


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class Config:
    """
    The validated configuration; see the SPEC's configuration table.

    Built by L{load}. Defaults are the SPEC's, so tests may also build one
    directly (no validation then). C{repr} hides every secret.
    """

    listen_addr: str = "tcp:8080:backlog=1024"
    origin_allowlist: tuple[str, ...]
    jwt_keys: tuple[bytes, ...] = attr.ib(repr=_hidden_keys)
    upstream_base_url: str
    upstream_service_secret: str | None = attr.ib(default=None, repr=_hidden)
    require_ets: bool = False
    ets_secret_key: str | None = attr.ib(default=None, repr=_hidden)
    ets_verify_url: str = DEFAULT_ETS_VERIFY_URL
    ets_expected_hostname: str | None = None
    ets_expected_action: str | None = None
    token_lifetime_seconds: int = 300
    token_issuer: str = "ets"
    rate_limit_per_minute: int = 60
    rate_limit_burst: int = 60
    upstream_timeout_seconds: float = 40.0
    api_path: str = "/api"
    allowed_methods: tuple[str, ...] = ("GET", "POST")
    max_body_bytes: int = 10485760
    public_base_url: str | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    dpop_algs: tuple[str, ...] = ("ES256",)
    dpop_max_age_seconds: int = 300
    dpop_clock_skew_seconds: int = 5
    require_ath: bool = False
    require_dpop_nonce: bool = False
    store_url: str = attr.ib(default="memory:", repr=_hidden_store_url)
    store_key_prefix: str = "ets:"
    workers: int = 1
    shutdown_grace_seconds: float = 10.0
    metrics_listen_addr: str | None = None
    log_format: str = "text"
    dev_mode: bool = False


def redacted(config: Config) -> dict[str, object]:
    """
    The configuration as a plain dict fit for a log line: secrets replaced
    by C{"<redacted>"}, the store password hidden, networks as strings.
    """
    out: dict[str, object] = attr.asdict(config, recurse=False)
    out["jwt_keys"] = _hidden_keys(config.jwt_keys)
    for name in ("upstream_service_secret", "ets_secret_key"):
        if out[name] is not None:
            out[name] = "<redacted>"
    out["store_url"] = redact_url(config.store_url)
    out["trusted_proxies"] = [str(n) for n in config.trusted_proxies]
    return out


def redact_url(url: str) -> str:
    """
    C{url} with the password of its user information replaced by C{***}.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<redacted>"
    if password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hostport}").geturl()


# ---------------------------------------------------------------------------
# Reading


def load(env: Mapping[str, str], options: Mapping[str, str | None] | None = None) -> Config:
    """
    Build the L{Config} from C{env} and C{options}.

    @param env: the environment, keyed by variable name (C{os.environ}).
    @param options: the C{twistd ets} options, keyed by B{option} name
        (C{"listen-addr"}), exactly as a C{twisted.python.usage.Options}
        instance holds them; keys that are not ETS options are ignored. A
        value here wins over the environment.

    Empty or blank values, in either source, count as unset.

    @raise ConfigError: listing every problem found, one per line.
    """
    r = _Reader(env, options or {})

    present = [name for name in _PRODUCTION_TRIO if r.raw(name) is not None]
    dev_mode = not present
    if present and len(present) < len(_PRODUCTION_TRIO):
        set_ = " and ".join(present)
        verb = "is" if len(present) == 1 else "are"
        for name in _PRODUCTION_TRIO:
            if name not in present:
                r.problem(
                    name,
                    f"required ({set_} {verb} set; set all three, or none for development mode)",
                )

    listen_addr = r.get("LISTEN_ADDR", endpoint_string, endpoint_string(":8080"))
    origin_allowlist = r.get("ORIGIN_ALLOWLIST", _origin_allowlist, ())
    if dev_mode:
        # Random and in memory only: tokens die with the process, which is
        # what a developer's laptop wants and a deployment must not get.
        jwt_keys: tuple[bytes, ...] = (os.urandom(_MIN_KEY_BYTES),)
    else:
        jwt_keys = r.get("TVM_JWT_HS256_KEY", _jwt_keys, ())
    upstream_base_url = r.get("UPSTREAM_BASE_URL", _upstream_base_url, "")
    upstream_service_secret = r.get("UPSTREAM_SERVICE_SECRET", _secret_text, None)
    require_ets = r.get("REQUIRE_ETS", _boolean, False)
    ets_secret_key = r.get("ETS_SECRET_KEY", _secret_text, None)
    if require_ets and ets_secret_key is None and "ETS_SECRET_KEY" not in r.failed:
        r.problem("ETS_SECRET_KEY", "required when REQUIRE_ETS is true")
    ets_verify_url = r.get("ETS_VERIFY_URL", _verify_url, DEFAULT_ETS_VERIFY_URL)
    ets_expected_hostname = r.get("ETS_EXPECTED_HOSTNAME", _expected_hostname, None)
    ets_expected_action = r.get("ETS_EXPECTED_ACTION", _expected_action, None)
    token_lifetime_seconds = r.get("TOKEN_LIFETIME_SECONDS", _integer(1, 86400), 300)
    token_issuer = r.get("TOKEN_ISSUER", _issuer, "ets")
    rate_limit_per_minute = r.get("RATE_LIMIT_PER_MINUTE", _integer(1, 1_000_000), 60)
    rate_limit_burst = r.get("RATE_LIMIT_BURST", _integer(1, 1_000_000), rate_limit_per_minute)
    upstream_timeout_seconds = r.get(
        "UPSTREAM_TIMEOUT_SECONDS", _seconds(3600.0, zero_ok=False), 40.0
    )
    api_path = r.get("API_PATH", _api_path, "/api")
    allowed_methods = r.get("ALLOWED_METHODS", _methods, ("GET", "POST"))
    max_body_bytes = r.get("MAX_BODY_BYTES", _integer(0, 2**40), 10485760)
    public_base_url = r.get("PUBLIC_BASE_URL", _public_base_url, None)
    trusted_proxies = r.get("TRUSTED_PROXIES", _networks, ())
    dpop_algs = r.get("DPOP_ALGS", _dpop_algs, ("ES256",))
    dpop_max_age_seconds = r.get("DPOP_MAX_AGE_SECONDS", _integer(1, 86400), 300)
    dpop_clock_skew_seconds = r.get("DPOP_CLOCK_SKEW_SECONDS", _integer(0, 3600), 5)
    require_ath = r.get("REQUIRE_ATH", _boolean, False)
    require_dpop_nonce = r.get("REQUIRE_DPOP_NONCE", _boolean, False)
    store_url = r.get("STORE_URL", _store_url, "memory:")
    store_key_prefix = r.get("STORE_KEY_PREFIX", _key_prefix, "ets:")
    workers = r.get("WORKERS", _integer(1, 256), 1)
    if workers > 1 and store_url == "memory:" and "STORE_URL" not in r.failed:
        r.problem(
            "WORKERS",
            "more than 1 worker needs a shared STORE_URL (redis://…): "
            "per-process replay caches would accept a proof once per worker",
        )
    if workers > 1 and dev_mode:
        r.problem(
            "WORKERS",
            "more than 1 worker needs TVM_JWT_HS256_KEY set: in development mode "
            "each worker would sign with its own random key",
        )
    shutdown_grace_seconds = r.get("SHUTDOWN_GRACE_SECONDS", _seconds(3600.0, zero_ok=True), 10.0)
    metrics_listen_addr = r.get("METRICS_LISTEN_ADDR", endpoint_string, None)
    if (
        metrics_listen_addr is not None
        and metrics_listen_addr == listen_addr
        # Two listeners on port 0 each get their own random port.
        and not re.match(r"tcp6?:0+(:|$)", listen_addr)
    ):
        r.problem("METRICS_LISTEN_ADDR", "must differ from LISTEN_ADDR")
    log_format = r.get("LOG_FORMAT", _log_format, "text")
    if workers > 1:
        # Workers adopt the master's plain socket (tcp, tcp6, unix); TLS
        # and systemd sockets stay with one process or a proxy in front.
        if listen_addr.split(":", 1)[0] in ("ssl", "systemd") and "LISTEN_ADDR" not in r.failed:
            r.problem(
                "WORKERS",
                "more than 1 worker needs a tcp, tcp6 or unix LISTEN_ADDR (ssl: and systemd: "
                "work with 1 worker; terminate TLS in a proxy in front of the workers)",
            )
        if metrics_listen_addr is not None:
            # Each worker counts its own requests: one scrape address would
            # answer from a different worker each time.
            r.problem(
                "METRICS_LISTEN_ADDR",
                "not available with WORKERS > 1 (each worker counts only its own requests); "
                "run single-process replicas, each with its own metrics address, to scrape them",
            )

    if r.problems:
        raise ConfigError(r.problems)
    return Config(
        listen_addr=listen_addr,
        origin_allowlist=origin_allowlist,
        jwt_keys=jwt_keys,
        upstream_base_url=upstream_base_url,
        upstream_service_secret=upstream_service_secret,
        require_ets=require_ets,
        ets_secret_key=ets_secret_key,
        ets_verify_url=ets_verify_url,
        ets_expected_hostname=ets_expected_hostname,
        ets_expected_action=ets_expected_action,
        token_lifetime_seconds=token_lifetime_seconds,
        token_issuer=token_issuer,
        rate_limit_per_minute=rate_limit_per_minute,
        rate_limit_burst=rate_limit_burst,
        upstream_timeout_seconds=upstream_timeout_seconds,
        api_path=api_path,
        allowed_methods=allowed_methods,
        max_body_bytes=max_body_bytes,
        public_base_url=public_base_url,
        trusted_proxies=trusted_proxies,
        dpop_algs=dpop_algs,
        dpop_max_age_seconds=dpop_max_age_seconds,
        dpop_clock_skew_seconds=dpop_clock_skew_seconds,
        require_ath=require_ath,
        require_dpop_nonce=require_dpop_nonce,
        store_url=store_url,
        store_key_prefix=store_key_prefix,
        workers=workers,
        shutdown_grace_seconds=shutdown_grace_seconds,
        metrics_listen_addr=metrics_listen_addr,
        log_format=log_format,
        dev_mode=dev_mode,
    )


class _Reader:
    """
    Looks variables up (option first, then environment) and collects
    problems.
    """

    def __init__(self, env: Mapping[str, str], options: Mapping[str, str | None]) -> None:
        self._env = env
        self._options = options
        self.problems: list[str] = []
        self.failed: set[str] = set()

    def raw(self, name: str) -> str | None:
        variable = _BY_ENV[name]
        for value in (self._options.get(variable.option), self._env.get(name)):
            if value is not None and value.strip():
                return value.strip()
        return None

    def problem(self, name: str, what: str) -> None:
        self.failed.add(name)
        self.problems.append(f"{name}: {what}")

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        text = self.raw(name)
        if text is None:
            return default
        try:
            return parse(text)
        except ValueError as e:
            what = str(e)
            if _BY_ENV[name].secret and _leaks(what, text):
                # Belt and braces: a parser (or a library it calls) quoted
                # the value of a secret.
                what = "is not valid"
            self.problem(name, what)
            return default


def _leaks(message: str, value: str) -> bool:
    pieces = [value] + [p.strip() for p in value.split(",")]
    return any(len(p) >= 4 and p in message for p in pieces)


def _shown(text: str) -> str:
    """
    A non-secret value, quoted and cut short, for a problem line.
    """
    if len(text) > 40:
        text = text[:37] + "..."
    return repr(text)


def _items(text: str) -> list[str]:
    # Blank items are skipped so that "a,b," from a template still works.
    return [item.strip() for item in text.split(",") if item.strip()]


def _dedupe(items: list[T]) -> tuple[T, ...]:
    return tuple(dict.fromkeys(items))


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


# ---------------------------------------------------------------------------
# Scalars


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"must be true or false (or 1/0, yes/no, on/off), not {_shown(text)}")


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"[0-9]{1,15}", text) or not low <= int(text) <= high:
            raise ValueError(f"must be a whole number from {low} to {high}, not {_shown(text)}")
        return int(text)

    return parse


def _seconds(high: float, zero_ok: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        low = "0" if zero_ok else "more than 0"
        # A plain decimal: float() would also take "nan", "inf" and "1e9".
        if re.fullmatch(r"[0-9]{1,10}(\.[0-9]{1,9})?", text):
            value = float(text)
            if (value > 0 or zero_ok) and value <= high:
                return value
        raise ValueError(f"must be a number of seconds from {low} to {high:g}, not {_shown(text)}")

    return parse


def _secret_text(text: str) -> str:
    if _CONTROL.search(text):
        raise ValueError("must not contain control characters")
    return text


def _issuer(text: str) -> str:
    if _CONTROL.search(text) or len(text) > 256:
        raise ValueError(f"must be at most 256 printable characters, not {_shown(text)}")
    return text


def _word(limit: int) -> Callable[[str], str]:
    """A parser of at most C{limit} characters without spaces or control characters."""

    def parse(text: str) -> str:
        if _SPACE_OR_CONTROL.search(text) or len(text) > limit:
            raise ValueError(
                f"must be at most {limit} characters without spaces or control characters, "
                f"not {_shown(text)}"
            )
        return text

    return parse


_expected_action = _word(100)
_key_prefix = _word(64)


def _log_format(text: str) -> str:
    lowered = text.lower()
    if lowered not in ("text", "json"):
        raise ValueError(f"must be text or json, not {_shown(text)}")
    return lowered


# ---------------------------------------------------------------------------
# Keys


def _jwt_keys(text: str) -> tuple[bytes, ...]:
    keys = []
    for item in _items(text):
        try:
            key = item.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid UTF-8 (each key of the list)") from None
        if len(key) < _MIN_KEY_BYTES:
            raise ValueError(
                f"must be at least {_MIN_KEY_BYTES} bytes (each key of the list)"
            )
        keys.append(key)
    if not keys:
        raise ValueError("must list at least one key")
    return _dedupe(keys)


# ---------------------------------------------------------------------------
# Hosts and URLs


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\.?\Z")


def _host(host: str) -> str:
    """
    Validate a lower-cased host from a URL and return it as written in a
    URL (IPv6 in brackets).
    """
    if ":" in host:
        try:
            return f"[{ipaddress.IPv6Address(host)}]"
        except ValueError:
            raise ValueError(f"has an invalid IPv6 address {_shown(host)}") from None
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(f"has an invalid IPv4 address {_shown(host)}") from None
    if not _HOSTNAME.match(host):
        raise ValueError(f"has an invalid host name {_shown(host)} (use punycode for IDNs)")
    return host


def _split_http_url(text: str, what: str) -> tuple[str, SplitResult]:
    """
    Split an http(s) URL and return its normalised origin
    (C{scheme://host[:port]}, lower case, no default port) and its parts.

    @param what: how to describe the expected form in a problem.
    """
    if _SPACE_OR_CONTROL.search(text) or not text.isascii():
        raise ValueError(f"must be {what} without spaces or non-ASCII characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"must be {what}, not {_shown(text)}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be {what} (http or https), not {_shown(text)}")
    if "@" in parts.netloc:
        raise ValueError("must not contain user information (user:password@)")
    if not parts.hostname:
        raise ValueError(f"has no host: {_shown(text)}")
    host = _host(parts.hostname)
    if port == 0:
        raise ValueError(f"has an invalid port: {_shown(text)}")
    default_port = 443 if scheme == "https" else 80
    origin = f"{scheme}://{host}" + ("" if port in (None, default_port) else f":{port}")
    return origin, parts


def _no_query(text: str) -> None:
    if "?" in text or "#" in text:
        raise ValueError(f"must not have a query or fragment: {_shown(text)}")


def _origin(text: str) -> str:
    if text == "*" or text.lower() == "null":
        raise ValueError(f"{_shown(text)} is not allowed: list exact origins")
    origin, parts = _split_http_url(text, "scheme://host[:port]")
    _no_query(text)
    if parts.path:
        raise ValueError(
            f"{_shown(text)} must be an origin without path or trailing slash ({origin})"
        )
    return origin


def _origin_allowlist(text: str) -> tuple[str, ...]:
    origins = [_origin(item) for item in _items(text)]
    if not origins:
        raise ValueError("must list at least one origin")
    return _dedupe(origins)


def _upstream_base_url(text: str) -> str:
    origin, parts = _split_http_url(text, "scheme://host[:port]")
    _no_query(text)
    if parts.path not in ("", "/"):
        raise ValueError(
            f"must be an origin only ({origin}); ETS relays the request path "
            f"itself, a path {_shown(parts.path)} is refused"
        )
    return origin


def _public_base_url(text: str) -> str:
    origin, parts = _split_http_url(text, "scheme://host[:port][/prefix]")
    _no_query(text)
    prefix = parts.path.rstrip("/")
    if prefix:
        _check_path(prefix, "PUBLIC_BASE_URL path")
    return origin + prefix


def _verify_url(text: str) -> str:
    _split_http_url(text, "an http(s) URL")
    if "#" in text:
        raise ValueError(f"must not have a fragment: {_shown(text)}")
    return text


def _expected_hostname(text: str) -> str:
    if "/" in text:
        raise ValueError(f"must be a host name, not a URL: {_shown(text)}")
    try:
        return _host(text.lower().strip("[]")).strip("[]")
    except ValueError:
        raise ValueError(f"must be a host name, not {_shown(text)}") from None


# ---------------------------------------------------------------------------
# Paths, methods, algorithms, networks


_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")


def _check_path(path: str, what: str) -> None:
    if not path.startswith("/"):
        raise ValueError(f"must start with '/', not {_shown(path)}")
    if path.endswith("/"):
        raise ValueError(f"must not end with '/': {_shown(path)}")
    for segment in path[1:].split("/"):
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise ValueError(
                f"{what} {_shown(path)} must be plain segments (no '//', '.', '..', '%', "
                "spaces, query or fragment)"
            )


def _api_path(text: str) -> str:
    _no_query(text)
    _check_path(text, "path")
    for reserved in _RESERVED_PATHS:
        if text == reserved or text.startswith(reserved + "/") or reserved.startswith(text + "/"):
            raise ValueError(f"{_shown(text)} overlaps ETS's own path {reserved}")
    return text


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# CONNECT cannot be relayed; TRACE echoes the request back (cross-site tracing).
_REFUSED_METHODS = frozenset({"CONNECT", "TRACE"})


def _methods(text: str) -> tuple[str, ...]:
    methods = []
    for item in _items(text):
        if not _TOKEN.fullmatch(item):
            raise ValueError(f"{_shown(item)} is not an HTTP method")
        method = item.upper()
        if method in _REFUSED_METHODS:
            raise ValueError(f"{method} cannot be relayed")
        methods.append(method)
    if not methods:
        raise ValueError("must list at least one method")
    return _dedupe(methods)


def _dpop_algs(text: str) -> tuple[str, ...]:
    canonical = {alg.lower(): alg for alg in DPOP_ALGORITHMS}
    algs = []
    for item in _items(text):
        alg = canonical.get(item.lower())
        if alg is None:
            raise ValueError(
                f"{_shown(item)} is not one of {', '.join(DPOP_ALGORITHMS)}"
            )
        algs.append(alg)
    if not algs:
        raise ValueError("must list at least one algorithm")
    return _dedupe(algs)


def _networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in _items(text):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{_shown(item)} is not an IP address or CIDR") from None
    return _dedupe(networks)


# ---------------------------------------------------------------------------
# The store


def _store_url(text: str) -> str:
    # Never quote the value: it may carry the Redis password.
    form = "memory: or redis[s]://[[user]:password@]host[:port][/db]"
    if text.lower() == "memory:":
        return "memory:"
    if _SPACE_OR_CONTROL.search(text) or not text.isascii():
        raise ValueError(f"must be {form}, without spaces or non-ASCII characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"must be {form} (bad port or address)") from None
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise ValueError(f"must be {form}")
    if "?" in text or "#" in text:
        raise ValueError(f"must be {form}, without a query or fragment")
    if not parts.hostname:
        raise ValueError(f"must be {form}: the host is missing")
    try:
        _host(parts.hostname)
    except ValueError:
        raise ValueError(f"must be {form}: the host is not valid") from None
    if port == 0:
        raise ValueError(f"must be {form}: the port must be from 1 to 65535")
    if parts.path not in ("", "/") and not re.fullmatch(r"/[0-9]{1,5}", parts.path):
        raise ValueError(f"must be {form}: the path must be a database number")
    return text


# ---------------------------------------------------------------------------
# Listening addresses


# Positional parameters of each endpoint type, in Twisted's order.
_ENDPOINT_PARAMETERS = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "backlog", "interface"),
    "ssl": (
        "port",
        "privateKey",
        "certKey",
        "sslmethod",
        "interface",
        "backlog",
        "extraCertChain",
        "dhParameters",
    ),
    "unix": ("address", "mode", "backlog", "lockfile"),
    "systemd": ("domain", "index", "name"),
}


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _split_endpoint(text: str) -> tuple[list[str], dict[str, str]]:
    """
    Split a Twisted endpoint description into positional and keyword
    parameters, the way L{twisted.internet.endpoints.serverFromString} does:
    C{:} separates, the first C{=} of a parameter assigns, C{\\} escapes.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    pieces: list[str] = []
    current = ""
    chars = iter(text)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise ValueError("ends with a lone backslash")
            current += escaped
        elif char == ":" or (char == "=" and len(pieces) == 0):
            pieces.append(current)
            current = ""
            if char == ":":
                _add_parameter(pieces, args, kwargs)
                pieces = []
        else:
            current += char
    pieces.append(current)
    _add_parameter(pieces, args, kwargs)
    return args, kwargs


def _add_parameter(pieces: list[str], args: list[str], kwargs: dict[str, str]) -> None:
    if len(pieces) == 1:
        args.append(pieces[0])
    else:
        name, value = pieces
        if name in kwargs:
            raise ValueError(f"gives {name}= twice")
        kwargs[name] = value


def _port(text: str | None) -> int:
    if text is None or not re.fullmatch(r"[0-9]{1,5}", text) or int(text) > 65535:
        raise ValueError(f"needs a port from 0 to 65535, not {_shown(text or '')}")
    return int(text)


#: The listen queue of the short C{LISTEN_ADDR} forms (nginx uses 511; the
#: kernel caps it at net.core.somaxconn).
LISTEN_BACKLOG = 1024


def endpoint_string(value: str) -> str:
    """
    Convert a listening address to a Twisted server endpoint string.

    Accepted forms: C{:8080} (all interfaces), C{host:8080} (C{host} a name
    or an IPv4 address), C{[::1]:8080}, and Twisted endpoint strings of the
    types C{tcp}, C{tcp6}, C{ssl}, C{unix} and C{systemd}, which are
    checked and passed through unchanged. The short forms listen with a
    backlog of L{LISTEN_BACKLOG} connections (Twisted's default of 50 makes
    a burst of new clients wait for SYN retries); an endpoint string keeps
    its own C{backlog=}.

    @raise ValueError: the address is none of those, or a port is outside
        0-65535.
    """
    text = value.strip()
    if not text:
        raise ValueError("is empty")
    kind = text.split(":", 1)[0]
    if kind in _ENDPOINT_PARAMETERS and ":" in text:
        _check_endpoint(text)
        return text

    match = re.fullmatch(r":([^:]*)", text)
    if match:
        return f"tcp:{_port(match.group(1))}:backlog={LISTEN_BACKLOG}"
    match = re.fullmatch(r"\[([^\]]+)\]:([^:]*)", text)
    if match:
        try:
            address = ipaddress.IPv6Address(match.group(1))
        except ValueError:
            raise ValueError(f"has an invalid IPv6 address {_shown(match.group(1))}") from None
        return f"tcp6:{_port(match.group(2))}:interface={_escape(str(address))}:backlog={LISTEN_BACKLOG}"
    match = re.fullmatch(r"([^:\[\]]+):([^:]*)", text)
    if match:
        host = _host(match.group(1).lower())
        return f"tcp:{_port(match.group(2))}:interface={host}:backlog={LISTEN_BACKLOG}"
    if re.fullmatch(r"[0-9]+", text):
        raise ValueError(f"{_shown(text)} has no host part; write :{text} for every interface")
    raise ValueError(
        f"must be host:port, :port, [ipv6]:port or a tcp:/tcp6:/ssl:/unix:/systemd: "
        f"endpoint string, not {_shown(text)}"
    )


def _check_endpoint(text: str) -> None:
    args, kwargs = _split_endpoint(text)
    kind, positional = args[0], args[1:]
    names = _ENDPOINT_PARAMETERS[kind]
    if len(positional) > len(names):
        raise ValueError(f"has too many parameters for a {kind}: endpoint: {_shown(text)}")
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise ValueError(f"{kind}: endpoints take no {', '.join(unknown)}= parameter")
    for name, value in zip(names, positional):
        if name in kwargs:
            raise ValueError(f"gives the {kind}: {name} twice")
        kwargs[name] = value

    if kind in ("tcp", "tcp6", "ssl"):
        _port(kwargs.get("port"))
    elif kind == "unix":
        if not kwargs.get("address"):
            raise ValueError("unix: endpoints need a socket path")
    elif kind == "systemd":
        if kwargs.get("domain") not in ("INET", "INET6", "UNIX"):
            raise ValueError("systemd: endpoints need domain=INET, INET6 or UNIX")
        if ("index" in kwargs) == ("name" in kwargs):
            raise ValueError("systemd: endpoints need exactly one of index= or name=")
        if "index" in kwargs and not re.fullmatch(r"[0-9]{1,4}", kwargs["index"]):
            raise ValueError("systemd: index= must be a whole number")
    backlog = kwargs.get("backlog")
    if backlog is not None and not re.fullmatch(r"[0-9]{1,6}", backlog):
        raise ValueError(f"backlog= must be a whole number, not {_shown(backlog)}")
