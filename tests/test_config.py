"""
Tests for L{ets_twisted.config}.
"""

from __future__ import annotations

import ipaddress
from typing import Mapping

import attr
from twisted.trial.unittest import SynchronousTestCase

from ets_twisted.config import (
    DEFAULT_ETS_VERIFY_URL,
    VARIABLES,
    Config,
    ConfigError,
    endpoint_string,
    load,
    redacted,
)

KEY = "k" * 32
OLD_KEY = "o" * 40
PRODUCTION = {
    "ORIGIN_ALLOWLIST": "https://app.example.com",
    "TVM_JWT_HS256_KEY": KEY,
    "UPSTREAM_BASE_URL": "https://upstream.example.com",
}

SPEC_VARIABLES = (
    "LISTEN_ADDR ORIGIN_ALLOWLIST TVM_JWT_HS256_KEY UPSTREAM_BASE_URL "
    "UPSTREAM_SERVICE_SECRET REQUIRE_ETS ETS_SECRET_KEY ETS_VERIFY_URL "
    "ETS_EXPECTED_HOSTNAME ETS_EXPECTED_ACTION TOKEN_LIFETIME_SECONDS TOKEN_ISSUER "
    "RATE_LIMIT_PER_MINUTE RATE_LIMIT_BURST UPSTREAM_TIMEOUT_SECONDS API_PATH "
    "ALLOWED_METHODS MAX_BODY_BYTES PUBLIC_BASE_URL TRUSTED_PROXIES DPOP_ALGS "
    "DPOP_MAX_AGE_SECONDS DPOP_CLOCK_SKEW_SECONDS REQUIRE_ATH REQUIRE_DPOP_NONCE "
    "STORE_URL STORE_KEY_PREFIX WORKERS SHUTDOWN_GRACE_SECONDS METRICS_LISTEN_ADDR "
    "LOG_FORMAT"
).split()


def production(**overrides: str) -> dict[str, str]:
    """
    A complete production environment with C{overrides} applied.
    """
    env = dict(PRODUCTION)
    env.update(overrides)
    return env


class ConfigTestCase(SynchronousTestCase):
    def load(self, **overrides: str) -> Config:
        """
        Load a production environment with C{overrides}.
        """
        return load(production(**overrides))

    def problems(
        self, env: Mapping[str, str], options: Mapping[str, str | None] | None = None
    ) -> list[str]:
        """
        The problems L{load} reports for C{env} and C{options}.
        """
        error = self.assertRaises(ConfigError, load, env, options)
        self.assertEqual(str(error), "\n".join(error.problems))
        return error.problems

    def assertRefused(self, name: str, value: str, *expected: str) -> list[str]:
        """
        Setting C{name} to C{value} (in an otherwise good production
        environment) gives exactly one problem, about C{name}, containing
        each of C{expected}.
        """
        problems = self.problems(production(**{name: value}))
        self.assertEqual(len(problems), 1, problems)
        self.assertTrue(problems[0].startswith(f"{name}: "), problems)
        for text in expected:
            self.assertIn(text, problems[0])
        return problems


class VariablesTests(SynchronousTestCase):
    """
    L{VARIABLES} lists the SPEC's configuration table for the twistd
    options.
    """

    def test_everySpecVariable(self) -> None:
        """
        Every variable of the SPEC table is listed once, in the SPEC's
        order.
        """
        self.assertEqual([v.env for v in VARIABLES], SPEC_VARIABLES)

    def test_optionNames(self) -> None:
        """
        Each option is the lower-case dashed form of its variable.
        """
        options = {v.env: v.option for v in VARIABLES}
        self.assertEqual(options["LISTEN_ADDR"], "listen-addr")
        self.assertEqual(options["TVM_JWT_HS256_KEY"], "tvm-jwt-hs256-key")
        for v in VARIABLES:
            self.assertEqual(v.option, v.env.lower().replace("_", "-"))
            self.assertTrue(v.help)

    def test_secrets(self) -> None:
        """
        The signing keys, the upstream and siteverify secrets and the store
        URL (which may carry a password) are marked secret, nothing else.
        """
        self.assertEqual(
            {v.env for v in VARIABLES if v.secret},
            {"TVM_JWT_HS256_KEY", "UPSTREAM_SERVICE_SECRET", "ETS_SECRET_KEY", "STORE_URL"},
        )


class DefaultsTests(ConfigTestCase):
    """
    With only the three required variables set, every other setting takes
    the SPEC's default.
    """

    def test_defaults(self) -> None:
        """
        Each field holds the SPEC default.
        """
        config = load(PRODUCTION)
        self.assertEqual(config.listen_addr, "tcp:8080:backlog=1024")
        self.assertEqual(config.origin_allowlist, ("https://app.example.com",))
        self.assertEqual(config.jwt_keys, (KEY.encode(),))
        self.assertEqual(config.upstream_base_url, "https://upstream.example.com")
        self.assertIsNone(config.upstream_service_secret)
        self.assertFalse(config.require_ets)
        self.assertIsNone(config.ets_secret_key)
        self.assertEqual(config.ets_verify_url, DEFAULT_ETS_VERIFY_URL)
        self.assertEqual(
            DEFAULT_ETS_VERIFY_URL,
            "https://challenges.cloudflare.com/turnstile/v0/siteverify",
        )
        self.assertIsNone(config.ets_expected_hostname)
        self.assertIsNone(config.ets_expected_action)
        self.assertEqual(config.token_lifetime_seconds, 300)
        self.assertEqual(config.token_issuer, "ets")
        self.assertEqual(config.rate_limit_per_minute, 60)
        self.assertEqual(config.rate_limit_burst, 60)
        self.assertEqual(config.upstream_timeout_seconds, 40.0)
        self.assertEqual(config.api_path, "/api")
        self.assertEqual(config.allowed_methods, ("GET", "POST"))
        self.assertEqual(config.max_body_bytes, 10485760)
        self.assertIsNone(config.public_base_url)
        self.assertEqual(config.trusted_proxies, ())
        self.assertEqual(config.dpop_algs, ("ES256",))
        self.assertEqual(config.dpop_max_age_seconds, 300)
        self.assertEqual(config.dpop_clock_skew_seconds, 5)
        self.assertFalse(config.require_ath)
        self.assertFalse(config.require_dpop_nonce)
        self.assertEqual(config.store_url, "memory:")
        self.assertEqual(config.store_key_prefix, "ets:")
        self.assertEqual(config.workers, 1)
        self.assertEqual(config.shutdown_grace_seconds, 10.0)
        self.assertIsNone(config.metrics_listen_addr)
        self.assertEqual(config.log_format, "text")
        self.assertFalse(config.dev_mode)

    def test_frozen(self) -> None:
        """
        A loaded configuration cannot be changed in place.
        """
        config = load(PRODUCTION)
        self.assertRaises(attr.exceptions.FrozenInstanceError, setattr, config, "workers", 2)

    def test_emptyIsUnset(self) -> None:
        """
        An empty or blank value counts as unset and gets the default.
        """
        config = self.load(LISTEN_ADDR="", TOKEN_LIFETIME_SECONDS="  ", UPSTREAM_SERVICE_SECRET="")
        self.assertEqual(config.listen_addr, "tcp:8080:backlog=1024")
        self.assertEqual(config.token_lifetime_seconds, 300)
        self.assertIsNone(config.upstream_service_secret)

    def test_surroundingSpaceIgnored(self) -> None:
        """
        Spaces around a value (a common copy-and-paste slip) are ignored.
        """
        self.assertEqual(self.load(WORKERS=" 1\n").workers, 1)


class OptionsTests(ConfigTestCase):
    """
    C{twistd ets} options, keyed by option name, win over the environment.
    """

    def test_optionWins(self) -> None:
        """
        An option value replaces the environment's.
        """
        config = load(production(LISTEN_ADDR=":8000"), {"listen-addr": ":9000"})
        self.assertEqual(config.listen_addr, "tcp:9000:backlog=1024")

    def test_unsetOptionFallsBack(self) -> None:
        """
        An option that is L{None} or empty leaves the environment's value.
        """
        config = load(
            production(LISTEN_ADDR=":8000", WORKERS="1"),
            {"listen-addr": None, "workers": ""},
        )
        self.assertEqual(config.listen_addr, "tcp:8000:backlog=1024")
        self.assertEqual(config.workers, 1)

    def test_optionsAlone(self) -> None:
        """
        The required settings may all come from options.
        """
        options = {
            "origin-allowlist": "https://app.example.com",
            "tvm-jwt-hs256-key": KEY,
            "upstream-base-url": "http://127.0.0.1:9000",
        }
        config = load({}, options)
        self.assertFalse(config.dev_mode)
        self.assertEqual(config.upstream_base_url, "http://127.0.0.1:9000")

    def test_otherKeysIgnored(self) -> None:
        """
        Keys that are not ETS option names (other twistd options, env
        names) are ignored.
        """
        config = load(PRODUCTION, {"LISTEN_ADDR": ":1", "nodaemon": "1"})
        self.assertEqual(config.listen_addr, "tcp:8080:backlog=1024")

    def test_badOptionReported(self) -> None:
        """
        A bad option value is reported under its variable's name.
        """
        self.assertEqual(
            self.problems(PRODUCTION, {"workers": "many"}),
            ["WORKERS: must be a whole number from 1 to 256, not 'many'"],
        )


class ProblemsTests(ConfigTestCase):
    """
    Problems are collected and reported together, one line each, without
    secrets.
    """

    def test_allTogether(self) -> None:
        """
        Every bad variable gives its own line, in the SPEC's order.
        """
        problems = self.problems(
            production(
                LISTEN_ADDR="nowhere",
                TVM_JWT_HS256_KEY="short",
                WORKERS="0",
                LOG_FORMAT="xml",
            )
        )
        self.assertEqual(
            [p.split(":", 1)[0] for p in problems],
            ["LISTEN_ADDR", "TVM_JWT_HS256_KEY", "WORKERS", "LOG_FORMAT"],
        )
        for problem in problems:
            self.assertNotIn("\n", problem)

    def test_noSecretInProblems(self) -> None:
        """
        A secret's value never appears in a problem, even when the secret
        itself is what is wrong.
        """
        short_key = "tenbytes!!"
        secret = "upstream\x01secret"
        ets_secret = "siteverify\x02secret"
        password = "hunter2hunter2"
        error = self.assertRaises(
            ConfigError,
            load,
            production(
                TVM_JWT_HS256_KEY=f"{KEY},{short_key}",
                UPSTREAM_SERVICE_SECRET=secret,
                REQUIRE_ETS="true",
                ETS_SECRET_KEY=ets_secret,
                STORE_URL=f"redis://:{password}@cache:99999/0",
            ),
        )
        self.assertEqual(len(error.problems), 4, error.problems)
        text = "\n".join(error.problems) + str(error) + repr(error)
        for value in (KEY, short_key, secret, ets_secret, password, "upstream", "siteverify"):
            self.assertNotIn(value, text)
        self.assertIn(
            "TVM_JWT_HS256_KEY: must be at least 32 bytes (each key of the list)",
            error.problems,
        )

    def test_nonSecretQuoted(self) -> None:
        """
        A bad non-secret value is quoted, cut short, to help the operator.
        """
        (problem,) = self.assertRefused("LOG_FORMAT", "x" * 100, "'xxx")
        self.assertIn("...", problem)
        self.assertLess(len(problem), 100)


class DevelopmentModeTests(ConfigTestCase):
    """
    With none of the three required variables set, ETS runs in development
    mode; with only some, it refuses to start.
    """

    def test_nothingSet(self) -> None:
        """
        An empty environment gives development mode: a random 32-byte key
        in memory, no allowlist and no upstream yet.
        """
        config = load({})
        self.assertTrue(config.dev_mode)
        self.assertEqual(len(config.jwt_keys), 1)
        self.assertEqual(len(config.jwt_keys[0]), 32)
        self.assertEqual(config.origin_allowlist, ())
        self.assertEqual(config.upstream_base_url, "")

    def test_randomKey(self) -> None:
        """
        Each development-mode load draws a new key.
        """
        self.assertNotEqual(load({}).jwt_keys, load({}).jwt_keys)

    def test_restParsed(self) -> None:
        """
        In development mode every other variable is parsed and validated as
        usual.
        """
        config = load({"LISTEN_ADDR": "127.0.0.1:9999", "REQUIRE_ATH": "yes"})
        self.assertEqual(config.listen_addr, "tcp:9999:interface=127.0.0.1:backlog=1024")
        self.assertTrue(config.require_ath)
        self.assertEqual(
            self.problems({"LOG_FORMAT": "xml"}), ["LOG_FORMAT: must be text or json, not 'xml'"]
        )

    def test_partial(self) -> None:
        """
        Setting only some of the three is an error naming each missing one
        (and never silently development mode).
        """
        problems = self.problems({"TVM_JWT_HS256_KEY": KEY})
        self.assertEqual(len(problems), 2)
        self.assertTrue(problems[0].startswith("ORIGIN_ALLOWLIST: required"))
        self.assertTrue(problems[1].startswith("UPSTREAM_BASE_URL: required"))
        self.assertIn("TVM_JWT_HS256_KEY is set", problems[0])
        self.assertIn("or none for development mode", problems[0])

    def test_partialTwo(self) -> None:
        """
        With two of the three set, the third is named.
        """
        problems = self.problems(
            {"ORIGIN_ALLOWLIST": "https://a.example", "UPSTREAM_BASE_URL": "https://u.example"}
        )
        self.assertEqual(
            problems,
            [
                "TVM_JWT_HS256_KEY: required (ORIGIN_ALLOWLIST and UPSTREAM_BASE_URL are "
                "set; set all three, or none for development mode)"
            ],
        )

    def test_partialThroughOptions(self) -> None:
        """
        A required setting given as an option counts as set.
        """
        problems = self.problems({}, {"upstream-base-url": "https://u.example"})
        self.assertEqual(
            [p.split(":")[0] for p in problems], ["ORIGIN_ALLOWLIST", "TVM_JWT_HS256_KEY"]
        )

    def test_workers(self) -> None:
        """
        Development mode with several workers is refused, even with a
        shared store: each worker would draw its own key.
        """
        problems = self.problems({"WORKERS": "2", "STORE_URL": "redis://cache"})
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith("WORKERS: "))
        self.assertIn("TVM_JWT_HS256_KEY", problems[0])


class WorkersTests(ConfigTestCase):
    """What several worker processes cannot share."""

    def test_memory_store(self) -> None:
        """Per-process replay caches would accept a proof once per worker."""
        problems = self.problems(production(WORKERS="2"))
        self.assertEqual([p.split(":")[0] for p in problems], ["WORKERS"])

    def test_tls_listener(self) -> None:
        """Workers adopt a plain socket: ssl: and systemd: stay single-process."""
        for addr in ("ssl:8443:privateKey=k.pem", "systemd:domain=INET:index=0"):
            problems = self.problems(production(WORKERS="2", STORE_URL="redis://cache", LISTEN_ADDR=addr))
            self.assertEqual([p.split(":")[0] for p in problems], ["WORKERS"], problems)

    def test_metrics(self) -> None:
        """Each worker would answer a scrape with only its own counts."""
        problems = self.problems(production(WORKERS="2", STORE_URL="redis://cache", METRICS_LISTEN_ADDR=":9100"))
        self.assertEqual([p.split(":")[0] for p in problems], ["METRICS_LISTEN_ADDR"])

    def test_accepted(self) -> None:
        config = self.load(WORKERS="2", STORE_URL="redis://cache")
        self.assertEqual((config.workers, config.store_url), (2, "redis://cache"))


class ListenAddrTests(ConfigTestCase):
    """
    C{LISTEN_ADDR} and C{METRICS_LISTEN_ADDR} become Twisted endpoint
    strings.
    """

    def test_forms(self) -> None:
        """
        The short forms are converted; endpoint strings pass unchanged.
        """
        cases = {
            ":8080": "tcp:8080:backlog=1024",
            ":0": "tcp:0:backlog=1024",
            "127.0.0.1:8080": "tcp:8080:interface=127.0.0.1:backlog=1024",
            "localhost:80": "tcp:80:interface=localhost:backlog=1024",
            "[::1]:8080": "tcp6:8080:interface=\\:\\:1:backlog=1024",
            "[::]:443": "tcp6:443:interface=\\:\\::backlog=1024",
            "tcp:8080:interface=127.0.0.1": "tcp:8080:interface=127.0.0.1",
            "tcp6:8080:interface=\\:\\:1": "tcp6:8080:interface=\\:\\:1",
            "ssl:443:privateKey=k.pem:certKey=c.pem": "ssl:443:privateKey=k.pem:certKey=c.pem",
            "unix:/run/ets.sock": "unix:/run/ets.sock",
            "unix:address=/run/ets.sock:mode=660": "unix:address=/run/ets.sock:mode=660",
            "systemd:domain=INET:index=0": "systemd:domain=INET:index=0",
            "systemd:domain=INET6:name=http": "systemd:domain=INET6:name=http",
        }
        for value, expected in cases.items():
            self.assertEqual(endpoint_string(value), expected, value)
            self.assertEqual(self.load(LISTEN_ADDR=value).listen_addr, expected, value)

    def test_refused(self) -> None:
        """
        Anything else, and any port outside 0-65535, is refused.
        """
        for value in [
            "8080",
            ":65536",
            ":http",
            "host:99999",
            "host:",
            "::1:8080",
            "[nothex]:80",
            "tcp:notaport",
            "tcp:99999",
            "tcp:8080:bogus=1",
            "tcp:8080:port=8081",
            "ssl:privateKey=key.pem",
            "unix:",
            "systemd:domain=INET",
            "systemd:domain=INET:index=0:name=x",
            "systemd:domain=AF_INET:index=0",
            "le:/certs:tcp:443",
            "tcp:80\\",
            "bad host:80",
        ]:
            self.assertRaises(ValueError, endpoint_string, value)
            self.assertRefused("LISTEN_ADDR", value)

    def test_barePortHint(self) -> None:
        """
        A bare port number is refused with a hint to write C{:port}.
        """
        self.assertRefused("LISTEN_ADDR", "8080", ":8080")

    def test_metrics(self) -> None:
        """
        C{METRICS_LISTEN_ADDR} takes the same forms, is off when unset, and
        must not be the main listener.
        """
        self.assertEqual(self.load(METRICS_LISTEN_ADDR=":9100").metrics_listen_addr, "tcp:9100:backlog=1024")
        self.assertRefused("METRICS_LISTEN_ADDR", "nowhere")
        self.assertRefused("METRICS_LISTEN_ADDR", ":8080", "must differ from LISTEN_ADDR")
        config = self.load(LISTEN_ADDR=":0", METRICS_LISTEN_ADDR=":0")
        self.assertEqual(config.metrics_listen_addr, "tcp:0:backlog=1024")


class OriginAllowlistTests(ConfigTestCase):
    """
    C{ORIGIN_ALLOWLIST} holds exact origins, as browsers send them.
    """

    def test_list(self) -> None:
        """
        A comma-separated list is split, normalised the way a browser
        serialises an origin (lower case, no default port) and de-duplicated.
        """
        config = self.load(
            ORIGIN_ALLOWLIST=(
                "https://App.Example.com:443, http://localhost:5173,"
                "https://app.example.com,http://[::1]:3000,http://127.0.0.1:80,"
            )
        )
        self.assertEqual(
            config.origin_allowlist,
            (
                "https://app.example.com",
                "http://localhost:5173",
                "http://[::1]:3000",
                "http://127.0.0.1",
            ),
        )

    def test_refused(self) -> None:
        """
        Paths, trailing slashes, queries, other schemes, wildcards, C{null}
        and user information are refused.
        """
        for value in [
            "https://app.example.com/",
            "https://app.example.com/app",
            "https://app.example.com?x=1",
            "https://app.example.com#x",
            "ftp://app.example.com",
            "app.example.com",
            "*",
            "null",
            "https://user@app.example.com",
            "https://bücher.example",
            "https://app.example.com:99999",
            "https://app.example.com:0",
            "https://-bad-.example",
            "https://",
            ",",
        ]:
            self.assertRefused("ORIGIN_ALLOWLIST", value)

    def test_trailingSlashHint(self) -> None:
        """
        The problem for a trailing slash shows the origin to write instead.
        """
        self.assertRefused(
            "ORIGIN_ALLOWLIST", "https://app.example.com/", "(https://app.example.com)"
        )


class KeyTests(ConfigTestCase):
    """
    C{TVM_JWT_HS256_KEY}: one key, or a list to rotate.
    """

    def test_rotation(self) -> None:
        """
        A comma-separated list keeps its order (the first signs) as UTF-8
        bytes.
        """
        config = self.load(TVM_JWT_HS256_KEY=f"{KEY}, {OLD_KEY}, {'é' * 16}")
        self.assertEqual(config.jwt_keys, (KEY.encode(), OLD_KEY.encode(), ("é" * 16).encode()))

    def test_short(self) -> None:
        """
        A key under 32 bytes is refused, and not quoted.
        """
        for value in ["x" * 31, f"{KEY},{'y' * 31}"]:
            (problem,) = self.assertRefused(
                "TVM_JWT_HS256_KEY",
                value,
                "must be at least 32 bytes (each key of the list)",
            )
            self.assertNotIn("x" * 8, problem)
            self.assertNotIn("y" * 8, problem)

    def test_empty(self) -> None:
        """
        A list of nothing but commas is refused.
        """
        self.assertRefused("TVM_JWT_HS256_KEY", ",,", "at least one key")


class UpstreamTests(ConfigTestCase):
    """
    C{UPSTREAM_BASE_URL} is an origin only; C{UPSTREAM_SERVICE_SECRET} is
    optional.
    """

    def test_origin(self) -> None:
        """
        An origin, with or without a lone trailing slash, is stored without
        it.
        """
        for value, expected in [
            ("https://api.example.com/", "https://api.example.com"),
            ("http://upstream:8000", "http://upstream:8000"),
            ("HTTP://Up_Stream:80", "http://up_stream"),
        ]:
            self.assertEqual(self.load(UPSTREAM_BASE_URL=value).upstream_base_url, expected)

    def test_refused(self) -> None:
        """
        A path, query, fragment or other scheme is refused at start.
        """
        self.assertRefused("UPSTREAM_BASE_URL", "https://api.example.com/v1", "'/v1'")
        for value in [
            "https://api.example.com/?x=1",
            "https://api.example.com#top",
            "ws://api.example.com",
            "api.example.com",
        ]:
            self.assertRefused("UPSTREAM_BASE_URL", value)

    def test_secret(self) -> None:
        """
        The service secret is kept as given, and refused (unquoted) when it
        holds control characters.
        """
        config = self.load(UPSTREAM_SERVICE_SECRET="s3cr=t&")
        self.assertEqual(config.upstream_service_secret, "s3cr=t&")
        (problem,) = self.assertRefused("UPSTREAM_SERVICE_SECRET", "bad\x00value")
        self.assertNotIn("bad", problem)


class ChallengeTests(ConfigTestCase):
    """
    C{REQUIRE_ETS} and the siteverify settings.
    """

    def test_required(self) -> None:
        """
        With C{REQUIRE_ETS} true, C{ETS_SECRET_KEY} is required.
        """
        problems = self.problems(production(REQUIRE_ETS="true"))
        self.assertEqual(problems, ["ETS_SECRET_KEY: required when REQUIRE_ETS is true"])

    def test_enabled(self) -> None:
        """
        With a secret, the challenge settings are kept.
        """
        config = self.load(
            REQUIRE_ETS="On",
            ETS_SECRET_KEY="0x4AAA",
            ETS_VERIFY_URL="http://127.0.0.1:9000/siteverify?x=1",
            ETS_EXPECTED_HOSTNAME="App.Example.com",
            ETS_EXPECTED_ACTION="issue-token",
        )
        self.assertTrue(config.require_ets)
        self.assertEqual(config.ets_secret_key, "0x4AAA")
        self.assertEqual(config.ets_verify_url, "http://127.0.0.1:9000/siteverify?x=1")
        self.assertEqual(config.ets_expected_hostname, "app.example.com")
        self.assertEqual(config.ets_expected_action, "issue-token")

    def test_requireEtsBoolean(self) -> None:
        """
        C{REQUIRE_ETS} must be a boolean.
        """
        self.assertRefused("REQUIRE_ETS", "maybe", "'maybe'")

    def test_secretKey(self) -> None:
        """
        A siteverify secret with control characters is refused, unquoted.
        """
        (problem,) = self.assertRefused("ETS_SECRET_KEY", "abc\x7fdef")
        self.assertNotIn("abc", problem)

    def test_verifyUrl(self) -> None:
        """
        C{ETS_VERIFY_URL} must be an http(s) URL without a fragment.
        """
        for value in ["ftp://x.example/verify", "siteverify", "https://x.example/v#f"]:
            self.assertRefused("ETS_VERIFY_URL", value)

    def test_expectedHostname(self) -> None:
        """
        C{ETS_EXPECTED_HOSTNAME} is a host name, not a URL.
        """
        self.assertRefused("ETS_EXPECTED_HOSTNAME", "https://app.example.com", "not a URL")
        self.assertRefused("ETS_EXPECTED_HOSTNAME", "app example")

    def test_expectedAction(self) -> None:
        """
        C{ETS_EXPECTED_ACTION} has no spaces.
        """
        self.assertRefused("ETS_EXPECTED_ACTION", "two words")


class NumberTests(ConfigTestCase):
    """
    Numeric settings are plain decimals within their ranges.
    """

    def test_accepted(self) -> None:
        """
        Values inside the ranges are kept, with the right types.
        """
        config = self.load(
            TOKEN_LIFETIME_SECONDS="600",
            RATE_LIMIT_PER_MINUTE="120",
            UPSTREAM_TIMEOUT_SECONDS="2.5",
            MAX_BODY_BYTES="0",
            DPOP_MAX_AGE_SECONDS="60",
            DPOP_CLOCK_SKEW_SECONDS="0",
            SHUTDOWN_GRACE_SECONDS="0",
        )
        self.assertEqual(config.token_lifetime_seconds, 600)
        self.assertEqual(config.rate_limit_per_minute, 120)
        self.assertEqual(config.upstream_timeout_seconds, 2.5)
        self.assertEqual(config.max_body_bytes, 0)
        self.assertEqual(config.dpop_max_age_seconds, 60)
        self.assertEqual(config.dpop_clock_skew_seconds, 0)
        self.assertEqual(config.shutdown_grace_seconds, 0.0)

    def test_burstFollowsRate(self) -> None:
        """
        C{RATE_LIMIT_BURST} defaults to the per-minute rate and may be set
        apart from it.
        """
        self.assertEqual(self.load(RATE_LIMIT_PER_MINUTE="120").rate_limit_burst, 120)
        config = self.load(RATE_LIMIT_PER_MINUTE="120", RATE_LIMIT_BURST="10")
        self.assertEqual((config.rate_limit_per_minute, config.rate_limit_burst), (120, 10))

    def test_refused(self) -> None:
        """
        Out-of-range, signed, fractional, exponent and non-finite values are
        refused.
        """
        cases = {
            "TOKEN_LIFETIME_SECONDS": ["0", "86401", "-5", "5m", "1.5"],
            "RATE_LIMIT_PER_MINUTE": ["0", "fast"],
            "RATE_LIMIT_BURST": ["0"],
            "UPSTREAM_TIMEOUT_SECONDS": ["0", "0.0", "nan", "inf", "1e3", "-1", "3601"],
            "MAX_BODY_BYTES": ["-1", "10MB"],
            "DPOP_MAX_AGE_SECONDS": ["0"],
            "DPOP_CLOCK_SKEW_SECONDS": ["-1", "3601"],
            "WORKERS": ["0", "257"],
            "SHUTDOWN_GRACE_SECONDS": ["-1", "forever"],
        }
        for name, values in cases.items():
            for value in values:
                self.assertRefused(name, value, repr(value))

    def test_message(self) -> None:
        """
        The problem states the accepted range.
        """
        self.assertEqual(
            self.problems(production(TOKEN_LIFETIME_SECONDS="0")),
            ["TOKEN_LIFETIME_SECONDS: must be a whole number from 1 to 86400, not '0'"],
        )


class TextTests(ConfigTestCase):
    """
    C{TOKEN_ISSUER}, C{STORE_KEY_PREFIX} and C{LOG_FORMAT}.
    """

    def test_issuer(self) -> None:
        """
        Any printable issuer is kept; control characters are refused.
        """
        issuer = "https://ets.example.com"
        self.assertEqual(self.load(TOKEN_ISSUER=issuer).token_issuer, issuer)
        self.assertRefused("TOKEN_ISSUER", "ets\x00")

    def test_keyPrefix(self) -> None:
        """
        The Redis key prefix has no spaces.
        """
        self.assertEqual(self.load(STORE_KEY_PREFIX="{prod}:ets:").store_key_prefix, "{prod}:ets:")
        self.assertRefused("STORE_KEY_PREFIX", "my app:")

    def test_logFormat(self) -> None:
        """
        C{LOG_FORMAT} is text or json, in any case.
        """
        self.assertEqual(self.load(LOG_FORMAT="JSON").log_format, "json")
        self.assertRefused("LOG_FORMAT", "xml", "must be text or json")


class BooleanTests(ConfigTestCase):
    """
    Booleans accept the usual spellings and nothing else.
    """

    def test_spellings(self) -> None:
        """
        true/false, 1/0, yes/no and on/off are understood, in any case.
        """
        for value, expected in [
            ("true", True),
            ("TRUE", True),
            ("1", True),
            ("Yes", True),
            ("on", True),
            ("false", False),
            ("0", False),
            ("no", False),
            ("OFF", False),
        ]:
            config = self.load(REQUIRE_ATH=value, REQUIRE_DPOP_NONCE=value)
            self.assertEqual((config.require_ath, config.require_dpop_nonce), (expected, expected))

    def test_refused(self) -> None:
        """
        Anything else is a problem.
        """
        for name in ["REQUIRE_ATH", "REQUIRE_DPOP_NONCE", "REQUIRE_ETS"]:
            for value in ["2", "y", "enabled"]:
                self.assertRefused(name, value, "must be true or false")


class ApiPathTests(ConfigTestCase):
    """
    C{API_PATH} is a plain prefix that leaves ETS's own paths alone.
    """

    def test_accepted(self) -> None:
        """
        A nested prefix is kept.
        """
        self.assertEqual(self.load(API_PATH="/v1/api").api_path, "/v1/api")
        self.assertEqual(self.load(API_PATH="/tvmx").api_path, "/tvmx")

    def test_refused(self) -> None:
        """
        Relative paths, trailing slashes, the root, queries, odd segments and
        paths overlapping C{/tvm}, C{/health}, C{/ready}, C{/sdk} and C{/demo}
        are refused.
        """
        for value in [
            "api",
            "/api/",
            "/",
            "/api?x=1",
            "/a//b",
            "/a/../b",
            "/a b",
            "/a%20b",
            "/tvm",
            "/tvm/issue",
            "/health",
            "/ready/x",
            "/sdk",
            "/demo",
        ]:
            self.assertRefused("API_PATH", value)
        self.assertRefused("API_PATH", "/sdk/api", "overlaps ETS's own path /sdk")


class MethodsTests(ConfigTestCase):
    """
    C{ALLOWED_METHODS} lists HTTP methods.
    """

    def test_accepted(self) -> None:
        """
        Methods are upper-cased and de-duplicated; OPTIONS may be listed.
        """
        config = self.load(ALLOWED_METHODS="get, post,Put,OPTIONS,GET")
        self.assertEqual(config.allowed_methods, ("GET", "POST", "PUT", "OPTIONS"))

    def test_refused(self) -> None:
        """
        Non-tokens, CONNECT, TRACE and an empty list are refused.
        """
        for value in ["GET POST", "GET;POST", "CONNECT", "trace", ","]:
            self.assertRefused("ALLOWED_METHODS", value)


class PublicBaseUrlTests(ConfigTestCase):
    """
    C{PUBLIC_BASE_URL} is an origin with an optional path prefix.
    """

    def test_accepted(self) -> None:
        """
        The origin is normalised; a path prefix is kept without its trailing
        slash.
        """
        for value, expected in [
            ("https://ETS.example.com:443", "https://ets.example.com"),
            ("https://ets.example.com/", "https://ets.example.com"),
            ("https://example.com/gw/", "https://example.com/gw"),
            ("http://localhost:8080/a/b", "http://localhost:8080/a/b"),
        ]:
            self.assertEqual(self.load(PUBLIC_BASE_URL=value).public_base_url, expected)

    def test_refused(self) -> None:
        """
        Queries, fragments, odd paths and non-http(s) URLs are refused.
        """
        for value in [
            "https://ets.example.com/?x",
            "https://ets.example.com#f",
            "https://ets.example.com/a/../b",
            "ets.example.com",
            "wss://ets.example.com",
        ]:
            self.assertRefused("PUBLIC_BASE_URL", value)


class TrustedProxiesTests(ConfigTestCase):
    """
    C{TRUSTED_PROXIES} lists networks.
    """

    def test_accepted(self) -> None:
        """
        CIDRs and bare addresses of both families are accepted.
        """
        config = self.load(TRUSTED_PROXIES="10.0.0.0/8, 192.168.1.1,::1, 172.16.1.0/12")
        self.assertEqual(
            config.trusted_proxies,
            (
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("192.168.1.1/32"),
                ipaddress.ip_network("::1/128"),
                ipaddress.ip_network("172.16.0.0/12"),
            ),
        )

    def test_refused(self) -> None:
        """
        Anything that is not an address or CIDR is refused.
        """
        for value in ["10.0.0.0/33", "proxy.internal", "10.0.0.0/8;"]:
            self.assertRefused("TRUSTED_PROXIES", value, "is not an IP address or CIDR")


class DpopAlgsTests(ConfigTestCase):
    """
    C{DPOP_ALGS} is a subset of the SPEC's algorithms.
    """

    def test_accepted(self) -> None:
        """
        Names are matched regardless of case and stored canonically.
        """
        config = self.load(DPOP_ALGS="es256, eddsa,RS256,PS256,ES384,ES512")
        self.assertEqual(config.dpop_algs, ("ES256", "EdDSA", "RS256", "PS256", "ES384", "ES512"))

    def test_refused(self) -> None:
        """
        Symmetric algorithms, C{none} and unknown names are refused.
        """
        for value in ["HS256", "none", "ES256,RS512", "ES256K", ","]:
            self.assertRefused("DPOP_ALGS", value)


class StoreTests(ConfigTestCase):
    """
    C{STORE_URL} and C{WORKERS}.
    """

    def test_accepted(self) -> None:
        """
        C{memory:} and Redis URLs with optional password, port and database
        are accepted.
        """
        for value in [
            "memory:",
            "redis://cache",
            "redis://cache:6380",
            "redis://cache:6379/2",
            "redis://:pw@cache:6379/0",
            "rediss://user:pw@redis.example.com/",
            "redis://10.0.0.5",
            "redis://[::1]:6379",
        ]:
            self.assertEqual(self.load(STORE_URL=value).store_url, value)
        self.assertEqual(self.load(STORE_URL="MEMORY:").store_url, "memory:")

    def test_refused(self) -> None:
        """
        Other schemes, missing hosts, bad ports or databases and queries are
        refused, without quoting the URL.
        """
        for value in [
            "memory",
            "http://cache:6379",
            "redis://",
            "redis://:secretpw@",
            "redis://cache:0",
            "redis://cache:99999",
            "redis://cache/db1",
            "redis://cache/1/2",
            "redis://cache?db=1",
            "unix:///run/redis.sock",
        ]:
            (problem,) = self.assertRefused("STORE_URL", value)
            self.assertNotIn(value, problem)
            self.assertNotIn("secretpw", problem)

    def test_workersNeedSharedStore(self) -> None:
        """
        More than one worker with the memory store is refused; with Redis it
        is fine.
        """
        self.assertEqual(
            self.problems(production(WORKERS="4")),
            [
                "WORKERS: more than 1 worker needs a shared STORE_URL (redis://…): "
                "per-process replay caches would accept a proof once per worker"
            ],
        )
        self.assertEqual(self.load(WORKERS="4", STORE_URL="redis://cache").workers, 4)

    def test_badStoreNotBlamedOnWorkers(self) -> None:
        """
        A bad C{STORE_URL} is reported once, not again through C{WORKERS}.
        """
        problems = self.problems(production(WORKERS="4", STORE_URL="http://cache"))
        self.assertEqual([p.split(":")[0] for p in problems], ["STORE_URL"])


SECRETS = [KEY, OLD_KEY, "upstream-secret-value", "siteverify-secret-value", "redis-password"]


class SecretsHiddenTests(ConfigTestCase):
    """
    Logging a configuration never shows a secret.
    """

    def secretConfig(self) -> Config:
        return self.load(
            TVM_JWT_HS256_KEY=f"{KEY},{OLD_KEY}",
            UPSTREAM_SERVICE_SECRET="upstream-secret-value",
            REQUIRE_ETS="true",
            ETS_SECRET_KEY="siteverify-secret-value",
            STORE_URL="redis://user:redis-password@cache:6379/1",
        )

    def test_repr(self) -> None:
        """
        C{repr} shows the shape but none of the secrets.
        """
        text = repr(self.secretConfig())
        for secret in SECRETS:
            self.assertNotIn(secret, text)
        self.assertIn("<2 redacted keys>", text)
        self.assertIn("redis://user:***@cache:6379/1", text)
        self.assertIn("upstream_service_secret='<redacted>'", text)

    def test_redacted(self) -> None:
        """
        L{redacted} gives a dict of every field with the secrets replaced.
        """
        config = self.secretConfig()
        values = redacted(config)
        self.assertEqual(set(values), {f.name for f in attr.fields(Config)})
        text = repr(values)
        for secret in SECRETS:
            self.assertNotIn(secret, text)
        self.assertEqual(values["store_url"], "redis://user:***@cache:6379/1")
        self.assertEqual(values["ets_secret_key"], "<redacted>")
        self.assertEqual(values["workers"], 1)

    def test_unsetSecretsShowNone(self) -> None:
        """
        An unset secret shows as None, so the log still tells whether it is
        configured.
        """
        values = redacted(load(PRODUCTION))
        self.assertIsNone(values["upstream_service_secret"])
        self.assertIn("upstream_service_secret=None", repr(load(PRODUCTION)))
