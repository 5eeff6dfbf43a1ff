"""Two transactions adding the same notice at once: the second adds nothing, and fails nothing.

A supervisor's two overdue notices were put into the same new digest at once, and one of
them was dropped from it for a day (CI failure of the seventeenth session's stop)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg

from services.notifier.rules import Kind, Notice, RecipientRole
from services.notifier.store.notifications import insert_notices

NOW = datetime(2026, 5, 3, 9, 0, tzinfo=UTC)
PAIRS = 600  # about one pair in fifty met the race before the fix: a miss by chance is ~1e-5


def digest(number: int) -> Notice:
    return Notice(f"digest:sup-1:2026-05-{number}", Kind.DAILY_DIGEST, None, "agency-1",
                  RecipientRole.USER, "sup-1", NOW, {})


async def test_the_same_notice_added_by_two_transactions_at_once_is_added_once(
        fresh_pool: asyncpg.Pool) -> None:
    """The notice's id is derived from its key, so both are unique: a second insert racing
    the first past the key's check used to hit the id's index and fail (unique violation)."""

    async def add(notice: Notice) -> None:
        async with fresh_pool.acquire() as conn, conn.transaction():
            await insert_notices(conn, [notice], "test", NOW, cause_recorded_at=NOW)

    failures = []
    for number in range(PAIRS):
        notice = digest(number)
        outcomes = await asyncio.gather(add(notice), add(notice), return_exceptions=True)
        failures += [o for o in outcomes if isinstance(o, BaseException)]
    assert failures == []
    assert await fresh_pool.fetchval("SELECT count(*) FROM notifier.notifications") == PAIRS
