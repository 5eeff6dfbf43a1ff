"""The running notifier: feed subscription task plus an APScheduler that drives dispatch.

APScheduler (3.11, AsyncIOScheduler, in-memory) only says *when* to look; what is due lives in
PostgreSQL, so any number of instances can run and a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from services.common.database import DATABASE_UNAVAILABLE
from services.notifier.delivery import SHUTDOWN_GRACE, Dispatcher
from services.notifier.feed import FeedSubscriber
from services.notifier.links import UnsubscribeLinks
from services.notifier.metrics import NotifierMetrics
from services.notifier.rules import RuleSettings
from services.notifier.settings import NotifierSettings

log = structlog.get_logger("casetrail.notifier")
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def rule_settings(s: NotifierSettings) -> RuleSettings:
    return RuleSettings(s.reminder_days_before, s.overdue_grace_days, s.nudge_days_after,
                        s.send_time, s.timezone)


class Notifier:
    def __init__(self, pool: asyncpg.Pool, settings: NotifierSettings, clock: Clock,
                 metrics: NotifierMetrics, history_began: datetime | None = None,
                 links: UnsubscribeLinks | None = None) -> None:
        self.instance = f"notifier-{uuid.uuid4().hex[:8]}"
        self.settings = settings
        self.pool = pool
        self.clock = clock
        self.subscriber = FeedSubscriber(pool, settings, rule_settings(settings), clock,
                                         metrics, on_new_work=self.poke)
        self.dispatcher = Dispatcher(pool, settings, clock, metrics, self.instance,
                                     history_began=history_began, links=links)
        self._scheduler: AsyncIOScheduler | None = None
        self._feed_task: asyncio.Task[None] | None = None
        self._dispatching = False
        self._again = False
        self._running_jobs: set[asyncio.Task[object]] = set()

    async def start(self) -> None:
        # a job run every second is not news (info), nor is a run skipped because the previous
        # one still works (warning); job failures (error) still show
        logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
        logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(self._dispatch_job, "interval", id="dispatch",
                          seconds=self.settings.dispatch_interval_seconds, max_instances=1,
                          coalesce=True, next_run_time=datetime.now(UTC))
        # digests carry their recipient's local send time in their due time; checking every
        # minute sends each one within a minute of it
        scheduler.add_job(self._digest_job, "cron", id="digests", second=0, max_instances=1,
                          coalesce=True)
        scheduler.start()
        self._scheduler = scheduler
        self._feed_task = asyncio.create_task(self.subscriber.run(), name="notifier-feed")

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.pause()
            self.dispatcher.shutting_down()
            if self._running_jobs:
                # let a dispatch in flight record what it sent (else it is sent again later)
                await asyncio.wait(self._running_jobs,
                                   timeout=self.settings.smtp_timeout_seconds + SHUTDOWN_GRACE)
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        if self._feed_task is not None:
            self._feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feed_task
            self._feed_task = None
        await self.subscriber.close()
        await self.dispatcher.close()

    def poke(self) -> None:
        """New immediate work: dispatch now rather than at the next interval."""
        if self._dispatching:
            self._again = True
            return
        if self._scheduler is not None:
            job = self._scheduler.get_job("dispatch")
            if job is not None:
                job.modify(next_run_time=datetime.now(UTC))

    def _track(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._running_jobs.add(task)
            task.add_done_callback(self._running_jobs.discard)

    async def _dispatch_job(self) -> None:
        self._track()
        self._dispatching = True
        try:
            while True:
                self._again = False
                await self.dispatcher.dispatch_due()
                if not self._again:
                    break
        except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as error:
            log.warning("dispatch failed; will try again", error=str(error))
        finally:
            self._dispatching = False

    async def _digest_job(self) -> None:
        self._track()
        try:
            await self.dispatcher.send_digests()
        except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as error:
            log.warning("digest dispatch failed; will try again", error=str(error))
