"""Prometheus metrics owned by one app (its own registry): no per-stream labels, fine latency buckets."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
DELIVERY_LAG_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    900.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
REJECTION_REASONS = (
    "invalid_request",
    "unknown_model",
    "unknown_stream",
    "model_mismatch",
    "payload_too_large",
    "unsupported_media_type",
    "request_timeout",
    "too_many_requests",
    "overloaded",
    "store_unavailable",
    "inference_failed",
    "unauthorized",
    "forbidden",
)


class Metrics:
    """Every metric the service exports. In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) the exposition
    gathers all workers' files."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "vigil_requests_total", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.request_latency = Histogram(
            "vigil_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.points_received = Counter(
            "vigil_points_received_total", "Points received", ["model"], registry=r
        )
        self.points_scored = Counter("vigil_points_scored_total", "Points scored", ["model"], registry=r)
        self.points_dropped = Counter(
            "vigil_points_dropped_total", "Points dropped (duplicate or stale ts)", ["reason"], registry=r
        )
        self.scores_above = Counter(
            "vigil_scores_above_level_total",
            "Scored points at or above a level",
            ["model", "level"],
            registry=r,
        )
        self.batch_size = Histogram(
            "vigil_batch_size_windows",
            "Windows per inference batch",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "vigil_queue_wait_seconds",
            "Time a window waited for its batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "vigil_inference_duration_seconds",
            "Inference + scoring time per batch",
            ["model", "provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "vigil_queue_depth_windows",
            "Windows queued or running",
            ["model"],
            registry=r,
            multiprocess_mode="sum",
        )
        self.rejections = Counter("vigil_rejections_total", "Requests rejected", ["reason"], registry=r)
        self.inflight_bounds = Counter(
            "vigil_inflight_bounds_total",
            "In-flight bounds engaged under the configured limits (service/inflight.py): scope server (503) or key"
            " (429); cause refusals, or growth (a key's backlog rising step after step)",
            ["scope", "cause"],
            registry=r,
        )
        for scope, cause in (("key", "growth"), ("key", "refusals"), ("server", "refusals")):
            self.inflight_bounds.labels(scope, cause)  # at 0 from the start: a rate of none is 0, not no data
        self.bounded_keys = Gauge(
            "vigil_inflight_bounded_keys",
            "API keys held under their per-key share now (what their own requests complete in 0.1 s)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.redis_latency = Histogram(
            "vigil_redis_duration_seconds", "Redis call latency", ["op"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.redis_errors = Counter("vigil_redis_errors_total", "Redis call failures", ["op"], registry=r)
        self.alert_transitions = Counter(
            "vigil_alert_transitions_total",
            "Alert state transitions",
            ["model", "state", "severity"],
            registry=r,
        )
        self.alerts_firing = Gauge(
            "vigil_alerts_firing",
            "Alerts firing (net firing minus resolved transitions seen by this process)",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.feed_clients = Gauge(
            "vigil_feed_clients", "Connected WebSocket feed clients", registry=r, multiprocess_mode="livesum"
        )
        self.model_info = Gauge(
            "vigil_model_info",
            "Loaded model bundles",
            ["model", "version", "architecture", "provider"],
            registry=r,
            multiprocess_mode="max",
        )
        self.model_version_refused = Gauge(
            "vigil_model_version_refused",
            "Versions on disk not served because they change the model's window or sensors (1 per version)",
            ["model", "version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.loop_lag = Histogram(
            "vigil_event_loop_lag_seconds",
            "How much later than asked the event loop woke a task that sleeps 50 ms (service/looplag.py)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.worker_restarts = Counter(
            "vigil_worker_restarts_total",
            "Inference worker threads that died and were restarted (their requests failed)",
            ["model"],
            registry=r,
        )

        self.alertmanager_posts = Counter(
            "vigil_alertmanager_posts_total",
            "POSTs to Alertmanager by kind (event, resend, gone: a deleted stream's alert resolved) and outcome (accepted, rejected: 4xx, failed: retried)",
            ["alertmanager", "kind", "outcome"],
            registry=r,
        )
        self.deliveries = Counter(
            "vigil_alert_deliveries_total",
            "Alert events handled for an Alertmanager: delivered, rejected (4xx), skipped (pending and cancelled "
            "post nothing), expired (trimmed from the event stream before delivery)",
            ["alertmanager", "outcome"],
            registry=r,
        )
        self.delivery_lag = Histogram(
            "vigil_alert_delivery_lag_seconds",
            "From an alert event being recorded to Alertmanager accepting it",
            ["alertmanager"],
            buckets=DELIVERY_LAG_BUCKETS,
            registry=r,
        )
        self.delivery_pending = Gauge(
            "vigil_alert_delivery_pending_events",
            "Alert events an Alertmanager has not accepted yet (reported by the delivering replica)",
            ["alertmanager"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.delivery_leader = Gauge(
            "vigil_alert_delivery_leader",
            "1 in the process that holds the alert delivery lease",
            registry=r,
            multiprocess_mode="livesum",
        )

        self.source_refused_series = Gauge(
            "vigil_source_refused_series",
            "Label values of a source-backed model that its last poll left out: a query answered several series "
            "for one, or a value that is not a number, or two map to one stream id (/readyz names them)",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.source_polls = Counter(
            "vigil_source_polls_total",
            "Polls of a source-backed model's Prometheus by outcome (ok, failed: unreachable or refused, lease_lost:"
            " stopped because another replica holds the lease)",
            ["model", "outcome"],
            registry=r,
        )
        self.source_points = Counter(
            "vigil_source_points_total",
            "Points read from a source and fed to the stream path (fed), or refused by it (refused)",
            ["model", "outcome"],
            registry=r,
        )
        self.source_gaps = Counter(
            "vigil_source_gaps_total",
            "Gaps longer than the source's fill limit (or the catch-up limit): the stream's window restarted",
            ["model"],
            registry=r,
        )
        self.source_lag = Gauge(
            "vigil_source_lag_seconds",
            "How far the newest point fed from a source is behind now (the polling replica)",
            ["model"],
            registry=r,
            multiprocess_mode="max",
        )
        self.source_leader = Gauge(
            "vigil_source_leader",
            "1 in the process that holds a source's polling lease",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.stream_score = Gauge(
            "vigil_stream_score",
            "Latest score of a source-backed stream (opt-in: VIGIL_SOURCES__EXPORT_SCORES; bounded in number)",
            ["model", "stream"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.stream_level = Gauge(
            "vigil_stream_level",
            "Level of that latest score: 0 normal, 1 warning, 2 critical",
            ["model", "stream"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def initialise_source(self, model: str) -> None:
        """Create a source-backed model's series at 0."""
        for outcome in ("ok", "failed", "lease_lost"):
            self.source_polls.labels(model, outcome)
        self.source_refused_series.labels(model)
        for outcome in ("fed", "refused"):
            self.source_points.labels(model, outcome)
        self.source_gaps.labels(model)
        self.source_leader.labels(model).set(0)

    def initialise_delivery(self, targets: list[str]) -> None:
        """Create the delivery series of each Alertmanager at 0 (its URL without credentials)."""
        for target in targets:
            for kind in ("event", "resend", "gone"):
                for outcome in ("accepted", "rejected", "failed"):
                    self.alertmanager_posts.labels(target, kind, outcome)
            for outcome in ("delivered", "rejected", "skipped", "expired"):
                self.deliveries.labels(target, outcome)
            self.delivery_lag.labels(target)
            self.delivery_pending.labels(target).set(0)
        self.delivery_leader.set(0)

    def initialise_model(self, model: str, provider: str) -> None:
        """Create every labelled child at 0 so dashboards and rates show 0, not "no data", before traffic."""
        self.points_received.labels(model)
        self.points_scored.labels(model)
        self.alerts_firing.labels(model)
        for level in ("warning", "critical"):
            self.scores_above.labels(model, level)
        for state in ("pending", "firing", "resolved", "cancelled"):
            for severity in ("warning", "critical"):
                self.alert_transitions.labels(model, state, severity)
        self.inference.labels(model, provider)
        self.batch_size.labels(model)
        self.queue_wait.labels(model)
        self.queue_depth.labels(model).set(0)
        self.worker_restarts.labels(model)

    def initialise_service(self) -> None:
        for reason in ("duplicate", "stale"):
            self.points_dropped.labels(reason)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        for op in ("append", "alerts"):
            self.redis_errors.labels(op)
            self.redis_latency.labels(op)
        self.feed_clients.set(0)

    def render(self) -> bytes:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            gathered = CollectorRegistry()
            multiprocess.MultiProcessCollector(gathered)  # type: ignore[no-untyped-call]
            return generate_latest(gathered)
        return generate_latest(self.registry)
