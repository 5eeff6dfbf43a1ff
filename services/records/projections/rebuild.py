"""Rebuilding every projection from the events while writes go on: `casetrail rebuild-projections`.

The plans and the outcome facts are folded into shadows of them (``projections/shadow.py``)
in two phases (decision 0014):

1. Unlocked: every stream is folded, a batch of streams at a time, each batch read in one
   statement, keeping the version each stream was folded to. Appends go on meanwhile, so
   the streams that moved are folded again, round after round, until a round finds little
   to do (or ``ROUNDS`` have passed: writes may outpace the folding).
2. Locked, briefly, in one transaction: the live tables EXCLUSIVE (reads go on with the old
   rows, appends wait), the streams whose head moved since their fold folded again, and the
   live rows made the shadows'. The lock is waited for ``LOCK_WAIT`` at most: a transaction
   that holds a live table (an append stuck in flight, an open psql session) would otherwise
   keep every append queued behind the rebuild's request; the rebuild steps aside instead,
   catches up again and tries once more.

No wait for a lock another session holds lasts longer than ``lock_timeout``: a phase 1
statement waits that long at most (PostgreSQL's ``lock_timeout``), and phase 2 stops trying
once that long has passed since its first try. The rebuild then stops with
``LockWaitTimedOut``, naming the table and who holds it.

The live tables change only in phase 2's transaction: an interrupted or stopped rebuild leaves
them as they were, a finished one as rebuilt, never half of either.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from schemas.events import EventDecodeError
from services.common.database import COMMAND_TIMEOUT_SECONDS, milliseconds
from services.common.jsonenc import encode_json
from services.records.projections.outcomes import FACTS, fact_of
from services.records.projections.plans import PLANS, plan_row, replay
from services.records.projections.shadow import Projection
from services.records.store.events import REBUILD_READS, stream_heads, streams_of

PROJECTIONS = (PLANS, FACTS)
# Events folded per batch: bounds a batch's memory (one case may hold thousands of events),
# and the work left for phase 2: a round that folds fewer ends phase 1.
BATCH_EVENTS = 5_000
ROUNDS = 5
LOCK_WAIT = 0.5  # seconds: the longest an append waits on the rebuild's lock request
# Seconds the rebuild waits, at most, for a lock another session holds. The services' writes
# hold a projection for milliseconds and give up on a statement after the command timeout;
# a lock held longer is a session outside them (psql, a migration, a stuck client), which
# would not end by itself: the rebuild says so instead of waiting for it.
LOCK_TIMEOUT = COMMAND_TIMEOUT_SECONDS
# Two rebuilds of one database take turns (advisory locks are per database).
_TURN = int.from_bytes(hashlib.sha256(b"casetrail-rebuild-projections").digest()[:8], "big",
                       signed=True)


OnWait = Callable[[str], None]  # told why, when the rebuild waits


def quietly(why: str) -> None:
    """Waits unannounced."""


@dataclass(frozen=True)
class RebuildStats:
    events: int
    cases: int


class NothingRebuilt(Exception):
    """The rebuild stopped before changing anything, for the reason given."""


class UnreadableStream(NothingRebuilt):
    """A case holds an event this code cannot decode."""


class LockWaitTimedOut(NothingRebuilt):
    """A table the rebuild needs stayed locked by another session past ``lock_timeout``."""


@dataclass(frozen=True)
class _Need:
    """A lock the rebuild takes: why, on which tables, and the modes that, held by another
    session, make it wait; and the advisory lock it waits for, if any."""

    what: str
    tables: tuple[str, ...]
    blocked_by: tuple[str, ...]
    advisory: tuple[int, str] | None = None  # the key, and what to call it


# Phase 1 reads the events and makes its shadows LIKE the live tables (ACCESS SHARE): only
# ACCESS EXCLUSIVE (a migration, VACUUM FULL, a bare LOCK TABLE) makes it wait.
_READ_TABLES = (*REBUILD_READS, *(projection.table for projection in PROJECTIONS))
_READING = _Need(f"to read {', '.join(_READ_TABLES)}", _READ_TABLES, ("AccessExclusiveLock",))
_OTHER_THAN_READS = ("RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
                     "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock",
                     "AccessExclusiveLock")


def _locking(projection: Projection) -> _Need:
    """Phase 2's EXCLUSIVE lock of a live table: any session writing to it makes it wait."""
    return _Need(f"to lock {projection.table} EXCLUSIVE", (projection.table,),
                 _OTHER_THAN_READS)


async def rebuild_projections(pool: asyncpg.Pool, *, batch_events: int = BATCH_EVENTS,
                              on_wait: OnWait = quietly,
                              lock_timeout: float = LOCK_TIMEOUT) -> RebuildStats:
    """Recompute the plans and the outcome facts from the events; appends wait only for
    phase 2. ``on_wait`` is told why, whenever the rebuild waits: for another rebuild of the
    same database to finish (rebuilds take turns), or for a transaction holding the live
    tables to end. Raises LockWaitTimedOut, having changed nothing, when a table it needs
    stays locked by another session for ``lock_timeout`` seconds."""
    folded: dict[UUID, int] = {}  # stream: the version its shadow rows were folded to
    async with _session(pool, on_wait, lock_timeout) as conn:
        async with _bounded(conn, _READING, lock_timeout):
            for _ in range(ROUNDS):
                if await _catch_up(conn, folded, batch_events) < batch_events:
                    break
        await _swap_in_when_free(conn, folded, batch_events, on_wait, lock_timeout)
    return RebuildStats(events=sum(folded.values()), cases=len(folded))


async def _swap_in_when_free(conn: asyncpg.Connection, folded: dict[UUID, int],
                             batch_events: int, on_wait: OnWait, lock_timeout: float) -> None:
    """Phase 2, tried until it gets its locks or ``lock_timeout`` has passed since the first
    try."""
    attempt_wait = min(LOCK_WAIT, lock_timeout)
    give_up_at = time.monotonic() + lock_timeout
    while (held := await _swap_in(conn, folded, batch_events, attempt_wait)) is not None:
        if time.monotonic() >= give_up_at:
            raise await _timed_out(conn, held, lock_timeout)
        on_wait("a transaction holds the projection tables; the rebuild lets the writes"
                " waiting behind it go first and tries again")
        await asyncio.sleep(attempt_wait)
        async with _bounded(conn, _READING, lock_timeout):
            await _catch_up(conn, folded, batch_events)


async def _swap_in(conn: asyncpg.Connection, folded: dict[UUID, int], batch_events: int,
                   attempt_wait: float) -> _Need | None:
    """Phase 2; the lock it did not get within ``attempt_wait``, having changed nothing, or
    None once swapped in."""
    caught_up = dict(folded)  # the shadows' changes roll back with the transaction; so must this
    need = _READING
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = {milliseconds(attempt_wait)}")
            for projection in PROJECTIONS:
                need = _locking(projection)
                await projection.lock(conn)
            need = _READING
            await _catch_up(conn, caught_up, batch_events)
            for projection in PROJECTIONS:
                await projection.swap_in(conn)
    except asyncpg.LockNotAvailableError:
        return need
    folded.update(caught_up)
    return None


@contextlib.asynccontextmanager
async def _bounded(conn: asyncpg.Connection, need: _Need,
                   lock_timeout: float) -> AsyncIterator[None]:
    """Statements that wait for ``need`` under the session's ``lock_timeout``: past it, the
    rebuild stops, naming what it waited for."""
    try:
        yield
    except asyncpg.LockNotAvailableError as error:
        raise await _timed_out(conn, need, lock_timeout) from error


async def _timed_out(conn: asyncpg.Connection, need: _Need,
                     lock_timeout: float) -> LockWaitTimedOut:
    """The stop, with the sessions holding the lock as PostgreSQL shows them now."""
    key, name = need.advisory or (None, "")
    holders = await conn.fetch(
        "SELECT coalesce(l.relation::regclass::text, $4) AS table_name, l.mode, l.pid,"
        "       a.state"
        " FROM pg_locks AS l LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid"
        " WHERE l.granted AND l.pid <> pg_backend_pid()"
        "   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        "   AND ((l.relation = ANY(SELECT to_regclass(t) FROM unnest($1::text[]) AS t)"
        "         AND l.mode = ANY($2::text[]))"
        # a bigint advisory key is shown as its high and low 32 bits
        "        OR (l.locktype = 'advisory' AND l.objsubid = 1"
        "            AND ((l.classid::bigint << 32) | l.objid::bigint) = $3::bigint))"
        " ORDER BY l.pid, table_name", list(need.tables), list(need.blocked_by), key, name)
    held = "; ".join(f"process {row['pid']}" + (f" ({row['state']})" if row["state"] else "")
                     + f" holds {row['table_name']} in {row['mode']}" for row in holders)
    return LockWaitTimedOut(
        f"waited {lock_timeout:g} s (--lock-timeout) {need.what}:"
        f" {held or 'another session holds a lock it needs'}; nothing was changed, the"
        " projections are as they were. End that session's transaction, or run again with a"
        " longer --lock-timeout")


async def migrations_check_timed_out(pool: asyncpg.Pool, lock_timeout: float,
                                     tables: tuple[str, ...],
                                     turn: tuple[int, str]) -> LockWaitTimedOut:
    """The stop when the migrations check, which reads ``tables`` (ACCESS SHARE) after
    taking the migrations' ``turn`` (an advisory lock), waited ``lock_timeout``: the
    sessions holding either, read from another connection (the check's own is gone)."""
    need = _Need(f"to check the records migrations ({', '.join(tables)}, or another"
                 " migration running)", tables, ("AccessExclusiveLock",), turn)
    async with pool.acquire() as conn:
        return await _timed_out(conn, need, lock_timeout)


@contextlib.asynccontextmanager
async def _session(pool: asyncpg.Pool, on_wait: OnWait,
                   lock_timeout: float) -> AsyncIterator[asyncpg.Connection]:
    """A connection holding the rebuild's turn and its shadows, both session state that
    PostgreSQL drops with the session: closed, not handed back to the pool, when the rebuild
    fails or is interrupted, so that none of it outlives the rebuild. Its statements wait
    ``lock_timeout`` at most for a lock, except for the turn: a rebuild ahead ends by itself,
    its own waits bounded too."""
    async with pool.acquire() as conn:
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _TURN):
                on_wait("another rebuild of this database is running; this one waits for it"
                        " to finish, then rebuilds")
                await conn.execute("SELECT pg_advisory_lock($1)", _TURN)
            await conn.execute(f"SET lock_timeout = {milliseconds(lock_timeout)}")
            async with _bounded(conn, _READING, lock_timeout):
                await _create_shadows(conn)
            yield conn
            for projection in PROJECTIONS:
                await projection.drop_shadow(conn)
            await conn.execute("RESET lock_timeout")  # the pool hands connections on as they are
            await conn.execute("SELECT pg_advisory_unlock($1)", _TURN)
        except BaseException:
            conn.terminate()
            raise


async def _create_shadows(conn: asyncpg.Connection) -> None:
    try:
        for projection in PROJECTIONS:
            await projection.create_shadow(conn)
    except asyncpg.InsufficientPrivilegeError as error:
        raise NothingRebuilt(f"{error}; the rebuild folds into temporary tables: grant"
                             " TEMPORARY on the database to this role") from error


async def _catch_up(conn: asyncpg.Connection, folded: dict[UUID, int],
                    batch_events: int) -> int:
    """Fold every stream whose head is not at the version it was folded to (the first time,
    every stream); the events folded."""
    heads = await stream_heads(conn)
    behind = [stream_id for stream_id, version in sorted(heads.items())
              if folded.get(stream_id) != version]
    events = 0
    for batch in _batches(behind, heads, batch_events):
        events += await _fold(conn, batch, folded)
    return events


def _batches(stream_ids: list[UUID], heads: dict[UUID, int],
             batch_events: int) -> Iterator[list[UUID]]:
    batch: list[UUID] = []
    size = 0
    for stream_id in stream_ids:
        batch.append(stream_id)
        size += heads[stream_id]
        if size >= batch_events:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


async def _fold(conn: asyncpg.Connection, stream_ids: list[UUID],
                folded: dict[UUID, int]) -> int:
    """Fold these streams, as they are now, into the shadows, in place of an earlier fold's
    rows; the events folded."""
    plans: list[dict[str, Any]] = []
    facts: list[dict[str, Any]] = []
    events = 0
    for stream in await streams_of(conn, stream_ids):
        # each state is read once, for its fact, and let go: a case's states share little
        # (a goal's event copies its goals), so holding every one grew with the square of
        # the case's length (176 MiB for a case of 4,000 events)
        state = None
        try:
            for payload, event, state in replay(stream):
                if (fact := fact_of(payload, state, event.event_id)) is not None:
                    facts.append(vars(fact))  # asdict's deep copies took 30%
        except EventDecodeError as error:
            raise UnreadableStream(f"case {stream[0].stream_id}: {error}") from error
        assert state is not None  # a stream has at least the event that opened it
        plans.append(plan_row(state))
        events += len(stream)
    again = [stream_id for stream_id in stream_ids if stream_id in folded]
    async with conn.transaction():
        for projection, rows in ((PLANS, plans), (FACTS, facts)):
            if again:
                await projection.forget(conn, again)
            if rows:
                await projection.write_shadow(conn, encode_json(rows))
    folded.update((row["case_id"], row["version"]) for row in plans)
    return events
