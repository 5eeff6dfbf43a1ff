"""The event store: appends with optimistic concurrency, idempotency and the hash chain; reads.

All SQL touching ``records.events``, ``records.streams`` and ``records.idempotency_keys``
lives here.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from services.records.chain import GENESIS_HASH, ChainLink, ChainReport, verify_links

Clock = Callable[[], datetime]


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


@dataclass(frozen=True)
class StreamHead:
    stream_id: UUID
    agency: str
    version: int


@dataclass(frozen=True)
class CoWrite:
    """A statement that must commit together with appended events (a projection upsert).

    ``sql`` numbers its own parameters from $1 and writes ``{appended}`` where it must hold
    only when the append succeeds, e.g. ``INSERT … SELECT $1::uuid … WHERE {appended}``.
    """

    sql: str
    args: tuple[Any, ...]


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


def _append_statement(stream_id: UUID, rows: list[tuple[Any, ...]], expected: int,
                      prev_hash: str, agency: str, claim: IdempotencyClaim | None,
                      co_write: CoWrite | None) -> tuple[str, list[Any]]:
    last = rows[-1]
    args: list[Any] = [stream_id, expected, prev_hash, agency, last[1], last[10], last[8]]
    ctes = []
    claimed = "true"
    if claim is not None:
        args += [claim.scope, claim.key, claim.fingerprint, [r[2] for r in rows]]
        ctes.append("claim AS (INSERT INTO records.idempotency_keys"
                    " (scope, key, fingerprint, stream_id, event_ids)"
                    " VALUES ($8, $9, $10, $1, $11) ON CONFLICT DO NOTHING RETURNING 1)")
        claimed = "EXISTS (SELECT 1 FROM claim)"
    if expected == 0:
        ctes.append("head AS (INSERT INTO records.streams"
                    " (stream_id, agency, version, last_hash, updated_at)"
                    f" SELECT $1::uuid, $4::text, $5::int, $6::text, $7::timestamptz"
                    f" WHERE $2::int = 0 AND $3::text IS NOT NULL AND {claimed}"
                    " ON CONFLICT DO NOTHING RETURNING 1)")
    else:
        ctes.append("head AS (UPDATE records.streams SET version = $5, last_hash = $6,"
                    " updated_at = $7 WHERE stream_id = $1 AND version = $2"
                    f" AND last_hash = $3 AND agency = $4 AND {claimed} RETURNING 1)")
    offset = len(args)
    args += [list(column) for column in zip(*rows, strict=True)]
    p = [f"${offset + n}" for n in range(1, 12)]
    ctes.append(
        "inserted AS (INSERT INTO records.events (stream_id, version, event_id, type,"
        " schema_version, data, metadata, agency, recorded_at, prev_hash, hash)"
        f" SELECT * FROM unnest({p[0]}::uuid[], {p[1]}::int[], {p[2]}::uuid[], {p[3]}::text[],"
        f" {p[4]}::int[], {p[5]}::jsonb[], {p[6]}::jsonb[], {p[7]}::text[],"
        f" {p[8]}::timestamptz[], {p[9]}::text[], {p[10]}::text[])"
        f" WHERE EXISTS (SELECT 1 FROM head) RETURNING version, global_position)")
    if co_write is not None:
        shift = len(args)
        sql = _PARAMETER.sub(lambda m: f"${int(m.group(1)) + shift}", co_write.sql)
        ctes.append(f"co_write AS ({sql.replace('{appended}', 'EXISTS (SELECT 1 FROM head)')})")
        args += list(co_write.args)
    return f"WITH {', '.join(ctes)} SELECT * FROM inserted", args


def _row(event: RecordedEvent) -> tuple[Any, ...]:
    return (event.stream_id, event.version, event.event_id, event.type, event.schema_version,
            json.dumps(event.data), json.dumps(event.metadata), event.agency, event.recorded_at,
            event.prev_hash, event.hash)


_EVENT_COLUMNS = ("global_position, stream_id, version, event_id, type, schema_version, data,"
                  " metadata, agency, recorded_at, prev_hash, hash")


def _recorded(row: asyncpg.Record) -> RecordedEvent:
    return RecordedEvent(
        global_position=row["global_position"], stream_id=row["stream_id"],
        version=row["version"], event_id=row["event_id"], type=row["type"],
        schema_version=row["schema_version"], data=json.loads(row["data"]),
        metadata=json.loads(row["metadata"]), agency=row["agency"],
        recorded_at=row["recorded_at"], prev_hash=row["prev_hash"], hash=row["hash"],
    )


class EventStore:
    def __init__(self, pool: asyncpg.Pool, clock: Clock = utc_now,
                 on_appended: Callable[[], None] = lambda: None) -> None:
        self._pool = pool
        self._clock = clock
        self._on_appended = on_appended
        self._heads = _KnownHeads()

    async def append(
        self,
        stream_id: UUID,
        events: Sequence[NewEvent],
        *,
        expected_version: int,
        agency: str,
        metadata: dict[str, Any],
        idempotency: IdempotencyClaim | None = None,
        co_write: Callable[[list[RecordedEvent]], CoWrite] | None = None,
    ) -> AppendResult:
        """Append ``events`` if the stream is at ``expected_version`` (0: a new stream).

        One statement does it all, atomically: claim the idempotency key, move the stream head
        from the expected version (only if it is still there), insert the chained events and
        run the statement ``co_write`` makes from the events about to be recorded (a projection:
        read-your-writes). Each step happens only when the one before it did.
        Raises VersionConflict, IdempotencyKeyReused; a repeated key returns the original result.
        """
        if not events:
            raise ValueError("append needs at least one event")
        prev_hash = await self._hash_at(stream_id, expected_version)
        provisional = self._chain(stream_id, events, expected_version, prev_hash, agency,
                                  metadata)
        extra = co_write(provisional) if co_write else None
        sql, args = _append_statement(stream_id, [_row(e) for e in provisional],
                                      expected_version, prev_hash, agency, idempotency, extra)
        inserted = await self._execute_append(sql, args, keyed=idempotency is not None)
        if inserted:
            positions = {r["version"]: r["global_position"] for r in inserted}
            recorded = [replace(e, global_position=positions[e.version]) for e in provisional]
            self._heads.remember(stream_id, recorded[-1].version, recorded[-1].hash)
            self._on_appended()
            return AppendResult(stream_id, recorded[-1].version, recorded)
        if idempotency is not None:
            replay = await self.find_idempotent(idempotency)
            if replay is not None:
                return replay
        head = await self.head(stream_id)
        raise VersionConflict(stream_id, expected_version, head.version if head else 0)

    async def _execute_append(self, sql: str, args: list[Any],
                              keyed: bool) -> list[asyncpg.Record]:
        """Run the append statement; its rows are the events recorded (none: it lost a race).

        The idempotency claim comes first in the statement (a concurrent request with the same
        key waits on it), so when the version check then fails the claim would be left
        behind without events; a keyed append therefore rolls back when it recorded nothing.
        """
        if not keyed:
            return list(await self._pool.fetch(sql, *args))
        async with self._pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                inserted = list(await conn.fetch(sql, *args))
            except BaseException:
                await transaction.rollback()
                raise
            await (transaction.commit() if inserted else transaction.rollback())
            return inserted

    async def _hash_at(self, stream_id: UUID, version: int) -> str:
        """The hash of event ``version`` (immutable once written, so it is safe to cache)."""
        if version == 0:
            return GENESIS_HASH
        known = self._heads.hash_at(stream_id, version)
        if known is not None:
            return known
        found = await self._pool.fetchval(
            "SELECT hash FROM records.events WHERE stream_id = $1 AND version = $2",
            stream_id, version)
        if found is None:
            head = await self.head(stream_id)
            raise VersionConflict(stream_id, version, head.version if head else 0)
        return str(found)

    def _chain(self, stream_id: UUID, events: Sequence[NewEvent], version: int, prev_hash: str,
               agency: str, metadata: dict[str, Any]) -> list[RecordedEvent]:
        """The events as they will be recorded (global positions are known only after)."""
        recorded_at = self._clock()
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

    async def find_idempotent(self, claim: IdempotencyClaim) -> AppendResult | None:
        """The original result of an already-used key; IdempotencyKeyReused on another body."""
        row = await self._pool.fetchrow(
            "SELECT fingerprint, stream_id, event_ids FROM records.idempotency_keys"
            " WHERE scope = $1 AND key = $2", claim.scope, claim.key)
        if row is None:
            return None
        if row["fingerprint"] != claim.fingerprint:
            raise IdempotencyKeyReused(claim.key)
        rows = await self._pool.fetch(
            f"SELECT {_EVENT_COLUMNS} FROM records.events WHERE event_id = ANY($1::uuid[])"
            " ORDER BY version", row["event_ids"])
        events = [_recorded(r) for r in rows]
        return AppendResult(row["stream_id"], events[-1].version, events, replayed=True)

    async def head(self, stream_id: UUID) -> StreamHead | None:
        row = await self._pool.fetchrow(
            "SELECT agency, version FROM records.streams WHERE stream_id = $1", stream_id)
        return None if row is None else StreamHead(stream_id, row["agency"], row["version"])

    async def read_stream(
        self,
        stream_id: UUID,
        *,
        after_version: int = 0,
        up_to_version: int | None = None,
        up_to_time: datetime | None = None,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """Events of one stream in version order, optionally bounded by version or time."""
        rows = await self._pool.fetch(
            f"SELECT {_EVENT_COLUMNS} FROM records.events WHERE stream_id = $1"
            " AND version > $2 AND ($3::int IS NULL OR version <= $3)"
            " AND ($4::timestamptz IS NULL OR recorded_at <= $4)"
            " ORDER BY version LIMIT $5",
            stream_id, after_version, up_to_version, up_to_time, limit,
        )
        events = [_recorded(r) for r in rows]
        if events:
            self._heads.remember(stream_id, events[-1].version, events[-1].hash)
        return events

    async def verify(self, stream_id: UUID, *, up_to_version: int | None = None) -> ChainReport:
        """Recompute the stream's chain from the stored rows (from the first event, through
        ``up_to_version`` when given); names the first broken link."""
        events = await self.read_stream(stream_id, up_to_version=up_to_version)
        return verify_links(e.link() for e in events)


async def every_stream(conn: asyncpg.Connection) -> AsyncIterator[list[RecordedEvent]]:
    """Every stream's events, one stream at a time, read with a server-side cursor.

    Takes a connection, not the pool: a cursor lives inside its caller's transaction.
    """
    current: list[RecordedEvent] = []
    async for row in conn.cursor(
            f"SELECT {_EVENT_COLUMNS} FROM records.events ORDER BY stream_id, version",
            prefetch=2000):
        event = _recorded(row)
        if current and current[0].stream_id != event.stream_id:
            yield current
            current = []
        current.append(event)
    if current:
        yield current
