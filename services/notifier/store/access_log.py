"""The notifier's access log: a supervisor's reads of a case's data here (its schedule, its
notifications, a participant's preferences), exported page by page in commit order, in the
shape of the records service's (docs/decisions/0203)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from services.common.checkpoint import Checkpoint, access_log_page, committed_after


@dataclass(frozen=True)
class Read:
    """One read by one reader; it names each case it showed (None: a participant's
    preferences naming no case)."""

    at: datetime
    agency: str
    actor_sub: str
    actor_role: str
    action: str
    what: str
    request_id: str | None
    participant: str | None = None


async def record_read(pool: asyncpg.Pool, read: Read, case_ids: Sequence[UUID | None]) -> None:
    """One entry per case shown, in one statement."""
    if case_ids:
        await pool.execute(
            "INSERT INTO notifier.access_log (at, agency, actor_sub, actor_role, case_id,"
            " participant, action, what, request_id)"
            " SELECT $1, $2, $3, $4, shown, $6, $7, $8, $9 FROM unnest($5::uuid[]) AS shown",
            read.at, read.agency, read.actor_sub, read.actor_role, list(case_ids),
            read.participant, read.action, read.what, read.request_id)


async def list_entries(db: asyncpg.Pool | asyncpg.Connection, *, agency: str,
                       case_id: UUID | None, after: Checkpoint, limit: int
                       ) -> list[tuple[Checkpoint, dict[str, Any]]]:
    """One agency's entries in commit order after ``after``, each with the cursor to continue
    from; only those no open transaction can precede (the feed's rule, decision 0003)."""
    rows = await db.fetch(
        "SELECT transaction_id::text AS tx, id, at, actor_sub, actor_role, case_id,"
        " participant, action, what, request_id FROM notifier.access_log"
        " WHERE agency = $1 AND ($2::uuid IS NULL OR case_id = $2)"
        f" AND {committed_after('id', 3)} ORDER BY transaction_id, id LIMIT $5",
        agency, case_id, *after.parameters(), limit)
    return [(Checkpoint.of_row(r, "id"),
             {"id": r["id"], "at": r["at"].isoformat(), "actor_sub": r["actor_sub"],
              "actor_role": r["actor_role"],
              "case_id": str(r["case_id"]) if r["case_id"] else None,
              "participant": r["participant"], "action": r["action"], "what": r["what"],
              "request_id": r["request_id"]})
            for r in rows]


async def read_page(pool: asyncpg.Pool, *, agency: str, case_id: UUID | None,
                    after: Checkpoint, limit: int) -> dict[str, Any]:
    """A page of ``limit`` of the agency's entries after ``after`` (``access_log_page``)."""
    return await access_log_page(
        pool, "notifier.access_log",
        lambda conn: list_entries(conn, agency=agency, case_id=case_id, after=after,
                                  limit=limit + 1),
        agency=agency, case_id=case_id, after=after, limit=limit)
