"""The early claim of dated notices reaches exactly ``EARLY_CLAIM_SPAN`` ahead of now, whatever
time zone the database sessions use. The span was sent as an interval, ``1 day 02:00:00``, and
PostgreSQL adds a day in the session's zone: on a day its clocks changed the window was 25 or
27 hours, while ``DatedTiming.days_ahead`` counts 26. Real PostgreSQL, sessions in New York."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta

import asyncpg
import pytest

from services.notifier.delivery import DatedTiming
from services.notifier.rules import Kind, Notice, RecipientRole
from services.notifier.store import directory
from services.notifier.store.directory import Preferences
from services.notifier.store.notifications import (
    EARLY_CLAIM_SPAN,
    claim_dated_early,
    insert_notices,
)

# the reader's digest time, 08:00 in Kiritimati (UTC+14), the first place a day comes
READER_ZONE = "Pacific/Kiritimati"
DIGEST_AT = time(8, 0)
TIMING = DatedTiming("UTC", DIGEST_AT)


@pytest.fixture
async def new_york_pool(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Sessions whose TimeZone is America/New_York, as a server configured there gives."""
    pool = await asyncpg.create_pool(
        fresh_database_url, min_size=1, max_size=2, server_settings={"timezone": "America/New_York"}
    )
    assert pool is not None
    yield pool
    await pool.close()


async def _claimed_early(pool: asyncpg.Pool, now: datetime, due_at: datetime) -> bool:
    """Whether a digest reader's dated notice due at ``due_at`` is claimed early at ``now``."""
    await directory.upsert(
        pool,
        Preferences(
            "agency-a",
            "cm-1",
            "case_manager",
            "cm-1@example.org",
            "daily_digest",
            READER_ZONE,
            None,
            None,
            True,
        ),
        "sup-1",
        now,
    )
    notice = Notice(
        f"step_nudge:{uuid.uuid4()}",
        Kind.STEP_NUDGE,
        uuid.uuid4(),
        "agency-a",
        RecipientRole.CASE_MANAGER,
        "cm-1",
        due_at,
    )
    async with pool.acquire() as conn:
        await insert_notices(conn, [notice], "example.org", now, cause_recorded_at=now)
    claimed = await claim_dated_early(
        pool,
        owner="test",
        now=now,
        limit=10,
        lease=timedelta(minutes=2),
        delivery="daily_digest",
        due_by={READER_ZONE: TIMING.due_by(READER_ZONE, now, DIGEST_AT)},
        passed_over=[],
        digest_days=TIMING.days_ahead(now),
    )
    return [row.key for row, _ in claimed] == [notice.key]


async def test_a_notice_due_within_the_span_is_claimed_the_day_clocks_go_forward(
    new_york_pool: asyncpg.Pool,
) -> None:
    """18:00 UTC on 7 March 2026 is 08:00 on the 8th in Kiritimati: that reader's digest of
    the 8th is gathered now, and takes the notices due on the 8th (the schedule's day, UTC)
    up to 26 hours ahead. New York moves its clocks forward that night, so "now + 1 day 2
    hours" there was 25 hours: a notice due 25½ hours ahead missed its digest."""
    now = datetime(2026, 3, 7, 18, 0, tzinfo=UTC)
    due_at = now + timedelta(hours=25, minutes=30)
    assert due_at < now + EARLY_CLAIM_SPAN <= TIMING.due_by(READER_ZONE, now, DIGEST_AT)
    assert due_at.date() in {datetime.fromisoformat(d.name).date() for d in TIMING.days_ahead(now)}
    assert await _claimed_early(new_york_pool, now, due_at)


async def test_a_notice_due_past_the_span_is_left_the_day_clocks_go_back(
    new_york_pool: asyncpg.Pool,
) -> None:
    """New York moves its clocks back on the night of 1 November 2026: "now + 1 day 2 hours"
    there was 27 hours, and a notice due 26½ hours ahead was claimed, past the span."""
    now = datetime(2026, 10, 31, 18, 0, tzinfo=UTC)
    due_at = now + timedelta(hours=26, minutes=30)
    assert now + EARLY_CLAIM_SPAN < due_at <= TIMING.due_by(READER_ZONE, now, DIGEST_AT)
    assert not await _claimed_early(new_york_pool, now, due_at)
