"""Refused reads in the access log: a court probing a case of the agency it was not named for
is written down (the answer stays the 404 it was), and nothing outside the agency is.

An auditor named for case A who asked for case B of the same agency got 404 and left no trace:
the refusal came before the read was logged. A supervisor reviewing the log needs to see
exactly that probe.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import FakeClock, TokenFactory, bearer
from tests.records_api import CaseApi

NOT_NAMED = "not named in the token"
OUTSIDE_WINDOW = "outside the audit window"

READS = [  # (path after the case, what the entry says)
    ("", "plan"),
    ("?as_of_version=1", "plan as_of_version=1"),
    ("/history", "history after_version=0 limit=100"),
    ("/diff?from_version=0&to_version=1", "diff from_version=0 to_version=1"),
    ("/verify", "verify"),
    ("/export?format=csv", "export format=csv"),
]


async def _entries(db: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT agency, actor_sub, actor_role, case_id::text AS case_id,"
                          " action, what, refused FROM records.access_log ORDER BY id")
    return [dict(r) for r in rows]


async def _answer(client: TestClient, path: str, token: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(path, headers=bearer(token))
    body = await response.json()
    # the parts of a problem that name this request rather than the answer
    return response.status, {k: v for k, v in body.items() if k not in ("instance",
                                                                        "request_id")}


async def _settled_log(client: TestClient, db: asyncpg.Pool, token: str) -> dict[str, Any]:
    """The access log as a supervisor exports it, once no older transaction holds it back."""
    for _ in range(1500):
        if not await db.fetchval(
                "SELECT count(*) FROM records.access_log"
                " WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())"):
            break
        await asyncio.sleep(0.02)
    response = await client.get("/v1/access-log", headers=bearer(token))
    assert response.status == 200, await response.text()
    return dict(await response.json())


@pytest.mark.parametrize(("read", "what"), READS)
async def test_an_auditor_probing_a_case_of_the_agency_it_was_not_named_for_is_logged(
        client: TestClient, cm: CaseApi, token: TokenFactory, fresh_pool: asyncpg.Pool,
        read: str, what: str) -> None:
    named, probed = await cm.open_case(), await cm.open_case()
    court = token(role="auditor", sub="court-1", cases=[named])
    made_up = str(uuid.uuid4())

    status, body = await _answer(client, f"/v1/cases/{probed}{read}", court)
    assert (status, body) == await _answer(client, f"/v1/cases/{made_up}{read}", court)
    assert status == 404  # as before: the answer does not tell that the case exists

    assert await _entries(fresh_pool) == [
        {"agency": "agency-a", "actor_sub": "court-1", "actor_role": "auditor",
         "case_id": probed, "action": "export" if read.startswith("/export") else
         "read_plan" if read == "" else "audit", "what": what, "refused": NOT_NAMED}]


async def test_another_agencys_case_and_a_made_up_id_leave_no_entry(
        client: TestClient, cm: CaseApi, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    named = await cm.open_case()
    elsewhere = await CaseApi(client, token(sub="cm-9", agency="agency-b")).open_case(
        case_manager="cm-9")
    court = token(role="auditor", sub="court-1", cases=[named])
    supervisor = token(role="supervisor", sub="sup-1")
    for case_id in (elsewhere, str(uuid.uuid4())):
        for read, _ in READS:
            for who in (court, supervisor):
                status, _body = await _answer(client, f"/v1/cases/{case_id}{read}", who)
                assert status == 404, (case_id, read)
    assert await _entries(fresh_pool) == []
    in_b = token(role="supervisor", sub="sup-9", agency="agency-b")
    assert (await _settled_log(client, fresh_pool, in_b))["entries"] == []


async def test_the_exported_log_shows_which_reads_were_refused(
        client: TestClient, cm: CaseApi, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    named, probed = await cm.open_case(), await cm.open_case()
    court = token(role="auditor", sub="court-1", cases=[named])
    supervisor = token(role="supervisor", sub="sup-1")
    assert (await client.get(f"/v1/cases/{named}", headers=bearer(court))).status == 200
    assert (await client.get(f"/v1/cases/{probed}/history",
                             headers=bearer(court))).status == 404
    assert (await client.get(f"/v1/cases/{probed}", headers=bearer(supervisor))).status == 200
    page = await _settled_log(client, fresh_pool, supervisor)
    assert [(e["actor_sub"], e["case_id"], e["refused"]) for e in page["entries"]] == [
        ("court-1", named, None), ("court-1", probed, NOT_NAMED), ("sup-1", probed, None)]
    response = await client.get(f"/v1/access-log?case_id={probed}", headers=bearer(supervisor))
    assert [e["refused"] for e in (await response.json())["entries"]] == [NOT_NAMED, None]


async def test_reads_refused_by_the_window_say_so(
        client: TestClient, cm: CaseApi, token: TokenFactory, fresh_pool: asyncpg.Pool,
        clock: FakeClock) -> None:
    """Already logged, as any named read is; the entry now also says it was refused, so a
    supervisor need not work out from the versions which answers were 403 or 404."""
    case_id = await cm.open_case()
    opened = clock.now
    for text in ("Met at the library", "Talked about the course"):
        clock.advance(days=1)
        await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": text}, expect=201)
    window = {"window_from": opened + timedelta(hours=23),  # versions 1-2
              "window_to": opened + timedelta(hours=25)}
    court = token(role="auditor", sub="court-1", cases=[case_id], **window)
    before_it = token(role="auditor", sub="court-2", cases=[case_id],
                      window_to=opened - timedelta(days=1))
    for path, who, status in [("?as_of_version=2", court, 200),
                              ("?as_of_version=3", court, 403),
                              ("/diff?from_version=0&to_version=2", court, 403),
                              ("", before_it, 404)]:
        response = await client.get(f"/v1/cases/{case_id}{path}", headers=bearer(who))
        assert response.status == status, (path, await response.text())
    assert [(e["actor_sub"], e["refused"]) for e in await _entries(fresh_pool)] == [
        ("court-1", None), ("court-1", OUTSIDE_WINDOW), ("court-1", OUTSIDE_WINDOW),
        ("court-2", OUTSIDE_WINDOW)]


async def test_refusals_of_roles_whose_reads_are_not_logged_are_not_logged_either(
        client: TestClient, cm: CaseApi, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    """A case manager's and a participant's reads are not logged (the brief logs supervisors'
    and auditors'), so neither are their refusals: the log is of one set of readers."""
    case_id = await cm.open_case()
    colleague = token(sub="cm-2")
    someone_else = token(role="participant", sub="jo", cases=[str(uuid.uuid4())])
    for who, status in ((colleague, 403), (someone_else, 404)):
        response = await client.get(f"/v1/cases/{case_id}", headers=bearer(who))
        assert response.status == status
    assert await _entries(fresh_pool) == []
