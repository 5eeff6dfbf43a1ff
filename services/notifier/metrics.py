"""Prometheus metrics of the notifier (one registry per app, so tests stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.notifier.rules import Kind
from services.notifier.schedule import SKIP_REASONS


class NotifierMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sent = Counter("casetrail_notifications_sent_total", "messages accepted by SMTP",
                            ["kind"], registry=r)
        self.failed = Counter("casetrail_notifications_failed_total",
                              "attempts that failed and will be retried", ["kind"], registry=r)
        self.dead = Counter("casetrail_notifications_dead_total",
                            "notifications given up (dead letters)", ["kind"], registry=r)
        self.cancelled = Counter("casetrail_notifications_cancelled_total",
                                 "notifications cancelled at delivery time", ["kind"],
                                 registry=r)
        self.feed_events = Counter("casetrail_notifier_feed_events_total",
                                   "feed events received", registry=r)
        self.feed_skipped = Counter("casetrail_notifier_feed_events_skipped_total",
                                    "feed events left out: undecodable, or their rules failed",
                                    ["why"], registry=r)
        self.feed_errors = Counter("casetrail_notifier_feed_errors_total",
                                   "failed reads or applications of feed pages", registry=r)
        self.feed_lag = Gauge("casetrail_notifier_feed_lag_seconds",
                              "age of the newest feed event handled, or of the oldest one"
                              " the feed holds back behind an open transaction (0: caught up)",
                              registry=r)
        self.request_seconds = Histogram("casetrail_http_request_seconds",
                                         "HTTP request latency", ["method", "route", "status"],
                                         registry=r)
        self._start_at_zero()

    def _start_at_zero(self) -> None:
        """Every series a counter will have, listed at 0 from the start: one first seen at 1
        shows no increase, so an ``increase()`` alert would miss the first dead letter of each
        kind after every restart."""
        for counter in (self.sent, self.failed, self.dead, self.cancelled):
            for kind in Kind:
                counter.labels(kind.value)
        for why in SKIP_REASONS:
            self.feed_skipped.labels(why)
