"""The records service's aiohttp application: wiring, lifecycle and the operational routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog
from aiohttp import web

from schemas.feed import FeedPage, FeedQuery, Health
from services.common.auth import Role, TokenVerifier
from services.common.checkpoint import checkpoint_after
from services.common.database import (
    create_pool,
    database_checks,
    database_ready,
    migrate_schema,
    migration_lock_key,
)
from services.common.http import (
    REQUEST_SECONDS,
    VERIFIER,
    Api,
    auth_middleware,
    json_response,
    parse_query,
    principal,
    request_id_middleware,
    request_metrics_middleware,
)
from services.common.problems import Problem, problem_middleware
from services.common.settings import ConfigurationError, Settings
from services.records.application.access import refuse_window
from services.records.application.analytics import OutcomeAnalytics
from services.records.application.cases import CaseCommands
from services.records.application.language import LanguageGuides
from services.records.application.policy import AgencyPolicies
from services.records.application.queries import CaseQueries
from services.records.export.signing import load_signer
from services.records.http.errors import records_errors_middleware
from services.records.http.metrics import METRICS, RecordsMetrics
from services.records.projections import rebuild
from services.records.store.events import Clock, EventStore, utc_now
from services.records.store.feed import (
    COMMIT_ORDERED,
    FeedWaiter,
    feed_event_json,
    read_feed_waiting,
)

MIGRATIONS = Path(__file__).resolve().parent.parent / "store" / "migrations"
SCHEMA = "records"


@dataclass
class Records:
    """Everything a handler needs, created once per application."""

    settings: Settings
    pool: asyncpg.Pool
    store: EventStore
    waiter: FeedWaiter
    metrics: RecordsMetrics
    commands: CaseCommands
    queries: CaseQueries
    analytics: OutcomeAnalytics


RECORDS = web.AppKey("records", Records)
api = Api(title="Casetrail records", version="1")


def records(request: web.Request) -> Records:
    return request.app[RECORDS]


async def migrate(database_url: str, lock_timeout: float | None = None) -> list[str]:
    """Apply the records migrations, then check the database is one the feed can serve."""
    return await migrate_schema(database_url, SCHEMA, MIGRATIONS, COMMIT_ORDERED, lock_timeout)


async def rebuild_projections(database_url: str,
                              on_wait: rebuild.OnWait = rebuild.quietly,
                              lock_timeout: float = rebuild.LOCK_TIMEOUT,
                              ) -> rebuild.RebuildStats:
    pool = await create_pool(database_url, max_size=2, command_timeout=None)  # may be long
    try:
        try:
            await migrate(database_url, lock_timeout)
        except asyncpg.LockNotAvailableError as error:
            raise await rebuild.migrations_check_timed_out(
                pool, lock_timeout, (f"{SCHEMA}.schema_migrations", *COMMIT_ORDERED),
                (migration_lock_key(SCHEMA), "the records migrations' turn")) from error
        return await rebuild.rebuild_projections(pool, on_wait=on_wait,
                                                 lock_timeout=lock_timeout)
    finally:
        await pool.close()


log = structlog.get_logger("casetrail.records")


def create_app(settings: Settings, *, clock: Clock = utc_now) -> web.Application:
    if not settings.database_url:
        raise ConfigurationError("DATABASE_URL is not set")
    database_url = settings.database_url
    # Per-agency files are read now, so a malformed one stops the start (ConfigurationError
    # naming the file) instead of failing requests later.
    guides = LanguageGuides(settings.language_guide_dir)
    policies = AgencyPolicies(settings.policy_dir)
    signer = load_signer(settings.export_signing_key_file)
    if signer.ephemeral:
        log.warning("export_key_ephemeral", key_id=signer.key_id,
                    hint="set CASETRAIL_EXPORT_SIGNING_KEY_FILE so exports carry a key "
                         "courts can pin")
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[request_id_middleware, request_metrics_middleware, problem_middleware,
                     auth_middleware, records_errors_middleware],
    )
    app[VERIFIER] = TokenVerifier(settings)
    app[METRICS] = RecordsMetrics()
    app[REQUEST_SECONDS] = app[METRICS].request_seconds

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await migrate(database_url)
        pool = await create_pool(database_url, max_size=settings.db_pool_max,
                                 command_timeout=settings.db_command_timeout)
        waiter = FeedWaiter(database_url)
        await waiter.start()
        store = EventStore(pool, clock, on_appended=waiter.announce,
                           on_batch=app[METRICS].append_batch_size.observe)
        app[RECORDS] = Records(
            settings, pool, store, waiter, app[METRICS],
            CaseCommands(store, guides, clock, app[METRICS].append_conflicts.inc, policies),
            CaseQueries(pool, store, clock, signer, policies),
            OutcomeAnalytics(pool, clock, policies))
        yield
        await waiter.stop()
        await pool.close()

    async def release_long_polls(app: web.Application) -> None:
        # shutdown waits for handlers in flight: a feed long-poll would hold it for its wait
        app[RECORDS].waiter.release_all()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(release_long_polls)
    from services.records.http import routes  # noqa: F401  (registers the case routes)

    api.add_routes(app)
    return app


@api.route("GET", "/healthz", "the process is up", response=Health, public=True, tag="ops")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@api.route("GET", "/readyz", "the database answers and migrations are current",
           response=Health, public=True, tag="ops",
           also_answers=((503, "not ready: the failing check is named"),))
async def readyz(request: web.Request) -> web.Response:
    checks = await database_checks(records(request).pool, SCHEMA, MIGRATIONS)
    ready = database_ready(checks)
    return json_response({"status": "ready" if ready else "not ready", "checks": checks},
                         status=200 if ready else 503)


api.add_operations_routes(lambda request: records(request).metrics.registry)


@api.route("GET", "/v1/events", "the global event feed (long-poll); service role only",
           query=FeedQuery, response=FeedPage, tag="feed")
async def event_feed(request: web.Request) -> web.Response:
    who = principal(request)
    if who.role is not Role.SERVICE:
        raise Problem(403, "Forbidden", "the event feed is for the service role",
                      kind="forbidden")
    refuse_window(who, "the feed hands out every event up to now: read it"
                  " with a token without a window")
    query = parse_query(request, FeedQuery)
    after = checkpoint_after(query.after)
    ctx = records(request)
    wait = min(query.wait, ctx.settings.feed_max_wait_seconds)
    page = await read_feed_waiting(ctx.pool, ctx.waiter, after, query.limit, wait)
    since = page.held_back_since.isoformat() if page.held_back_since else None
    return json_response({"events": [feed_event_json(e) for e in page.events],
                          "checkpoint": page.checkpoint.encode(),
                          "held_back": page.held_back, "held_back_since": since})
