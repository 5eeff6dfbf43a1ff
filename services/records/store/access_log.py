"""The access log: who read which case, when. Supervisors' and auditors' reads are part of
the record, and the log can be exported page by page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg


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


async def record_read(pool: asyncpg.Pool, entry: AccessLogEntry) -> None:
    await pool.execute(
        "INSERT INTO records.access_log (at, agency, actor_sub, actor_role, case_id, action,"
        " what, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        entry.at, entry.agency, entry.actor_sub, entry.actor_role, entry.case_id, entry.action,
        entry.what, entry.request_id)


async def list_entries(pool: asyncpg.Pool, *, agency: str, case_id: UUID | None,
                       after: int, limit: int) -> list[dict[str, Any]]:
    """One agency's entries in the order they were written, after the entry id ``after``."""
    rows = await pool.fetch(
        "SELECT id, at, actor_sub, actor_role, case_id, action, what, request_id"
        " FROM records.access_log WHERE agency = $1 AND ($2::uuid IS NULL OR case_id = $2)"
        " AND id > $3 ORDER BY id LIMIT $4",
        agency, case_id, after, limit)
    return [{"id": r["id"], "at": r["at"].isoformat(), "actor_sub": r["actor_sub"],
             "actor_role": r["actor_role"], "case_id": str(r["case_id"]),
             "action": r["action"], "what": r["what"], "request_id": r["request_id"]}
            for r in rows]
