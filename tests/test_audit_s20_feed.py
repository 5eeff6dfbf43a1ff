"""Audit of the global feed, read as the author of a second subscriber (not the notifier).

design.md: "Global feed without gaps: subscribers read all events in one total order with a
checkpoint. [...] The feed must never skip or duplicate an event under concurrent appends."
README: "events an open transaction on the database server still holds back (`held_back`,
`held_back_since`); they follow, in order, once it ends."
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.common.checkpoint import Checkpoint
from services.records.store import feed
from tests.conftest import ClientFactory, TokenFactory, bearer
from tests.records_api import CaseApi


def service(token: TokenFactory) -> dict[str, str]:
    return bearer(token(role="service", sub="second-subscriber", agency="*"))


async def page(client: TestClient, headers: dict[str, str], after: str = "",
               limit: int = 100, wait: float = 0) -> dict[str, Any]:
    query = f"/v1/events?limit={limit}&wait={wait}" + (f"&after={after}" if after else "")
    response = await client.get(query, headers=headers)
    body = await response.json()
    assert response.status == 200, body
    return dict(body)


async def all_event_ids(pool: asyncpg.Pool) -> set[str]:
    return {str(r["event_id"]) for r in await pool.fetch("SELECT event_id FROM records.events")}


async def read_until(clients: list[TestClient], headers: dict[str, str], after: str,
                     expect: int, limit: int = 100) -> tuple[list[dict[str, Any]], str]:
    """Page until ``expect`` events came (30 s at most: another run's transaction on the
    server may hold the horizon back for a moment; that delays, never skips)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    n = 0
    while len(seen) < expect and time.monotonic() < deadline:
        body = await page(clients[n % len(clients)], headers, after, limit, wait=0.5)
        n += 1
        seen += body["events"]
        after = body["checkpoint"]
    return seen, after


async def test_a_limit_1_reader_across_two_instances_gets_every_event_once_in_case_order(
        make_records_client: ClientFactory, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, token: TokenFactory) -> None:
    """8 writers append to 4 cases through two instances while a reader pages with limit=1,
    alternating instances: every event once, each case's versions 1, 2, 3... in feed order."""
    clients = [await make_records_client(fresh_database_url) for _ in range(2)]
    apis = [CaseApi(c, token()) for c in clients]
    cases = [await apis[n % 2].open_case() for n in range(4)]
    headers = service(token)
    seen: list[dict[str, Any]] = []
    writing_done = asyncio.Event()

    async def follow() -> None:
        after, n = "", 0
        while True:
            finished = writing_done.is_set()
            body = await page(clients[n % 2], headers, after, limit=1, wait=0.2)
            n += 1
            assert len(body["events"]) <= 1
            seen.extend(body["events"])
            after = body["checkpoint"]
            if finished and not body["events"]:
                return

    async def writer(w: int) -> None:
        for i in range(8):
            await apis[(w + i) % 2].call("POST", f"/v1/cases/{cases[(w + i) % 4]}/notes",
                                         {"text": f"writer {w} note {i}"}, expect=201)

    reading = asyncio.create_task(follow())
    await asyncio.gather(*[writer(w) for w in range(8)])
    everything = await all_event_ids(fresh_pool)
    for _ in range(300):  # another run's transaction on this server may hold the horizon
        if len(seen) >= len(everything):
            break
        await asyncio.sleep(0.1)
    writing_done.set()
    await reading
    ids = [e["event_id"] for e in seen]
    assert len(ids) == len(set(ids)), "the feed repeated an event"
    assert set(ids) == everything, f"the feed skipped {len(everything - set(ids))} events"
    versions: dict[str, list[int]] = defaultdict(list)
    for event in seen:
        versions[event["case_id"]].append(event["version"])
    for case_id, order in versions.items():
        assert order == list(range(1, len(order) + 1)), (case_id, order)
    assert sum(len(v) for v in versions.values()) == 4 + 64


async def test_a_checkpoint_resumes_exactly_after_its_page_across_a_restart(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    first = await make_records_client(fresh_database_url)
    cm = CaseApi(first, token())
    case = await cm.open_case()
    for n in range(6):
        await cm.call("POST", f"/v1/cases/{case}/notes", {"text": f"n{n}"}, expect=201)
    headers = service(token)
    whole, _ = await read_until([first], headers, "", expect=7)
    assert [e["version"] for e in whole] == list(range(1, 8))
    pages = [await page(first, headers, limit=3, wait=5)]
    assert [e["event_id"] for e in pages[0]["events"]] == [e["event_id"] for e in whole[:3]]
    checkpoint = pages[0]["checkpoint"]
    assert checkpoint == pages[0]["events"][-1]["checkpoint"]
    await first.close()  # the records service stops

    second = await make_records_client(fresh_database_url)
    cm2 = CaseApi(second, token())
    await cm2.call("POST", f"/v1/cases/{case}/notes", {"text": "after the restart"}, expect=201)
    rest, _ = await read_until([second], headers, checkpoint, expect=5, limit=2)
    assert [e["event_id"] for e in rest[:4]] == [e["event_id"] for e in whole[3:]]
    assert [e["version"] for e in rest] == [4, 5, 6, 7, 8]
    # an event's own checkpoint resumes right after that event, too
    middle = whole[4]["checkpoint"]
    again, _ = await read_until([second], headers, middle, expect=3)
    assert [e["version"] for e in again] == [6, 7, 8]


async def test_an_open_transaction_is_reported_as_held_back_and_never_passed(
        make_records_client: ClientFactory, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, token: TokenFactory) -> None:
    """A manual transaction left open on the server (it took a transaction id) holds the
    feed; the page says how many committed events wait behind it and since when, keeps its
    checkpoint, and hands them out in order once it ends."""
    client = await make_records_client(fresh_database_url)
    cm = CaseApi(client, token())
    headers = service(token)
    case = await cm.open_case()
    before, checkpoint = await read_until([client], headers, "", expect=1)
    assert len(before) == 1

    holder = await asyncpg.connect(fresh_database_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.fetchval("SELECT pg_current_xact_id()")  # takes an id: the horizon stops
        for n in range(3):
            await cm.call("POST", f"/v1/cases/{case}/notes", {"text": f"held {n}"}, expect=201)
        history = await cm.call("GET", f"/v1/cases/{case}/history", expect=200)
        first_held = datetime.fromisoformat(history["events"][1]["recorded_at"])
        for limit, wait in [(100, 0), (1, 0), (100, 1)]:
            body = await page(client, headers, checkpoint, limit=limit, wait=wait)
            assert body["events"] == [], "the feed passed an open transaction"
            assert body["checkpoint"] == checkpoint
            assert body["held_back"] == 3, body
            assert datetime.fromisoformat(body["held_back_since"]) == first_held, body
        await held.commit()
    finally:
        await holder.close()
    after, end = await read_until([client], headers, checkpoint, expect=3)
    assert [e["version"] for e in after] == [2, 3, 4]
    caught_up = await page(client, headers, end)
    assert (caught_up["events"], caught_up["held_back"], caught_up["held_back_since"]) == (
        [], 0, None)


async def test_a_long_poll_wakes_on_another_instance_write_and_ends_empty_at_its_deadline(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    reader, writer = [await make_records_client(fresh_database_url) for _ in range(2)]
    cm = CaseApi(writer, token())
    headers = service(token)
    case = await cm.open_case()
    _, checkpoint = await read_until([reader], headers, "", expect=1)
    # nothing arrives: an empty page at the end of the wait, the same checkpoint
    quiet = await page(reader, headers, checkpoint, wait=1)
    assert (quiet["events"], quiet["checkpoint"], quiet["held_back"]) == ([], checkpoint, 0)

    async def write_soon() -> None:
        await asyncio.sleep(0.3)
        await cm.call("POST", f"/v1/cases/{case}/notes", {"text": "wake up"}, expect=201)

    started = time.monotonic()
    writing = asyncio.create_task(write_soon())
    woken = await page(reader, headers, checkpoint, wait=20)
    took = time.monotonic() - started
    await writing
    assert [e["version"] for e in woken["events"]] == [2]
    assert took < 10, f"the long-poll took {took:.1f} s of its 20 s wait"


def b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


async def test_bad_queries_are_4xx_problems(make_records_client: ClientFactory,
                                            fresh_database_url: str,
                                            token: TokenFactory) -> None:
    client = await make_records_client(fresh_database_url)
    cm = CaseApi(client, token())
    await cm.open_case()
    headers = service(token)
    events, _ = await read_until([client], headers, "", expect=1)
    good = events[0]["checkpoint"]
    queries = {
        "truncated": f"after={good[:3]}",
        "tampered-tail": f"after={good[:-1]}~",
        "negative position": f"after={b64('1:-1')}",
        "letters": f"after={b64('abc:1')}",
        "old position-only format": "after=42",
        "position-only base64": f"after={b64('42')}",
        "json format": "after=" + b64('{"tx": 1, "position": 2}'),
        "three parts": f"after={b64('1:2:3')}",
        "beyond xid8": f"after={b64('18446744073709551616:1')}",
        "huge": "after=" + "A" * 5000,
        "limit negative": "limit=-1",
        "limit huge": "limit=" + "9" * 30,
        "limit float": "limit=1.5",
        "wait nan": "wait=nan",
        "wait inf": "wait=inf",
        "wait exponent": "wait=1e2",
        "wait over the top": "wait=61",
        "wait negative zero": "wait=-0",
    }
    wrong = {}
    for name, query in queries.items():
        response = await client.get(f"/v1/events?{query}", headers=headers)
        body = await response.json(content_type=None)
        if not (400 <= response.status < 500
                and response.content_type == "application/problem+json"
                and body.get("status") == response.status):
            wrong[name] = (response.status, body)
    assert wrong == {}


async def test_a_checkpoint_from_beyond_the_servers_transactions_is_refused(
        make_records_client: ClientFactory, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, token: TokenFactory) -> None:
    """A checkpoint naming a transaction the server has not reached yet was never handed out
    (tampered, or from another cluster): accepted, every event up to that id is silently
    skipped, which the design forbids. The service says it checks 'checkpoint is not one
    this service handed out'."""
    client = await make_records_client(fresh_database_url)
    cm = CaseApi(client, token())
    await cm.open_case()
    current = int(await fresh_pool.fetchval("SELECT pg_current_xact_id()::text"))
    forged = Checkpoint(current + 10**9, 1).encode()
    response = await client.get(f"/v1/events?after={forged}", headers=service(token))
    body = await response.json()
    assert response.status == 400, (
        f"a checkpoint {10**9} transactions in the future was accepted: {body}")
    assert response.content_type == "application/problem+json"


async def test_the_access_log_refuses_a_checkpoint_from_beyond_the_servers_transactions(
        make_records_client: ClientFactory, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, token: TokenFactory) -> None:
    """The access log pages in commit order with the same checkpoints: the same refusal."""
    client = await make_records_client(fresh_database_url)
    current = int(await fresh_pool.fetchval("SELECT pg_current_xact_id()::text"))
    forged = Checkpoint(current + 10**9, 1).encode()
    response = await client.get(f"/v1/access-log?after={forged}", headers=bearer(token(
        role="supervisor", sub="sup-1")))
    assert response.status == 400, await response.text()
    assert (await response.json())["type"].endswith("/bad-checkpoint")


async def test_the_feed_refuses_an_anonymous_or_windowed_reader(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    client = await make_records_client(fresh_database_url)
    anonymous = await client.get("/v1/events")
    assert anonymous.status == 401
    windowed = await client.get("/v1/events", headers=bearer(token(
        role="service", sub="s", agency="*", window_to=datetime(2100, 1, 1, tzinfo=UTC))))
    assert 400 <= windowed.status < 500
    assert windowed.content_type == "application/problem+json"


async def test_each_feed_event_is_the_recorded_event_with_its_agency(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    """Compared with the case's history: same event id, version, type, schema version, data,
    time and hash; and the agency of the case it belongs to."""
    client = await make_records_client(fresh_database_url)
    teams = {agency: CaseApi(client, token(sub=f"cm-{agency}", agency=agency))
             for agency in ("agency-a", "agency-b")}
    cases: dict[str, str] = {}
    for agency, cm in teams.items():
        case = await cm.open_case(case_manager=f"cm-{agency}")
        goal = await cm.goal(case)
        await cm.step(case, goal)
        await cm.call("POST", f"/v1/cases/{case}/notes", {"text": f"a note in {agency}"},
                      expect=201)
        cases[case] = agency
    events, _ = await read_until([client], service(token), "", expect=8)
    assert len(events) == 8
    history = {case: {e["event_id"]: e for e in (await teams[agency].call(
        "GET", f"/v1/cases/{case}/history", expect=200))["events"]}
        for case, agency in cases.items()}
    for event in events:
        assert event["case_id"] == event["stream_id"]
        assert event["agency"] == cases[event["case_id"]]
        recorded = history[event["case_id"]][event["event_id"]]
        for field in ("version", "type", "schema_version", "data", "hash"):
            assert event[field] == recorded[field], (field, event, recorded)
        assert (datetime.fromisoformat(event["recorded_at"])
                == datetime.fromisoformat(recorded["recorded_at"]))
        assert event["metadata"]["actor"]["sub"] == recorded["actor"]
        assert Checkpoint.decode(event["checkpoint"]).position == event["global_position"]


async def test_a_page_and_its_held_back_count_come_from_one_moment(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The open transaction ends between the page's read and its held-back count: the
    events it released must be on the page or counted as held back, not in neither (a page
    that says 'caught up, nothing held back' while 3 committed events follow it). The
    access log reads both in one snapshot for this reason (services/common/checkpoint.py,
    access_log_page: 'read apart, an entry the transaction released in between was in
    neither'); a subscriber's lag reads 0 while it is behind."""
    client = await make_records_client(fresh_database_url)
    cm = CaseApi(client, token())
    headers = service(token)
    case = await cm.open_case()
    _, checkpoint = await read_until([client], headers, "", expect=1)
    holder = await asyncpg.connect(fresh_database_url)
    held = holder.transaction()
    await held.start()
    await holder.fetchval("SELECT pg_current_xact_id()")
    for n in range(3):
        await cm.call("POST", f"/v1/cases/{case}/notes", {"text": f"held {n}"}, expect=201)
    read_events = feed._read_events

    async def read_then_release(*args: Any) -> Any:
        result = await read_events(*args)
        if holder.is_in_transaction():
            await held.commit()  # the transaction ends right after the page was read
        return result

    monkeypatch.setattr(feed, "_read_events", read_then_release)
    try:
        body = await page(client, headers, checkpoint, wait=0)
    finally:
        if holder.is_in_transaction():
            await held.rollback()
        await holder.close()
    assert len(body["events"]) + body["held_back"] == 3, (
        f"3 committed events follow the checkpoint; the page hands out {len(body['events'])}"
        f" and says {body['held_back']} are held back")
