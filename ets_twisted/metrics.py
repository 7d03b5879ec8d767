"""
Prometheus metrics, on their own registry and their own listener.

Every ETS process keeps one L{Metrics} (its own L{CollectorRegistry}, never
prometheus-client's global one, so two sites in one test process never
share counters). L{metrics_service} serves it as Prometheus text at
C{/metrics} on C{METRICS_LISTEN_ADDR}, a listener apart from the public one
so the figures are not published to browsers.

The page is rendered in the reactor thread with C{generate_latest} rather
than with C{prometheus_client.twisted.MetricsResource}: that one runs a WSGI
app in the reactor's thread pool, and the replay-cache gauge reads state the
reactor thread owns.

Labels are bounded sets only: route labels come from the configured routes
(never the raw path), refusal codes from the SPEC's table.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .errors import STATUS

#: Upstream time-to-headers buckets, seconds: from a local API to the
#: default 40 s timeout.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0)

#: The results of a bot-challenge verification, as labelled.
CHALLENGE_RESULTS = ("success", "failed", "unavailable")


class ReactorCounter(Collector):
    """
    A counter with labels for figures bumped on every request.

    prometheus-client's L{Counter} takes a lock on each increment (and its
    C{labels()} another): a few microseconds a request. ETS counts in the
    reactor thread and renders the page there too, so plain integers do.
    Exposed as C{<name>_total}, like a L{Counter}.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.counts: dict[tuple[str, ...], int] = {}
        if not labelnames:
            self.counts[()] = 0
        if registry is not None:
            registry.register(self)

    def inc(self, *labels: str) -> None:
        """Count one, under the values of C{labelnames} in order."""
        counts = self.counts
        counts[labels] = counts.get(labels, 0) + 1

    def value(self, *labels: str) -> int:
        return self.counts.get(labels, 0)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, count in self.counts.items():
            family.add_metric(labels, count)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        # Names only, for the registry's duplicate check (no samples).
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)


class Metrics:
    """
    The figures of one ETS process.

    @ivar registry: the L{CollectorRegistry} they are registered in.
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.tokens_issued = ReactorCounter(
            "ets_tokens_issued", "Access tokens minted by POST /tvm/issue.", registry=r
        )
        self.requests = ReactorCounter(
            "ets_requests",
            "Answered requests by route (the configured route, not the raw path) and status; "
            "499 means the answer did not complete (client gone or connection cut).",
            ("route", "status"),
            registry=r,
        )
        self.refusals = Counter(
            "ets_refusals", "Error answers by SPEC error code.", ["code"], registry=r
        )
        self.upstream_latency = Histogram(
            "ets_upstream_latency_seconds",
            "Time from sending a relayed request to the upstream's response headers.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.relays_in_flight = Gauge(
            "ets_relays_in_flight", "Relayed requests whose answer is not complete yet.", registry=r
        )
        self.store_errors = Counter(
            "ets_store_errors", "Requests answered 503 store_unavailable (the store did not answer).",
            registry=r,
        )
        self.challenge_verifications = Counter(
            "ets_challenge_verifications",
            "Bot-challenge (siteverify) verifications by result: success, failed "
            "(ets_failed), unavailable (ets_unavailable).",
            ["result"],
            registry=r,
        )
        # Every label known up front, so rate() works from the first scrape.
        for code in STATUS:
            self.refusals.labels(code=code)
        for result in CHALLENGE_RESULTS:
            self.challenge_verifications.labels(result=result)

    def watch_store(self, store: Any) -> None:
        """
        Add the replay-cache size gauge for a store whose replay cache can
        count itself (the memory store); a shared store's size is Redis's
        to report.
        """
        replay = getattr(store, "replay", None)
        if replay is None or not hasattr(type(replay), "__len__"):
            return
        gauge = Gauge(
            "ets_replay_cache_entries",
            "DPoP proofs remembered by this process's replay cache (memory store only).",
            registry=self.registry,
        )
        gauge.set_function(lambda: len(replay))

    def count_challenge(self, code: str | None) -> None:
        """Count one verification: C{code} None when admitted, else its SPEC code."""
        result = {None: "success", "ets_failed": "failed"}.get(code, "unavailable")
        self.challenge_verifications.labels(result=result).inc()


class MetricsPage(Resource):
    """C{GET /metrics}: the Prometheus text exposition of one registry."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self._registry)

    render_HEAD = render_GET


class _QuietSite(Site):
    """A site that writes no access line: scrapes every few seconds are noise."""

    noisy = False

    def log(self, request: Request) -> None:
        pass


def metrics_site(metrics: Metrics) -> Site:
    """The site of the metrics listener: C{/metrics} and nothing else."""
    root = Resource()
    root.putChild(b"metrics", MetricsPage(metrics.registry))
    return _QuietSite(root)


def metrics_service(endpoint: str | None, reactor: Any, metrics: Metrics) -> IService | None:
    """
    The C{METRICS_LISTEN_ADDR} listener, or None when it is unset.

    @param endpoint: a Twisted server endpoint string (L{Config} converts the
        SPEC's address forms).
    """
    if not endpoint:
        return None
    return StreamServerEndpointService(serverFromString(reactor, endpoint), metrics_site(metrics))
