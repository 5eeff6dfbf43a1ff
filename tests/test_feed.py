"""The global feed never skips or repeats an event while transactions commit out of order."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.records.http.app import RECORDS
from services.records.store.events import EventStore, NewEvent, VersionConflict
from services.records.store.feed import (
    NOTIFY_CHANNEL,
    START,
    BadCheckpoint,
    Checkpoint,
    FeedWaiter,
    read_feed,
)
from tests.conftest import ClientFactory, TokenFactory, bearer

AGENCY = "agency-a"
META = {"actor": {"sub": "cm-1", "role": "case_manager"}}


def note() -> NewEvent:
    return NewEvent(uuid.uuid4(), "NoteAdded", 1, {"text": "a small step today"})


async def drain(pool: asyncpg.Pool, after: Checkpoint = START, limit: int = 50,
                expect: int = 0) -> tuple[list[uuid.UUID], Checkpoint]:
    """Read to the end of the feed, waiting (up to 30 s) until at least ``expect`` events came.

    The horizon is server-wide: another test run's transaction on the same server (creating
    its database, say) holds committed events back for a moment. That delays, never skips.
    """
    seen: list[uuid.UUID] = []
    deadline = time.monotonic() + 30
    while True:
        page = await read_feed(pool, after, limit)
        seen += [item.event.event_id for item in page.events]
        if page.events:
            after = page.checkpoint
            continue
        if len(seen) >= expect or time.monotonic() > deadline:
            return seen, after
        await asyncio.sleep(0.02)


async def test_a_late_commit_is_not_skipped(fresh_pool: asyncpg.Pool) -> None:
    """The classic gap: T1 takes position 1, T2 takes 2 and commits first."""
    slow = await fresh_pool.acquire()
    try:
        tx = slow.transaction()
        await tx.start()
        await slow.execute(
            "INSERT INTO records.events (stream_id, version, event_id, type, schema_version,"
            " data, metadata, agency, recorded_at, prev_hash, hash)"
            " VALUES ($1, 1, $2, 'NoteAdded', 1, '{}', '{}', $3, now(), '', '')",
            uuid.uuid4(), uuid.uuid4(), AGENCY)
        fast = await EventStore(fresh_pool).append(uuid.uuid4(), [note()], expected_version=0,
                                                   agency=AGENCY, metadata=META)
        # While T1 is open, T2's event must not be handed out: its checkpoint would pass T1's.
        page = await read_feed(fresh_pool, START, 10)
        assert page.events == []
        # ...but the page says that it is there, held back, and since when
        assert (page.held_back, page.held_back_since) == (1, fast.events[0].recorded_at)
        await tx.commit()
    finally:
        await fresh_pool.release(slow)
    seen, end = await drain(fresh_pool, expect=2)
    assert len(seen) == 2
    assert seen[1] == fast.events[0].event_id
    assert (await read_feed(fresh_pool, end, 10)).held_back == 0


async def test_an_older_transaction_with_a_later_position_is_read_in_commit_order(
        fresh_pool: asyncpg.Pool) -> None:
    """T1 takes its transaction id first but its position last (T2 appends and commits in
    between): pages of one event must follow (transaction, position), or the checkpoint
    after T2's event passes T1's and T1's event is never read."""
    slow = await fresh_pool.acquire()
    try:
        tx = slow.transaction()
        await tx.start()
        await slow.fetchval("SELECT pg_current_xact_id()")  # the older transaction id
        fast = await EventStore(fresh_pool).append(uuid.uuid4(), [note()], expected_version=0,
                                                   agency=AGENCY, metadata=META)
        late = uuid.uuid4()
        await slow.execute(
            "INSERT INTO records.events (stream_id, version, event_id, type, schema_version,"
            " data, metadata, agency, recorded_at, prev_hash, hash)"
            " VALUES ($1, 1, $2, 'NoteAdded', 1, '{}', '{}', $3, now(), '', '')",
            uuid.uuid4(), late, AGENCY)
        await tx.commit()
    finally:
        await fresh_pool.release(slow)
    seen, _ = await drain(fresh_pool, limit=1, expect=2)
    assert seen == [late, fast.events[0].event_id]


async def test_concurrent_writers_and_a_following_reader_see_every_event_once(
        fresh_pool: asyncpg.Pool) -> None:
    store = EventStore(fresh_pool)
    shared_streams = [uuid.uuid4() for _ in range(2)]
    written: list[uuid.UUID] = []
    done = asyncio.Event()

    async def writer(index: int) -> None:
        rng = random.Random(index)
        own = uuid.uuid4()
        own_version = 0
        for _ in range(40):
            if rng.random() < 0.5:
                batch = [note() for _ in range(rng.randint(1, 3))]
                result = await store.append(own, batch, expected_version=own_version,
                                            agency=AGENCY, metadata=META)
                own_version = result.version
                written.extend(e.event_id for e in result.events)
            else:
                stream = rng.choice(shared_streams)
                while True:  # shared streams: retry on conflict, as a real client would
                    head = await store.head(stream)
                    try:
                        result = await store.append(stream, [note()],
                                                    expected_version=head.version if head else 0,
                                                    agency=AGENCY, metadata=META)
                    except VersionConflict:
                        continue
                    written.extend(e.event_id for e in result.events)
                    break
            await asyncio.sleep(rng.random() / 200)

    seen: list[uuid.UUID] = []

    async def reader() -> None:
        after = START
        while True:
            finished = done.is_set()
            page = await read_feed(fresh_pool, after, 7)
            seen.extend(item.event.event_id for item in page.events)
            after = page.checkpoint
            if finished and not page.events:
                rest, _ = await drain(fresh_pool, after, 7, expect=len(written) - len(seen))
                seen.extend(rest)
                return
            if not page.events:
                await asyncio.sleep(0.002)

    reading = asyncio.create_task(reader())
    await asyncio.gather(*[writer(i) for i in range(10)])
    done.set()
    await reading

    assert len(seen) == len(set(seen)), "the feed repeated an event"
    assert set(seen) == set(written), "the feed skipped an event"
    assert len(written) > 300
    again, _ = await drain(fresh_pool, expect=len(seen))
    assert again == seen, "the order changed between two reads"
    halfway = (await read_feed(fresh_pool, START, len(seen) // 2)).checkpoint
    rest, _ = await drain(fresh_pool, halfway, expect=len(seen) - len(seen) // 2)
    assert rest == seen[len(seen) // 2:], "resuming from a checkpoint changed the order"


def test_checkpoints_are_opaque_and_checked() -> None:
    point = Checkpoint(12345, 678)
    assert Checkpoint.decode(point.encode()) == point
    for bad in ["", "nonsense", "MTIz", "!!!", "a" * 100]:
        with pytest.raises(BadCheckpoint):
            Checkpoint.decode(bad)


async def test_feed_endpoint_pages_with_checkpoints(make_records_client: ClientFactory,
                                                    fresh_database_url: str,
                                                    fresh_pool: asyncpg.Pool,
                                                    token: TokenFactory) -> None:
    client = await make_records_client(fresh_database_url)
    store = EventStore(fresh_pool)
    stream = uuid.uuid4()
    await store.append(stream, [note() for _ in range(5)], expected_version=0, agency=AGENCY,
                       metadata=META)
    headers = bearer(token(role="service", sub="notifier", agency="*"))
    # wait=: another test run on the same server may hold the horizon back for a moment
    first = await (await client.get("/v1/events?limit=3&wait=30", headers=headers)).json()
    assert [e["version"] for e in first["events"]] == [1, 2, 3]
    assert first["events"][0]["agency"] == AGENCY
    second = await (await client.get(f"/v1/events?after={first['checkpoint']}&wait=30",
                                     headers=headers)).json()
    assert [e["version"] for e in second["events"]] == [4, 5]
    empty = await (await client.get(f"/v1/events?after={second['checkpoint']}",
                                    headers=headers)).json()
    assert empty["events"] == []
    assert empty["checkpoint"] == second["checkpoint"]


async def long_poll_while(client: TestClient, token: TokenFactory,
                          append: Callable[[], Awaitable[object]]) -> tuple[int, int, float]:
    """GET /v1/events?wait=20 while ``append`` runs 0.3 s later: status, events, seconds."""
    headers = bearer(token(role="service", sub="notifier", agency="*"))

    async def append_soon() -> None:
        await asyncio.sleep(0.3)
        await append()

    started = time.monotonic()
    writing = asyncio.create_task(append_soon())
    response = await client.get("/v1/events?wait=20", headers=headers)
    body = await response.json()
    await writing
    return response.status, len(body["events"]), time.monotonic() - started


async def test_long_poll_wakes_on_an_append_through_the_same_service(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    client = await make_records_client(fresh_database_url)
    client.app[RECORDS].waiter.liveness_seconds = 60

    async def open_case() -> None:
        response = await client.post("/v1/cases", json={
            "participant": {"name": "Ana"}, "case_manager": "cm-1", "risk_level": "low"},
            headers=bearer(token(role="case_manager", sub="cm-1")))
        assert response.status == 201

    status, events, seconds = await long_poll_while(client, token, open_case)
    assert (status, events) == (200, 1)
    assert seconds < 10, "the long-poll waited for its timeout"


async def test_long_poll_wakes_on_an_append_by_another_instance(
        make_records_client: ClientFactory, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, token: TokenFactory) -> None:
    """The other instance's announcement arrives by NOTIFY, sent after its append committed."""
    client = await make_records_client(fresh_database_url)
    client.app[RECORDS].waiter.liveness_seconds = 60
    other = FeedWaiter(fresh_database_url)
    await other.start()
    try:
        store = EventStore(fresh_pool, on_appended=other.announce)
        status, events, seconds = await long_poll_while(client, token, lambda: store.append(
            uuid.uuid4(), [note()], expected_version=0, agency=AGENCY, metadata=META))
    finally:
        await other.stop()
    assert (status, events) == (200, 1)
    assert seconds < 10, "the long-poll waited for its timeout"


async def test_long_poll_sees_an_unannounced_append_on_its_liveness_recheck(
        make_records_client: ClientFactory, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, token: TokenFactory) -> None:
    """A writer that crashed between commit and announcement: the event still arrives."""
    client = await make_records_client(fresh_database_url)
    client.app[RECORDS].waiter.liveness_seconds = 0.5
    silent = EventStore(fresh_pool)
    status, events, seconds = await long_poll_while(client, token, lambda: silent.append(
        uuid.uuid4(), [note()], expected_version=0, agency=AGENCY, metadata=META))
    assert (status, events) == (200, 1)
    assert seconds < 10, "the long-poll waited for its timeout"


async def test_feed_is_for_the_service_role_only(records_client: TestClient,
                                                 token: TokenFactory) -> None:
    for role in ["case_manager", "supervisor", "auditor", "analyst", "participant"]:
        response = await records_client.get("/v1/events", headers=bearer(token(role=role)))
        assert response.status == 403
        assert response.content_type == "application/problem+json"


@pytest.mark.parametrize(("query", "status"), [
    ("after=not-a-checkpoint", 400), ("limit=0", 422), ("limit=5000", 422),
    ("limit=ten", 422), ("wait=-1", 422), ("wait=999", 422), ("bogus=1", 422),
    ("limit=1&limit=2", 400),
])
async def test_feed_refuses_bad_queries(records_client: TestClient, token: TokenFactory,
                                        query: str, status: int) -> None:
    response = await records_client.get(f"/v1/events?{query}",
                                        headers=bearer(token(role="service")))
    assert response.status == status
    body = await response.json()
    assert body["status"] == status
    assert body["title"]


async def test_announcements_to_other_instances_are_paced_and_none_is_lost(
        fresh_database_url: str) -> None:
    """A burst of appends sends a few NOTIFYs, not one per append; the last append of the
    burst is still followed by one."""
    listener = await asyncpg.connect(fresh_database_url)
    heard: list[float] = []
    await listener.add_listener(NOTIFY_CHANNEL, lambda *_: heard.append(time.monotonic()))
    waiter = FeedWaiter(fresh_database_url)
    waiter.notify_interval_seconds = 0.05
    await waiter.start()
    try:
        started = time.monotonic()
        for _ in range(200):
            # taken before the call: a NOTIFY sent at once for it may be heard within the 1 ms
            # sleep after it (the last run of the suite saw it 1.1 ms before a later stamp)
            last_announced = time.monotonic()
            waiter.announce()
            await asyncio.sleep(0.001)
        # until the burst's last announcement is heard (it takes ~30 ms; a busy machine more)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if heard and heard[-1] >= last_announced:
                break
    finally:
        await waiter.stop()
        await listener.close()
    burst = last_announced - started
    assert 1 <= len(heard) <= burst / 0.05 + 3, f"{len(heard)} NOTIFYs for a {burst:.2f} s burst"
    assert heard[-1] >= last_announced, "the burst's last append was never announced"


async def test_shutting_down_answers_a_long_poll_instead_of_waiting_it_out(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    """A graceful shutdown waits for requests in flight; a feed long-poll must not hold it
    for its whole wait (`casetrail dev` took ~25 s to stop on Ctrl-C)."""
    client = await make_records_client(fresh_database_url)
    client.app[RECORDS].waiter.liveness_seconds = 60
    polling = asyncio.create_task(
        client.get("/v1/events?wait=30", headers=bearer(token(role="service", sub="n"))))
    await asyncio.sleep(0.5)  # the long-poll is waiting
    async with asyncio.timeout(15):
        await client.server.close()
    polling.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
        await polling
