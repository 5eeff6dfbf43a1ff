"""The notifier stopped, as a deployment stops it, while a dispatch or a digest is under way:
a slow mail server holds its reply to DATA, and the stop comes at moments spread across that
wait. The stop must let the send finish and be recorded before the pool closes: no database
error in the log, no row left leased, every message sent once and marked sent.

An audit saw `cannot switch to state 12; another operation (2) is in progress` logged by the
dispatch job as a test ended, and asked whether a job shares a connection with another job or
with the stop. These tests find no such sharing. That message is asyncpg's for a pooled
connection the server has ended (a backend terminated; the test's database fixture runs
DROP DATABASE ... WITH (FORCE) before the test's apps are torn down) handed out before its
close is seen; two coroutines on one connection are refused with another message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
import structlog
from aiohttp import web

from services.common.server import ServiceRunner
from services.notifier.http.app import NOTIFIER, create_app
from tests.conftest import FakeClock, TokenFactory, bearer, serve
from tests.notifier_helpers import Records, SmtpServer, notifier_settings

DATA_HELD_SECONDS = 0.4
# when the stop comes, in seconds after the message's data reached the mail server: before its
# reply, about when it answers, and while the outcome is being recorded
STOP_MOMENTS = [0.0, 0.1, 0.2, 0.3, 0.35, 0.38, 0.4, 0.41, 0.42, 0.45]


@dataclass
class SlowSmtp(SmtpServer):
    """Answers each message's DATA ``DATA_HELD_SECONDS`` after taking it; ``data_in`` is set
    as soon as a message's data is in."""

    delay: float = DATA_HELD_SECONDS
    data_in: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_in.set()
        return await super().handle_DATA(server, session, envelope)


@dataclass
class Running:
    """A notifier served as `casetrail notifier` serves it, every loop running."""

    runner: ServiceRunner
    port: int

    @property
    def app(self) -> web.Application:
        return self.runner.app

    async def put_prefs(self, user: str, token: str, delivery: str) -> None:
        prefs = {"email": f"{user}@example.org", "delivery": delivery, "timezone": "UTC",
                 "celebrations": True}
        async with aiohttp.ClientSession() as http, http.put(
                f"http://127.0.0.1:{self.port}/v1/preferences/{user}", json=prefs,
                headers=bearer(token)) as response:
            assert response.status == 200, await response.text()

    stopped: bool = False

    async def stop_logging(self) -> list[MutableMapping[str, Any]]:
        """Stop it (the notifier, then its pool); what it logged meanwhile."""
        with structlog.testing.capture_logs() as logs:
            await self.stop()
        return logs

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()


async def start_notifier(records: Records, smtp: SmtpServer, database_url: str,
                         clock: FakeClock, **overrides: object) -> Running:
    settings = notifier_settings(database_url, str(records.client.make_url("")).rstrip("/"),
                                 smtp.port, NOTIFIER_FEED_WAIT=1,
                                 NOTIFIER_DISPATCH_INTERVAL=0.2, **overrides)
    runner, port = await serve(create_app(settings, clock=clock))
    return Running(runner, port)


@pytest.fixture
async def slow_smtp() -> Any:
    server = await SlowSmtp().start()
    yield server
    await server.stop()


async def a_small_win(records: Records, description: str) -> None:
    case = await records.open_case()
    goal = await records.goal(case)
    await records.complete(case, await records.step(case, goal, description))


async def left_unsettled(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Rows the stop left half done: still leased, or claimed under a token."""
    rows = await pool.fetch("SELECT id, kind, status, lease_until, claim_token"
                            " FROM notifier.notifications"
                            " WHERE lease_until IS NOT NULL OR claim_token IS NOT NULL")
    return [dict(r) for r in rows]


def trouble(logs: list[MutableMapping[str, Any]], caplog: pytest.LogCaptureFixture) -> list[str]:
    """Warnings and errors from the stop: ours (structlog) and APScheduler's (logging)."""
    ours = [str(e) for e in logs if e["log_level"] in ("warning", "error", "critical")]
    theirs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return ours + theirs


async def until_sent(smtp: SlowSmtp, running: Running, description: str) -> None:
    """Until the message's data is in at the mail server, its reply held."""
    async with asyncio.timeout(60):  # the feed waits out other runs' open transactions
        await smtp.data_in.wait()
    assert running.app[NOTIFIER].notifier._running_jobs, description


async def test_a_notifier_stopped_mid_send_records_the_send_and_leaves_nothing_leased(
        records: Records, slow_smtp: SlowSmtp, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, clock: FakeClock, token: TokenFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for n, moment in enumerate(STOP_MOMENTS):
        running = await start_notifier(records, slow_smtp, fresh_database_url, clock)
        try:
            if n == 0:
                await running.put_prefs("cm-1", token(), "immediate")
            slow_smtp.data_in.clear()
            caplog.clear()
            await a_small_win(records, f"Step {n}")
            await until_sent(slow_smtp, running, f"no job in flight at stop {n}")
            await asyncio.sleep(moment)
            logs = await running.stop_logging()
        finally:  # stopped before the test's database goes
            await running.stop()
        assert trouble(logs, caplog) == [], f"stopped {moment} s into the send"
        assert await left_unsettled(fresh_pool) == [], f"stopped {moment} s into the send"
        sent = await fresh_pool.fetch("SELECT message_id, status, attempts"
                                      " FROM notifier.notifications WHERE kind = 'small_win'")
        assert {(r["status"], r["attempts"]) for r in sent} == {("sent", 1)}
        assert sorted(m["Message-ID"] for m in slow_smtp.received) == sorted(
            r["message_id"] for r in sent)
        assert len(sent) == n + 1


async def digest_due(pool: asyncpg.Pool, day: datetime) -> datetime:
    """When the digest of ``day`` is due, once a notice has joined it."""
    async with asyncio.timeout(60):  # the feed waits out other runs' open transactions
        while (due := await pool.fetchval(  # noqa: ASYNC110  (polling the database)
                "SELECT due_at FROM notifier.notifications WHERE kind = 'daily_digest'"
                " AND status = 'scheduled' AND due_at::date = $1", day.date())) is None:
            await asyncio.sleep(0.05)
    return due  # type: ignore[no-any-return]


async def test_a_notifier_stopped_mid_digest_records_the_digest_and_its_notices(
        records: Records, slow_smtp: SlowSmtp, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, clock: FakeClock, token: TokenFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    first_morning = clock.now
    digest_time = (first_morning + timedelta(hours=1)).time()
    for n, moment in enumerate(STOP_MOMENTS[::3]):
        clock.now = first_morning + timedelta(days=n)  # a digest of that day's own
        running = await start_notifier(records, slow_smtp, fresh_database_url, clock,
                                       NOTIFIER_DIGEST_TIME=digest_time.isoformat())
        try:
            if n == 0:
                await running.put_prefs("cm-1", token(), "daily_digest")
            slow_smtp.data_in.clear()
            caplog.clear()
            await a_small_win(records, f"Step {n}")
            clock.now = await digest_due(fresh_pool, clock.now)
            scheduler = running.app[NOTIFIER].notifier._scheduler
            assert scheduler is not None
            # the scheduler runs on the real clock
            scheduler.get_job("digests").modify(next_run_time=datetime.now(UTC))
            await until_sent(slow_smtp, running, f"no digest job in flight at stop {n}")
            await asyncio.sleep(moment)
            logs = await running.stop_logging()
        finally:  # stopped before the test's database goes
            await running.stop()
        assert trouble(logs, caplog) == [], f"stopped {moment} s into the digest"
        assert await left_unsettled(fresh_pool) == [], f"stopped {moment} s into the digest"
        kinds = await fresh_pool.fetch("SELECT kind, status FROM notifier.notifications")
        assert {(r["kind"], r["status"]) for r in kinds} == {("daily_digest", "sent"),
                                                             ("small_win", "sent")}
        assert len(slow_smtp.received) == n + 1
