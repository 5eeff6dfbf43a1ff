"""Which versions of a case were recorded before and inside a time window (auditors)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg


async def versions_around_window(pool: asyncpg.Pool, stream_id: UUID, start: datetime | None,
                                 end: datetime | None) -> tuple[int, int]:
    """(last version recorded before ``start``, last version recorded by ``end``); 0 for none.
    An open bound (None) reaches the beginning or the end of the stream."""
    row = await pool.fetchrow(
        "SELECT coalesce(max(version) FILTER (WHERE recorded_at < $2), 0) AS before_start,"
        " coalesce(max(version) FILTER (WHERE $3::timestamptz IS NULL OR recorded_at <= $3), 0)"
        " AS by_end FROM records.events WHERE stream_id = $1",
        stream_id, start, end)
    assert row is not None  # an aggregate always answers one row
    return int(row["before_start"]), int(row["by_end"])
