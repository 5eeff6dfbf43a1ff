"""The event store: appends with optimistic concurrency, idempotency and the hash chain; reads.

All SQL touching ``records.events``, ``records.streams`` and ``records.idempotency_keys``
lives here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from services.common.database import DATABASE_UNAVAILABLE
from services.common.jsonenc import encode_json
from services.records.chain import GENESIS_HASH, ChainCheck, ChainLink, ChainReport
from services.records.store.group_commit import GroupCommit

Clock = Callable[[], datetime]
# what a statement runs on: the pool (any connection), or one connection (its transaction)
Executor: TypeAlias = "asyncpg.Pool | asyncpg.Connection"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class NewEvent:
    event_id: UUID
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedEvent:
    global_position: int
    stream_id: UUID
    version: int
    event_id: UUID
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    agency: str
    recorded_at: datetime
    prev_hash: str
    hash: str

    def link(self) -> ChainLink:
        return ChainLink(str(self.stream_id), self.version, str(self.event_id), self.type,
                         self.schema_version, self.data, self.metadata, self.recorded_at,
                         self.prev_hash, self.hash)

    def at_position(self, global_position: int) -> RecordedEvent:
        # direct construction: dataclasses.replace costs several times as much
        return RecordedEvent(global_position, self.stream_id, self.version, self.event_id,
                             self.type, self.schema_version, self.data, self.metadata,
                             self.agency, self.recorded_at, self.prev_hash, self.hash)


@dataclass(frozen=True)
class IdempotencyClaim:
    """A client's Idempotency-Key, scoped (per agency and actor) and fingerprinted by request."""

    scope: str
    key: str
    fingerprint: str


@dataclass(frozen=True)
class AppendResult:
    stream_id: UUID
    version: int
    events: list[RecordedEvent]
    replayed: bool = False


class StoreError(Exception):
    pass


class VersionConflict(StoreError):
    def __init__(self, stream_id: UUID, expected: int, current: int) -> None:
        super().__init__(f"stream {stream_id} is at version {current}, not {expected}")
        self.stream_id = stream_id
        self.expected = expected
        self.current = current


class IdempotencyKeyReused(StoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used for a different request")
        self.key = key


class StreamNotFound(StoreError):
    pass


class OutcomeUnknown(StoreError):
    """The connection was lost, or the statement went unanswered, while an unkeyed append was
    being written. It runs without a transaction of its own, so the server commits it whether
    or not its answer arrives: it may be recorded, as ``version`` if it is."""

    def __init__(self, stream_id: UUID, version: int, timed_out: bool) -> None:
        super().__init__(f"the append to stream {stream_id} may be recorded, as version"
                         f" {version}")
        self.stream_id = stream_id
        self.version = version
        self.timed_out = timed_out


# what PostgreSQL itself answers when it ends a statement unfinished (shutting down, a crash
# elsewhere) or refuses the session: nothing of the statement is recorded
_REFUSED_BY_THE_SERVER = (asyncpg.OperatorInterventionError, asyncpg.TooManyConnectionsError)


class _Unanswered(Exception):
    """A batch statement sent and never answered (``OutcomeUnknown`` for each append)."""


class RecordOutOfStep(StoreError):
    """The stream holds an event its head does not account for: written into the table
    without moving the head, as the service never does (by hand, or a forged event). No write
    can land on it; ``verify`` names the event."""

    def __init__(self, stream_id: UUID, head_version: int) -> None:
        super().__init__(f"the record of stream {stream_id} holds an event past its head"
                         f" (version {head_version})")
        self.stream_id = stream_id
        self.head_version = head_version


@dataclass(frozen=True)
class StreamHead:
    stream_id: UUID
    agency: str
    version: int
    last_hash: str
    answered_until: datetime | None = None  # see ``answer_until``


@dataclass(frozen=True)
class CoWrite:
    """A row that must commit together with appended events (a projection row).

    Appends are written in batches, so ``sql`` reads the rows of every append in the batch
    from one JSON array: its parameter ``$1`` holds each append's ``row`` as an object, e.g.
    ``INSERT … SELECT * FROM jsonb_to_recordset($1::jsonb) AS p(case_id uuid, …) WHERE
    p.case_id IN {appended}``; ``{appended}`` is the set of stream ids whose append succeeded.
    The row is JSON-encoded with the append (UUIDs as text, times in RFC 3339 UTC).
    """

    sql: str
    row: dict[str, Any]


class _KnownHeads:
    """The last hash this process saw per stream: spares a read before most appends."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._heads: OrderedDict[UUID, tuple[int, str]] = OrderedDict()

    def remember(self, stream_id: UUID, version: int, digest: str) -> None:
        self._heads[stream_id] = (version, digest)
        self._heads.move_to_end(stream_id)
        while len(self._heads) > self._capacity:
            self._heads.popitem(last=False)

    def hash_at(self, stream_id: UUID, version: int) -> str | None:
        known = self._heads.get(stream_id)
        return known[1] if known is not None and known[0] == version else None


_PARAMETER = re.compile(r"\$(\d+)")

# Moves each stream head from its expected version (or creates it, expected 0) and inserts the
# chained events of the streams whose head moved. Parameters: $1 the heads (a JSON array, one
# object per append); $2-$5 the idempotency claim of an append written alone (NULL otherwise);
# $6 the events (a JSON array). The claim comes first, so a concurrent request with the same key
# waits on it. Rows travel as JSON because asyncpg encodes array parameters element by element
# in Python-visible steps, which cost more than the rest of the statement's client work.
_APPEND = """
input AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb)
        AS i(stream_id uuid, expected int, prev_hash text, agency text, version int,
             last_hash text, updated_at timestamptz)),
claim AS (
    INSERT INTO records.idempotency_keys (scope, key, fingerprint, stream_id, event_ids)
    SELECT $2::text, $3::text, $4::text, (SELECT stream_id FROM input LIMIT 1), $5::uuid[]
    WHERE $3::text IS NOT NULL
    ON CONFLICT DO NOTHING RETURNING 1),
claimed AS (SELECT $3::text IS NULL OR EXISTS (SELECT 1 FROM claim) AS ok),
moved AS (
    UPDATE records.streams s
    SET version = i.version, last_hash = i.last_hash, updated_at = i.updated_at
    FROM input i
    WHERE s.stream_id = i.stream_id AND i.expected > 0 AND s.version = i.expected
        AND s.last_hash = i.prev_hash AND s.agency = i.agency AND (SELECT ok FROM claimed)
        AND (s.answered_until IS NULL OR s.answered_until < i.updated_at)
    RETURNING s.stream_id),
created AS (
    INSERT INTO records.streams (stream_id, agency, version, last_hash, updated_at)
    SELECT stream_id, agency, version, last_hash, updated_at FROM input
    WHERE expected = 0 AND (SELECT ok FROM claimed)
    ON CONFLICT DO NOTHING RETURNING stream_id),
appended AS (SELECT stream_id FROM moved UNION ALL SELECT stream_id FROM created),
inserted AS (
    INSERT INTO records.events (stream_id, version, event_id, type, schema_version, data,
                                metadata, agency, recorded_at, prev_hash, hash)
    SELECT * FROM jsonb_to_recordset($6::jsonb)
        AS e(stream_id uuid, version int, event_id uuid, type text, schema_version int,
             data jsonb, metadata jsonb, agency text, recorded_at timestamptz,
             prev_hash text, hash text)
    WHERE e.stream_id IN (SELECT stream_id FROM appended)
    RETURNING stream_id, version, global_position)"""
_APPEND_PARAMETERS = 6


@dataclass(frozen=True)
class _PendingAppend:
    """One stream's chained events, encoded as they go into an append statement."""

    stream_id: UUID
    version: int  # the stream's version once recorded
    head: bytes  # JSON object: the move of the stream head
    events: bytes  # JSON objects, comma-separated: the chained events
    event_ids: list[UUID]
    co_writes: tuple[tuple[str, bytes], ...]  # each co-write's sql and its row as JSON
    claim: IdempotencyClaim | None = None


def _pending(stream_id: UUID, expected: int, prev_hash: str, agency: str,
             events: list[RecordedEvent], co_writes: list[CoWrite],
             claim: IdempotencyClaim | None) -> _PendingAppend:
    last = events[-1]
    head = encode_json({"stream_id": stream_id, "expected": expected, "prev_hash": prev_hash,
                  "agency": agency, "version": last.version, "last_hash": last.hash,
                  "updated_at": last.recorded_at})
    rows = b",".join(encode_json(_row(event)) for event in events)
    return _PendingAppend(stream_id, last.version, head, rows, [e.event_id for e in events],
                          tuple((c.sql, encode_json(c.row)) for c in co_writes), claim)


def _renumbered(sql: str, shift: int) -> str:
    return _PARAMETER.sub(lambda m: f"${int(m.group(1)) + shift}", sql)


@functools.lru_cache(maxsize=16)
def _append_sql(co_write_sqls: tuple[str, ...]) -> str:
    ctes = [_APPEND]
    shift = _APPEND_PARAMETERS
    for n, co_sql in enumerate(co_write_sqls):
        renumbered = _renumbered(co_sql, shift)
        appended = renumbered.replace("{appended}", "(SELECT stream_id FROM appended)")
        ctes.append(f"co_write_{n} AS ({appended})")
        shift += max(int(number) for number in _PARAMETER.findall(co_sql))
    return f"WITH {', '.join(ctes)} SELECT * FROM inserted"


def _json_array(objects: Sequence[bytes]) -> str:
    return (b"[" + b",".join(objects) + b"]").decode()


def _append_statement(appends: Sequence[_PendingAppend]) -> tuple[str, list[Any]]:
    """The one statement that writes ``appends`` (distinct streams; a keyed one alone).

    The input is in stream id order, which PostgreSQL follows when it moves the heads, so two
    statements in flight at once lock the rows they share in the same order. Should they
    deadlock all the same, PostgreSQL aborts one and the group commit writes its appends alone.
    """
    claim = appends[0].claim
    assert claim is None or len(appends) == 1, "a keyed append is written alone"
    appends = sorted(appends, key=lambda pending: pending.stream_id)
    args: list[Any] = [_json_array([a.head for a in appends])]
    args += ([claim.scope, claim.key, claim.fingerprint, appends[0].event_ids]
             if claim is not None else [None, None, None, None])
    args.append(_json_array([a.events for a in appends]))
    groups: dict[str, list[bytes]] = {}
    for a in appends:
        for sql, row in a.co_writes:
            groups.setdefault(sql, []).append(row)
    args += [_json_array(rows) for rows in groups.values()]
    return _append_sql(tuple(groups)), args


def _row(event: RecordedEvent) -> dict[str, Any]:
    return {"stream_id": event.stream_id, "version": event.version, "event_id": event.event_id,
            "type": event.type, "schema_version": event.schema_version, "data": event.data,
            "metadata": event.metadata, "agency": event.agency,
            "recorded_at": event.recorded_at, "prev_hash": event.prev_hash, "hash": event.hash}


# events per query where a whole stream is walked: exports, diffs, verify, a write's fold
READ_PAGE = 500
_EVENT_COLUMNS = ("global_position, stream_id, version, event_id, type, schema_version, data,"
                  " metadata, agency, recorded_at, prev_hash, hash")


def _recorded(row: asyncpg.Record) -> RecordedEvent:
    return RecordedEvent(
        global_position=row["global_position"], stream_id=row["stream_id"],
        version=row["version"], event_id=row["event_id"], type=row["type"],
        schema_version=row["schema_version"], data=_stored_json(row["data"]),
        metadata=_stored_json(row["metadata"]), agency=row["agency"],
        recorded_at=row["recorded_at"], prev_hash=row["prev_hash"], hash=row["hash"],
    )


# what a stored document too deep to read stands for: its hash cannot match the recorded one,
# so the chain check, an export and ``casetrail verify`` name the event as broken
_UNREADABLE = "nested too deeply to be read; it was not written by the service"


def _stored_json(text: str) -> Any:
    """A stored jsonb document. One nested deeper than Python's parser goes was never written
    by the service (bodies that deep are refused), only by hand in the database: it reads as
    ``{"unreadable": ...}`` rather than failing every read of the case (a verify answered
    500)."""
    try:
        return json.loads(text)
    except RecursionError:
        return {"unreadable": _UNREADABLE}


class LockedStream:
    """A stream whose head one open transaction holds (``EventStore.locked``): no other writer
    can move it until that transaction ends, so an append from the version read through it
    cannot lose a race. What it appended is remembered once the transaction has committed."""

    def __init__(self, conn: asyncpg.Connection, stream_id: UUID) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.expected = 0
        self.appended: list[AppendResult] = []

    async def write(self, pending: _PendingAppend) -> list[asyncpg.Record]:
        """The append, in a savepoint (``_write_alone``): a claimed key must not outlive an
        append that lost (to the case being opened meanwhile), or it reads back as a replay
        with no events."""
        try:
            return await _write_alone(self.conn, pending)
        except asyncpg.DeadlockDetectedError as error:
            raise _Deadlocked from error


async def _write_alone(conn: asyncpg.Connection, pending: _PendingAppend) -> list[asyncpg.Record]:
    """One append in a transaction of its own (a savepoint inside one already open), rolled
    back when it recorded nothing.

    The idempotency claim comes first in the statement (a concurrent request with the same
    key waits on it), so when the version check then fails the claim would be left behind
    without events.
    """
    sql, args = _append_statement([pending])
    transaction = conn.transaction()
    await transaction.start()
    try:
        inserted = list(await conn.fetch(sql, *args))
    except BaseException:
        await transaction.rollback()
        raise
    await (transaction.commit() if inserted else transaction.rollback())
    return inserted


def _restamp_after(head: StreamHead | None, expected: int, prev_hash: str,
                   stamped: datetime) -> datetime | None:
    """When an append lost only to a reader answered as of its stamp or later (the head still
    where the append expected it), the first moment it may be recorded at; else None."""
    if (head is None or head.version != expected or head.last_hash != prev_hash
            or head.answered_until is None or head.answered_until < stamped):
        return None
    return head.answered_until + timedelta(microseconds=1)


# Times an append refused for its stamp alone (a reader answered as of a later moment) is
# stamped again. Only readers whose clocks run ahead of this one's, asking about their "now"
# again and again, could refuse it each time; past this it is a lost race like any other
# (the caller decides again, and in the end holds the head, where readers wait).
RESTAMPS = 3


class _Deadlocked(Exception):
    """PostgreSQL broke a lock cycle by aborting the locked stream's transaction."""


class EventStore:
    def __init__(self, pool: asyncpg.Pool, clock: Clock = utc_now,
                 on_appended: Callable[[], None] = lambda: None,
                 on_batch: Callable[[int], None] = lambda size: None,
                 max_appends_in_flight: int = 2) -> None:
        self._pool = pool
        self._clock = clock
        self._on_appended = on_appended
        self._on_batch = on_batch
        self._heads = _KnownHeads()
        self._group: GroupCommit[_PendingAppend, list[asyncpg.Record]] = GroupCommit(
            self._write_batch, key=lambda pending: pending.stream_id,
            retry_alone=lambda error: isinstance(error, asyncpg.PostgresError),
            max_in_flight=max_appends_in_flight, on_batch=on_batch)

    async def append(
        self,
        stream_id: UUID,
        events: Sequence[NewEvent],
        *,
        expected_version: int,
        agency: str,
        metadata: dict[str, Any],
        idempotency: IdempotencyClaim | None = None,
        co_write: Callable[[list[RecordedEvent]], list[CoWrite]] | None = None,
        locked: LockedStream | None = None,
    ) -> AppendResult:
        """Append ``events`` if the stream is at ``expected_version`` (0: a new stream).

        One statement does it all, atomically: claim the idempotency key, move the stream head
        from the expected version (only if it is still there), insert the chained events and
        write the rows ``co_write`` makes from the events about to be recorded (projections:
        read-your-writes). Each step happens only when the one before it did. Unkeyed appends
        to different streams that arrive together share one statement (group commit); with
        ``locked`` (this stream's, from ``locked``) it runs in that transaction instead.
        The head moves only for events stamped after the moment a reader was answered as of
        (``answer_until``); refused for that alone, they are stamped again after it.
        Raises VersionConflict, IdempotencyKeyReused; a repeated key returns the original result.
        """
        if not events:
            raise ValueError("append needs at least one event")
        if locked is not None and locked.stream_id != stream_id:
            raise ValueError("a held head is appended to its own stream only")
        db: Executor = locked.conn if locked is not None else self._pool
        prev_hash = await self._hash_at(stream_id, expected_version, db)
        if locked is not None:
            locked.expected = expected_version
        not_before = None
        for _ in range(RESTAMPS + 1):
            provisional = self._chain(stream_id, events, expected_version, prev_hash, agency,
                                      metadata, not_before)
            pending = _pending(stream_id, expected_version, prev_hash, agency, provisional,
                               co_write(provisional) if co_write else [], idempotency)
            inserted = await self._write(pending, locked)
            if inserted:
                return self._recorded(stream_id, provisional, inserted, locked)
            if idempotency is not None:
                replay = await self.find_idempotent(idempotency, db)
                if replay is not None:
                    return replay
            head = await self.head(stream_id, db)
            not_before = _restamp_after(head, expected_version, prev_hash,
                                        provisional[0].recorded_at)
            if not_before is None:
                break
        if head is not None and head.version < expected_version:
            raise RecordOutOfStep(stream_id, head.version)  # decided from events past the head
        raise VersionConflict(stream_id, expected_version, head.version if head else 0)

    def _recorded(self, stream_id: UUID, provisional: list[RecordedEvent],
                  inserted: list[asyncpg.Record], locked: LockedStream | None) -> AppendResult:
        positions = {r["version"]: r["global_position"] for r in inserted}
        recorded = [e.at_position(positions[e.version]) for e in provisional]
        result = AppendResult(stream_id, recorded[-1].version, recorded)
        if locked is None:
            self._appended(result)
        else:  # remembered once its transaction commits
            locked.appended.append(result)
        return result

    async def _write(self, pending: _PendingAppend,
                     locked: LockedStream | None) -> list[asyncpg.Record]:
        try:
            if locked is None and pending.claim is None:
                return await self._group.submit(pending)
            self._on_batch(1)  # a statement of its own
            return await (locked.write(pending) if locked is not None
                          else self._write_keyed(pending))
        except _Unanswered as unanswered:
            raise OutcomeUnknown(pending.stream_id, pending.version,
                                 isinstance(unanswered.__cause__, TimeoutError)) from unanswered
        except asyncpg.UniqueViolationError as error:
            if error.constraint_name != "events_stream_id_version_key":
                raise
            head = await self.head(pending.stream_id)
            raise RecordOutOfStep(pending.stream_id, head.version if head else 0) from error

    def _appended(self, result: AppendResult) -> None:
        last = result.events[-1]
        self._heads.remember(result.stream_id, last.version, last.hash)
        self._on_appended()

    @contextlib.asynccontextmanager
    async def locked(self, stream_id: UUID) -> AsyncIterator[LockedStream]:
        """Hold ``stream_id``'s head in a transaction of its own for the block: reads and
        appends through the LockedStream see and move a head nobody else can move meanwhile.
        The transaction commits when the block ends, and rolls back when it raises.

        Other writers of the stream wait, so this is for a writer that keeps losing races to
        other instances (decision 0005), not for every write."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT 1 FROM records.streams WHERE stream_id = $1"
                                   " FOR UPDATE", stream_id)
                stream = LockedStream(conn, stream_id)
                yield stream
        except _Deadlocked:
            # a keyed retry of the same request, elsewhere, held the key and waited for this
            # head: a lost race like any other, decided again by the caller
            head = await self.head(stream_id)
            raise VersionConflict(stream_id, stream.expected,
                                  head.version if head else 0) from None
        for result in stream.appended:
            self._appended(result)

    async def _write_batch(self, appends: list[_PendingAppend]) -> list[list[asyncpg.Record]]:
        """Each append's recorded rows (none: it lost its version race)."""
        sql, args = _append_statement(appends)
        by_stream: dict[UUID, list[asyncpg.Record]] = {a.stream_id: [] for a in appends}
        async with self._pool.acquire() as conn:  # failing here, nothing was sent
            try:
                rows = await conn.fetch(sql, *args)
            except asyncpg.DeadlockDetectedError:
                # a lock cycle with another instance's writes to the same cases: the statement
                # wrote nothing, so each append lost its race and is decided again by its
                # caller, as a keyed one is (it answered 500; three instances writing to five
                # cases)
                rows = []
            except _REFUSED_BY_THE_SERVER:
                raise  # the server's own answer, ending the statement: it recorded nothing
            except DATABASE_UNAVAILABLE as error:
                # sent, and the connection lost or the answer late: committed or not, no one
                # can tell from here. It answered "try again", and a write that had been
                # recorded was recorded twice; in a batch, each append was written again
                # alone (a lost connection's error is a PostgresError too).
                raise _Unanswered from error
        for row in rows:
            by_stream[row["stream_id"]].append(row)
        return [by_stream[a.stream_id] for a in appends]

    async def _write_keyed(self, pending: _PendingAppend) -> list[asyncpg.Record]:
        """A keyed append, alone in its transaction (``_write_alone``)."""
        async with self._pool.acquire() as conn:
            try:
                return await _write_alone(conn, pending)
            except asyncpg.DeadlockDetectedError:
                # with a writer holding this head (``locked``) while it waits for this key:
                # a lost race, decided again by the caller
                return []

    async def _hash_at(self, stream_id: UUID, version: int, db: Executor) -> str:
        """The hash of event ``version`` (immutable once written, so it is safe to cache)."""
        if version == 0:
            return GENESIS_HASH
        known = self._heads.hash_at(stream_id, version)
        if known is not None:
            return known
        found = await db.fetchval(
            "SELECT hash FROM records.events WHERE stream_id = $1 AND version = $2",
            stream_id, version)
        if found is None:
            head = await self.head(stream_id, db)
            raise VersionConflict(stream_id, version, head.version if head else 0)
        return str(found)

    def _chain(self, stream_id: UUID, events: Sequence[NewEvent], version: int, prev_hash: str,
               agency: str, metadata: dict[str, Any],
               not_before: datetime | None = None) -> list[RecordedEvent]:
        """The events as they will be recorded (global positions are known only after)."""
        recorded_at = self._clock() if not_before is None else max(self._clock(), not_before)
        chained = []
        for event in events:
            version += 1
            event_metadata = {**metadata, **event.metadata}
            link = ChainLink(str(stream_id), version, str(event.event_id), event.type,
                             event.schema_version, event.data, event_metadata, recorded_at,
                             prev_hash)
            digest = link.compute_hash()
            chained.append(RecordedEvent(0, stream_id, version, event.event_id, event.type,
                                         event.schema_version, event.data, event_metadata,
                                         agency, recorded_at, prev_hash, digest))
            prev_hash = digest
        return chained

    async def find_idempotent(self, claim: IdempotencyClaim,
                              db: Executor | None = None) -> AppendResult | None:
        """The original result of an already-used key; IdempotencyKeyReused on another body."""
        db = db if db is not None else self._pool
        row = await db.fetchrow(
            "SELECT fingerprint, stream_id, event_ids FROM records.idempotency_keys"
            " WHERE scope = $1 AND key = $2", claim.scope, claim.key)
        if row is None:
            return None
        if row["fingerprint"] != claim.fingerprint:
            raise IdempotencyKeyReused(claim.key)
        rows = await db.fetch(
            f"SELECT {_EVENT_COLUMNS} FROM records.events WHERE event_id = ANY($1::uuid[])"
            " ORDER BY version", row["event_ids"])
        events = [_recorded(r) for r in rows]
        return AppendResult(row["stream_id"], events[-1].version, events, replayed=True)

    async def head(self, stream_id: UUID, db: Executor | None = None) -> StreamHead | None:
        row = await (db if db is not None else self._pool).fetchrow(
            "SELECT agency, version, last_hash, answered_until FROM records.streams"
            " WHERE stream_id = $1", stream_id)
        return None if row is None else StreamHead(stream_id, row["agency"], row["version"],
                                                   row["last_hash"], row["answered_until"])

    async def settled_by(self, stream_id: UUID, moment: datetime) -> bool:
        """Whether the stream's record is settled through ``moment``, though it is later than
        this instance's clock: a reader was answered as of it or later (``answer_until``), or
        an event was recorded at or after it (by an instance whose clock runs ahead, or
        stamped after a moment answered)."""
        found: bool | None = await self._pool.fetchval(
            "SELECT s.answered_until >= $2 OR EXISTS (SELECT FROM records.events e"
            " WHERE e.stream_id = $1 AND e.recorded_at >= $2)"
            " FROM records.streams s WHERE s.stream_id = $1", stream_id, moment)
        return bool(found)

    async def answer_until(self, stream_id: UUID, moment: datetime) -> None:
        """Let no event of the stream be recorded at or before ``moment`` from now on, before
        a reader is answered as of it. Events are stamped before their append commits: one in
        flight could otherwise land with an earlier time, and the same question would get
        another answer. The update waits for an append holding the head; one not yet there
        is refused by the append statement and stamped again after ``moment``
        (``append``)."""
        await self._pool.execute(
            "UPDATE records.streams SET answered_until = $2 WHERE stream_id = $1"
            " AND (answered_until IS NULL OR answered_until < $2)", stream_id, moment)

    async def recorded_by(self, stream_id: UUID, moment: datetime) -> bool:
        """Whether any event of the stream was recorded at or before ``moment`` (an ``as_of``
        answers): read in version order, it stops at the first, usually the opening."""
        found: bool = await self._pool.fetchval(
            "SELECT EXISTS (SELECT FROM records.events WHERE stream_id = $1"
            " AND recorded_at <= $2)", stream_id, moment)
        return found

    async def first_recorded_at(self, stream_id: UUID) -> datetime | None:
        """The earliest ``recorded_at`` of a stream: the first moment an ``as_of`` answers
        (instances stamp with their own clocks, so it need not be the opening's)."""
        first: datetime | None = await self._pool.fetchval(
            "SELECT min(recorded_at) FROM records.events WHERE stream_id = $1", stream_id)
        return first

    async def data_size(self, stream_id: UUID, first_version: int, last_version: int) -> int:
        """Bytes of event data (as JSON text) in a version range of one stream."""
        size: int = await self._pool.fetchval(
            "SELECT coalesce(sum(octet_length(data::text)), 0) FROM records.events"
            " WHERE stream_id = $1 AND version BETWEEN $2 AND $3",
            stream_id, first_version, last_version)
        return size

    async def read_stream(
        self,
        stream_id: UUID,
        *,
        after_version: int = 0,
        up_to_version: int | None = None,
        up_to_time: datetime | None = None,
        limit: int | None = None,
        locked: LockedStream | None = None,
    ) -> list[RecordedEvent]:
        """Events of one stream in version order, optionally bounded by version or time.

        Bounded by time, the events are those up to the last version recorded by then, not
        every event stamped earlier: instances stamp events with their own clocks, and one
        running fast would otherwise leave a gap, folding into a plan that never existed.
        With ``locked``, read in its transaction."""
        db: Executor = locked.conn if locked is not None else self._pool
        rows = await db.fetch(
            f"SELECT {_EVENT_COLUMNS} FROM records.events WHERE stream_id = $1"
            " AND version > $2 AND ($3::int IS NULL OR version <= $3)"
            " AND ($4::timestamptz IS NULL OR version <= (SELECT max(version)"
            "      FROM records.events WHERE stream_id = $1 AND recorded_at <= $4))"
            " ORDER BY version LIMIT $5",
            stream_id, after_version, up_to_version, up_to_time, limit,
        )
        events = [_recorded(r) for r in rows]
        if events:
            self._heads.remember(stream_id, events[-1].version, events[-1].hash)
        return events

    async def pages(self, stream_id: UUID, first: int = 1, last: int | None = None, *,
                    up_to_time: datetime | None = None, locked: LockedStream | None = None,
                    ) -> AsyncIterator[list[RecordedEvent]]:
        """The stream's events from version ``first`` through ``last`` (None: through the
        last recorded by ``up_to_time``, or the head), ``READ_PAGE`` at a time: a long
        history is never held in memory whole. With ``locked``, read in its transaction."""
        after = first - 1
        while last is None or after < last:
            events = await self.read_stream(stream_id, after_version=after,
                                            up_to_version=last, up_to_time=up_to_time,
                                            limit=READ_PAGE, locked=locked)
            if not events:
                return
            yield events
            if len(events) < READ_PAGE:
                return
            after = events[-1].version

    async def verify(self, stream_id: UUID, *, up_to_version: int | None = None,
                     plan_version: int = 0) -> ChainReport:
        """Recompute the stream's chain from the stored rows, from the first event through
        ``up_to_version`` (None: all of it), a page at a time; names the first broken link.
        A whole chain must also agree with the case: reach the version its head and plan
        (``plan_version``) stood at when the check began, and end where its head stands once
        the chain is read. A chain cut at its tail holds, link by link, and was called valid."""
        before = await self.head(stream_id) if up_to_version is None else None
        check = ChainCheck()
        async for events in self.pages(stream_id, last=up_to_version):
            for event in events:
                check.add_stored(event.link())
            if check.broken:
                break
        report = check.report()
        if up_to_version is not None:
            return report.reaching(up_to_version)
        report = report.reaching(max(before.version if before else 0, plan_version))
        after = await self.head(stream_id)  # none: the case's head row is gone
        return report.ending_at(after.version if after else 0,
                                after.last_hash if after else GENESIS_HASH)


# What stream_heads and streams_of read: a rebuild names them when a lock on them holds it up.
REBUILD_READS = ("records.streams", "records.events")


async def stream_heads(db: Executor) -> dict[UUID, int]:
    """Every stream's head version: how far a rebuild must fold it."""
    rows = await db.fetch("SELECT stream_id, version FROM records.streams")
    return {row["stream_id"]: row["version"] for row in rows}


async def streams_of(db: Executor, stream_ids: Sequence[UUID]) -> list[list[RecordedEvent]]:
    """The events of ``stream_ids``, read in one statement (so as of one moment), one list per
    stream in stream id order."""
    streams: list[list[RecordedEvent]] = []
    for row in await db.fetch(
            f"SELECT {_EVENT_COLUMNS} FROM records.events WHERE stream_id = ANY($1::uuid[])"
            " ORDER BY stream_id, version", stream_ids):
        event = _recorded(row)
        if not streams or streams[-1][0].stream_id != event.stream_id:
            streams.append([])
        streams[-1].append(event)
    return streams
