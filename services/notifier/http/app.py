"""The notifier's aiohttp application: wiring, lifecycle and the operational routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
from aiohttp import web

from schemas.feed import Health
from services.common.auth import TokenVerifier
from services.common.database import (
    create_pool,
    database_checks,
    database_ready,
    migrate_schema,
)
from services.common.http import (
    REQUEST_SECONDS,
    VERIFIER,
    Api,
    auth_middleware,
    json_response,
    request_metrics_middleware,
)
from services.common.http import request_id_middleware as request_ids
from services.common.problems import problem_middleware
from services.common.settings import ConfigurationError
from services.notifier.feed import FeedSubscriber
from services.notifier.links import UnsubscribeLinks
from services.notifier.metrics import NotifierMetrics
from services.notifier.service import Notifier, utc_now
from services.notifier.settings import NotifierSettings
from services.notifier.store.cases import begin_history

MIGRATIONS = Path(__file__).resolve().parent.parent / "store" / "migrations"
SCHEMA = "notifier"
Clock = Callable[[], datetime]


@dataclass
class Context:
    settings: NotifierSettings
    pool: asyncpg.Pool
    notifier: Notifier
    metrics: NotifierMetrics
    clock: Clock
    links: UnsubscribeLinks | None = None  # None: no NOTIFIER_PUBLIC_URL, no links taken


NOTIFIER = web.AppKey("notifier", Context)
METRICS = web.AppKey("notifier_metrics", NotifierMetrics)
api = Api(title="Casetrail notifier", version="1")


def ctx(request: web.Request) -> Context:
    return request.app[NOTIFIER]


async def migrate(database_url: str) -> list[str]:
    return await migrate_schema(database_url, SCHEMA, MIGRATIONS,
                                {"notifier.access_log": "id"})  # read in commit order


def create_app(settings: NotifierSettings, *, clock: Clock = utc_now,
               background: bool = True) -> web.Application:
    """The notifier app. ``background=False`` leaves the feed and dispatch loops stopped
    (tests drive them step by step through ``app[NOTIFIER].notifier``)."""
    if not settings.database_url:
        raise ConfigurationError("DATABASE_URL is not set")
    database_url = settings.database_url
    links = _links(settings)
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[request_ids, request_metrics_middleware, problem_middleware,
                                       auth_middleware])
    app[VERIFIER] = TokenVerifier(settings)
    app[METRICS] = NotifierMetrics()
    app[REQUEST_SECONDS] = app[METRICS].request_seconds

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await migrate(database_url)
        pool = await create_pool(database_url, max_size=settings.db_pool_max,
                                 command_timeout=settings.db_command_timeout)
        history_began = await begin_history(pool, clock())
        notifier = Notifier(pool, settings, clock, app[METRICS], history_began, links)
        app[NOTIFIER] = Context(settings, pool, notifier, app[METRICS], clock, links)
        if background:
            await notifier.start()
        yield
        await notifier.stop()
        await pool.close()

    app.cleanup_ctx.append(lifecycle)
    from services.notifier.http import routes  # noqa: F401  (registers the API routes)

    api.add_routes(app)
    return app


def _links(settings: NotifierSettings) -> UnsubscribeLinks | None:
    try:
        return UnsubscribeLinks.of(settings.public_url, settings.link_secret_file)
    except ValueError as error:  # the file changed since the settings read it
        raise ConfigurationError(f"NOTIFIER_LINK_SECRET_FILE: {error}") from error


@api.route("GET", "/healthz", "the process is up", response=Health, public=True, tag="ops")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@api.route("GET", "/readyz", "database reachable, migrations current, feed readable (read"
           " at least once, and the last read did not fail)", response=Health, public=True,
           tag="ops", also_answers=((503, "not ready: the failing check is named"),))
async def readyz(request: web.Request) -> web.Response:
    checks = await database_checks(ctx(request).pool, SCHEMA, MIGRATIONS)
    subscriber = ctx(request).notifier.subscriber
    checks["feed"] = _feed_check(subscriber)
    ready = database_ready(checks) and subscriber.healthy
    return json_response({"status": "ready" if ready else "not ready", "checks": checks},
                         status=200 if ready else 503)


def _feed_check(subscriber: FeedSubscriber) -> str:
    if subscriber.healthy:
        return "ok"
    if subscriber.last_error is None:
        return "not read yet"
    return f"last read failed: {subscriber.last_error}"


api.add_operations_routes(lambda request: request.app[METRICS].registry)
