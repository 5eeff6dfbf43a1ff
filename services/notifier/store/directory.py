"""SQL of preferences, which double as the notifier's directory (user, agency, role).

A user id may name two entries, a staff member's and a participant's: ids are the identity
provider's, and the two kinds are kept apart (the key holds the kind, derived from the role in
the table itself: migration 0007)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from services.notifier.rules import RecipientRole, participant_recipient
from services.notifier.store.notifications import decide_afresh

Db: TypeAlias = Any  # asyncpg.Connection or asyncpg.Pool (asyncpg ships no types)
STAFF, PARTICIPANT = "staff", "participant"


def kind_of(role: str) -> str:
    """Which of a user id's entries a role's is (as the table derives its ``kind``)."""
    return PARTICIPANT if role == "participant" else STAFF


@dataclass(frozen=True)
class Preferences:
    agency: str
    user_id: str
    role: str
    email: str | None
    delivery: str
    timezone: str
    quiet_start: time | None
    quiet_end: time | None
    celebrations: bool
    cases: tuple[UUID, ...] = ()

    @property
    def how_and_when(self) -> tuple[object, ...]:
        """What decides how and when a waiting notice reaches this reader."""
        return (self.delivery, self.timezone, self.quiet_start, self.quiet_end,
                self.celebrations)

    @property
    def addressed_as(self) -> tuple[list[str], list[str]]:
        """The recipient roles and recipients of the notices this entry decides."""
        if kind_of(self.role) == PARTICIPANT:
            return [RecipientRole.PARTICIPANT], [participant_recipient(c) for c in self.cases]
        return [RecipientRole.CASE_MANAGER, RecipientRole.USER], [self.user_id]

    @classmethod
    def of(cls, r: asyncpg.Record) -> Preferences:
        return cls(r["agency"], r["user_id"], r["role"], r["email"], r["delivery"],
                   r["timezone"], r["quiet_start"], r["quiet_end"], r["celebrations"],
                   tuple(r["cases"]))

    def as_json(self) -> dict[str, Any]:
        quiet = ({"start": self.quiet_start.strftime("%H:%M"),
                  "end": self.quiet_end.strftime("%H:%M")}
                 if self.quiet_start is not None and self.quiet_end is not None else None)
        return {"user": self.user_id, "agency": self.agency, "role": self.role,
                "email": self.email, "delivery": self.delivery, "timezone": self.timezone,
                "quiet_hours": quiet, "celebrations": self.celebrations,
                "cases": [str(c) for c in self.cases]}


_INSERT = """INSERT INTO notifier.directory (agency, user_id, role, email, delivery, timezone,
                                           quiet_start, quiet_end, celebrations, cases,
                                           updated_by, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::uuid[], $11, $12)"""


def _values(prefs: Preferences, updated_by: str, now: datetime) -> tuple[object, ...]:
    return (prefs.agency, prefs.user_id, prefs.role, prefs.email, prefs.delivery,
            prefs.timezone, prefs.quiet_start, prefs.quiet_end, prefs.celebrations,
            list(prefs.cases), updated_by, now)


async def upsert(db: Db, prefs: Preferences, updated_by: str, now: datetime) -> None:
    await db.execute(
        _INSERT + """
           ON CONFLICT (agency, kind, user_id) DO UPDATE SET role = EXCLUDED.role,
             email = EXCLUDED.email, delivery = EXCLUDED.delivery,
             timezone = EXCLUDED.timezone, quiet_start = EXCLUDED.quiet_start,
             quiet_end = EXCLUDED.quiet_end, celebrations = EXCLUDED.celebrations,
             cases = EXCLUDED.cases, updated_by = EXCLUDED.updated_by,
             updated_at = EXCLUDED.updated_at""",
        *_values(prefs, updated_by, now))


async def save(pool: asyncpg.Pool, prefs: Preferences, updated_by: str,
               now: datetime) -> None:
    """Store an entry. When how or when the reader hears changes, what waits for them is
    decided afresh with it, in the same transaction: a notice put off to 09:00 in the zone
    they just left, or waiting in the digest they just gave up, used to keep its old moment
    (and reached them on the day after its own). The entry replaced is the one locked here:
    compared with one read before the transaction, a change stored meanwhile (and notices
    put off under it) went unseen (0203)."""
    async with pool.acquire() as conn, conn.transaction():
        replaced = await _locked(conn, prefs)
        if replaced is None and await _inserted(conn, prefs, updated_by, now):
            return  # a first entry: nothing was decided under one before
        replaced = replaced or await _locked(conn, prefs)  # one a change at once just stored
        await upsert(conn, prefs, updated_by, now)
        if replaced is not None and replaced.how_and_when != prefs.how_and_when:
            roles, recipients = prefs.addressed_as
            await decide_afresh(conn, prefs.agency, roles, recipients, now)


async def _locked(conn: asyncpg.Connection, prefs: Preferences) -> Preferences | None:
    """The stored entry ``prefs`` replaces, locked until the transaction ends."""
    row = await conn.fetchrow("SELECT * FROM notifier.directory WHERE agency = $1"
                              " AND kind = $2 AND user_id = $3 FOR UPDATE",
                              prefs.agency, kind_of(prefs.role), prefs.user_id)
    return Preferences.of(row) if row else None


async def _inserted(conn: asyncpg.Connection, prefs: Preferences, updated_by: str,
                    now: datetime) -> bool:
    """Stored as a first entry; False when another was committed meanwhile (waited for)."""
    return bool(await conn.fetchval(
        _INSERT + " ON CONFLICT (agency, kind, user_id) DO NOTHING RETURNING true",
        *_values(prefs, updated_by, now)))


async def entries(db: Db, agency: str, user_id: str) -> dict[str, Preferences]:
    """The user id's entries, by kind (``STAFF``, ``PARTICIPANT``)."""
    rows = await db.fetch("SELECT * FROM notifier.directory WHERE agency = $1"
                          " AND user_id = $2", agency, user_id)
    return {r["kind"]: Preferences.of(r) for r in rows}


async def users(db: Db, keys: set[tuple[str, str]]) -> dict[tuple[str, str], Preferences]:
    """The staff entries of (agency, user id) pairs: notices to a user are staff mail."""
    if not keys:
        return {}
    agencies, ids = zip(*sorted(keys), strict=True)
    rows = await db.fetch(
        "SELECT d.* FROM notifier.directory d JOIN unnest($1::text[], $2::text[]) AS k(a, u)"
        " ON d.agency = k.a AND d.user_id = k.u WHERE d.kind = 'staff'",
        list(agencies), list(ids))
    return {(r["agency"], r["user_id"]): Preferences.of(r) for r in rows}


async def supervisors(db: Db, agency: str) -> list[Preferences]:
    rows = await db.fetch("SELECT * FROM notifier.directory WHERE agency = $1"
                          " AND role = 'supervisor' ORDER BY user_id", agency)
    return [Preferences.of(r) for r in rows]


async def participant_of(db: Db, agency: str, case_id: UUID) -> Preferences | None:
    row = await db.fetchrow("SELECT * FROM notifier.directory WHERE agency = $1"
                            " AND role = 'participant' AND cases @> ARRAY[$2::uuid]"
                            " ORDER BY updated_at DESC LIMIT 1", agency, case_id)
    return Preferences.of(row) if row else None


async def timezones(db: Db, delivery: str) -> list[str]:
    """The time zones of the readers who take ``delivery``."""
    rows = await db.fetch("SELECT DISTINCT timezone FROM notifier.directory"
                          " WHERE delivery = $1", delivery)
    return [r["timezone"] for r in rows]
