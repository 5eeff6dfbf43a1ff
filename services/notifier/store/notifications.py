"""SQL of the durable schedule: one row per notice per recipient, claimed with SKIP LOCKED."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeAlias, TypeVar
from uuid import UUID, uuid4, uuid5

import asyncpg

from services.notifier.rules import DATED, Kind, Notice, RecipientRole

_ID_NAMESPACE = UUID("0f6c1c55-93e4-4f57-bb8e-2a4f3f1f7a10")
PENDING = ("scheduled", "failed")
# a group's notice handed on as one notice per member (``fan_out``): mailed to no one itself
HANDED_ON = "handed_on"
# the recipient roles of a notice to one staff member, named by their user id (a group's or a
# participant's recipient, ``supervisors`` or ``participant:<case>``, may spell a user id too)
TO_ONE_STAFF_MEMBER = (RecipientRole.CASE_MANAGER, RecipientRole.USER)
# back in the schedule, due now ($2), out of any digest, unclaimed
_RESCHEDULED_NOW = ("status = 'scheduled', not_before = $2, digest_id = NULL, lease_owner = NULL,"
                    " lease_until = NULL, claim_token = NULL, updated_at = $2")
Db: TypeAlias = Any  # asyncpg.Connection or asyncpg.Pool (asyncpg ships no types)


def notification_id(key: str) -> UUID:
    """Derived from the key, so a notice keeps its id (and Message-ID) across replays."""
    return uuid5(_ID_NAMESPACE, key)


def message_id(row_id: UUID, domain: str) -> str:
    return f"<{row_id}@{domain}>"


def digest_message_id(row_id: UUID, history_began: datetime | None, domain: str) -> str:
    """A digest's Message-ID also names when this schema's record began. What a day's digest
    holds is not in the feed: after the schema is lost and rebuilt, the day's digest may be
    another message than the one already sent under its key, and mail clients drop a message
    whose Message-ID they have seen."""
    if history_began is None:
        return message_id(row_id, domain)
    return message_id(uuid5(row_id, history_began.isoformat()), domain)


@dataclass(frozen=True)
class Row:
    id: UUID
    key: str
    kind: str
    case_id: UUID | None
    agency: str
    recipient_role: str
    recipient: str
    due_at: datetime
    not_before: datetime
    status: str
    attempts: int
    last_code: int | None
    last_error: str | None
    message_id: str
    context: dict[str, Any]
    first_attempt_at: datetime | None
    sent_at: datetime | None
    digest_id: UUID | None
    parent_id: UUID | None
    claim_token: UUID | None = None  # set while a dispatcher holds the row
    revived_at: datetime | None = None  # the last manual retry of it as a dead letter
    attempts_before_revival: int = 0
    cause_recorded_at: datetime | None = None  # None: recorded before the column existed
    recalled_at: datetime | None = None  # called for again after the case cancelled it

    @property
    def last_called_for(self) -> datetime | None:
        """When the notice was last called for: by its cause, or again after its case had
        cancelled it."""
        known = [t for t in (self.cause_recorded_at, self.recalled_at) if t is not None]
        return max(known, default=None)

    @property
    def attempts_since_revival(self) -> int:
        return self.attempts - self.attempts_before_revival

    @classmethod
    def of(cls, r: asyncpg.Record) -> Row:
        return cls(r["id"], r["key"], r["kind"], r["case_id"], r["agency"], r["recipient_role"],
                   r["recipient"], r["due_at"], r["not_before"], r["status"], r["attempts"],
                   r["last_code"], r["last_error"], r["message_id"], json.loads(r["context"]),
                   r["first_attempt_at"], r["sent_at"], r["digest_id"], r["parent_id"],
                   r["claim_token"], r["revived_at"], r["attempts_before_revival"],
                   r["cause_recorded_at"], r["recalled_at"])

    def as_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "key": self.key, "kind": self.kind,
                "case_id": str(self.case_id) if self.case_id else None,
                "recipient": self.recipient, "recipient_role": self.recipient_role,
                "due_at": self.due_at.isoformat(), "deliver_after": self.not_before.isoformat(),
                "status": self.status, "attempts": self.attempts,
                "last_code": self.last_code, "last_error": self.last_error,
                "message_id": self.message_id,
                "sent_at": self.sent_at.isoformat() if self.sent_at else None,
                "digest_id": str(self.digest_id) if self.digest_id else None}


_INSERT = """
INSERT INTO notifier.notifications
  (id, key, kind, case_id, agency, recipient_role, recipient, due_at, not_before, status,
   message_id, context, source_event, parent_id, created_at, updated_at, cause_recorded_at,
   recalled_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, 'scheduled', $9, $10::jsonb, $11, $12, $13, $13, $14,
        $15)
ON CONFLICT DO NOTHING"""
# No conflict target: the id is derived from the key, so both are unique, and a second
# insert racing the first past the key's check would fail on the id's index instead.


def _insert_args(n: Notice, domain: str, now: datetime, cause_recorded_at: datetime | None,
                 parent_id: UUID | None = None, *, history_began: datetime | None = None,
                 recalled_at: datetime | None = None) -> tuple[Any, ...]:
    row_id = notification_id(n.key)
    message = (digest_message_id(row_id, history_began, domain) if n.kind == Kind.DAILY_DIGEST
               else message_id(row_id, domain))
    return (row_id, n.key, str(n.kind), n.case_id, n.agency, str(n.recipient_role),
            n.recipient, n.due_at, message, json.dumps(n.context),
            n.source_event, parent_id, now, cause_recorded_at, recalled_at)


async def insert_notices(conn: asyncpg.Connection, notices: Sequence[Notice], domain: str,
                         now: datetime, *, cause_recorded_at: datetime | None,
                         parent_id: UUID | None = None,
                         recalled_at: datetime | None = None) -> None:
    """Insert new notices; a key seen before is left as it is (replays add nothing).
    ``cause_recorded_at``: when the event that called for them was recorded."""
    if notices:
        await conn.executemany(_INSERT, [_insert_args(n, domain, now, cause_recorded_at,
                                                      parent_id, recalled_at=recalled_at)
                                         for n in notices])


def _json_equal(stored: str, wanted: dict[str, Any]) -> bool:
    return bool(json.loads(stored) == json.loads(json.dumps(wanted)))


async def reconcile_case(conn: asyncpg.Connection, case_id: UUID, desired: Sequence[Notice],
                         *, closed: bool, reason: str, domain: str, now: datetime,
                         cause_recorded_at: datetime) -> None:
    """Make the case's pending timed notices equal ``desired``: cancel what is no longer
    called for, re-date what changed, add what is new; a closed case's pending notices of
    every kind end with it. Sent ones are history. A transfer is followed before this
    (``follow_transfer``). ``cause_recorded_at``: when the event that asks for this was
    recorded."""
    # Lock only the timed rows (those handed on to each supervisor too), in id order:
    # record_outcomes updates in id order, so the two cannot deadlock on them. Celebration rows
    # stay unlocked: the dispatcher claims them with SKIP LOCKED and would otherwise pass over
    # them while later events of the case are read.
    rows = await conn.fetch(
        "SELECT id, key, status, recipient, due_at, context, cancelled_by_case, parent_id"
        " FROM notifier.notifications WHERE case_id = $1 AND kind = ANY($2::text[])"
        " ORDER BY id FOR UPDATE", case_id, [str(k) for k in DATED])
    existing = {r["key"]: r for r in rows if r["parent_id"] is None}
    wanted = {n.key: n for n in desired}
    gone = {r["id"] for k, r in existing.items() if k not in wanted}
    # what is no longer called for, and what was handed on from it (a notice per supervisor)
    stale = [r["key"] for r in rows if r["status"] in PENDING
             and (r["id"] in gone or r["parent_id"] in gone)]
    await _cancel_keys(conn, stale, f"no longer called for after {reason}", now)
    changed = [n for k, n in wanted.items() if k in existing and _differs(existing[k], n)]
    if changed:
        await _redate(conn, changed, now, cause_recorded_at)
    await insert_notices(conn, [n for k, n in wanted.items() if k not in existing], domain, now,
                         cause_recorded_at=cause_recorded_at)
    if closed:
        await _end_with_case(conn, case_id, reason, now)


# a row ``_redate`` changes that its case had cancelled: it is brought back (``_differs``)
_BROUGHT_BACK = "status = 'cancelled'"


async def _redate(conn: asyncpg.Connection, changed: Sequence[Notice], now: datetime,
                  cause_recorded_at: datetime) -> None:
    """A re-dated notice is a new call for it; a revived one keeps its cause's time (an
    earlier notifier may have sent it: 0200) and records when it was called for again
    (``recalled_at``): whether it is stale, or its moment had passed, counts from then (a
    reopened case's nudges came back only to be cancelled as too late), and its retries
    begin afresh, as a person's retry's do (tried before it was cancelled, it was given up
    at its first 451 after, its retry horizon long past). A revived one leaves
    the digest it sat in when it was cancelled (that one has gone out or been given up), so
    it is decided afresh when due."""
    await conn.executemany(
        "UPDATE notifier.notifications SET status = 'scheduled', recipient = $2, due_at = $3,"
        " not_before = $3, context = $4::jsonb, cancelled_by_case = false, last_error = NULL,"
        f" digest_id = CASE WHEN {_BROUGHT_BACK} THEN NULL ELSE digest_id END,"
        f" recalled_at = CASE WHEN {_BROUGHT_BACK} THEN $6 ELSE recalled_at END,"
        f" first_attempt_at = CASE WHEN {_BROUGHT_BACK} THEN NULL ELSE first_attempt_at END,"
        f" attempts_before_revival = CASE WHEN {_BROUGHT_BACK} THEN attempts"
        " ELSE attempts_before_revival END,"
        " updated_at = $5, cause_recorded_at = CASE WHEN due_at = $3 THEN cause_recorded_at"
        " ELSE $6 END WHERE key = $1",
        [(n.key, n.recipient, n.due_at, json.dumps(n.context), now, cause_recorded_at)
         for n in changed])


def _differs(row: asyncpg.Record, n: Notice) -> bool:
    if row["status"] == "cancelled":
        return bool(row["cancelled_by_case"])
    if row["status"] not in PENDING:
        return False
    return (row["recipient"] != n.recipient or row["due_at"] != n.due_at
            or not _json_equal(row["context"], n.context))


async def rename_participant(conn: asyncpg.Connection, case_id: UUID, called: str,
                             now: datetime) -> None:
    """Every pending notice of the case, celebrations included, calls the participant by the
    name they go by now. Rows are locked in id order, as ``reconcile_case`` and the
    dispatcher's outcomes lock them."""
    await _wait_for_hand_ons(conn, case_id)
    await conn.execute(
        "UPDATE notifier.notifications SET context = jsonb_set(context, '{participant}',"
        " to_jsonb($2::text)), updated_at = $3 WHERE id IN (SELECT id"
        " FROM notifier.notifications WHERE case_id = $1 AND status IN ('scheduled', 'failed')"
        " AND context->>'participant' <> $2 ORDER BY id FOR UPDATE)",
        case_id, called, now)


async def _wait_for_hand_ons(conn: asyncpg.Connection, case_id: UUID) -> None:
    """Wait for any hand-on of the case's notices to supervisors under way (``fan_out``),
    before a statement changes what the case's notices say. The hand-on holds the notice while
    it writes a copy for each supervisor; a change read in a statement begun before those
    copies existed would not see them (an audit found them naming the earlier case manager).
    The statement after this one does."""
    await conn.execute(
        "SELECT FROM notifier.notifications WHERE case_id = $1"
        " AND recipient_role = 'supervisors' AND status IN ('scheduled', 'failed')"
        " ORDER BY id FOR UPDATE", case_id)


# The case ($1)'s waiting celebrations of a kind ($2) about one step or goal (context field $3
# is $4), locked in id order
_CELEBRATIONS_OF = ("SELECT id FROM notifier.notifications WHERE case_id = $1 AND kind = $2"
                    " AND context->>$3 = $4 AND status IN ('scheduled', 'failed')"
                    " ORDER BY id FOR UPDATE")


async def withdraw_celebrations(conn: asyncpg.Connection, case_id: UUID, kind: str,
                                subject: str, subject_id: UUID, reason: str,
                                now: datetime) -> None:
    """Cancel the case's waiting celebrations of ``kind`` whose context ``subject`` is
    ``subject_id`` (a step taken back, a goal no longer achieved). Only on such a reversal, so
    celebration rows are not locked on the usual path (see ``reconcile_case``); a claimed one
    is left by its dispatcher, whose check before sending finds it no longer pending."""
    if kind == Kind.MILESTONE:
        await _end_unheard_milestones(conn, case_id, now, goal_id=subject_id)
    await conn.execute(
        "UPDATE notifier.notifications SET status = 'cancelled', cancelled_by_case = true,"
        " last_error = $5, lease_owner = NULL, lease_until = NULL, updated_at = $6"
        f" WHERE id IN ({_CELEBRATIONS_OF})", case_id, kind, subject, str(subject_id), reason, now)


async def reword_celebrations(conn: asyncpg.Connection, case_id: UUID, kind: str,
                              subject: str, subject_id: UUID, words: Mapping[str, Any],
                              now: datetime) -> None:
    """The case's waiting celebrations of ``kind`` whose context ``subject`` is ``subject_id``
    take ``words`` (the step or goal as the plan now reads). Only on a rewording, so
    celebration rows are not locked on the usual path (see ``reconcile_case``)."""
    await conn.execute(
        "UPDATE notifier.notifications SET context = context || $5::jsonb, updated_at = $6"
        f" WHERE id IN ({_CELEBRATIONS_OF})",
        case_id, kind, subject, str(subject_id), json.dumps(words), now)


async def _cancel_keys(conn: asyncpg.Connection, keys: Sequence[str], reason: str,
                       now: datetime) -> None:
    if keys:
        await conn.execute(
            "UPDATE notifier.notifications SET status = 'cancelled', cancelled_by_case = true,"
            " last_error = $2, lease_owner = NULL, lease_until = NULL, updated_at = $3"
            " WHERE key = ANY($1::text[]) AND status IN ('scheduled', 'failed')",
            list(keys), reason, now)


async def _end_with_case(conn: asyncpg.Connection, case_id: UUID, reason: str,
                         now: datetime) -> None:
    """Pending notices of every kind end with the case."""
    await _end_unheard_milestones(conn, case_id, now)
    await conn.execute(
        "UPDATE notifier.notifications SET status = 'cancelled', cancelled_by_case = true,"
        " last_error = $2, updated_at = $3"
        " WHERE case_id = $1 AND status IN ('scheduled', 'failed')",
        case_id, f"the case was closed ({reason})", now)


# a supervisor's copy of a notice handed on to each supervisor ($2: the new case manager)
_COPY_TO_THE_NEW_MANAGER = "(parent_id IS NOT NULL AND recipient_role = 'user' AND recipient = $2)"


async def follow_transfer(conn: asyncpg.Connection, case_id: UUID, case_manager: str,
                          now: datetime) -> None:
    """Every pending notice of the case follows its transfer to ``case_manager``: those
    addressed to the case manager go to the new one (out of the old one's digest: the new
    one's preferences apply), and those naming the case manager (the overdue notices, the
    copies handed on to each supervisor included) name the new one. A supervisor who takes
    the case has the case manager's copy now: the copy handed on to them as a supervisor is
    cancelled (they got the same notice twice, as a hand-on never makes one for the case's
    manager).

    Each leaves any claim on it: the instance holding it loaded it for the old manager, and
    its check just before sending must now fail. Rows are locked in id order, as
    ``reconcile_case`` and the dispatcher's outcomes lock them, in one statement."""
    await _wait_for_hand_ons(conn, case_id)
    await conn.execute(
        "UPDATE notifier.notifications SET"
        " recipient = CASE WHEN recipient_role = 'case_manager' THEN $2 ELSE recipient END,"
        " context = CASE WHEN context ? 'case_manager'"
        " THEN jsonb_set(context, '{case_manager}', to_jsonb($2::text)) ELSE context END,"
        " digest_id = CASE WHEN recipient_role = 'case_manager' THEN NULL ELSE digest_id END,"
        " not_before = CASE WHEN recipient_role = 'case_manager' AND digest_id IS NOT NULL"
        " THEN due_at ELSE not_before END,"
        f" status = CASE WHEN {_COPY_TO_THE_NEW_MANAGER} THEN 'cancelled' ELSE status END,"
        f" last_error = CASE WHEN {_COPY_TO_THE_NEW_MANAGER} THEN $4 ELSE last_error END,"
        " claim_token = NULL, lease_owner = NULL, lease_until = NULL, updated_at = $3"
        " WHERE id IN (SELECT id FROM notifier.notifications WHERE case_id = $1"
        " AND status IN ('scheduled', 'failed') AND ((recipient_role = 'case_manager'"
        f" AND recipient <> $2) OR context->>'case_manager' <> $2 OR {_COPY_TO_THE_NEW_MANAGER})"
        " ORDER BY id FOR UPDATE)",
        case_id, case_manager, now,
        f"{case_manager} took the case and has the case manager's copy")


# --------------------------------------------------------------------------------------------
# claiming and outcomes
# --------------------------------------------------------------------------------------------


async def claim_due(pool: asyncpg.Pool, *, owner: str, now: datetime, limit: int,
                    lease: timedelta, digests: bool) -> list[Row]:
    """Lease up to ``limit`` due rows under one new claim token; another instance skips them
    (and takes them over only once the lease ran out, with a token of its own)."""
    rows = await pool.fetch(
        """WITH due AS (
             SELECT id FROM notifier.notifications
             WHERE status IN ('scheduled', 'failed') AND digest_id IS NULL
               AND not_before <= $1 AND (lease_until IS NULL OR lease_until < $1)
               AND (kind = 'daily_digest') = $5
             ORDER BY not_before LIMIT $2 FOR UPDATE SKIP LOCKED)
           UPDATE notifier.notifications n SET lease_owner = $3, lease_until = $4,
                                               claim_token = $6, updated_at = $1
           FROM due WHERE n.id = due.id RETURNING n.*""",
        now, limit, owner, now + lease, digests, uuid4())
    return sorted((Row.of(r) for r in rows), key=lambda r: (r.not_before, r.key))


# the furthest ahead of its due time a notice is owed to a reader in another zone (UTC+14
# against UTC-12); a digest read before the send time adds the difference
# (``DatedTiming.claim_span``)
EARLY_CLAIM_SPAN = timedelta(hours=26)


@dataclass(frozen=True)
class Day:
    """A day of the schedule's zone (``YYYY-MM-DD``) and when it begins and ends, in UTC."""

    name: str
    starts: datetime
    ends: datetime


def digest_key(agency: str, recipient: str, day: str) -> str:
    """The key of a reader's digest of a local day (one per reader per day)."""
    return f"daily_digest:{agency}:{recipient}:{day}"


async def claim_dated_early(pool: asyncpg.Pool, *, owner: str, now: datetime, limit: int,
                            lease: timedelta, delivery: str, due_by: Mapping[str, datetime],
                            passed_over: Sequence[UUID], digest_days: Sequence[Day] = (),
                            span: timedelta = EARLY_CLAIM_SPAN) -> list[tuple[Row, str]]:
    """Lease the dated notices of readers who take ``delivery`` whose moment has come before
    the schedule's time: a reader in time zone ``z`` is owed those due by ``due_by[z]``
    (``DatedTiming.due_by``); readers in a zone not named there are left out. ``passed_over``
    rows are left out, and so are rows already put off to a later time (their reader's quiet
    hours): the usual path takes them then. Each row comes with its reader's time zone.

    Only notices due within ``span`` of now are looked at (``DatedTiming.claim_span``).

    ``digest_days``: the schedule's days the notices may be due on, for digest readers. A
    notice whose reader's digest of its day has gone (tried, or given up) is left out too: it
    cannot join that digest, and takes the usual path when due. It used to be claimed and
    given back by every digest run (each minute, on every instance) until then. One whose
    digest is being looked at right now is claimed: a digest put off to the end of quiet
    hours takes more.

    The zones are worked out in Python, not with ``AT TIME ZONE`` here: one reader's zone the
    database server did not know made this statement fail, and so every instance's dispatch.
    So is the window's end: PostgreSQL adds an interval's day in the session's time zone, so
    ``now + '1 day 02:00'`` was 25 or 27 hours on a day that zone's clocks changed."""
    zones = list(due_by)
    rows = await pool.fetch(
        """WITH reader AS (
             SELECT * FROM unnest($6::text[], $7::timestamptz[]) AS r(timezone, due_by)),
           day AS (
             SELECT * FROM unnest($12::text[], $13::timestamptz[], $14::timestamptz[])
               AS s(name, starts, ends)),
           due AS (
             SELECT n.id, d.timezone FROM notifier.notifications n
             JOIN notifier.directory d ON d.agency = n.agency AND d.user_id = n.recipient
                                        AND d.kind = 'staff'
             JOIN reader r ON r.timezone = d.timezone
             WHERE n.status = 'scheduled' AND n.digest_id IS NULL
               AND n.attempts = n.attempts_before_revival
               AND n.recipient_role IN ('case_manager', 'user')
               AND n.kind = ANY($8::text[]) AND NOT (n.id = ANY($9::uuid[]))
               AND n.not_before > $1 AND n.not_before < $11
               AND n.not_before = n.due_at  -- not yet put off (quiet hours, say)
               AND n.due_at <= r.due_by
               AND (n.lease_until IS NULL OR n.lease_until < $1)
               AND d.delivery = $10
               AND NOT EXISTS (  -- the reader's digest of its day has gone (digest_key)
                 SELECT FROM day s JOIN notifier.notifications g
                   ON g.key = 'daily_digest:' || n.agency || ':' || n.recipient || ':' || s.name
                 WHERE n.due_at >= s.starts AND n.due_at < s.ends
                   AND NOT (g.status = 'scheduled' AND g.attempts = 0))
             ORDER BY n.not_before LIMIT $2 FOR UPDATE OF n SKIP LOCKED)
           UPDATE notifier.notifications n SET lease_owner = $3, lease_until = $4,
                                               claim_token = $5, updated_at = $1
           FROM due WHERE n.id = due.id RETURNING n.*, due.timezone AS reader_timezone""",
        now, limit, owner, now + lease, uuid4(), zones, [due_by[z] for z in zones],
        list(DATED), list(passed_over), delivery, now + span,
        [d.name for d in digest_days], [d.starts for d in digest_days],
        [d.ends for d in digest_days])
    return [(Row.of(r), r["reader_timezone"]) for r in rows]


async def renew_claim(pool: asyncpg.Pool, token: UUID, lease_until: datetime) -> int:
    """Extend the lease of the rows of one claim still pending; the number renewed."""
    result: str = await pool.execute(
        "UPDATE notifier.notifications SET lease_until = $2 WHERE claim_token = $1"
        " AND status IN ('scheduled', 'failed')", token, lease_until)
    return int(result.split()[-1])


async def confirm_claim(pool: asyncpg.Pool, row_id: UUID, token: UUID | None,
                        lease_until: datetime) -> bool:
    """Just before a send: is the row still pending and held under ``token``? If so, its lease
    runs to ``lease_until``. The check and the extension are one statement, so a claim by
    another instance lands either before it (False) or after the extended lease."""
    found = await pool.fetchval(
        "UPDATE notifier.notifications SET lease_until = $3 WHERE id = $1"
        " AND claim_token = $2 AND status IN ('scheduled', 'failed') RETURNING 1",
        row_id, token, lease_until)
    return found is not None


@dataclass(frozen=True)
class Outcome:
    """What became of one claimed row. ``attempted``: an SMTP attempt was made (recorded)."""

    row_id: UUID
    status: str
    attempted: bool
    attempt_no: int
    code: int | None = None
    error: str | None = None
    not_before: datetime | None = None
    attempt_outcome: str | None = None


@dataclass(frozen=True)
class Recorded:
    """What recording outcomes did: the rows another instance had taken over (``lost``,
    left alone), and the rows whose outcome is now their fate (``stood``); neither holds a
    row the feed settled meanwhile, whose outcome was not its fate unless its mail went."""

    lost: list[UUID]
    stood: frozenset[UUID]


async def record_outcomes(pool: asyncpg.Pool, outcomes: Sequence[Outcome], now: datetime,
                          token: UUID) -> Recorded:
    """Record what happened to rows claimed under ``token``; rows no longer held under it
    (another instance took them over) are left alone. Retried on deadlock: a message that
    went out but was not recorded would be sent again once its lease ran out."""
    ordered = sorted(outcomes, key=lambda o: o.row_id)
    return await retried_on_deadlock(lambda: _record_outcomes(pool, ordered, now, token))


_T = TypeVar("_T")


async def retried_on_deadlock(work: Callable[[], Awaitable[_T]], attempts: int = 5) -> _T:
    """``work``'s transaction, tried again when PostgreSQL ends it to break a deadlock."""
    for attempt in range(attempts):
        try:
            return await work()
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


# the statuses in which a claimed row's fate is still the dispatcher's to record
_OURS_TO_SETTLE = ("scheduled", "failed")
# in recording an outcome ($2) of a row: whether the outcome is its fate
_STILL_OURS_TO_SETTLE = f"(status IN {_OURS_TO_SETTLE} OR $2 = 'sent')"


async def _record_outcomes(pool: asyncpg.Pool, outcomes: Sequence[Outcome], now: datetime,
                           token: UUID) -> Recorded:
    if not outcomes:
        return Recorded([], frozenset())
    async with pool.acquire() as conn, conn.transaction():
        held = await conn.fetch(
            "SELECT id, status FROM notifier.notifications WHERE id = ANY($1::uuid[])"
            " AND claim_token = $2 ORDER BY id FOR UPDATE",
            [o.row_id for o in outcomes], token)
        status = {r["id"]: r["status"] for r in held}
        lost = [o.row_id for o in outcomes if o.row_id not in status]
        outcomes = [o for o in outcomes if o.row_id in status]
        stood = frozenset(o.row_id for o in outcomes
                          if o.status == "sent" or status[o.row_id] in _OURS_TO_SETTLE)
        # A row the feed settled while it was ours (its case closed, its review held: it is
        # cancelled) keeps that fate, unless the mail went, which is recorded as it happened:
        # recorded dead (no address) or failed, it was mended or retried and sent after all.
        await conn.executemany(
            f"""UPDATE notifier.notifications SET
                 status = CASE WHEN {_STILL_OURS_TO_SETTLE} THEN $2 ELSE status END,
                 attempts = attempts + $3::int, last_code = $4,
                 last_error = CASE WHEN {_STILL_OURS_TO_SETTLE} THEN $5 ELSE last_error END,
                 not_before = coalesce($6, not_before),
                 sent_at = CASE WHEN $2 = 'sent' THEN $7 ELSE sent_at END,
                 first_attempt_at = CASE WHEN $3::int = 1 THEN coalesce(first_attempt_at, $7)
                                         ELSE first_attempt_at END,
                 cancelled_by_case = CASE WHEN {_STILL_OURS_TO_SETTLE} THEN false
                                          ELSE cancelled_by_case END,
                 lease_owner = NULL, lease_until = NULL, claim_token = NULL, updated_at = $7
               WHERE id = $1""",
            [(o.row_id, o.status, 1 if o.attempted else 0, o.code, o.error, o.not_before, now)
             for o in outcomes])
        await conn.executemany(
            "INSERT INTO notifier.attempts VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT DO NOTHING",
            [(o.row_id, o.attempt_no, now, o.code, o.attempt_outcome, o.error)
             for o in outcomes if o.attempted])
    return Recorded(lost, stood)


async def mark_digest_children(pool: asyncpg.Pool, digest_id: UUID, outcome: Outcome,
                               told: Sequence[UUID], now: datetime) -> None:
    """The notices inside a digest share its fate once it is sent or given up: sent, those
    the mail told (``told``) still in it or still its reader's (one the feed cancelled, or
    cancelled and brought back, while the mail was on its way was told all the same; one a
    transfer moved on to another reader goes to them too), given up, those still waiting in
    it."""
    # rows locked in id order, as the feed and record_outcomes lock them (a deadlock here
    # failed the handling of a digest that had gone, and it was sent again)
    if outcome.status == "sent":
        await retried_on_deadlock(lambda: pool.execute(
            "UPDATE notifier.notifications n SET status = 'sent', last_code = $3,"
            " last_error = NULL, cancelled_by_case = false, sent_at = $4, updated_at = $4"
            " FROM notifier.notifications d WHERE d.id = $1 AND n.id IN (SELECT id"
            " FROM notifier.notifications WHERE id = ANY($2::uuid[]) ORDER BY id FOR UPDATE)"
            " AND (n.digest_id = d.id OR n.digest_id IS NULL AND n.recipient = d.recipient)",
            digest_id, list(told), outcome.code, now))
    elif outcome.status == "dead":
        await retried_on_deadlock(lambda: pool.execute(
            "UPDATE notifier.notifications SET status = 'dead', last_code = $2,"
            " last_error = $3, updated_at = $4 WHERE id IN (SELECT id"
            " FROM notifier.notifications WHERE digest_id = $1"
            " AND status IN ('scheduled', 'failed') ORDER BY id FOR UPDATE)"
            " AND status IN ('scheduled', 'failed')",
            digest_id, outcome.code, f"digest not delivered: {outcome.error}", now))


async def give_up_items(pool: asyncpg.Pool, items: Sequence[Outcome],
                        now: datetime) -> frozenset[UUID]:
    """Dead letters of notices in a digest that cannot go in it, each with why; the ids of
    those given up (not one the feed settled meanwhile)."""
    if not items:
        return frozenset()
    rows = await pool.fetch(
        "UPDATE notifier.notifications n SET status = 'dead', last_error = i.error,"
        " updated_at = $3 FROM unnest($1::uuid[], $2::text[]) AS i(id, error)"
        f" WHERE n.id = i.id AND n.status IN {_OURS_TO_SETTLE} RETURNING n.id",
        [item.row_id for item in items], [item.error for item in items], now)
    return frozenset(row["id"] for row in rows)


async def digest_children(pool: asyncpg.Pool, digest_id: UUID) -> list[Row]:
    rows = await pool.fetch(
        "SELECT * FROM notifier.notifications WHERE digest_id = $1"
        " AND status IN ('scheduled', 'failed') ORDER BY due_at, key", digest_id)
    return [Row.of(r) for r in rows]


async def attach_to_digest(pool: asyncpg.Pool, row: Row, digest: Notice, domain: str,
                           now: datetime, history_began: datetime | None) -> bool:
    """Put ``row`` into the recipient's digest ``digest``; False when that digest is already
    being sent (the caller tries the next day's)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_INSERT, *_insert_args(digest, domain, now, now,
                                                  history_began=history_began))
        open_digest = await conn.fetchval(
            "SELECT id FROM notifier.notifications WHERE key = $1 AND status = 'scheduled'"
            " AND attempts = 0 AND lease_until IS NULL FOR UPDATE", digest.key)
        if open_digest is None:
            return False
        # not held any more: the instance that took the row over decides where it goes
        await conn.execute(
            "UPDATE notifier.notifications SET digest_id = $2, not_before = $3,"
            " lease_owner = NULL, lease_until = NULL, claim_token = NULL, updated_at = $4"
            " WHERE id = $1 AND claim_token = $5",
            row.id, open_digest, digest.due_at, now, row.claim_token)
        return True


async def fan_out(pool: asyncpg.Pool, parent: Row, children: Sequence[Notice], domain: str,
                  now: datetime) -> None:
    """Replace a notice addressed to a group by one notice per member, due now, while the
    parent is still held under its claim (else whoever holds it now hands it on) and still
    pending (the feed may have cancelled it meanwhile: its case closed, its review held;
    supervisors were told of both). The parent
    ends ``handed_on``: it was mailed to no one. Children carry the parent's context as it is
    when handed on, not as ``parent`` was loaded: a transfer or a new name may have changed it
    since, and so may a reopening its times called for (they are keyed by parent and member,
    so a later hand-on adds no others)."""
    async with pool.acquire() as conn, conn.transaction():
        handed = await conn.fetchrow(
            f"UPDATE notifier.notifications SET status = '{HANDED_ON}', last_error = $3,"
            " lease_owner = NULL, lease_until = NULL, claim_token = NULL, updated_at = $2"
            " WHERE id = $1 AND claim_token = $4 AND status IN ('scheduled', 'failed')"
            " RETURNING context::text, cause_recorded_at, recalled_at",
            parent.id, now, "handed on to " + ", ".join(c.recipient for c in children),
            parent.claim_token)
        if handed is None:
            return
        shared = json.loads(handed["context"])  # inserting only reads it
        await insert_notices(conn, [replace(c, context=shared) for c in children],
                             domain, now, cause_recorded_at=handed["cause_recorded_at"],
                             parent_id=parent.id, recalled_at=handed["recalled_at"])


async def release(pool: asyncpg.Pool, row: Row, not_before: datetime, now: datetime) -> None:
    """Give a claimed row back, to be looked at again at ``not_before`` (if still ours)."""
    await pool.execute(
        "UPDATE notifier.notifications SET not_before = $2, lease_owner = NULL,"
        " lease_until = NULL, claim_token = NULL, updated_at = $3"
        " WHERE id = $1 AND claim_token = $4", row.id, not_before, now, row.claim_token)


async def decide_afresh(conn: asyncpg.Connection, agency: str, roles: Sequence[str],
                       recipients: Sequence[str], now: datetime) -> None:
    """A reader's preferences changed (delivery, time zone, quiet hours, celebrations): what
    waits for them under the old ones is decided afresh under the new ones, as if it had just
    fallen due. That is a notice or digest put off (to a moment in their old zone, the end of
    their old quiet hours) and a notice in a digest no one is sending yet: it leaves the
    digest, which, left empty, is removed. Kept to be given up when due, it held its key, the
    reader's local day (``digest_key``): the digest of that day in a new zone joined it at
    the old zone's hour (03:00 in New York for a London 08:00), or, once it was given up,
    went on to the next day, and a review's "due today" arrived the day after (an audit).
    A notice cancelled while in it (its case closed) lets it go too.
    Rows being handled, retries and a digest being sent are left alone (the digest sends
    what it holds, once). The reader's open digests are locked first, as
    ``attach_to_digest`` locks one, so none is claimed for sending meanwhile."""
    await conn.execute(
        "SELECT FROM notifier.notifications WHERE agency = $1 AND recipient = ANY($2::text[])"
        " AND kind = 'daily_digest' AND status = 'scheduled' AND attempts = 0"
        " AND lease_until IS NULL ORDER BY id FOR UPDATE", agency, list(recipients))
    await conn.execute(
        "UPDATE notifier.notifications SET not_before = due_at, digest_id = NULL,"
        " updated_at = $4 WHERE id IN (SELECT n.id FROM notifier.notifications n"
        " WHERE n.agency = $1 AND n.recipient = ANY($3::text[])"
        " AND n.recipient_role = ANY($2::text[]) AND n.status = 'scheduled'"
        " AND (n.lease_until IS NULL OR n.lease_until < $4)"
        " AND (n.digest_id IS NULL AND n.not_before <> n.due_at"
        " OR EXISTS (SELECT FROM notifier.notifications d WHERE d.id = n.digest_id"
        " AND d.status = 'scheduled' AND d.attempts = 0 AND d.lease_until IS NULL))"
        " ORDER BY n.id FOR UPDATE OF n)",
        agency, list(roles), list(recipients), now)
    emptied = await conn.fetch(
        "SELECT g.id FROM notifier.notifications g WHERE g.agency = $1"
        " AND g.recipient = ANY($2::text[]) AND g.kind = 'daily_digest'"
        " AND g.status = 'scheduled' AND g.attempts = 0 AND g.lease_until IS NULL"
        " AND NOT EXISTS (SELECT FROM notifier.notifications i WHERE i.digest_id = g.id"
        " AND i.status <> 'cancelled')", agency, list(recipients))
    if not emptied:
        return
    ids = [r["id"] for r in emptied]
    # a notice cancelled in it (its case closed) was never sent with it: it lets it go
    await conn.execute("UPDATE notifier.notifications SET digest_id = NULL, updated_at = $2"
                       " WHERE digest_id = ANY($1::uuid[])", ids, now)
    await conn.execute("DELETE FROM notifier.notifications WHERE id = ANY($1::uuid[])", ids)


# Why delivery did not send a participant's milestone when they had not opted in, or had turned
# celebrations off (delivery's ``_participant_decision`` records these words): the ones an
# opt-in brings back (0203). Matched by the words, as no column says why a row was cancelled.
NOT_OPTED_IN = "the participant has not opted in to hear about their milestones"
CELEBRATIONS_OFF = "the participant turned celebrations off in their preferences"
NOT_HEARD_OF = (NOT_OPTED_IN, CELEBRATIONS_OFF)


async def _end_unheard_milestones(conn: asyncpg.Connection, case_id: UUID, now: datetime,
                                  goal_id: UUID | None = None) -> None:
    """The case's participant milestones (of one goal) cancelled as not heard of are ended by
    a take-back or a closing too, as a waiting one is: a later opt-in does not send them
    (``send_missed_milestones``), even once the case is reopened. Their reason stays: it is
    why they were not sent then. Locked in id order, before what waits is cancelled, so an
    opt-in at the same moment either waits for this and sees it, or goes first and has its
    milestone cancelled with what waits."""
    await conn.execute(
        "UPDATE notifier.notifications SET cancelled_by_case = true, updated_at = $4"
        " WHERE id IN (SELECT id FROM notifier.notifications WHERE case_id = $1"
        " AND kind = 'milestone' AND recipient_role = 'participant' AND status = 'cancelled'"
        " AND NOT cancelled_by_case AND last_error = ANY($2::text[])"
        " AND ($3::text IS NULL OR context->>'goal_id' = $3) ORDER BY id FOR UPDATE)",
        case_id, list(NOT_HEARD_OF), str(goal_id) if goal_id is not None else None, now)


async def send_missed_milestones(conn: asyncpg.Connection, agency: str,
                                 recipients: Sequence[str], since: datetime,
                                 now: datetime) -> int:
    """A participant now hears of milestones they did not (a first opt-in, celebrations back
    on, a case added): those of ``recipients`` (their cases) cancelled for that reason and
    achieved at ``since`` or later are scheduled again, now, with their own Message-ID, when
    the record still bears them out: not ended by a take-back or closing since
    (``_end_unheard_milestones``), the case open, the goal still achieved, and the goal's
    latest milestone. Never another's notices, nor one cancelled for another reason. Returns
    how many.

    The rows are locked first and the case read after, in a statement of its own: it sees
    what a take-back or closing committed while the lock waited."""
    held = await conn.fetch(
        "SELECT id FROM notifier.notifications WHERE agency = $1 AND recipient = ANY($2::text[])"
        " AND due_at >= $3 AND recipient_role = 'participant' AND kind = 'milestone'"
        " AND status = 'cancelled' AND NOT cancelled_by_case AND last_error = ANY($4::text[])"
        " ORDER BY id FOR UPDATE", agency, list(recipients), since, list(NOT_HEARD_OF))
    if not held:
        return 0
    result: str = await conn.execute(
        f"UPDATE notifier.notifications n SET {_RESCHEDULED_NOW}, last_error = NULL"
        " FROM notifier.cases c, notifier.goals g"
        " WHERE n.id = ANY($1::uuid[]) AND n.status = 'cancelled'"
        " AND c.case_id = n.case_id AND c.status = 'open'"
        " AND g.case_id = n.case_id AND g.goal_id::text = n.context->>'goal_id'"
        " AND g.status = 'achieved'"
        " AND NOT EXISTS (SELECT FROM notifier.notifications later"
        " WHERE later.case_id = n.case_id AND later.kind = 'milestone'"
        " AND later.recipient_role = 'participant'"
        " AND later.context->>'goal_id' = n.context->>'goal_id'"
        " AND (later.due_at, later.id) > (n.due_at, n.id))",
        [r["id"] for r in held], now)
    return int(result.split()[-1])


async def lock_cases_to_read(conn: asyncpg.Connection, case_ids: Sequence[UUID]) -> None:
    """Wait for the feed to be done with these cases, and hold it off them until this
    transaction ends (in id order, as the feed takes them: ``cases.load_cases``). What
    brings a dead letter back reads a case's manager and status, and the feed moves and
    cancels only waiting notices: read before the feed committed a transfer or a closing, a
    revived notice went to the one who had left, or of a closed case (an audit staged both)."""
    await conn.execute("SELECT FROM notifier.cases WHERE case_id = ANY($1::uuid[])"
                       " ORDER BY case_id FOR SHARE", sorted(set(case_ids)))


# Why delivery made a dead letter of a notice that an entry in the directory mends: the fixed
# start of each reason, written by delivery and matched by ``send_mended`` (0203). Matched by
# the words, as no column says why a row died.
NO_ADDRESS_FOR = "no email address on file for "  # then whom (no entry, or no address)
NOT_A_PLAIN_ADDRESS = "the address on file is not a plain address"  # stored before the check
UNKNOWN_ZONE = "the time zone "  # then which, whose, "is not one this notifier knows"
NO_SUPERVISOR_OF = "no supervisor of agency "  # then which, "in the directory"
PARTICIPANT_NO_ADDRESS = "the participant opted in but no email address is on file"
MENDED_BY_AN_ADDRESS = (NO_ADDRESS_FOR, NOT_A_PLAIN_ADDRESS, UNKNOWN_ZONE)
MENDED_BY_A_PARTICIPANTS_ADDRESS = (PARTICIPANT_NO_ADDRESS, NOT_A_PLAIN_ADDRESS, UNKNOWN_ZONE)
MENDED_BY_A_SUPERVISOR = (NO_SUPERVISOR_OF,)
DIGEST_MENDED = ("not sent: the directory now gives what it lacked, and its notices were"
                 " scheduled again, each as its reader now takes it")

# the agency's ($1) dead rows in roles $2 to recipients $3 that died for one of the reasons
# (prefixes of ``last_error``) an entry mends ($4)
_DEAD_FOR = ("SELECT id, kind, case_id FROM notifier.notifications WHERE agency = $1"
             " AND recipient = ANY($3::text[]) AND recipient_role = ANY($2::text[])"
             " AND status = 'dead' AND EXISTS (SELECT FROM unnest($4::text[]) AS why"
             " WHERE starts_with(last_error, why))")


async def send_mended(conn: asyncpg.Connection, agency: str, roles: Sequence[str],
                      recipients: Sequence[str], reasons: Sequence[str], now: datetime) -> int:
    """An entry in the directory now gives what delivery found missing: the dead letters of
    ``agency`` to ``recipients`` in ``roles`` that died for one of ``reasons``
    (prefixes of ``last_error``) are scheduled again, now, with their own Message-ID, and the
    dispatcher decides them afresh, as any notice falling due: one too late to be useful is
    cancelled (not a person's retry: none is sent however late). The notices of a digest that
    died so leave it and go the same way; the digest is given up, saying why. Not one a retry
    of it would be refused for (the case closed, a handover transferred on, a celebration taken
    back), nor one to a case manager of a case someone else manages now; one naming the case's
    manager names the one now, as a waiting notice follows a transfer. Never one that died
    for another reason. Returns how many.

    The cases are locked first (``lock_cases_to_read``), then the digests, then the notices
    (each in id order), as a retry of a digest locks them; the cases are read after, in a
    statement of their own: it sees what a closing or take-back committed while the locks
    waited. Its tries before it died do not count: one that had been tried (a 451, say) was
    sent however late, as only a person's retry is."""
    dead = await conn.fetch(_DEAD_FOR, agency, list(roles), list(recipients), list(reasons))
    digests = [r["id"] for r in dead if r["kind"] == Kind.DAILY_DIGEST]
    items = await conn.fetch("SELECT id, case_id FROM notifier.notifications"
                             " WHERE digest_id = ANY($1::uuid[])", digests) if digests else []
    notices = [r for r in dead if r["kind"] != Kind.DAILY_DIGEST] + items
    if not notices and not digests:
        return 0
    await lock_cases_to_read(conn, [r["case_id"] for r in notices if r["case_id"] is not None])
    digests = await _locked_dead(conn, digests)
    notices_now = await _locked_dead(conn, [r["id"] for r in notices])
    result: str = await conn.execute(
        f"UPDATE notifier.notifications SET {_RESCHEDULED_NOW}, last_error = NULL,"
        " attempts_before_revival = attempts,"  # its own retries, and judged late as untried
        f" context = {_NAMING_MANAGER_NOW}"
        " WHERE id IN (SELECT i.id"
        " FROM notifier.notifications i LEFT JOIN notifier.cases c ON c.case_id = i.case_id"
        " WHERE i.id = ANY($1::uuid[]) AND i.status = 'dead'"
        f" AND ({_WHY_NOT_SENT_AGAIN}) IS NULL"
        " AND (i.recipient_role <> 'case_manager' OR c.case_manager = i.recipient))",
        notices_now, now)
    await conn.execute(
        "UPDATE notifier.notifications SET status = 'cancelled', last_error = $2,"
        " updated_at = $3 WHERE id = ANY($1::uuid[])", digests, DIGEST_MENDED, now)
    return int(result.split()[-1])


async def _locked_dead(conn: asyncpg.Connection, ids: Sequence[UUID]) -> list[UUID]:
    """Those of ``ids`` still dead, locked in id order."""
    return [r["id"] for r in await conn.fetch(
        "SELECT id FROM notifier.notifications WHERE id = ANY($1::uuid[]) AND status = 'dead'"
        " ORDER BY id FOR UPDATE", list(ids))]


# --------------------------------------------------------------------------------------------
# reading and operator actions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    agency: str | None
    recipient: str | None = None
    case_id: UUID | None = None
    status: str | None = None
    kind: str | None = None
    pending_only: bool = False
    visible_to_manager: str | None = None


async def list_rows(db: Db, f: Filter, *, limit: int, offset: int = 0) -> list[Row]:
    args: list[Any] = []

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    clauses = ["true"]
    agency = param(f.agency) if f.agency is not None else "NULL"
    if f.agency is not None:
        clauses.append(f"agency = {agency}")
    for column, value in (("recipient", f.recipient), ("case_id", f.case_id),
                          ("kind", f.kind)):
        if value is not None:
            clauses.append(f"{column} = {param(value)}")
    if f.status is not None:
        clauses.append(f"status = {param(f.status)}")
    if f.pending_only:
        clauses.append("status IN ('scheduled', 'failed')")
    if f.visible_to_manager is not None:
        # the caseload as an array first: as a subquery it was checked against every row of
        # the agency (60 ms at 100,000 rows; 4 ms this way, following the manager's notices)
        manager = param(f.visible_to_manager)
        clauses.append(f"((recipient = {manager} AND recipient_role = ANY("
                       f"{param(list(TO_ONE_STAFF_MEMBER))}::text[]))"
                       f" OR case_id = ANY(ARRAY(SELECT case_id FROM"
                       f" notifier.cases WHERE agency = {agency}"
                       f" AND case_manager = {manager})))")
    rows = await db.fetch(
        f"SELECT * FROM notifier.notifications i WHERE {' AND '.join(clauses)}"
        f" ORDER BY due_at, key LIMIT {param(limit)} OFFSET {param(offset)}", *args)
    return [Row.of(r) for r in rows]


async def get_row(db: Db, row_id: UUID, agency: str | None) -> Row | None:
    """The notification, if it is ``agency``'s (None: any agency's, for the service role).
    Another agency's row is not read at all: answered as fast as an unknown id, it cannot be
    told apart by timing (an audit measured it being fetched and parsed before the agency was
    compared), as the records service's ``load_plan`` does."""
    r = await db.fetchrow("SELECT * FROM notifier.notifications WHERE id = $1"
                          " AND ($2::text IS NULL OR agency = $2)", row_id, agency)
    return Row.of(r) if r else None


async def attempts_of(db: Db, row_id: UUID) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT attempt, attempted_at, smtp_code, outcome, error"
                          " FROM notifier.attempts WHERE notification_id = $1"
                          " ORDER BY attempt", row_id)
    return [{"attempt": r["attempt"], "at": r["attempted_at"].isoformat(),
             "smtp_code": r["smtp_code"], "outcome": r["outcome"], "error": r["error"]}
            for r in rows]


# the case manager of the notification's case as the feed last told it
_MANAGER_NOW = ("SELECT c.case_manager FROM notifier.cases c"
                " WHERE c.case_id = notifier.notifications.case_id")


@dataclass(frozen=True)
class NotRevived:
    """Why a dead letter was not sent again: its status as the retry found it (None: gone,
    an emptied digest removed), and, still dead, what a retry of it is refused for
    (``_WHY_NOT_SENT_AGAIN``)."""

    status: str | None
    why: str | None


async def revive_dead(pool: asyncpg.Pool, row_id: UUID, now: datetime) -> Row | NotRevived:
    """Send a dead letter again, now: a fresh retry budget, the same Message-ID, and its
    staleness counted from now (a person asked for it, however late it is). It goes as the
    case now reads, as every notice waiting does (``follow_transfer``): to the case's manager
    now, naming them. A retry after a transfer went to the case manager who had left.
    A digest's notices go as their cases now read too (``_revive_digest_items``); a digest
    with none left is given up at once. Returns the row as revived, or why not: it was not
    dead, or a retry of it is refused (``_WHY_NOT_SENT_AGAIN``), as the locked rows read. The
    cases are locked first (``lock_cases_to_read``), then the rows: the feed may commit a
    closing while a retry waits (the retry sent a closed case's letter), and a reopening
    after it (a second look, outside the lock, found nothing refused, and the retry answered
    that a dead letter was not dead)."""
    async with pool.acquire() as conn, conn.transaction():
        await lock_cases_to_read(conn, [r["case_id"] for r in await conn.fetch(
            "SELECT case_id FROM notifier.notifications WHERE (id = $1 OR digest_id = $1)"
            " AND case_id IS NOT NULL", row_id)])
        updated = await conn.fetchrow(
            f"UPDATE notifier.notifications SET {_REVIVED}, {_ADDRESSED_NOW}"
            # the status outside the subquery too: a retry that waited for this row's lock
            # rechecks only the outer conditions (two retries at once both revived it)
            " WHERE id = $1 AND status = 'dead' AND id IN (SELECT i.id"
            " FROM notifier.notifications i LEFT JOIN notifier.cases c ON c.case_id = i.case_id"
            f" WHERE i.id = $1 AND ({_WHY_NOT_SENT_AGAIN}) IS NULL)"
            " RETURNING *", row_id, now)
        if updated is None:
            found = await conn.fetchrow(
                "SELECT i.status,"
                f" CASE WHEN i.status = 'dead' THEN {_WHY_NOT_SENT_AGAIN} END"
                " AS why FROM notifier.notifications i"
                " LEFT JOIN notifier.cases c ON c.case_id = i.case_id WHERE i.id = $1", row_id)
            if found is None:
                return NotRevived(None, None)
            return NotRevived(found["status"], found["why"])
        revived = Row.of(updated)
        if revived.kind != Kind.DAILY_DIGEST:
            return revived
        return await _revive_digest_items(conn, revived, now)


# a notice's context naming the case's manager now, where it names one
_NAMING_MANAGER_NOW = (
    "CASE WHEN context ? 'case_manager' THEN jsonb_set(context, '{case_manager}',"
    f" to_jsonb(coalesce(({_MANAGER_NOW}), context->>'case_manager'))) ELSE context END")
# a notice to the case manager addressed to the case's manager now, and naming them
_ADDRESSED_NOW = ("recipient = CASE WHEN recipient_role = 'case_manager'"
                  f" THEN coalesce(({_MANAGER_NOW}), recipient) ELSE recipient END,"
                  f" context = {_NAMING_MANAGER_NOW}")
# a dead letter a person retries ($2: now): a fresh budget, due now, out of any digest
_REVIVED = (f"{_RESCHEDULED_NOW}, first_attempt_at = NULL, revived_at = $2,"
            " attempts_before_revival = attempts")

# Why a dead notice is not sent again, as ``_WHY_NOT_SENT_AGAIN`` says it
CASE_CLOSED = "the case is closed"
TRANSFERRED_ON = "the case has been transferred on since"
TAKEN_BACK = "what it celebrates was taken back since"

# Why a dead notice ``i`` of case ``c`` is not sent again: what a retry of it alone is refused
# for (the retry route: case-closed, transferred-on, taken-back), or NULL. A take-back
# withdraws a celebration still waiting, not a dead one; a further transfer, a handover still
# waiting; closing, what waits.
_WHY_NOT_SENT_AGAIN = f"""CASE
  WHEN c.status = 'closed' THEN '{CASE_CLOSED}'
  WHEN i.kind = 'case_transferred' AND c.case_manager <> i.recipient
    THEN '{TRANSFERRED_ON}'
  WHEN i.kind = 'small_win' AND i.context ? 'step_id' AND NOT EXISTS (
      SELECT FROM notifier.steps s WHERE s.case_id = i.case_id
        AND s.step_id::text = i.context->>'step_id' AND s.status = 'completed')
    OR i.kind = 'milestone' AND i.context ? 'goal_id' AND NOT EXISTS (
      SELECT FROM notifier.goals g WHERE g.case_id = i.case_id
        AND g.goal_id::text = i.context->>'goal_id' AND g.status = 'achieved')
    THEN '{TAKEN_BACK}'
  END"""


# the dead notices of a revived digest ($1), each with why it is not sent again (or NULL)
_NOT_SENT_AGAIN = f"""
SELECT i.id, {_WHY_NOT_SENT_AGAIN} AS reason
FROM notifier.notifications i JOIN notifier.cases c ON c.case_id = i.case_id
WHERE i.digest_id = $1 AND i.status = 'dead'"""


NOTHING_LEFT_AT_RETRY = ("nothing left to send: each of its notices is now another case"
                         " manager's, or is not sent again")


async def _revive_digest_items(conn: asyncpg.Connection, digest: Row, now: datetime) -> Row:
    """The dead notices of a revived ``digest`` go as their cases now read. One a retry of
    it alone would be refused for stays dead, out of the digest, saying why. One addressed to
    the case manager of a case another manages now goes to them, out of the digest and due
    now, so their preferences decide how (as ``follow_transfer`` moves a waiting one). The
    rest go with the digest again, naming the case's manager now. With none left, the digest
    is given up: it is not sent empty. Locked in id order, as the dispatcher's outcomes lock
    rows."""
    await conn.execute("SELECT FROM notifier.notifications WHERE digest_id = $1"
                       " AND status = 'dead' ORDER BY id FOR UPDATE", digest.id)
    await conn.execute(
        "UPDATE notifier.notifications n SET digest_id = NULL, updated_at = $2,"
        " last_error = 'not sent again with its digest: ' || why.reason"
        f" FROM ({_NOT_SENT_AGAIN}) why WHERE n.id = why.id AND why.reason IS NOT NULL",
        digest.id, now)
    await conn.execute(
        f"UPDATE notifier.notifications SET {_REVIVED}, {_ADDRESSED_NOW}"
        " WHERE digest_id = $1 AND status = 'dead' AND recipient_role = 'case_manager'"
        f" AND recipient <> coalesce(({_MANAGER_NOW}), recipient)", digest.id, now)
    kept: str = await conn.execute(
        "UPDATE notifier.notifications SET status = 'scheduled', not_before = $2,"
        f" updated_at = $2, context = {_NAMING_MANAGER_NOW}"
        " WHERE digest_id = $1 AND status = 'dead'", digest.id, now)
    if int(kept.split()[-1]):
        return digest
    given_up = await conn.fetchrow(
        "UPDATE notifier.notifications SET status = 'cancelled', last_error = $2,"
        " updated_at = $3 WHERE id = $1 RETURNING *", digest.id, NOTHING_LEFT_AT_RETRY, now)
    return Row.of(given_up)


async def counts_by_status(db: Db) -> dict[str, int]:
    rows = await db.fetch("SELECT status, count(*) AS n FROM notifier.notifications"
                          " GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def schedule_snapshot(db: Db) -> list[tuple[Any, ...]]:
    """The schedule as the feed defines it (tests and rebuild checks compare these)."""
    rows = await db.fetch(
        "SELECT key, kind, case_id, agency, recipient_role, recipient, due_at, status,"
        " context::text AS context FROM notifier.notifications WHERE parent_id IS NULL"
        " AND kind <> 'daily_digest' ORDER BY key")
    return [tuple(r.values()) for r in rows]


__all__ = ["PENDING", "Filter", "Notice", "Outcome", "RecipientRole", "Row"]
