"""
Assembly: one L{Config} in, the running pieces of ETS out.

L{build_site} wires the Resource tree (used as is by in-memory tests);
L{build_service} adds what owns sockets and pools, for C{twistd ets} and
C{ets.tac}.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

import attr
from treq.client import HTTPClient
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.web.client import Agent, HTTPConnectionPool

from . import devmode, jose, observe, tokens
from .challenge import ChallengeVerifier
from .config import Config
from .metrics import metrics_service
from .stores import IStore
from .stores.memory import MemoryStore
from .nonces import NonceSource
from .shutdown import Drain, GracefulShutdown
from .web.admission import Admission
from .web.api import ApiRoute
from .web.health import HealthRoute, ReadyRoute
from .web.issue import IssueRoute
from .web.relay import MAX_IDLE_UPSTREAM_CONNECTIONS, Relay, quoted_secret
from .web.root import ETSSite, Root
from .web.static import StaticDirectory, StaticFile

if TYPE_CHECKING:
    from .workers import WorkerSocket

_SDK_CACHE = b"public, max-age=300"


class PoolService(Service):
    """
    Owns the persistent connection pool of outgoing HTTP (upstream relay,
    challenge verifier) and closes its connections on stop.
    """

    def __init__(self, reactor: Any) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        # Twisted keeps 2 idle connections per host: under concurrency almost
        # every relayed request would open (and resolve) a new one.
        self.pool.maxPersistentPerHost = MAX_IDLE_UPSTREAM_CONNECTIONS

    def stopService(self) -> Any:
        super().stopService()
        return self.pool.closeCachedConnections()


def make_admission(config: Config, store: IStore, route_class: str, methods: tuple[str, ...]) -> Admission:
    """The admission rules of one route class under C{config}."""
    return Admission(
        route_class=route_class,
        methods=methods,
        origins=frozenset(config.origin_allowlist),
        trusted_proxies=config.trusted_proxies,
        limiter=store.limiter,
        rate_per_minute=config.rate_limit_per_minute,
        burst=config.rate_limit_burst,
    )


def nonce_secret(config: Config) -> bytes:
    """
    The DPoP nonce secret, derived from the signing key: every process and
    replica that shares C{TVM_JWT_HS256_KEY} accepts the others' nonces,
    with no extra setting, and the key itself never signs a nonce.
    """
    return hmac.new(config.jwt_keys[0], b"ets dpop-nonce secret", hashlib.sha256).digest()


def build_site(
    config: Config,
    reactor: Any,
    store: IStore,
    pool: HTTPConnectionPool,
    clock: Any = None,
) -> ETSSite:
    """
    The Resource tree and L{ETSSite} of C{config}; outgoing HTTP (relay and
    challenge) goes through C{pool}. Time (token and proof checks, nonces,
    upstream timeouts) comes from C{clock}, the reactor unless a test drives
    it.
    """
    clock = reactor if clock is None else clock
    drain = Drain()
    agent = Agent(reactor, pool=pool)
    challenge = None
    if config.require_ets:
        challenge = ChallengeVerifier(
            http=HTTPClient(agent),
            reactor=reactor,
            secret=config.ets_secret_key,
            verify_url=config.ets_verify_url,
            expected_hostname=config.ets_expected_hostname,
            expected_action=config.ets_expected_action,
        )
    key_cache = jose.KeyCache()
    ring = tokens.KeyRing(config.jwt_keys)
    issue = IssueRoute(
        config=config,
        admission=make_admission(config, store, "issue", ("POST",)),
        ring=ring,
        key_cache=key_cache,
        store=store,
        challenge=challenge,
        now=clock.seconds,
    )
    routes = {
        b"/health": HealthRoute(),
        b"/ready": ReadyRoute(store, lambda: drain.draining),
        b"/tvm/issue": issue,
        b"/sdk/tvm.mjs": StaticFile.from_package("sdk", "tvm.mjs", cache_control=_SDK_CACHE, cors=True),
        b"/sdk/tvm.d.ts": StaticFile.from_package("sdk", "tvm.d.ts", cache_control=_SDK_CACHE, cors=True),
    }
    api = ApiRoute(
        config=config,
        admission=make_admission(config, store, "api", config.allowed_methods),
        ring=ring,
        key_cache=key_cache,
        store=store,
        nonces=NonceSource(nonce_secret(config), clock) if config.require_dpop_nonce else None,
        relay=Relay(
            agent=agent,
            clock=clock,
            base=config.upstream_base_url.encode("ascii"),
            secret=quoted_secret(config.upstream_service_secret),
            timeout=config.upstream_timeout_seconds,
            pool=pool,
        ),
        now=clock.seconds,
    )
    root = Root(routes=routes, api_path=config.api_path.encode("ascii"), api=api, drain=drain)
    if config.dev_mode:
        # The demo page exists only in development mode: production serves
        # nothing a deployment did not ask for.
        root.prefixes[b"/demo/"] = StaticDirectory.from_package("demo", b"/demo/", b"no-cache")
    return ETSSite(
        root,
        api_body_cap=config.max_body_bytes,
        cors_origins=frozenset(o.encode("latin-1") for o in config.origin_allowlist),
        reactor=reactor,
        observer=observe.site_observer(config.trusted_proxies, store, reactor),
    )


def make_store(config: Config, reactor: Any) -> IStore:
    """
    The store C{STORE_URL} names. A Redis store is also a service: the
    caller starts it (it connects) and stops it (it disconnects).
    """
    if config.store_url == "memory:":
        return MemoryStore(reactor)
    # Imported here: only a Redis deployment pays for txredisapi.
    from .stores.redis import RedisStore

    return RedisStore(config.store_url, config.store_key_prefix, reactor)


def build_service(config: Config, reactor: Any, adopted: WorkerSocket | None = None) -> MultiService:
    """
    Everything C{twistd ets} runs for C{config}, as one service.

    @param adopted: in a worker of C{WORKERS=N}, the master's listening
        socket, adopted instead of listening on C{LISTEN_ADDR}; see
        L{ets_twisted.workers}.
    """
    top = MultiService()
    if config.dev_mode:
        dev = devmode.start_dev_upstream(config, reactor)
        config = dev.config
        _ListeningPort(dev.port).setServiceParent(top)
    store = make_store(config, reactor)
    if IService.providedBy(store):
        # Started before the listener and, services stopping in reverse,
        # stopped after the drain: in-flight requests keep their store.
        store.setServiceParent(top)
    pool = PoolService(reactor)
    pool.setServiceParent(top)
    site = build_site(config, reactor, store, pool.pool)
    listener: Service
    if adopted is None:
        listener = StreamServerEndpointService(serverFromString(reactor, config.listen_addr), site)
        # As twisted.application.strports does: a port that cannot be bound
        # fails the start (GracefulShutdown says so and exits) instead of
        # leaving a process that runs without listening.
        listener._raiseSynchronously = True
    else:
        from . import workers

        workers.tag_requests(site)
        listener = workers.AdoptedPort(reactor, adopted.fd, adopted.family, site)
        if adopted.parent is not None:
            workers.OrphanWatch(reactor, adopted.parent).setServiceParent(top)
    GracefulShutdown(reactor, site.resource.drain, listener, config.shutdown_grace_seconds).setServiceParent(top)
    scrape = metrics_service(config.metrics_listen_addr, reactor, site.observer.metrics)
    if scrape is not None:
        scrape.setServiceParent(top)
    return top


@attr.s(auto_attribs=True)
class _ListeningPort(Service):
    """Stops listening on a port opened before the services started."""

    port: Any

    def stopService(self) -> Any:
        super().stopService()
        return self.port.stopListening()
