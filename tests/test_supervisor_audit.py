"""Auditing a plan's history as a supervisor or a court does: the access log they export
says when it is not complete yet, a request past the end of the record is answered without
leaving an entry that says the record was read, and a token limited to a time window does
not list cases as they are now."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.records.application import queries
from services.records.http.app import RECORDS
from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.pg_waits import held_back_entries, until_nothing_held_back, until_waiters_queued
from tests.records_api import CaseApi


async def _log_rows(db: asyncpg.Pool) -> list[str]:
    return [row["what"] for row in
            await db.fetch("SELECT what FROM records.access_log ORDER BY id")]


async def _export_log(client: TestClient, supervisor: str) -> dict[str, Any]:
    response = await client.get("/v1/access-log", headers=bearer(supervisor))
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def test_an_access_log_page_held_back_by_an_open_transaction_says_so(
        cm: CaseApi, client: TestClient, token: TokenFactory, clock: FakeClock,
        fresh_pool: asyncpg.Pool) -> None:
    """The log is handed out only up to the oldest open transaction on the server, so that
    paging never skips an entry. A page caught up with that horizon answered `next_after:
    null` and nothing else: a supervisor exporting the log for a court while any write
    transaction was open took an export missing the latest reads for a complete one."""
    supervisor = token(role="supervisor", sub="sup-1")
    case_id = await cm.open_case()
    async with fresh_pool.acquire() as held, held.transaction():
        await held.execute("SELECT pg_current_xact_id()")  # an open write transaction
        clock.advance(minutes=5)
        await cm.call("GET", f"/v1/cases/{case_id}", token=supervisor, expect=200)
        page = await _export_log(client, supervisor)
        assert (page["entries"], page["next_after"]) == ([], None)
        assert (page["held_back"], page["held_back_since"]) == (1, "2026-03-02T09:05:00Z")
    await until_nothing_held_back(fresh_pool)
    page = await _export_log(client, supervisor)
    assert [e["what"] for e in page["entries"]] == ["plan"]
    assert (page["held_back"], page["held_back_since"]) == (0, None)


async def test_a_full_page_does_not_count_what_is_held_back(
        cm: CaseApi, client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    """Counting is for a page that caught up: a full page says where to go on instead."""
    supervisor = token(role="supervisor", sub="sup-1")
    case_id = await cm.open_case()
    for _ in range(3):
        await cm.call("GET", f"/v1/cases/{case_id}", token=supervisor, expect=200)
    await until_nothing_held_back(fresh_pool)
    response = await client.get("/v1/access-log?limit=2", headers=bearer(supervisor))
    page = await response.json()
    assert (len(page["entries"]), page["held_back"]) == (2, 0)
    assert page["next_after"] is not None


PAST_THE_RECORD = [  # (read past the latest version, 1, of a new case; the parameter named)
    ("?as_of_version=2", "as_of_version"),
    ("/diff?from_version=0&to_version=2", "to_version"),
    ("/diff?from_version=3&to_version=9", "to_version"),
]


@pytest.mark.parametrize(("read", "parameter"), PAST_THE_RECORD)
async def test_a_read_past_the_latest_version_is_answered_and_logs_nothing(
        cm: CaseApi, client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool,
        read: str, parameter: str) -> None:
    """A supervisor asking for a version the case does not have yet gets a 422 naming the
    latest one; the access log took it down as a read let through (`plan as_of_version=2`,
    refused null), which tells whoever reviews the log that version 2 was shown."""
    supervisor = token(role="supervisor", sub="sup-1")
    case_id = await cm.open_case()
    response = await client.get(f"/v1/cases/{case_id}{read}", headers=bearer(supervisor))
    problem = await response.json()
    assert response.status == 422, problem
    assert problem["type"].endswith("/version-out-of-range")
    assert problem["current_version"] == 1
    assert [e["field"] for e in problem["errors"]] == [f"query.{parameter}"]
    assert await _log_rows(fresh_pool) == []
    await cm.call("GET", f"/v1/cases/{case_id}?as_of_version=1", token=supervisor, expect=200)
    assert await _log_rows(fresh_pool) == ["plan as_of_version=1"]


async def test_a_pdf_refused_as_too_long_logs_no_export(
        cm: CaseApi, client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An export refused before a byte of it was sent is not an export to log."""
    monkeypatch.setattr(queries, "MAX_PDF_EVENTS", 2)
    supervisor = token(role="supervisor", sub="sup-1")
    case_id = await cm.open_case()
    await cm.strength(case_id)
    await cm.goal(case_id)
    response = await client.get(f"/v1/cases/{case_id}/export?format=pdf",
                                headers=bearer(supervisor))
    problem = await response.json()
    assert response.status == 422, problem
    assert problem["type"].endswith("/export-too-large")
    assert await _log_rows(fresh_pool) == []
    response = await client.get(f"/v1/cases/{case_id}/export?format=csv",
                                headers=bearer(supervisor))
    assert response.status == 200
    await response.read()
    assert await _log_rows(fresh_pool) == ["export format=csv"]


async def test_a_token_with_a_window_does_not_list_the_caseload_as_it_is_now(
        cm: CaseApi, client: TestClient, token: TokenFactory, clock: FakeClock) -> None:
    """A window narrows any token that carries one (decision 0006). The listing ignored it:
    a supervisor token whose window closed before a case was opened listed that case, its
    participant and its progress today, while reading the case itself answered 404."""
    start = clock.now
    clock.advance(days=1)
    case_id = await cm.open_case()
    windowed = token(role="supervisor", sub="sup-1", window_to=start)
    response = await client.get(f"/v1/cases/{case_id}", headers=bearer(windowed))
    assert response.status == 404
    response = await client.get("/v1/cases", headers=bearer(windowed))
    problem = await response.json()
    assert response.status == 403, problem
    assert "window" in problem["detail"]
    listing = await cm.call("GET", "/v1/cases", token=token(role="supervisor", sub="sup-1"),
                            expect=200)
    assert [case["case_id"] for case in listing["cases"]] == [case_id]


async def test_an_access_log_page_never_says_complete_while_missing_an_entry(
        make_records_client: ClientFactory, fresh_database_url: str, fresh_pool: asyncpg.Pool,
        token: TokenFactory, clock: FakeClock) -> None:
    """docs/decisions/0006: "The log is complete through now only when held_back is 0".
    The page's entries and its held_back were read by two statements, each with a snapshot of
    its own: an entry committed before the request, held back by an older transaction when
    the entries were read, and released when that transaction ended before held_back was
    counted, was in neither, and the page said it was the whole log without it (a review
    found it). Here the old transaction ends while the request waits for the pool's one
    connection a second time, as it did between the two statements; both now come from one
    snapshot, taken before."""
    client = await make_records_client(fresh_database_url, clock=clock,
                                       CASETRAIL_DB_POOL_MAX="1")
    cm = CaseApi(client, token())
    supervisor = token(role="supervisor", sub="sup-1")
    case_id = await cm.open_case()
    await until_nothing_held_back(fresh_pool)
    app_pool = client.app[RECORDS].pool
    older = await fresh_pool.acquire()
    try:
        open_transaction = older.transaction()
        await open_transaction.start()
        await older.execute("SELECT pg_current_xact_id()")  # a write transaction, open
        await cm.call("GET", f"/v1/cases/{case_id}", token=supervisor, expect=200)
        assert await held_back_entries(fresh_pool) == 1  # the supervisor's read, committed
        only_connection = await app_pool.acquire()
        request = asyncio.create_task(client.get("/v1/access-log", headers=bearer(supervisor)))
        await until_waiters_queued(app_pool, 1)  # the request's list_entries
        between = asyncio.ensure_future(app_pool.acquire())
        await until_waiters_queued(app_pool, 2)
        await app_pool.release(only_connection)
        connection = await between  # list_entries has run: the entry was held back then
        await open_transaction.commit()
        await until_nothing_held_back(fresh_pool)
        await app_pool.release(connection)  # now held_back is counted
        response = await request
        page = await response.json()
    finally:
        await fresh_pool.release(older)
    assert response.status == 200, page
    assert page["next_after"] is None
    said_complete = page["held_back"] == 0
    assert not (said_complete and page["entries"] == []), (
        "the page says it is the whole log (held_back 0) and leaves out the supervisor's"
        f" read committed before it was asked for: {page}")
