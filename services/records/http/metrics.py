"""Prometheus metrics of the records service (one registry per app, so tests stay apart)."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.problems import Handler


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


METRICS = web.AppKey("metrics", RecordsMetrics)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    request.app[METRICS].request_seconds.labels(
            request.method, route, str(response.status)).observe(time.perf_counter() - started)
    return response
