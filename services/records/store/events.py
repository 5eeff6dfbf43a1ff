"""The event store: appends with optimistic concurrency, idempotency and the hash chain; reads.

All SQL touching ``records.events``, ``records.streams`` and ``records.idempotency_keys``
lives here.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from services.records.chain import GENESIS_HASH, ChainLink, ChainReport, verify_links

Clock = Callable[[], datetime]
AfterAppend = Callable[[asyncpg.Connection, "AppendResult"], Awaitable[None]]


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


class _ReplayInstead(Exception):
    """Raised inside the append transaction to roll it back when the key was already used."""


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
    def __init__(self, pool: asyncpg.Pool, clock: Clock = utc_now) -> None:
        self._pool = pool
        self._clock = clock

    async def append(
        self,
        stream_id: UUID,
        events: Sequence[NewEvent],
        *,
        expected_version: int,
        agency: str,
        metadata: dict[str, Any],
        idempotency: IdempotencyClaim | None = None,
        after_append: AfterAppend | None = None,
    ) -> AppendResult:
        """Append ``events`` if the stream is at ``expected_version`` (0: a new stream).

        ``after_append`` runs inside the same transaction (projections: read-your-writes).
        Raises VersionConflict, IdempotencyKeyReused; a repeated key returns the original result.
        """
        if not events:
            raise ValueError("append needs at least one event")
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if idempotency is not None and not await self._claim(conn, stream_id, events,
                                                                     idempotency):
                    raise _ReplayInstead
                head = await self._lock_head(conn, stream_id, expected_version, agency)
                recorded = await self._insert(conn, stream_id, events, head, agency, metadata)
                result = AppendResult(stream_id, recorded[-1].version, recorded)
                await conn.execute(
                    "UPDATE records.streams SET version = $2, last_hash = $3, updated_at = $4"
                    " WHERE stream_id = $1",
                    stream_id, result.version, recorded[-1].hash, recorded[-1].recorded_at,
                )
                if after_append is not None:
                    await after_append(conn, result)
                return result
        except _ReplayInstead:
            assert idempotency is not None
            replay = await self.find_idempotent(idempotency)
            if replay is None:  # the other attempt rolled back after all: try once more
                return await self.append(stream_id, events, expected_version=expected_version,
                                         agency=agency, metadata=metadata,
                                         idempotency=idempotency, after_append=after_append)
            return replay

    async def _claim(self, conn: asyncpg.Connection, stream_id: UUID,
                     events: Sequence[NewEvent], claim: IdempotencyClaim) -> bool:
        inserted = await conn.fetchval(
            "INSERT INTO records.idempotency_keys (scope, key, fingerprint, stream_id, event_ids)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true",
            claim.scope, claim.key, claim.fingerprint, stream_id, [e.event_id for e in events],
        )
        return bool(inserted)

    async def _lock_head(self, conn: asyncpg.Connection, stream_id: UUID, expected: int,
                         agency: str) -> tuple[int, str]:
        if expected == 0:
            created = await conn.fetchval(
                "INSERT INTO records.streams (stream_id, agency, version, last_hash, updated_at)"
                " VALUES ($1, $2, 0, $3, now()) ON CONFLICT DO NOTHING RETURNING true",
                stream_id, agency, GENESIS_HASH,
            )
            if created:
                return 0, GENESIS_HASH
        row = await conn.fetchrow(
            "SELECT version, last_hash, agency FROM records.streams WHERE stream_id = $1"
            " FOR UPDATE", stream_id)
        current = 0 if row is None else row["version"]
        if row is None or current != expected or row["agency"] != agency:
            raise VersionConflict(stream_id, expected, current)
        return current, row["last_hash"]

    async def _insert(self, conn: asyncpg.Connection, stream_id: UUID,
                      events: Sequence[NewEvent], head: tuple[int, str], agency: str,
                      metadata: dict[str, Any]) -> list[RecordedEvent]:
        version, prev_hash = head
        recorded_at = self._clock()
        rows = []
        for event in events:
            version += 1
            event_metadata = {**metadata, **event.metadata}
            link = ChainLink(str(stream_id), version, str(event.event_id), event.type,
                             event.schema_version, event.data, event_metadata, recorded_at,
                             prev_hash)
            digest = link.compute_hash()
            rows.append((stream_id, version, event.event_id, event.type, event.schema_version,
                         json.dumps(event.data), json.dumps(event_metadata), agency,
                         recorded_at, prev_hash, digest))
            prev_hash = digest
        inserted = await conn.fetch(
            "INSERT INTO records.events (stream_id, version, event_id, type, schema_version,"
            " data, metadata, agency, recorded_at, prev_hash, hash)"
            " SELECT * FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::int[],"
            " $6::jsonb[], $7::jsonb[], $8::text[], $9::timestamptz[], $10::text[], $11::text[])"
            f" RETURNING {_EVENT_COLUMNS}",
            *[list(column) for column in zip(*rows, strict=True)],
        )
        return sorted((_recorded(r) for r in inserted), key=lambda e: e.version)

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
        return [_recorded(r) for r in rows]

    async def verify(self, stream_id: UUID) -> ChainReport:
        """Recompute the stream's chain from the stored rows; names the first broken link."""
        events = await self.read_stream(stream_id)
        return verify_links(e.link() for e in events)
