"""`/metrics` through `prometheus_client`: the engine's gauges and counters, read
at each scrape, and the latency histograms serving engines export.

One `Metrics` per app, on a registry of its own (several apps in one process,
as tests make, do not share series). The histograms are observed by the HTTP
layer as it answers: queue time (submitted to given a row), time to the first
character (submitted to its first chunk written), time between chunks, and
request duration (submitted to the last chunk); requests are counted by
`finish_reason`.
"""
from __future__ import annotations

import time

# Seconds; the first-character and gap buckets are finer, as they are what a
# reader feels.
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DURATION = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _EngineCollector:
    """The engine's numbers, read when Prometheus scrapes."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.engine.stats()
        for name, help_text, value in (
                ("active_streams", "Streams the engine steps now.", s["active"]),
                ("queued_streams", "Requests waiting for a row.", s["queued"]),
                ("parked_streams", "Streams paused for a reader that fell behind.", s["parked"]),
                ("max_streams", "Rows of the batch.", s["max_streams"]),
                ("characters_per_second", "Characters produced per second, last 5 s.",
                 s["characters_per_second"])):
            yield GaugeMetricFamily(f"charstream_{name}", help_text, value=value)
        for name, help_text, value in (
                ("characters", "Characters produced.", s["characters"]),
                ("requests", "Requests accepted.", s["requests"]),
                ("ticks", "Batched native steps run.", s["ticks"])):
            yield CounterMetricFamily(f"charstream_{name}", help_text, value=value)


class Metrics:
    """The app's registry: the engine's collector and the HTTP layer's histograms."""

    def __init__(self, engine, store=None):
        from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                                       disable_created_metrics)

        disable_created_metrics()    # no *_created series: nobody graphs them
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
        self.queue_time = Histogram(
            "charstream_queue_seconds", "Time from submission to a row.",
            buckets=_LATENCY, registry=self.registry)
        self.first_character = Histogram(
            "charstream_time_to_first_character_seconds",
            "Time from submission to the first chunk of text written.",
            buckets=_LATENCY, registry=self.registry)
        self.between_chunks = Histogram(
            "charstream_time_between_chunks_seconds", "Time between two chunks of a stream.",
            buckets=_LATENCY, registry=self.registry)
        self.duration = Histogram(
            "charstream_request_duration_seconds", "Time from submission to the last chunk.",
            buckets=_DURATION, registry=self.registry)
        self.sessions = Gauge("charstream_sessions", "Sessions kept (set at each scrape).",
                              registry=self.registry)
        if store is not None:
            Gauge("charstream_session_ttl_seconds", "Sessions expire this long after last use.",
                  registry=self.registry).set(store.ttl)
            Gauge("charstream_max_sessions", "Sessions kept at most (least recently used go).",
                  registry=self.registry).set(store.max_sessions)
        self.finished = Counter(
            "charstream_finished_requests", "Requests finished, by finish_reason.",
            ["finish_reason"], registry=self.registry)

    def text(self) -> tuple[bytes, str]:
        """The exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Timing:
    """One request's clock, observed into `Metrics` as its chunks are written."""

    def __init__(self, metrics: Metrics, job):
        self.metrics, self.job = metrics, job
        self.last: float | None = None

    def chunk(self) -> None:
        """A chunk of text was written."""
        now = time.monotonic()
        if self.last is None:
            self.metrics.first_character.observe(now - self.job.submitted_at)
        else:
            self.metrics.between_chunks.observe(now - self.last)
        self.last = now

    def done(self) -> None:
        job, m = self.job, self.metrics
        if job.placed_at is not None:
            m.queue_time.observe(job.placed_at - job.submitted_at)
        m.duration.observe(time.monotonic() - job.submitted_at)
        m.finished.labels(job.finish_reason or "cancelled").inc()
