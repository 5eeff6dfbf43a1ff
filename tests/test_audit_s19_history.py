"""Audit (session 19) of history and time travel, read as a supervisor auditing a plan and a
court checking it would: boundary points in time, clocks that disagree, paging while writes
land, and what the access log says was read."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.records_api import CaseApi


async def _plan_at(client: TestClient, case_id: str, token: str,
                   as_of: str) -> tuple[int, str | None]:
    response = await client.get(f"/v1/cases/{case_id}", params={"as_of": as_of},
                                headers=bearer(token))
    return response.status, response.headers.get("ETag")


@pytest.mark.parametrize("role", ["supervisor", "auditor"])
async def test_the_plan_as_of_a_time_still_to_come_is_refused_and_not_logged(
        cm: CaseApi, client: TestClient, token: TokenFactory, fresh_database_url: str,
        role: str) -> None:
    """A court asks for the plan as of a date still to come (a hearing next week). It was
    answered with the current plan as if that were the plan on that date, and the same
    question asked after the next write answered another plan; the access log recorded both
    reads as the same `plan as_of=…`, so nobody could tell afterwards what was shown. Now
    422, as any point the record cannot answer, and not logged (0006)."""
    case_id = await cm.open_case()  # 2026-03-02 09:00Z, the service's now
    reader = token(role=role, sub=f"{role}-1", cases=[case_id])  # the auditor's window: to 2100
    for tomorrow in ("2026-03-03T09:00:00Z", "2026-03-02T09:00:00.000001Z"):
        response = await client.get(f"/v1/cases/{case_id}", params={"as_of": tomorrow},
                                    headers=bearer(reader))
        problem = await response.json()
        assert response.status == 422, problem
        assert problem["type"].endswith("/as-of-in-the-future")
        assert problem["errors"][0]["field"] == "query.as_of"
    assert await _plan_at(client, case_id, reader, "2026-03-02T09:00:00Z") == (200, '"1"')
    db = await asyncpg.connect(fresh_database_url)
    try:
        logged = await db.fetch("SELECT what FROM records.access_log WHERE case_id = $1",
                                case_id)
    finally:
        await db.close()
    assert [row["what"].split(" window_versions=")[0] for row in logged] \
        == ["plan as_of=2026-03-02T09:00:00+00:00"]


async def test_a_time_before_the_plan_existed_names_a_time_that_answers(
        cm: CaseApi, client: TestClient, clock: FakeClock, token: TokenFactory) -> None:
    """Instances stamp events with their own clocks (decision 0002): opened on one running
    fast (09:30), written next on one with the right time (09:10). As of 09:15 the plan
    is answered, yet as of 09:05 the 404 said "opened at 09:30 ... ask for as_of from then
    on", sending a supervisor (or a court whose window ends at 09:20, to a 403) past the
    first moment that has an answer."""
    supervisor = token(role="supervisor", sub="sup-1")
    clock.advance(minutes=30)
    case_id = await cm.open_case()  # 09:30
    clock.advance(minutes=-20)
    await cm.strength(case_id)  # 09:10
    clock.advance(hours=1)  # read later
    assert await _plan_at(client, case_id, supervisor, "2026-03-02T09:15:00Z") == (200, '"2"')
    response = await client.get(f"/v1/cases/{case_id}?as_of=2026-03-02T09:05:00Z",
                                headers=bearer(supervisor))
    problem = await response.json()
    assert (response.status, problem["type"].rsplit("/", 1)[1]) == (404, "not-yet-opened")
    named = datetime.fromisoformat(re.findall(r"\d{4}-\d\d-\d\dT[0-9:.]+\+00:00",
                                              problem["detail"])[0])
    assert named <= datetime.fromisoformat("2026-03-02T09:15:00+00:00"), problem["detail"]


async def test_a_time_before_the_case_opened_is_not_logged_as_a_plan_read(
        cm: CaseApi, client: TestClient, token: TokenFactory, fresh_database_url: str) -> None:
    """Decision 0006: a read the record cannot answer is bad input and is not logged (a
    version past the latest was logged as `plan as_of_version=5`, refused null, for a
    supervisor shown nothing). As of a time before the case opened nothing is shown either
    (404 not-yet-opened), yet the log says the plan as of then was read."""
    case_id = await cm.open_case()
    supervisor = token(role="supervisor", sub="sup-1")
    assert await _plan_at(client, case_id, supervisor, "2020-01-01T00:00:00Z") == (404, None)
    db = await asyncpg.connect(fresh_database_url)
    try:
        shown = await db.fetch(
            "SELECT what FROM records.access_log WHERE case_id = $1 AND refused IS NULL",
            case_id)
    finally:
        await db.close()
    assert [row["what"] for row in shown] == [], "logged as a plan shown"


@pytest.mark.parametrize(("as_of", "version"), [
    ("2026-03-02T10:00:00Z", 2),  # exactly the event's stamp: included
    ("2026-03-02T15:45:00+05:45", 2),  # the same instant, written in Kathmandu
    ("2026-03-02T00:30:00-09:30", 2),  # and in the Marquesas
    ("2026-03-02T09:59:59.999999Z", 1),
    ("2026-03-02T09:59:59.9999999Z", 1),  # nanoseconds are cut, never rounded up into 10:00
    ("2026-03-02T10:59:59.999999999+01:00", 1),
])
async def test_as_of_at_an_events_stamp_in_any_offset_and_precision(
        cm: CaseApi, client: TestClient, clock: FakeClock, as_of: str, version: int) -> None:
    case_id = await cm.open_case()  # 09:00Z
    clock.advance(hours=1)
    await cm.strength(case_id)  # 10:00Z
    assert await _plan_at(client, case_id, cm.token, as_of) == (200, f'"{version}"')


async def test_history_paged_while_two_instances_write_never_skips_or_repeats(
        make_records_client: ClientFactory, fresh_database_url: str,
        token: TokenFactory) -> None:
    """Writes land between pages (on two instances, group-committed): following
    next_after_version, then polling from the last version seen, reads every version once."""
    writers = [CaseApi(await make_records_client(fresh_database_url), token())
               for _ in range(2)]
    reader = CaseApi(await make_records_client(fresh_database_url),
                     token(role="supervisor", sub="sup-1"))
    case_id = await writers[0].open_case()

    async def write(api: CaseApi, n: int) -> None:
        for i in range(n):
            await api.call("POST", f"/v1/cases/{case_id}/notes", {"text": f"week {i}"},
                           expect=201)

    done = asyncio.gather(*(write(api, 25) for api in writers))
    seen: list[int] = []
    after, pages_while_writing = 0, 0
    while True:
        finished = done.done()
        pages_while_writing += not finished
        page = await reader.call("GET", f"/v1/cases/{case_id}/history?after_version={after}"
                                        "&limit=3", expect=200)
        seen += [event["version"] for event in page["events"]]
        after = seen[-1] if seen else 0
        if finished and page["next_after_version"] is None:
            break
        await asyncio.sleep(0)
    await done
    assert pages_while_writing > 5  # the writes did land between pages
    assert seen == list(range(1, 52))
