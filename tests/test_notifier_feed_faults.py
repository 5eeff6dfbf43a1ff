"""When the notifier meets an event it cannot read or apply: that event is left out (logged and
counted), the rest of the feed goes on, and a failure applying a whole page is retried rather
than ending the subscription. Real records service over HTTP, real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from aiohttp.test_utils import TestClient

from services.notifier.rules import RuleSettings
from services.notifier.schedule import FEED_CHECKPOINT, apply_page
from services.notifier.service import rule_settings
from services.notifier.store.cases import load_checkpoint
from services.records.store.events import EventStore, NewEvent
from tests.conftest import FakeClock
from tests.notifier_helpers import ClockFailingOnce, NotifierRig, Records, SmtpServer, make_rig

MODERATE_REVIEW_DUE = date(2026, 5, 1)  # agreed on the clock's first day, moderate risk


async def append_unchecked(database_url: str, case_id: str, event_type: str,
                           data: dict[str, Any]) -> None:
    """Write an event straight through the store, past the domain and the API (as an older
    service or an import might have)."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        store = EventStore(pool)
        head = await store.head(UUID(case_id))
        assert head is not None
        await store.append(UUID(case_id), [NewEvent(uuid4(), event_type, 1, data)],
                           expected_version=head.version, agency=head.agency, metadata={})
    finally:
        await pool.close()


async def metric(rig: NotifierRig, line_start: str) -> float:
    text = await (await rig.client.get("/metrics")).text()
    [line] = [ln for ln in text.splitlines() if ln.startswith(line_start)]
    return float(line.rsplit(" ", 1)[1])


async def test_an_event_the_notifier_cannot_read_is_left_out_and_counted(
        rig: NotifierRig, records: Records, fresh_database_url: str) -> None:
    case = await records.open_case()
    await records.agree(case)
    await append_unchecked(fresh_database_url, case, "GoalSet", {"not": "a goal"})
    after = await records.open_case()
    await records.agree(after)
    await rig.catch_up()
    assert len(await rig.rows(case_id=UUID(case))) == 4
    assert len(await rig.rows(case_id=UUID(after))) == 4  # the feed went on past it
    skipped = 'casetrail_notifier_feed_events_skipped_total{why="undecodable"}'
    assert await metric(rig, skipped) == 1.0


@dataclass(frozen=True)
class RulesFailingOnOneDay(RuleSettings):
    """Stands in for the next bug in the rules: working out a notice for one day raises."""

    failing_day: date = MODERATE_REVIEW_DUE

    def at_send_time(self, day: date, days_later: int = 0) -> datetime | None:
        if day == self.failing_day:
            raise ValueError("a rule that cannot handle this day")
        return super().at_send_time(day, days_later)


async def test_an_event_whose_rules_fail_is_left_out_and_the_page_goes_on(
        rig: NotifierRig, records: Records) -> None:
    failing = await records.open_case(risk="moderate")
    await records.agree(failing)
    other = await records.open_case(risk="high")
    await records.agree(other)
    await rig.feed_shows_every_event()
    page = await rig.notifier.subscriber.fetch("", 0)
    rules = RulesFailingOnOneDay(**asdict(rule_settings(rig.notifier.settings)))
    result = await apply_page(rig.notifier.pool, page.items, after="",
                              checkpoint=page.checkpoint, rules=rules, domain="x",
                              now=rig.clock())
    assert result is not None
    assert result.skipped == {"rule_error": 1}  # the failing case's ReviewScheduled
    assert await rig.rows(case_id=UUID(failing)) == []
    assert len(await rig.rows(case_id=UUID(other))) == 4
    assert await load_checkpoint(rig.notifier.pool, FEED_CHECKPOINT) == page.checkpoint


async def test_a_page_that_fails_to_apply_is_retried_and_the_subscription_lives_on(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock) -> None:
    faulty = ClockFailingOnce(clock.now)
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, faulty)
    faulty.failures_left = 1
    case = await records.open_case()
    await records.agree(case)
    following = asyncio.create_task(rig.notifier.subscriber.run())
    try:
        async with asyncio.timeout(15):
            while not await rig.rows(case_id=UUID(case)):
                assert not following.done(), following.exception()
                await asyncio.sleep(0.05)
        assert faulty.failures_left == 0
        assert await metric(rig, "casetrail_notifier_feed_errors_total") == 1.0
        assert rig.notifier.subscriber.healthy
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
