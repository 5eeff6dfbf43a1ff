"""SQL of preferences, which double as the notifier's directory (user, agency, role).

A user id may name two entries, a staff member's and a participant's: ids are the identity
provider's, and the two kinds are kept apart (the key holds the kind, derived from the role in
the table itself: migration 0007)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from services.notifier.rules import RecipientRole, participant_recipient
from services.notifier.store.notifications import (
    MENDED_BY_A_PARTICIPANTS_ADDRESS,
    MENDED_BY_A_SUPERVISOR,
    MENDED_BY_AN_ADDRESS,
    Row,
    decide_afresh,
    retried_on_deadlock,
    send_mended,
    send_missed_milestones,
)

Db: TypeAlias = Any  # asyncpg.Connection or asyncpg.Pool (asyncpg ships no types)
STAFF, PARTICIPANT = "staff", "participant"
EntryKey: TypeAlias = tuple[str, str, str]  # agency, kind, user id: one entry


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


MakeEntry: TypeAlias = Callable[[Preferences | None], Preferences]  # of the one stored


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


@dataclass(frozen=True)
class Saved:
    entry: Preferences
    milestones_rescheduled: int  # missed ones this change lets the participant hear of
    dead_letters_rescheduled: int = 0  # those this entry gives what they lacked (send_mended)


def newly_heard_cases(replaced: Preferences | None, prefs: Preferences) -> list[UUID]:
    """The cases whose milestones a participant's entry hears of and the one it replaces did
    not: all of them on a first opt-in or with celebrations turned back on, else the cases
    added. A staff entry hears of no participant's milestones."""
    if kind_of(prefs.role) != PARTICIPANT or not prefs.celebrations:
        return []
    before = set(replaced.cases) if replaced is not None and replaced.celebrations else set()
    return [case for case in prefs.cases if case not in before]


async def save(pool: asyncpg.Pool, key: EntryKey, make: MakeEntry, updated_by: str,
               now: datetime, *, recent: timedelta) -> Saved:
    """Store the entry ``make`` makes of the one stored under ``key`` (None: none yet), as
    read and locked in this transaction; ``make`` may refuse (raise), and nothing is written.
    A request's left-out fields were filled from the entry read before it waited for the
    lock, so of two partial changes at once the second undid the first (0203).

    When how or when the reader hears changes, what waits for them is decided afresh with
    it, in the same transaction: a notice put off to 09:00 in the zone they just left, or
    waiting in the digest they just gave up, used to keep its old moment (and reached them on
    the day after its own). The entry replaced is the one locked here: compared with one read
    before the transaction, a change stored meanwhile (and notices put off under it) went
    unseen (0203).

    A participant who now hears of milestones they did not (``newly_heard_cases``) is sent
    those cancelled for it within ``recent`` (the staleness window), in the same transaction:
    one opting in minutes after the goal that made them opt in never heard of it (0203).

    Tried again when PostgreSQL ends it to break a deadlock: the feed, taking back a goal or
    closing a case, locks such milestones and may then want this entry (it answered 500).

    Refused (``CaseOnAnotherEntry``, nothing written) when a participant's entry would name a
    case another participant's entry names: a case's milestones reach one person, and a
    typo in a supervisor's PUT sent one participant's to another (0203).

    Dead letters that asked for what the entry gives are scheduled again, in the same
    transaction (``send_what_it_mends``): a case manager added on their second day never got
    their first day's notices until someone retried each (0203)."""
    return await retried_on_deadlock(lambda: _save(pool, key, make, updated_by, now, recent))


async def remove(pool: asyncpg.Pool, key: EntryKey, now: datetime) -> Preferences | None:
    """Take the entry under ``key`` out of the directory (None: there was none). What waits
    for that reader is decided afresh in the same transaction, as when their preferences
    change (``save``): with no entry, it is a dead letter saying no address is on file, or
    for a participant a milestone they no longer hear of."""
    async def removing() -> Preferences | None:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("DELETE FROM notifier.directory WHERE agency = $1"
                                      " AND kind = $2 AND user_id = $3 RETURNING *", *key)
            if row is None:
                return None
            removed = Preferences.of(row)
            roles, recipients = removed.addressed_as
            await decide_afresh(conn, removed.agency, roles, recipients, now)
            return removed
    return await retried_on_deadlock(removing)


class CaseOnAnotherEntry(Exception):
    def __init__(self, case_id: UUID, user_id: str) -> None:
        super().__init__(f"case {case_id} is on the preferences of participant {user_id}")
        self.case_id, self.user_id = case_id, user_id


async def _save(pool: asyncpg.Pool, key: EntryKey, make: MakeEntry, updated_by: str,
                now: datetime, recent: timedelta) -> Saved:
    async with pool.acquire() as conn, conn.transaction():
        await _take_turns_mending(conn, key[0])
        replaced = await _locked(conn, key)
        prefs = _made(make, replaced, key)
        await _refuse_cases_on_other_entries(conn, prefs, replaced)
        if replaced is None and not await _inserted(conn, prefs, updated_by, now):
            replaced = await _locked(conn, key)  # one a change at once just stored
            prefs = _made(make, replaced, key)
            await _refuse_cases_on_other_entries(conn, prefs, replaced)
        if replaced is not None:  # else a first entry: nothing was decided under one before
            await upsert(conn, prefs, updated_by, now)
            if replaced.how_and_when != prefs.how_and_when:
                roles, recipients = prefs.addressed_as
                await decide_afresh(conn, prefs.agency, roles, recipients, now)
        cases = newly_heard_cases(replaced, prefs)
        missed = await send_missed_milestones(
            conn, prefs.agency, [participant_recipient(c) for c in cases], now - recent,
            now) if cases else 0
        return Saved(prefs, missed, await send_what_it_mends(conn, prefs, now))


async def send_what_it_mends(conn: asyncpg.Connection, prefs: Preferences,
                             now: datetime) -> int:
    """The dead letters the entry mends, scheduled again (``send_mended``): an entry with an
    address, those to that reader (a participant: their cases' milestones) that died for
    want of an entry, an address, a plain address or a time zone this notifier knows (a PUT
    stores only plain addresses and known zones); a supervisor's entry, with or without
    one, the agency's notices to supervisors that found none. Looked for on every such
    save, not only when the address changes: a notice decided under the entry read just
    before an earlier save died after it. What still lacks something dies again, for the
    reason it then has. Returns how many."""
    mended = 0
    if prefs.email is not None:
        roles, recipients = prefs.addressed_as
        reasons = MENDED_BY_AN_ADDRESS if kind_of(prefs.role) == STAFF \
            else MENDED_BY_A_PARTICIPANTS_ADDRESS
        mended += await send_mended(conn, prefs.agency, roles, recipients, reasons, now)
    if prefs.role == "supervisor":
        group = [RecipientRole.SUPERVISORS]  # the group is its own recipient (rules)
        mended += await send_mended(conn, prefs.agency, group, group, MENDED_BY_A_SUPERVISOR,
                                    now)
    return mended


async def _take_turns_mending(conn: asyncpg.Connection, agency: str) -> None:
    """Saves of an agency's entries and delivery's second look at the dead letters it just
    recorded (``mend_what_died_meanwhile``) take turns, for the transaction: whichever comes
    second sees what the first committed."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                       f"casetrail-mend:{agency}")


async def mend_what_died_meanwhile(pool: asyncpg.Pool,
                                   dead: Sequence[tuple[Row, Preferences | None]],
                                   now: datetime) -> int:
    """Send what the directory now mends of dead letters just recorded, each with the entry
    it was decided under (None: none). Delivery read the directory before a save committed
    what a notice lacked, and the save looked for dead letters to mend before this one was
    recorded dead: it waited for the next save. Only an entry saved since the decision
    mends (``send_what_it_mends``, as the save would have): under the same entry the letter
    would die again, claimed again at once. Each in a transaction of its own, as a save's.
    Returns how many."""
    mended = 0
    for row, decided_under in dead:
        mended += await retried_on_deadlock(
            functools.partial(_mend, pool, row, decided_under, now))
    return mended


async def _mend(pool: asyncpg.Pool, row: Row, decided_under: Preferences | None,
                now: datetime) -> int:
    async with pool.acquire() as conn, conn.transaction():
        await _take_turns_mending(conn, row.agency)
        if row.recipient_role == RecipientRole.SUPERVISORS:  # it died for want of one
            if not await supervisors(conn, row.agency):
                return 0
            group = [RecipientRole.SUPERVISORS]
            return await send_mended(conn, row.agency, group, group, MENDED_BY_A_SUPERVISOR,
                                     now)
        entry = await _entry_reaching(conn, row)
        if entry is None or entry == decided_under:
            return 0
        return await send_what_it_mends(conn, entry, now)


async def _entry_reaching(conn: asyncpg.Connection, row: Row) -> Preferences | None:
    """The entry, as stored now, through which ``row`` reaches its reader (one person)."""
    if row.recipient_role == RecipientRole.PARTICIPANT:
        return await participant_of(conn, row.agency, row.case_id) \
            if row.case_id is not None else None
    return (await entries(conn, row.agency, row.recipient)).get(STAFF)


async def _refuse_cases_on_other_entries(conn: asyncpg.Connection, prefs: Preferences,
                                         replaced: Preferences | None) -> None:
    """Each case the entry adds is locked for the transaction (in one order, sorted, so two
    entries naming the same case at once take turns and the second sees the first), then
    looked up on the others. A case the entry already named is not: entries stored before
    the check that share one keep changing (turning celebrations off, say)."""
    added = sorted(set(prefs.cases) - set(replaced.cases if replaced else ()))
    if kind_of(prefs.role) != PARTICIPANT or not added:
        return
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || c::text, 0))"
                       " FROM unnest($2::uuid[]) AS c", prefs.agency, added)
    other = await conn.fetchrow(
        "SELECT user_id, (SELECT c FROM unnest(cases) AS c WHERE c = ANY($3::uuid[]) LIMIT 1)"
        " AS case_id FROM notifier.directory WHERE agency = $1 AND kind = 'participant'"
        " AND user_id <> $2 AND cases && $3::uuid[] ORDER BY user_id LIMIT 1",
        prefs.agency, prefs.user_id, added)
    if other is not None:
        raise CaseOnAnotherEntry(other["case_id"], other["user_id"])


def _made(make: MakeEntry, stored: Preferences | None, key: EntryKey) -> Preferences:
    """The entry ``make`` makes, which must be the one under ``key`` (the row locked)."""
    prefs = make(stored)
    if (prefs.agency, kind_of(prefs.role), prefs.user_id) != key:
        raise ValueError(f"an entry made for {key} is another's: {prefs.user_id}, {prefs.role}")
    return prefs


async def _locked(conn: asyncpg.Connection, key: EntryKey) -> Preferences | None:
    """The stored entry under ``key``, locked until the transaction ends."""
    row = await conn.fetchrow("SELECT * FROM notifier.directory WHERE agency = $1"
                              " AND kind = $2 AND user_id = $3 FOR UPDATE", *key)
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
                            " ORDER BY updated_at DESC, user_id LIMIT 1", agency, case_id)
    return Preferences.of(row) if row else None


async def timezones(db: Db, delivery: str) -> list[str]:
    """The time zones of the readers who take ``delivery``."""
    rows = await db.fetch("SELECT DISTINCT timezone FROM notifier.directory"
                          " WHERE delivery = $1", delivery)
    return [r["timezone"] for r in rows]
