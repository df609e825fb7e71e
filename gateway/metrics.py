"""Every Prometheus metric the gateway exports, defined once.

Names are fixed by the design ("Metrics" in ../shared/design.md). Label values come only from loaded
profiles (partner, route, purpose, identifier type) or from fixed sets (outcome, reason, result); a
value read from a request never becomes a label, so an attacker cannot grow the series count and no
personal value reaches a scrape. `partner_label()` is the one gate for request-supplied partner ids.

One `GatewayMetrics` per application, on its own registry, so several gateways in one process (tests,
the demo) do not share counters. With `--workers N` the processes write to a shared
PROMETHEUS_MULTIPROC_DIR and `render()` aggregates them (prometheus-client multiprocess mode).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# Label value for a request whose partner id names no loaded profile; "-" is not a valid profile id
# (profile ids match [a-z0-9][a-z0-9-]{1,62}), so it can never collide with a real partner.
UNKNOWN = "-"

# Outcomes of a request through the egress pipeline (label `outcome`): a fixed set.
OUTCOMES = ("forwarded", "refused", "upstream_error", "ledger_error", "internal_error")
RELOAD_RESULTS = ("ok", "error")
JWKS_RESULTS = ("ok", "error")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class GatewayMetrics:
    """The gateway's metrics on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "gateway_requests_total", "Egress requests by partner, route and outcome.",
            ("partner", "route", "outcome"), registry=reg,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds", "Time from request received to response ready.",
            ("partner", "route"), buckets=_LATENCY_BUCKETS, registry=reg,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds", "Time the partner took to answer.",
            ("partner",), buckets=_LATENCY_BUCKETS, registry=reg,
        )
        self.disclosures = Counter(
            "gateway_disclosures_total", "Disclosure records written (one per try sent to a partner).",
            ("partner", "purpose"), registry=reg,
        )
        self.fields_dropped = Counter(
            "gateway_fields_dropped_total", "Fields removed from requests by the route policy.",
            ("partner", "route"), registry=reg,
        )
        self.pseudonymised = Counter(
            "gateway_pseudonymised_total", "Identifiers replaced by pseudonyms, per identifier type.",
            ("partner", "type"), registry=reg,
        )
        self.reidentifications = Counter(
            "gateway_reidentifications_total",
            "Pseudonyms in partner answers re-identified (done) or refused as not sent by the request (refused).",
            ("partner", "route", "result"), registry=reg,
        )
        self.refusals = Counter(
            "gateway_refusals_total", "Requests refused, by the refusal's reason.",
            ("partner", "reason"), registry=reg,
        )
        self.ledger_commit = Histogram(
            "gateway_ledger_commit_seconds", "Duration of one ledger commit (one group of records).",
            buckets=_LATENCY_BUCKETS, registry=reg,
        )
        self.ledger_batch_size = Histogram(
            "gateway_ledger_batch_size", "Records per ledger commit (group commit).",
            buckets=_BATCH_BUCKETS, registry=reg,
        )
        self.ledger_errors = Counter(
            "gateway_ledger_errors_total", "Ledger appends that failed (refused, or their commit failed).",
            registry=reg,
        )
        self.ledger_late_commits = Counter(
            "gateway_ledger_late_commits_total",
            "Ledger records committed after the commit watchdog had failed them (their requests were refused).",
            registry=reg,
        )
        self.profile_reloads = Counter(
            "gateway_profile_reloads_total", "Profile reloads by result.", ("result",), registry=reg,
        )
        for result in RELOAD_RESULTS:
            self.profile_reloads.labels(result=result)
        # The caller-token key set (gateway.auth.KeyProvider): a stale set shows as failed loads while the
        # last success ages. With --workers N the gauges take the worst live worker ("livemin"), so one
        # worker stuck on an old set is not hidden by the others, and no pid label is needed.
        self.jwks_refreshes = Counter(
            "gateway_jwks_refreshes_total",
            "Loads of the caller-token key set (JWKS URL or key file, the one at start included) by result.",
            ("result",), registry=reg,
        )
        for result in JWKS_RESULTS:
            self.jwks_refreshes.labels(result=result)
        self.jwks_last_success = Gauge(
            "gateway_jwks_last_success_timestamp_seconds",
            "Unix time of the last load that obtained the caller-token key set (0: none yet).",
            registry=reg, multiprocess_mode="livemin",
        )
        self.jwks_keys = Gauge(
            "gateway_jwks_keys", "Usable keys in the caller-token key set in force (0: every token is refused).",
            registry=reg, multiprocess_mode="livemin",
        )
        self.series = RequestSeries(self)

    def ledger_observer(self) -> LedgerCommitMetrics:
        """The observer to pass to gateway.ledger.open_ledger, feeding the four ledger metrics."""
        return LedgerCommitMetrics(self.ledger_batch_size, self.ledger_commit, self.ledger_errors,
                                   self.ledger_late_commits)

    def jwks_observer(self) -> JwksLoadMetrics:
        """The observer to pass to CallerAuthenticator.from_settings, feeding the three JWKS metrics."""
        return JwksLoadMetrics(self.jwks_refreshes.labels(result="ok"), self.jwks_refreshes.labels(result="error"),
                               self.jwks_last_success, self.jwks_keys)

    def prime(self, routes: Iterable[tuple[str, str]]) -> None:
        """Create the zero-valued series of every known (partner, route), so dashboards see them at once."""
        for partner, route in routes:
            for outcome in OUTCOMES:
                self.requests.labels(partner=partner, route=route, outcome=outcome)
            self.fields_dropped.labels(partner=partner, route=route)

    def render(self) -> bytes:
        """The Prometheus text exposition of this process, or of every worker in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            aggregate = CollectorRegistry()
            MultiProcessCollector(aggregate)  # type: ignore[no-untyped-call]
            return generate_latest(aggregate)
        return generate_latest(self.registry)


_M = TypeVar("_M", Counter, Histogram)


class _Children(Generic[_M]):
    """One metric's labelled children by label values (positional, in the metric's label order), made
    once and then reused: `labels()` builds and checks the label tuple under a lock on every call."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric: _M = metric
        self._children: dict[tuple[str, ...], _M] = {}

    def __call__(self, *values: str) -> _M:
        child = self._children.get(values)
        if child is None:
            # Label values come from loaded profiles or fixed sets only (see the module docstring), so
            # this map is as bounded as the series themselves.
            child = self._children[values] = self._metric.labels(*values)
        return child


class RequestSeries:
    """The per-request metrics' children, cached (about 12 µs less per request than `labels()`)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.requests = _Children(metrics.requests)  # (partner, route, outcome)
        self.request_duration = _Children(metrics.request_duration)  # (partner, route)
        self.upstream_duration = _Children(metrics.upstream_duration)  # (partner,)
        self.disclosures = _Children(metrics.disclosures)  # (partner, purpose)
        self.fields_dropped = _Children(metrics.fields_dropped)  # (partner, route)
        self.pseudonymised = _Children(metrics.pseudonymised)  # (partner, type)
        self.refusals = _Children(metrics.refusals)  # (partner, reason)
        self.reidentifications = _Children(metrics.reidentifications)  # (partner, route, result)


@dataclass(frozen=True, slots=True)
class LedgerCommitMetrics:
    """A gateway.ledger.CommitObserver (the ledger does not import this module): each commit's size and
    duration, every failed append, and records committed after the watchdog had failed them."""

    batch_size: Histogram
    commit_seconds: Histogram
    errors: Counter
    late_commits: Counter

    def committed(self, records: int, seconds: float) -> None:
        self.batch_size.observe(records)
        self.commit_seconds.observe(seconds)

    def failed(self, records: int) -> None:
        self.errors.inc(records)

    def landed_late(self, records: int) -> None:
        self.late_commits.inc(records)


@dataclass(frozen=True, slots=True)
class JwksLoadMetrics:
    """A gateway.auth.KeyLoadObserver (auth does not import this module): counts each load of the key set
    by result; a successful one also stamps its time and the number of usable keys it put in force."""

    ok: Counter
    error: Counter
    last_success: Gauge
    keys: Gauge

    def loaded(self, keys: int) -> None:
        self.ok.inc()
        self.last_success.set_to_current_time()
        self.keys.set(keys)

    def failed(self) -> None:
        self.error.inc()


def partner_label(partner_id: str | None, known: Iterable[str] | frozenset[str]) -> str:
    """The label for a partner id taken from a request: itself when a profile has it, else UNKNOWN."""
    if partner_id is not None and partner_id in known:
        return partner_id
    return UNKNOWN
