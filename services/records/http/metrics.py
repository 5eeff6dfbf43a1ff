"""Prometheus metrics of the records service (one registry per app, so tests stay apart)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram


class RecordsMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "casetrail_http_request_seconds", "HTTP request latency",
            ["method", "route", "status"], registry=self.registry)
        self.events_appended = Counter(
            "casetrail_events_appended_total", "events appended", ["type"],
            registry=self.registry)
        self.append_conflicts = Counter(
            "casetrail_append_conflicts_total", "appends that lost a race and were retried",
            registry=self.registry)
        self.append_batch_size = Histogram(
            "casetrail_append_batch_size", "appends written together in one statement",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self._appended_by_type: dict[str, Counter] = {}

    def event_appended(self, event_type: str) -> None:
        """``events_appended.labels(event_type).inc()``, without labels()' checks on every
        event: its child for a type is always the same one."""
        child = self._appended_by_type.get(event_type)
        if child is None:
            child = self._appended_by_type[event_type] = self.events_appended.labels(event_type)
        child.inc()


METRICS = web.AppKey("metrics", RecordsMetrics)
