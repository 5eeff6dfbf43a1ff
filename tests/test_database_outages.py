"""The services through a database that hangs, goes away or restarts: a TCP proxy of the
test's own (tests/db_proxy.py) stands between one service and the real PostgreSQL, which is
never touched."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg
import pytest
import structlog
from aiohttp.test_utils import TestClient

from services.common.database import DATABASE_UNAVAILABLE
from services.notifier.delivery import SHUTDOWN_GRACE
from services.notifier.http.app import create_app as create_notifier
from services.records.http.app import RECORDS
from services.records.store.events import EventStore, OutcomeUnknown
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.db_proxy import DbProxy
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, make_rig, notifier_settings
from tests.records_api import CaseApi, event_count
from tests.test_event_store import note


@pytest.fixture
async def proxy(fresh_database_url: str) -> AsyncIterator[DbProxy]:
    started = await DbProxy(fresh_database_url).start()
    yield started
    await started.stop()


async def timed(answer: Awaitable[int]) -> tuple[int, float]:
    began = time.monotonic()
    status = await answer
    return status, time.monotonic() - began


async def status_of(client: TestClient, method: str, path: str, **kwargs: object) -> int:
    async with client.request(method, path, **kwargs) as response:
        await response.read()
        return response.status


async def test_a_hung_database_gets_503s_in_bounded_time_not_hanging_requests(
        aiohttp_client: Callable[..., Awaitable[TestClient]], make_records_client: ClientFactory,
        proxy: DbProxy, token: TokenFactory) -> None:
    records = await make_records_client(proxy.url)
    settings = notifier_settings(proxy.url, "http://127.0.0.1:9", 9,
                                 NOTIFIER_DB_COMMAND_TIMEOUT=1)
    notifier = await aiohttp_client(create_notifier(settings, background=False))
    prefs = {"json": {"email": "cm-1@example.org", "delivery": "immediate", "timezone": "UTC",
                      "celebrations": True}, "headers": bearer(token())}
    assert await status_of(records, "GET", "/readyz") == 200
    assert await status_of(notifier, "PUT", "/v1/preferences/cm-1", **prefs) == 200
    proxy.hang()
    async with asyncio.timeout(10):  # unbounded before: both waited for as long as it hung
        ready, write = await asyncio.gather(
            timed(status_of(records, "GET", "/readyz")),
            timed(status_of(notifier, "PUT", "/v1/preferences/cm-1", **prefs)))
    assert ready[0] == 503
    # bounds with room for a busy machine (two test workers share its two cores)
    assert ready[1] < 2 + 1.5  # the readiness check's limit
    assert write[0] == 503
    assert write[1] < 1 + 1 + 1.5  # the command timeout, then at most the acquire limit
    proxy.resume()
    assert await status_of(records, "GET", "/readyz") == 200
    assert await status_of(notifier, "PUT", "/v1/preferences/cm-1", **prefs) == 200


@dataclass
class SmtpCuttingTheDatabase(SmtpServer):
    """Takes a message, and before its 250 the notifier's database goes away (every
    connection dropped, new ones refused) for ``outage`` seconds (None: for good)."""

    proxy: DbProxy | None = None
    outage: float | None = 1.0
    back: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.proxy is not None and not self.received:
            await self.proxy.refuse()
            self.proxy.cut()
            if self.outage is not None:
                asyncio.get_running_loop().call_later(self.outage, self._restore)
        return await super().handle_DATA(server, session, envelope)

    def _restore(self) -> None:
        async def restore() -> None:
            assert self.proxy is not None
            await self.proxy.start()
            self.back.set()
        asyncio.get_running_loop().create_task(restore())


@pytest.fixture
async def smtp(proxy: DbProxy) -> AsyncIterator[SmtpCuttingTheDatabase]:
    server = SmtpCuttingTheDatabase(proxy=proxy)
    await server.start()
    yield server
    await server.stop()


async def a_small_win_known_to(rig: NotifierRig, records: Records, steps: int = 1) -> None:
    case = await records.open_case()
    goal = await records.goal(case)
    for _ in range(steps):
        await records.complete(case, await records.step(case, goal))
    await rig.catch_up()


async def test_mail_sent_during_a_database_outage_is_recorded_once_it_is_back_not_resent(
        aiohttp_client: Callable[..., Awaitable[TestClient]], records: Records,
        proxy: DbProxy, smtp: SmtpCuttingTheDatabase, clock: FakeClock,
        token: TokenFactory) -> None:
    rig = await make_rig(aiohttp_client, proxy.url, records.client, smtp, clock)
    await rig.set_prefs("cm-1", token())
    await a_small_win_known_to(rig, records)
    async with asyncio.timeout(15):
        with contextlib.suppress(*DATABASE_UNAVAILABLE):  # before: the outcome was lost
            await rig.dispatch()
        await smtp.back.wait()
    clock.advance(seconds=rig.notifier.settings.lease_seconds + 60)
    await rig.dispatch()  # any instance, once the lease has run out
    [row] = await rig.rows(kind="small_win")
    assert [m["Message-ID"] for m in smtp.received] == [row["message_id"]]
    assert (row["status"], row["attempts"]) == ("sent", 1)


async def test_a_digest_sent_during_a_database_outage_is_recorded_once_it_is_back(
        aiohttp_client: Callable[..., Awaitable[TestClient]], records: Records,
        proxy: DbProxy, smtp: SmtpCuttingTheDatabase, clock: FakeClock,
        token: TokenFactory) -> None:
    """The digest's notices share its fate in a write of their own: lost, the digest was
    recorded as failed and sent again."""
    rig = await make_rig(aiohttp_client, proxy.url, records.client, smtp, clock)
    await rig.set_prefs("cm-1", token(), delivery="daily_digest", timezone="UTC")
    await a_small_win_known_to(rig, records, steps=2)
    await rig.dispatch()
    [digest] = await rig.rows(kind="daily_digest")
    clock.now = digest["due_at"]  # type: ignore[assignment]
    async with asyncio.timeout(15):
        with contextlib.suppress(*DATABASE_UNAVAILABLE):
            await rig.notifier.dispatcher.send_digests()
        await smtp.back.wait()
    clock.advance(seconds=rig.notifier.settings.lease_seconds + 60)
    await rig.notifier.dispatcher.send_digests()
    [digest] = await rig.rows(kind="daily_digest")
    assert [m["Message-ID"] for m in smtp.received] == [digest["message_id"]]
    assert (digest["status"], digest["attempts"]) == ("sent", 1)
    assert {r["status"] for r in await rig.rows(kind="small_win")} == {"sent"}


async def test_a_stopping_notifier_gives_up_recording_after_a_grace_and_says_what_it_lost(
        aiohttp_client: Callable[..., Awaitable[TestClient]], records: Records,
        proxy: DbProxy, smtp: SmtpCuttingTheDatabase, clock: FakeClock,
        token: TokenFactory) -> None:
    smtp.outage = None  # the database stays away
    rig = await make_rig(aiohttp_client, proxy.url, records.client, smtp, clock)
    await rig.set_prefs("cm-1", token())
    await a_small_win_known_to(rig, records)
    [row] = await rig.rows(kind="small_win")
    with structlog.testing.capture_logs() as logs:
        dispatching = asyncio.create_task(rig.dispatch())
        await smtp.arrived.wait()
        rig.notifier.dispatcher.shutting_down()
        began = time.monotonic()
        with pytest.raises(DATABASE_UNAVAILABLE):
            await asyncio.wait_for(dispatching, SHUTDOWN_GRACE + 3)
    assert time.monotonic() - began < SHUTDOWN_GRACE + 1
    [gave_up] = [e for e in logs if e["log_level"] == "error"]
    assert gave_up["notifications"] == {str(row["id"]): "sent"}
    await proxy.start()  # for the teardown


async def feed_end(client: TestClient, headers: dict[str, str], events: int) -> str:
    """The checkpoint after the first `events` events. The feed holds an event back while
    any older transaction of the server is open (another database's included), so it is
    read until they are all there (for up to 30 s, as tests/pg_waits.py waits; 10 s before)."""
    deadline = time.monotonic() + 30
    while True:
        async with client.get("/v1/events?limit=1000&wait=1", headers=headers) as response:
            body = await response.json()
        if len(body["events"]) >= events or time.monotonic() > deadline:
            assert len(body["events"]) == events
            return str(body["checkpoint"])


async def test_an_instance_listens_again_once_its_database_connection_is_back(
        make_records_client: ClientFactory, fresh_database_url: str, proxy: DbProxy,
        token: TokenFactory, caplog: pytest.LogCaptureFixture) -> None:
    a = await make_records_client(fresh_database_url)
    b = await make_records_client(proxy.url)  # its pool and its LISTEN go through the proxy
    b.app[RECORDS].waiter.liveness_seconds = 60  # only a NOTIFY can wake its long-poll
    writer, reader = bearer(token()), bearer(token(role="service", sub="n", agency="*"))
    case = {"participant": {"name": "Ana"}, "case_manager": "cm-1", "risk_level": "low"}
    proxy.cut()  # as a database restart does
    await asyncio.sleep(0.2)
    for _ in range(2):  # before: each announcement failed on the closed LISTEN connection
        assert await status_of(b, "POST", "/v1/cases", json=case, headers=writer) == 201
    after = await feed_end(b, reader, events=2)

    async def write_on_a() -> float:
        await asyncio.sleep(0.3)
        assert await status_of(a, "POST", "/v1/cases", json=case, headers=writer) == 201
        return time.monotonic()

    writing = asyncio.create_task(write_on_a())
    async with b.get(f"/v1/events?after={after}&wait=20", headers=reader) as response:
        events = (await response.json())["events"]
    woken_after = time.monotonic() - await writing
    assert len(events) == 1
    # unwoken, it would answer at the end of its 20 s wait (its liveness check is 60 s); the
    # margin is for a transaction open elsewhere on the server, which holds the feed back
    assert woken_after < 10, "the long-poll was not woken by the other instance's append"
    gc.collect()  # an unretrieved task exception is logged when the task is collected
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_write_waiting_too_long_on_a_lock_is_a_503_saying_so(
        fresh_database_url: str, make_records_client: ClientFactory,
        token: TokenFactory) -> None:
    """Anything holding the projections (an operator's lock, a rebuild's last transaction
    held up): a write waiting longer than the command timeout is told the database did not
    answer in time (not that it is down)."""
    client = await make_records_client(fresh_database_url, CASETRAIL_DB_COMMAND_TIMEOUT=1)
    cm = CaseApi(client, token())
    case_id = await cm.open_case()
    conn = await asyncpg.connect(fresh_database_url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE records.plans IN ACCESS EXCLUSIVE MODE")
            response = await client.post(f"/v1/cases/{case_id}/notes", json={"text": "hi"},
                                         headers=bearer(cm.token))
            problem = await response.json()
        assert (response.status, response.headers["Retry-After"]) == (503, "5")
        # the statement was sent: whether it was recorded in the end, no one can tell here
        assert problem["type"].endswith("/write-outcome-unknown")
        assert problem["detail"].startswith("the database did not answer in time while this"
                                            " write was being recorded, so it may have been"
                                            " recorded")
        assert await event_count(conn) == 1
    finally:
        await conn.close()


async def test_an_export_whose_database_goes_away_mid_answer_ends_cut_short(
        make_records_client: ClientFactory, fresh_database_url: str, proxy: DbProxy,
        token: TokenFactory) -> None:
    """The export's 200 has begun when its database goes away: no problem can follow it, and
    one written after it left the client waiting for the rest until its own timeout. The
    download must end, cut short (such a file never verifies). The first page of events is
    held by a lock taken here (nothing reads them before the answer begins), so the
    connection is cut while the export waits for it."""
    case_id = await CaseApi(await make_records_client(fresh_database_url), token()).open_case()
    reader = await make_records_client(proxy.url)
    admin = await asyncpg.connect(fresh_database_url)
    try:
        async with admin.transaction():
            await admin.execute("LOCK TABLE records.events IN ACCESS EXCLUSIVE MODE")
            async with asyncio.timeout(20), reader.get(
                    f"/v1/cases/{case_id}/export", headers=bearer(token())) as response:
                assert response.status == 200
                assert b'"export"' in await response.content.readline()  # the header
                proxy.cut()
                await proxy.refuse()
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()
    finally:
        await admin.close()


async def until_a_session_waits_on_a_lock(conn: asyncpg.Connection) -> None:
    for _ in range(1000):
        if await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname ="
                               " current_database() AND wait_event_type = 'Lock'"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no session ever waited on the lock")


async def until_events(conn: asyncpg.Connection, count: int) -> None:
    for _ in range(1000):
        if await event_count(conn) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {count} events")


@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed"])
async def test_a_write_whose_connection_is_lost_is_not_told_to_try_again_if_it_may_be_recorded(
        make_records_client: ClientFactory, fresh_database_url: str, proxy: DbProxy,
        token: TokenFactory, keyed: bool) -> None:
    """The connection goes (a database restart) while a note waits on its case's head. An
    unkeyed append runs without a transaction of its own, so the server records it once the
    head is free, and its answer goes nowhere: the client was told "try again shortly" about
    a note that was recorded, and trying again recorded it twice. Now it is told the write
    may have been recorded, and which version it is if it was. A keyed append runs in its own
    transaction, which the server undoes when the connection goes: "try again" is true, and
    the retry, with the same key, records it once."""
    cm = CaseApi(await make_records_client(fresh_database_url), token())
    case_id = await cm.open_case()
    writer = await make_records_client(proxy.url)
    headers = {**bearer(cm.token), **({"Idempotency-Key": "note-1"} if keyed else {})}
    admin = await asyncpg.connect(fresh_database_url)
    try:
        holding = admin.transaction()
        await holding.start()
        await admin.execute("SELECT FROM records.streams WHERE stream_id = $1 FOR UPDATE",
                            UUID(case_id))
        sent = asyncio.create_task(writer.post(f"/v1/cases/{case_id}/notes",
                                               json={"text": "Jo called"}, headers=headers))
        await until_a_session_waits_on_a_lock(admin)
        proxy.cut()
        response = await sent
        problem = await response.json()
        await holding.commit()
        assert (response.status, response.headers["Retry-After"]) == (503, "5")
        if keyed:
            assert problem["type"].endswith("/database-unavailable")
            again = await writer.post(f"/v1/cases/{case_id}/notes", json={"text": "Jo called"},
                                      headers=headers)
            assert (again.status, (await again.json())["version"]) == (201, 2)
        else:
            assert problem["type"].endswith("/write-outcome-unknown")
            assert problem["version_if_recorded"] == 2
            assert "may have been recorded" in problem["detail"]
            assert "try again shortly" not in problem["detail"]
            await until_events(admin, 2)  # recorded once the head was free: as version 2
        history = await cm.call("GET", f"/v1/cases/{case_id}/history", expect=200)
        assert [e["type"] for e in history["events"]] == ["CaseOpened", "NoteAdded"]
    finally:
        await admin.close()


async def test_a_batch_whose_connection_is_lost_is_not_written_again_append_by_append(
        fresh_database_url: str, proxy: DbProxy) -> None:
    """Two notes to two cases share one statement (group commit), which waits on one case's
    head when the connection goes. A lost connection's error is a PostgresError, so each
    append was written again alone, while the first statement could still commit: the
    service then decides a write that lost its race again, and a note would be recorded
    twice. Each append now ends unknown (a 503 saying it may be recorded), and is recorded
    once."""
    sizes: list[int] = []
    via = await asyncpg.create_pool(proxy.url, min_size=1, max_size=4)
    store = EventStore(via, max_appends_in_flight=1, on_batch=sizes.append)
    ahead, a, b = uuid4(), uuid4(), uuid4()
    meta = {"actor": {"sub": "cm-1", "role": "case_manager"}, "agency": "agency-a"}

    def append(stream: UUID) -> asyncio.Task[Any]:
        return asyncio.create_task(store.append(stream, [note()], expected_version=1,
                                                agency="agency-a", metadata=meta))
    for stream in (ahead, a, b):
        await store.append(stream, [note()], expected_version=0, agency="agency-a",
                           metadata=meta)
    holds = [await asyncpg.connect(fresh_database_url) for _ in range(2)]
    try:
        for hold, stream in zip(holds, (ahead, a), strict=True):
            await hold.execute("BEGIN")
            await hold.execute("SELECT FROM records.streams WHERE stream_id = $1 FOR UPDATE",
                               stream)
        first = append(ahead)
        await until_a_session_waits_on_a_lock(holds[0])
        together = [append(a), append(b)]  # queued behind the first: the next statement
        await holds[0].execute("COMMIT")
        await first
        await until_a_session_waits_on_a_lock(holds[0])
        assert sizes[-2:] == [1, 2]
        proxy.cut()
        answers = await asyncio.gather(*together, return_exceptions=True)
        assert [(type(x), getattr(x, "version", None)) for x in answers] \
            == [(OutcomeUnknown, 2), (OutcomeUnknown, 2)]
        await holds[1].execute("COMMIT")
        for stream in (a, b):  # recorded once the head was free, and once only
            for _ in range(1000):
                if await holds[1].fetchval("SELECT version FROM records.streams"
                                           " WHERE stream_id = $1", stream) == 2:
                    break
                await asyncio.sleep(0.01)
            assert await holds[1].fetchval("SELECT count(*) FROM records.events"
                                           " WHERE stream_id = $1", stream) == 2
    finally:
        for hold in holds:
            await hold.close()
        await via.close()
