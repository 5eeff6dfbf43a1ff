"""Prometheus metrics of the records service (one registry per app, so tests stay apart)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from schemas.events import EVENT_TYPES


class RecordsMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "casetrail_http_request_seconds", "HTTP request latency",
            ["method", "route", "status"], registry=self.registry)
        self.events_appended = Counter(
            "casetrail_events_appended_total", "events appended", ["type"],
            registry=self.registry)
        for event_type in EVENT_TYPES:  # listed at 0 from the start: a series first seen at 1
            self.events_appended.labels(event_type)  # shows no increase to an alert
        self.append_conflicts = Counter(
            "casetrail_append_conflicts_total", "appends that lost a race and were retried",
            registry=self.registry)
        self.append_batch_size = Histogram(
            "casetrail_append_batch_size", "appends sent together in one statement (one that lost"
            " its version race counts again when retried)",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)


METRICS = web.AppKey("metrics", RecordsMetrics)
