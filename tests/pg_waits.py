"""Waiting on what PostgreSQL shows, for tests that order work across connections."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg


async def held_back_entries(db: asyncpg.Pool, table: str = "records.access_log") -> int:
    """Committed rows of ``table`` (an access log, the events) an open transaction still holds
    back from pages read in commit order."""
    return int(await db.fetchval(
        f"SELECT count(*) FROM {table}"
        " WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())"))


async def until_nothing_held_back(db: asyncpg.Pool, table: str = "records.access_log") -> None:
    """Until no transaction older than ``table``'s rows is open on the server (other test runs
    share it)."""
    for _ in range(1500):
        if not await held_back_entries(db, table):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"rows of {table} still held back after 30 s: inconclusive")


async def until_waiters_queued(pool: Any, count: int) -> None:
    """Until ``count`` acquires wait for the pool's one connection (asyncpg serves them in
    the order they came)."""
    for _ in range(500):
        # asyncpg's queue of waiting acquires, read only, to order the test
        if len(pool._queue._getters) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} acquires never queued")
