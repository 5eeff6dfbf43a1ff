"""The access log: who read which case, when. Supervisors' and auditors' reads are part of
the record, refused attempts too, and the log can be exported page by page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from services.common.checkpoint import Checkpoint, access_log_page, committed_after


@dataclass(frozen=True)
class AccessLogEntry:
    at: datetime
    agency: str
    actor_sub: str
    actor_role: str
    case_id: UUID
    action: str
    what: str
    request_id: str | None
    refused: str | None = None  # why the read was refused; None: it was let through


_INSERT = ("INSERT INTO records.access_log (at, agency, actor_sub, actor_role, case_id, action,"
           " what, request_id, refused) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")


async def record_reads(pool: asyncpg.Pool, entries: list[AccessLogEntry]) -> None:
    """Write the entries together (a caseload listing writes one per case it shows)."""
    if entries:
        await pool.executemany(_INSERT, [
            (e.at, e.agency, e.actor_sub, e.actor_role, e.case_id, e.action, e.what,
             e.request_id, e.refused) for e in entries])


async def list_entries(db: asyncpg.Pool | asyncpg.Connection, *, agency: str,
                       case_id: UUID | None, after: Checkpoint, limit: int
                       ) -> list[tuple[Checkpoint, dict[str, Any]]]:
    """One agency's entries in commit order after ``after``, each with the checkpoint to
    continue from. Only entries no open transaction can precede are handed out, so following
    the checkpoints never skips one (the feed's rule, docs/decisions/0003)."""
    rows = await db.fetch(
        "SELECT transaction_id::text AS tx, id, at, actor_sub, actor_role, case_id, action,"
        " what, request_id, refused FROM records.access_log WHERE agency = $1"
        f" AND ($2::uuid IS NULL OR case_id = $2) AND {committed_after('id', 3)}"
        " ORDER BY transaction_id, id LIMIT $5",
        agency, case_id, *after.parameters(), limit)
    return [(Checkpoint.of_row(r, "id"),
             {"id": r["id"], "at": r["at"].isoformat(), "actor_sub": r["actor_sub"],
              "actor_role": r["actor_role"], "case_id": str(r["case_id"]),
              "action": r["action"], "what": r["what"], "request_id": r["request_id"],
              "refused": r["refused"]})
            for r in rows]


async def read_page(pool: asyncpg.Pool, *, agency: str, case_id: UUID | None,
                    after: Checkpoint, limit: int) -> dict[str, Any]:
    """A page of ``limit`` of the agency's entries after ``after`` (``access_log_page``)."""
    return await access_log_page(
        pool, "records.access_log",
        lambda conn: list_entries(conn, agency=agency, case_id=case_id, after=after,
                                  limit=limit + 1),
        agency=agency, case_id=case_id, after=after, limit=limit)
