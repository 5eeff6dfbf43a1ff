"""The event store on real PostgreSQL: concurrency, idempotency, hash chain, immutability."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from services.records.chain import GENESIS_HASH, ChainCheck, ChainLink
from services.records.store import events as events_module
from services.records.store.events import (
    EventStore,
    IdempotencyClaim,
    IdempotencyKeyReused,
    NewEvent,
    RecordedEvent,
    RecordOutOfStep,
    VersionConflict,
)
from tests.conftest import FakeClock

AGENCY = "agency-a"
META = {"actor": {"sub": "cm-1", "role": "case_manager"}, "agency": AGENCY}


def note(text: str = "Met at the library; Sam chose the next step.") -> NewEvent:
    return NewEvent(uuid.uuid4(), "NoteAdded", 1, {"note_id": str(uuid.uuid4()), "text": text})


async def count_events(pool: asyncpg.Pool, stream_id: uuid.UUID) -> int:
    return int(await pool.fetchval(
        "SELECT count(*) FROM records.events WHERE stream_id = $1", stream_id))


async def test_append_starts_a_stream_and_continues_it(pool: asyncpg.Pool) -> None:
    store, stream = EventStore(pool), uuid.uuid4()
    first = await store.append(stream, [note(), note()], expected_version=0, agency=AGENCY,
                               metadata=META)
    assert [e.version for e in first.events] == [1, 2]
    assert first.events[0].prev_hash == GENESIS_HASH
    assert first.events[1].prev_hash == first.events[0].hash
    second = await store.append(stream, [note()], expected_version=2, agency=AGENCY,
                                metadata=META)
    assert second.version == 3
    assert second.events[0].metadata["actor"]["sub"] == "cm-1"
    head = await store.head(stream)
    assert head is not None
    assert head.version == 3
    assert head.agency == AGENCY


async def test_an_append_answers_exactly_what_was_recorded(pool: asyncpg.Pool) -> None:
    """The append builds its answer without reading the rows back; a read must agree."""
    store, stream = EventStore(pool), uuid.uuid4()
    first = await store.append(stream, [note(), note()], expected_version=0, agency=AGENCY,
                               metadata=META)
    second = await store.append(stream, [note()], expected_version=2, agency=AGENCY,
                                metadata=META)
    stored = await EventStore(pool).read_stream(stream)
    assert stored == first.events + second.events
    assert len({e.global_position for e in stored}) == 3
    assert all(e.global_position > 0 for e in stored)


async def test_stale_expected_version_is_a_conflict_carrying_the_current_version(
        pool: asyncpg.Pool) -> None:
    store, stream = EventStore(pool), uuid.uuid4()
    await store.append(stream, [note()], expected_version=0, agency=AGENCY, metadata=META)
    await store.append(stream, [note()], expected_version=1, agency=AGENCY, metadata=META)
    with pytest.raises(VersionConflict) as caught:
        await store.append(stream, [note()], expected_version=1, agency=AGENCY, metadata=META)
    assert caught.value.current == 2
    with pytest.raises(VersionConflict):
        await store.append(stream, [note()], expected_version=0, agency=AGENCY, metadata=META)
    assert await count_events(pool, stream) == 2


async def test_concurrent_writers_at_the_same_version_exactly_one_wins(pool: asyncpg.Pool) -> None:
    store, stream = EventStore(pool), uuid.uuid4()
    await store.append(stream, [note()], expected_version=0, agency=AGENCY, metadata=META)
    results = await asyncio.gather(
        *[store.append(stream, [note()], expected_version=1, agency=AGENCY, metadata=META)
          for _ in range(8)], return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, VersionConflict)]
    assert len(winners) == 1
    assert len(losers) == 7
    assert all(loser.current == 2 for loser in losers)
    assert await count_events(pool, stream) == 2


async def test_a_stream_of_another_agency_cannot_be_appended_to(pool: asyncpg.Pool) -> None:
    store, stream = EventStore(pool), uuid.uuid4()
    await store.append(stream, [note()], expected_version=0, agency=AGENCY, metadata=META)
    with pytest.raises(VersionConflict):
        await store.append(stream, [note()], expected_version=1, agency="agency-b",
                           metadata=META)


async def test_idempotent_retry_returns_the_original_and_writes_nothing(
        pool: asyncpg.Pool) -> None:
    store, stream = EventStore(pool), uuid.uuid4()
    claim = IdempotencyClaim("agency-a:cm-1", "key-" + uuid.uuid4().hex, "fingerprint-1")
    original = await store.append(stream, [note()], expected_version=0, agency=AGENCY,
                                  metadata=META, idempotency=claim)
    retry = await store.append(stream, [note()], expected_version=0, agency=AGENCY,
                               metadata=META, idempotency=claim)
    assert retry.replayed
    assert not original.replayed
    assert [e.event_id for e in retry.events] == [e.event_id for e in original.events]
    assert retry.version == original.version == 1
    assert await count_events(pool, stream) == 1


async def test_same_idempotency_key_with_another_body_is_refused(pool: asyncpg.Pool) -> None:
    store, stream = EventStore(pool), uuid.uuid4()
    key = "key-" + uuid.uuid4().hex
    await store.append(stream, [note()], expected_version=0, agency=AGENCY, metadata=META,
                       idempotency=IdempotencyClaim("s", key, "body-1"))
    with pytest.raises(IdempotencyKeyReused):
        await store.append(stream, [note()], expected_version=1, agency=AGENCY, metadata=META,
                           idempotency=IdempotencyClaim("s", key, "body-2"))
    assert await count_events(pool, stream) == 1


async def test_concurrent_retries_with_one_key_write_once(pool: asyncpg.Pool) -> None:
    store, stream = EventStore(pool), uuid.uuid4()
    claim = IdempotencyClaim("s", "key-" + uuid.uuid4().hex, "same-body")
    event = note()
    results = await asyncio.gather(*[
        store.append(stream, [event], expected_version=0, agency=AGENCY, metadata=META,
                     idempotency=claim) for _ in range(6)])
    assert {r.events[0].event_id for r in results} == {event.event_id}
    assert sum(not r.replayed for r in results) == 1
    assert await count_events(pool, stream) == 1


async def test_a_failed_append_releases_its_idempotency_key(pool: asyncpg.Pool) -> None:
    store, stream = EventStore(pool), uuid.uuid4()
    await store.append(stream, [note()], expected_version=0, agency=AGENCY, metadata=META)
    claim = IdempotencyClaim("s", "key-" + uuid.uuid4().hex, "body")
    with pytest.raises(VersionConflict):
        await store.append(stream, [note()], expected_version=5, agency=AGENCY, metadata=META,
                           idempotency=claim)
    result = await store.append(stream, [note()], expected_version=1, agency=AGENCY,
                                metadata=META, idempotency=claim)
    assert result.version == 2
    assert not result.replayed


async def test_a_keyed_append_that_loses_a_race_keeps_its_key_free(pool: asyncpg.Pool) -> None:
    """The stream moved on after the writer read it: the key must not be claimed by a write
    that recorded nothing, or every retry with it would find a claim without events."""
    store, stream = EventStore(pool), uuid.uuid4()
    await store.append(stream, [note()], expected_version=0, agency=AGENCY, metadata=META)
    await store.append(stream, [note()], expected_version=1, agency=AGENCY, metadata=META)
    claim = IdempotencyClaim("s", "key-" + uuid.uuid4().hex, "body")
    with pytest.raises(VersionConflict) as caught:
        await store.append(stream, [note()], expected_version=1, agency=AGENCY, metadata=META,
                           idempotency=claim)
    assert caught.value.current == 2
    assert await store.find_idempotent(claim) is None
    retried = await store.append(stream, [note()], expected_version=2, agency=AGENCY,
                                 metadata=META, idempotency=claim)
    assert (retried.version, retried.replayed) == (3, False)
    assert await count_events(pool, stream) == 3


async def test_keyed_writers_racing_on_one_stream_each_land_once(pool: asyncpg.Pool) -> None:
    store, stream = EventStore(pool), uuid.uuid4()
    await store.append(stream, [note()], expected_version=0, agency=AGENCY, metadata=META)
    claims = [IdempotencyClaim("s", f"race-{n}-{uuid.uuid4().hex}", "body") for n in range(8)]

    async def write(claim: IdempotencyClaim) -> int:
        while True:
            head = await store.head(stream)
            assert head is not None
            try:
                result = await store.append(stream, [note()], expected_version=head.version,
                                            agency=AGENCY, metadata=META, idempotency=claim)
            except VersionConflict:
                continue
            return result.version

    versions = await asyncio.gather(*[write(c) for c in claims])
    assert sorted(versions) == list(range(2, 10))
    assert await count_events(pool, stream) == 9
    for claim in claims:
        replay = await store.find_idempotent(claim)
        assert replay is not None
        assert replay.replayed


async def test_hash_chain_verifies_and_names_the_first_broken_link(pool: asyncpg.Pool) -> None:
    store, stream = EventStore(pool), uuid.uuid4()
    for version in range(5):
        await store.append(stream, [note(f"entry {version}")], expected_version=version,
                           agency=AGENCY, metadata=META)
    report = await store.verify(stream)
    assert report.valid
    assert report.events_checked == 5
    # Tampering needs the superuser's way around the trigger: exactly what verify is for.
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "UPDATE records.events SET data = jsonb_set(data, '{text}', '\"rewritten\"')"
            " WHERE stream_id = $1 AND version = 3", stream)
    report = await store.verify(stream)
    assert not report.valid
    assert report.broken_at_version == 3
    assert report.problem == "hash does not match the event's content"
    assert report.events_checked == 2


@pytest.mark.parametrize("tampered", [None, 2, 3, 7])
async def test_verify_walks_the_stream_a_page_at_a_time(
        pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, tampered: int | None) -> None:
    """A long history is checked without holding it whole: no read brings more than a page,
    and any page size names the same first broken link as one read of everything."""
    store, stream = EventStore(pool), uuid.uuid4()
    for version in range(8):
        await store.append(stream, [note(f"entry {version}")], expected_version=version,
                           agency=AGENCY, metadata=META)
    if tampered is not None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                "UPDATE records.events SET data = jsonb_set(data, '{text}', '\"rewritten\"')"
                " WHERE stream_id = $1 AND version = $2", stream, tampered)
    whole = await store.verify(stream)
    windowed = await store.verify(stream, up_to_version=6)
    pages: list[int] = []
    read_stream = store.read_stream

    async def counted(*args: Any, **kwargs: Any) -> list[RecordedEvent]:
        events = await read_stream(*args, **kwargs)
        pages.append(len(events))
        return events

    monkeypatch.setattr(store, "read_stream", counted)
    monkeypatch.setattr(events_module, "READ_PAGE", 3)
    assert await store.verify(stream) == whole
    assert await store.verify(stream, up_to_version=6) == windowed
    assert max(pages) <= 3
    assert whole.valid is (tampered is None)
    assert windowed.events_checked == (6 if tampered in (None, 7) else tampered - 1)


@pytest.mark.parametrize("path", ["{actor,sub}", "{reason}", "{agency}"])
async def test_who_and_why_are_in_the_hash_too(pool: asyncpg.Pool, path: str) -> None:
    """An event's metadata (who recorded it, why, for which agency) is chained like its data:
    rewriting the actor or the reason breaks the link."""
    store, stream = EventStore(pool), uuid.uuid4()
    for version in range(2):
        await store.append(stream, [note()], expected_version=version, agency=AGENCY,
                           metadata={**META, "reason": "agreed with Jo"})
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            f"UPDATE records.events SET metadata = jsonb_set(metadata, '{path}',"
            " '\"someone-else\"') WHERE stream_id = $1 AND version = 2", stream)
    report = await store.verify(stream)
    assert not report.valid
    assert report.broken_at_version == 2


def test_the_hash_of_an_event_is_fixed_for_every_verifier() -> None:
    """A reference vector: courts recompute hashes with their own tools from decision 0002's
    description, so the canonical form must never drift (this fails if it does)."""
    link = ChainLink(
        "6f1c2a9e-5b7d-4c3e-9a1f-2d8e7b6c5a40", 1, "0b7e4c1d-2a3f-4e5d-8c9b-1a2b3c4d5e6f",
        "NoteAdded", 1, {"note_id": "n-1", "text": "Zoë met the landlord — a small win."},
        {"actor": {"sub": "cm-1", "role": "case_manager"}, "agency": AGENCY,
         "reason": None}, datetime(2026, 3, 2, 9, 30, 0, 123456, tzinfo=UTC), GENESIS_HASH)
    assert link.canonical() == (
        '{"data":{"note_id":"n-1","text":"Zoë met the landlord — a small win."},'
        '"event_id":"0b7e4c1d-2a3f-4e5d-8c9b-1a2b3c4d5e6f","metadata":{"actor":{"role":'
        '"case_manager","sub":"cm-1"},"agency":"agency-a","reason":null},'
        '"prev_hash":"' + GENESIS_HASH + '","recorded_at":"2026-03-02T09:30:00.123456Z",'
        '"schema_version":1,"stream_id":"6f1c2a9e-5b7d-4c3e-9a1f-2d8e7b6c5a40",'
        '"type":"NoteAdded","version":1}').encode()
    assert link.compute_hash() == hashlib.sha256(link.canonical()).hexdigest()


def test_a_chain_starts_at_the_genesis_hash() -> None:
    """A first event whose prev_hash is anything else is not the start of a chain (only an
    audit window's export starts later, anchored by its first event)."""
    link = ChainLink("s", 1, "e", "NoteAdded", 1, {}, {}, datetime(2026, 3, 2, tzinfo=UTC),
                     "f" * 64)
    check = ChainCheck()
    check.add(replace(link, hash=link.compute_hash()))
    assert check.report().broken_at_version == 1


async def test_verify_notices_a_removed_event(pool: asyncpg.Pool) -> None:
    store, stream = EventStore(pool), uuid.uuid4()
    for version in range(3):
        await store.append(stream, [note()], expected_version=version, agency=AGENCY,
                           metadata=META)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "DELETE FROM records.events WHERE stream_id = $1 AND version = 2", stream)
    report = await store.verify(stream)
    assert not report.valid
    assert report.broken_at_version == 3
    assert "expected" in (report.problem or "")


@pytest.mark.parametrize("statement", [
    "UPDATE records.events SET type = 'Changed' WHERE stream_id = $1",
    "DELETE FROM records.events WHERE stream_id = $1",
])
async def test_the_database_itself_refuses_changing_events(pool: asyncpg.Pool,
                                                           statement: str) -> None:
    store, stream = EventStore(pool), uuid.uuid4()
    await store.append(stream, [note()], expected_version=0, agency=AGENCY, metadata=META)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute(statement, stream)
    assert (await store.read_stream(stream))[0].type == "NoteAdded"


async def test_truncate_is_refused(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute("TRUNCATE records.events")


async def test_reads_by_version_and_by_time(pool: asyncpg.Pool) -> None:
    clock = FakeClock()
    store, stream = EventStore(pool, clock), uuid.uuid4()
    for version in range(4):
        await store.append(stream, [note(f"n{version}")], expected_version=version,
                           agency=AGENCY, metadata=META)
        clock.advance(hours=1)
    assert [e.version for e in await store.read_stream(stream, after_version=2)] == [3, 4]
    assert [e.version for e in await store.read_stream(stream, up_to_version=2)] == [1, 2]
    as_of = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
    assert [e.version for e in await store.read_stream(stream, up_to_time=as_of)] == [1, 2]
    stamped = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # version 2's own time: it is in
    assert [e.version for e in await store.read_stream(stream, up_to_time=stamped)] == [1, 2]
    assert await store.read_stream(stream, up_to_time=as_of - timedelta(days=1)) == []
    assert [e.version for e in await store.read_stream(stream, limit=1)] == [1]


async def test_floats_are_refused_before_anything_is_written(pool: asyncpg.Pool) -> None:
    store, stream = EventStore(pool), uuid.uuid4()
    with pytest.raises(TypeError):
        await store.append(stream, [NewEvent(uuid.uuid4(), "NoteAdded", 1, {"x": 1.5})],
                           expected_version=0, agency=AGENCY, metadata=META)
    assert await store.head(stream) is None


async def test_concurrent_appends_to_many_streams_share_statements(pool: asyncpg.Pool) -> None:
    sizes: list[int] = []
    store = EventStore(pool, on_batch=sizes.append)
    streams = [uuid.uuid4() for _ in range(40)]
    for stream in streams:
        await store.append(stream, [note()], expected_version=0, agency=AGENCY, metadata=META)
    sizes.clear()
    results = await asyncio.gather(*[
        store.append(stream, [note(), note()], expected_version=1, agency=AGENCY,
                     metadata=META) for stream in streams])
    assert [r.version for r in results] == [3] * 40
    assert sum(sizes) == 40
    assert max(sizes) > 1
    for stream, result in zip(streams, results, strict=True):
        assert await count_events(pool, stream) == 3
        assert (await store.verify(stream)).valid
        stored = await store.read_stream(stream, after_version=1)
        assert [(e.event_id, e.global_position, e.hash) for e in stored] == \
            [(e.event_id, e.global_position, e.hash) for e in result.events]


async def test_a_lost_race_in_a_shared_statement_fails_only_its_own_append(
        pool: asyncpg.Pool) -> None:
    sizes: list[int] = []
    store, rival = EventStore(pool, on_batch=sizes.append), EventStore(pool)
    streams = [uuid.uuid4() for _ in range(10)]
    for stream in streams:
        await store.append(stream, [note()], expected_version=0, agency=AGENCY, metadata=META)
    await rival.append(streams[3], [note()], expected_version=1, agency=AGENCY, metadata=META)
    sizes.clear()
    results = await asyncio.gather(*[
        store.append(stream, [note()], expected_version=1, agency=AGENCY, metadata=META)
        for stream in streams], return_exceptions=True)
    assert max(sizes) > 1
    conflict = results.pop(3)
    assert isinstance(conflict, VersionConflict)
    assert conflict.current == 2
    assert all(not isinstance(r, BaseException) and r.version == 2 for r in results)
    assert [await count_events(pool, s) for s in streams] == [2] * 10


async def test_a_failing_append_does_not_fail_the_others_in_its_statement(
        pool: asyncpg.Pool) -> None:
    sizes: list[int] = []
    store = EventStore(pool, on_batch=sizes.append)
    streams = [uuid.uuid4() for _ in range(6)]
    taken = note()
    await store.append(streams[0], [taken], expected_version=0, agency=AGENCY, metadata=META)
    sizes.clear()
    duplicate = NewEvent(taken.event_id, "NoteAdded", 1, {"text": "the same event id again"})
    results = await asyncio.gather(
        store.append(uuid.uuid4(), [note()], expected_version=0, agency=AGENCY, metadata=META),
        *[store.append(stream, [duplicate if stream == streams[3] else note()],
                       expected_version=0, agency=AGENCY, metadata=META)
          for stream in streams[1:]],
        return_exceptions=True)
    assert max(sizes) > 1  # a shared statement failed, then its appends went alone
    assert isinstance(results[3], asyncpg.UniqueViolationError)
    others = results[:3] + results[4:]
    assert all(not isinstance(r, BaseException) and r.version == 1 for r in others)
    assert await store.head(streams[3]) is None  # nothing of the failed append remains


async def test_an_append_decided_on_an_event_past_the_head_is_out_of_step(
        pool: asyncpg.Pool) -> None:
    """An event inserted without moving the head (forged in): an append decided on it
    expects a version the head never reached. It is out of step, not a lost race that a
    retry would win (decision 0005)."""
    store, stream = EventStore(pool), uuid.uuid4()
    await store.append(stream, [note()], expected_version=0, agency=AGENCY, metadata=META)
    await pool.execute(
        "INSERT INTO records.events (stream_id, version, event_id, type, schema_version, data,"
        " metadata, agency, recorded_at, prev_hash, hash)"
        " SELECT stream_id, version + 1, gen_random_uuid(), type, schema_version, data,"
        " metadata, agency, recorded_at, hash, repeat('f', 64) FROM records.events"
        " WHERE stream_id = $1", stream)
    with pytest.raises(RecordOutOfStep) as caught:
        await store.append(stream, [note()], expected_version=2, agency=AGENCY, metadata=META)
    assert caught.value.head_version == 1
    assert await count_events(pool, stream) == 2
