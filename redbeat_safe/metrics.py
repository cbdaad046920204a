"""Prometheus metrics (the ``metrics`` extra: ``pip install 'redbeat-safe[metrics]'``).

Two sources, documented in docs/monitoring.md:

- ``ClusterCollector``: the whole cluster, read from Redis at scrape time (entries
  by state, live beats, backlog, in-flight ticks, per-entry next tick and
  lateness, dispatch totals). Served by ``celery schedules serve`` at /metrics,
  or registered in any prometheus_client registry. Any number of scrapers may
  run: it only reads, a few round trips per scrape, and never touches a beat.
- ``BeatMetrics``: one beat process's own work (passes, claims won and lost,
  publish and Redis latency, outage), served on ``redbeat_safe_metrics_port``.
  The scheduler loads it by name only when that setting is given.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised by the error message test
    raise ImportError("redbeat_safe.metrics needs prometheus_client: pip install 'redbeat-safe[metrics]'") from exc

from . import __version__, overview
from .config import Settings
from .connection import STORE_ERRORS
from .engine import Observer
from .store import RedisStore
from .views import printable

logger = logging.getLogger("redbeat_safe")

PREFIX = "redbeat_safe"
#: Publish and Redis round trips: a local broker answers in well under a millisecond,
#: a remote one in a few; a WAIT for replicas takes up to redbeat_safe_wait_timeout.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


#: Which per-entry series a scrape carries: ``late`` (the default) only the lateness of
#: entries whose next tick has come, so it costs what the backlog costs; ``all`` also
#: every entry's next tick and latest dispatch (3-4 series per entry: with 10,000
#: entries prometheus_client's text format alone takes ~200 ms); ``none``.
ENTRY_SERIES = ("late", "all", "none")


class ClusterCollector(Collector):
    """The cluster's state, read at every scrape (see ENTRY_SERIES)."""

    def __init__(self, store: RedisStore, entry_series: str = "late") -> None:
        if entry_series not in ENTRY_SERIES:
            raise ValueError(f"entry_series must be one of {', '.join(ENTRY_SERIES)}, not {entry_series!r}")
        self.store = store
        self.entry_series = entry_series

    def describe(self) -> list[Metric]:
        return []  # read at scrape time: no fixed description to check against

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}_redis_up", "1 when the store's Redis answered this scrape, else 0")
        try:
            ov = overview.read(self.store, with_dispatch=self.entry_series == "all")
        except STORE_ERRORS as exc:
            logger.warning("redbeat_safe metrics: Redis unavailable during a scrape (%s: %s)", type(exc).__name__, exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        now = ov.now_ms
        states = GaugeMetricFamily(f"{PREFIX}_entries", "Entries by state: enabled, paused, finished, damaged (set aside)",
                                   labels=["state"])
        for state, n in ov.by_state().items():
            states.add_metric([state], n)
        yield states
        yield _gauge("beats_alive", "Beats heartbeating within their liveness window", ov.beats_alive)
        yield _gauge("beats_registered", "Beats registered, alive or not yet pruned", len(ov.beats))
        yield _gauge("beats_refused", "Beats inside workers whose configuration was refused (they schedule nothing)", len(ov.refused))
        yield _gauge("due_backlog", "Enabled entries whose next tick has come and is not claimed yet", ov.due_backlog())
        late = [now - e.next_ms for e in ov.entries if e.next_ms is not None and e.next_ms <= now]
        yield _gauge("max_lateness_seconds", "How far the most late enabled entry's next tick is behind now (0: none late)",
                     max(late, default=0) / 1000)
        yield _gauge("in_flight_ticks", "Ticks claimed and not yet acknowledged as published", len(ov.in_flight))
        ticks = [t for _, _, t in ov.in_flight if t is not None]
        yield _gauge("in_flight_oldest_age_seconds", "Age of the oldest in-flight tick (now - its nominal tick; 0: none)",
                     max(0, now - min(ticks)) / 1000 if ticks else 0.0)
        yield _gauge("in_flight_overdue_ticks", "In-flight ticks whose lease has run out (a reaper re-publishes them)",
                     sum(1 for _, deadline, _ in ov.in_flight if deadline < now))
        dispatches = CounterMetricFamily(f"{PREFIX}_dispatches", "Ticks acknowledged, cluster-wide, by kind: scheduled, "
                                         "republished (by the reaper), triggered, dropped (could not be published)", labels=["kind"])
        for field, kind in overview.COUNTER_KINDS.items():
            dispatches.add_metric([kind], ov.counters.get(field, 0))
        yield dispatches
        yield CounterMetricFamily(f"{PREFIX}_ticks_skipped", "Missed ticks the misfire policy did not publish (coalesced, "
                                  "skipped, past the starting deadline or catch-up limit)", value=ov.counters.get(overview.SKIPPED, 0))
        if self.entry_series == "none":
            return
        yield from self._runs(now)
        lateness = GaugeMetricFamily(f"{PREFIX}_entry_lateness_seconds", "How far each enabled entry's next tick is behind now "
                                     "(only entries whose tick has come, unless entry series are 'all': then 0 for the others)",
                                     labels=["entry"])
        for e in ov.entries:
            if e.next_ms is not None and (e.next_ms <= now or self.entry_series == "all"):
                lateness.add_metric([printable(e.name)], max(0, now - e.next_ms) / 1000)
        yield lateness
        if self.entry_series != "all":
            return
        nxt = GaugeMetricFamily(f"{PREFIX}_entry_next_tick_timestamp_seconds", "Each enabled entry's next tick (Unix time)",
                                labels=["entry"])
        last = GaugeMetricFamily(f"{PREFIX}_entry_last_dispatch_timestamp_seconds", "When each entry's latest dispatch was "
                                 "acknowledged (Unix time)", labels=["entry"])
        last_late = GaugeMetricFamily(f"{PREFIX}_entry_last_dispatch_lateness_seconds", "How late each entry's latest dispatch "
                                      "was published after its nominal tick", labels=["entry"])
        for e in ov.entries:
            if e.next_ms is not None:
                nxt.add_metric([printable(e.name)], e.next_ms / 1000)
            d = e.last_dispatch
            if d is not None:
                at = d.published_at.timestamp()
                last.add_metric([printable(e.name)], at)
                last_late.add_metric([printable(e.name)], max(0.0, at - d.tick_ms / 1000))
        yield from (nxt, last, last_late)


    def _runs(self, now: int) -> Iterator[Metric]:
        """What the workers' run ledger reported, per entry (only entries it has seen)."""
        try:
            stats, last_ok = self.store.run_stats()
        except STORE_ERRORS:
            return
        runs = CounterMetricFamily(f"{PREFIX}_runs", "Runs reported by the workers' run ledger, by entry and outcome: "
                                   "succeeded, failed, retried, revoked, expired", labels=["entry", "outcome"])
        skipped = CounterMetricFamily(f"{PREFIX}_entry_ticks_skipped", "Ticks not run, by entry and reason: overlap, replaced, "
                                      "coalesced, missed, paused", labels=["entry", "reason"])
        for (outcome, name), n in sorted(stats.items()):
            if outcome.startswith("skipped."):
                skipped.add_metric([printable(name), outcome[len("skipped."):]], n)
            else:
                runs.add_metric([printable(name), outcome], n)
        age = GaugeMetricFamily(f"{PREFIX}_entry_last_success_age_seconds", "Seconds since each entry's latest run succeeded "
                                "(the run ledger): a dead-man signal", labels=["entry"])
        for name, at in sorted(last_ok.items()):
            age.add_metric([printable(name)], max(0, now - at) / 1000)
        yield from (runs, skipped, age)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def cluster_registry(store: RedisStore, entry_series: str = "late") -> CollectorRegistry:
    """A registry holding only the cluster collector (what /metrics serves)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(store, entry_series=entry_series))
    return registry


class BeatMetrics(Observer):
    """One beat's own metrics, in a registry of its own, served on its port."""

    def __init__(self, settings: Settings, instance_id: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.passes = Counter(f"{PREFIX}_beat_passes", "Scheduling passes this beat ran", registry=r)
        self.claim_results = Counter(f"{PREFIX}_beat_claims", "Entries this beat claimed (won) or lost to another writer",
                                     ["result"], registry=r)
        self.publish_seconds = Histogram(f"{PREFIX}_beat_publish_seconds", "Time to publish one tick to the broker",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.publish_failures = Counter(f"{PREFIX}_beat_publish_failures", "Publishes that failed (retried by the reaper, "
                                        "or dropped when retrying cannot help)", registry=r)
        self.redis_seconds = Histogram(f"{PREFIX}_beat_redis_seconds", "Round trip of one script call", ["call"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.redis_outage = Gauge(f"{PREFIX}_beat_redis_outage", "1 while this beat cannot reach Redis", registry=r)
        info = Gauge(f"{PREFIX}_beat_info", "This beat: its instance id and version", ["instance_id", "version"], registry=r)
        info.labels(instance_id, __version__).set(1)
        for result in ("won", "lost"):
            self.claim_results.labels(result)
        for call in ("peek", "claim", "ack"):
            self.redis_seconds.labels(call)
        self.server: Any = None

    def serve(self, port: int, address: str) -> int:
        """Start the HTTP endpoint in a thread; the port it listens on (``port`` 0 picks one)."""
        self.server, _ = start_http_server(port, addr=address, registry=self.registry)
        return int(self.server.server_port)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # -- Observer ----------------------------------------------------------
    def passed(self) -> None:
        self.passes.inc()

    def claims(self, won: int, lost: int) -> None:
        if won:
            self.claim_results.labels("won").inc(won)
        if lost:
            self.claim_results.labels("lost").inc(lost)

    def published(self, seconds: float, ok: bool) -> None:
        self.publish_seconds.observe(seconds)
        if not ok:
            self.publish_failures.inc()

    def redis(self, call: str, seconds: float) -> None:
        self.redis_seconds.labels(call).observe(seconds)

    def outage(self, down: bool) -> None:
        self.redis_outage.set(1 if down else 0)


def beat_observer(settings: Settings, instance_id: str) -> BeatMetrics:
    """What the scheduler loads (by name) when ``redbeat_safe_metrics_port`` is set."""
    metrics = BeatMetrics(settings, instance_id)
    port = metrics.serve(settings.metrics_port or 0, settings.metrics_address)
    logger.info("redbeat_safe: this beat's metrics are served on http://%s:%d/metrics", settings.metrics_address, port)
    return metrics
