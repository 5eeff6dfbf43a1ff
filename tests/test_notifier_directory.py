"""The notifier's directory keeps staff and participants apart: user ids come from the identity
provider, and a participant's may be the very id a staff member has (numbered from 1 in each
system, say). Real notifier API over HTTP, real records service, real PostgreSQL and SMTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.notifier.http.app import migrate as migrate_notifier
from tests.conftest import FakeClock, TokenFactory, bearer
from tests.notifier_helpers import NotifierRig, Records, SmtpServer, make_rig
from tests.test_audit_upgrade_releases import RELEASES, _database_holding, _dump

PARTICIPANTS_OWN = "their.own@example.net"
JOS_CASE = "6f1c1c55-93e4-4f57-bb8e-2a4f3f1f7a10"


async def preferences(rig: NotifierRig, token: str, path: str = "/v1/preferences/cm-1") -> Any:
    response = await rig.client.get(path, headers=bearer(token))
    assert response.status == 200, await response.text()
    return await response.json()


@pytest.mark.parametrize("first", ["staff", "participant"])
async def test_a_participant_whose_id_is_a_staff_members_never_takes_over_their_entry(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory,
        first: str) -> None:
    case = await records.open_case()
    manager = token()
    participant = token(role="participant", sub="cm-1", cases=[case])
    settings = [(manager, {}), (participant, {"email": PARTICIPANTS_OWN})]
    for who, extra in settings if first == "staff" else settings[::-1]:
        await rig.set_prefs("cm-1", who, **extra)
    staff = await preferences(rig, manager)
    assert (staff["role"], staff["email"]) == ("case_manager", "cm-1@example.org")
    own = await preferences(rig, participant)
    assert (own["role"], own["email"], own["cases"]) == ("participant", PARTICIPANTS_OWN,
                                                         [case])
    await records.achieve(case, await records.goal(case))
    await rig.catch_up()
    await rig.dispatch()
    assert sorted(m["To"] for m in smtp.received) == ["cm-1@example.org", PARTICIPANTS_OWN]


async def test_a_supervisor_names_which_of_two_entries_under_one_id_they_mean(
        rig: NotifierRig, token: TokenFactory) -> None:
    supervisor = token(role="supervisor", sub="sup-1")
    participant = token(role="participant", sub="cm-1", cases=[JOS_CASE])
    await rig.set_prefs("cm-1", token())
    await rig.set_prefs("cm-1", participant, email=PARTICIPANTS_OWN)
    assert (await preferences(rig, supervisor))["role"] == "case_manager"  # staff first
    theirs = await preferences(rig, supervisor, "/v1/preferences/cm-1?role=participant")
    assert (theirs["email"], theirs["cases"]) == (PARTICIPANTS_OWN, [JOS_CASE])
    answer = await rig.client.put("/v1/preferences/cm-1", headers=bearer(supervisor), json={
        "email": "new.inbox@example.net", "delivery": "immediate", "timezone": "UTC",
        "celebrations": False, "role": "participant"})
    assert answer.status == 200, await answer.text()
    assert (await preferences(rig, participant))["email"] == "new.inbox@example.net"
    assert (await preferences(rig, token()))["email"] == "cm-1@example.org"
    for who, role in ((participant, "case_manager"), (supervisor, "auditor")):
        refused = await rig.client.get(f"/v1/preferences/cm-1?role={role}",
                                       headers=bearer(who))
        assert refused.status == 422, await refused.text()
        assert (await refused.json())["errors"][0]["field"] == "query.role"


@pytest.fixture
def upgraded_database_url(postgres_server_url: str) -> Iterator[str]:
    """A database the tenth session's services wrote (staff entries in the old directory),
    plus a participant's entry of that shape, not yet migrated by this code."""
    [tenth] = [r for r in RELEASES if r.name == "release-2026-12-06-tenth-session"]
    jo = (f"INSERT INTO notifier.directory VALUES ('agency-a', 'jo', 'participant',"
          f" 'jo@example.org', 'immediate', 'UTC', NULL, NULL, true, '{{{JOS_CASE}}}', 'jo',"
          f" '2026-12-06 10:09:00+00');")
    yield from _database_holding(postgres_server_url, "casetrail_directory",
                                 _dump(tenth) + "\n" + jo)


async def test_an_upgrade_keeps_every_entry_and_a_participant_then_gets_one_of_their_own(
        aiohttp_client: Callable[..., Awaitable[TestClient]], upgraded_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock, token: TokenFactory) -> None:
    before = await _entries(upgraded_database_url)
    assert await migrate_notifier(upgraded_database_url) == [
        "0006_step_owner.sql", "0007_directory_kinds.sql", "0008_access_log.sql",
        "0009_handed_on_status.sql", "0010_recalled_at.sql"]
    after = await _entries(upgraded_database_url)
    assert [{k: v for k, v in e.items() if k != "kind"} for e in after] == before
    assert {(e["user_id"], e["kind"]) for e in after} == {
        ("cm-1", "staff"), ("cm-2", "staff"), ("sup-1", "staff"), ("cm-9", "staff"),
        ("jo", "participant")}
    rig = await make_rig(aiohttp_client, upgraded_database_url, records.client, smtp, clock)
    # a case of their own: Jo's is on Jo's entry, and a case reaches one participant
    await rig.set_prefs("cm-1", token(role="participant", sub="cm-1", cases=[str(uuid4())]),
                        email=PARTICIPANTS_OWN)
    staff = await preferences(rig, token())
    assert (staff["role"], staff["email"]) == ("case_manager", "cm-1@example.org")
    jo = await preferences(rig, token(role="participant", sub="jo", cases=[JOS_CASE]),
                           "/v1/preferences/jo")
    assert (jo["email"], jo["cases"]) == ("jo@example.org", [JOS_CASE])


async def _entries(database_url: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT * FROM notifier.directory ORDER BY agency, user_id")
    finally:
        await conn.close()
    return [dict(r) for r in rows]


@pytest.mark.parametrize(("query", "status"), [
    ("role=", 422), ("role=Participant", 422), ("role=participant&role=supervisor", 400),
    ("role=%00participant", 400), ("colour=red", 422), ("role=" + "x" * 5000, 422)])
async def test_a_role_query_that_names_no_entry_is_a_clear_4xx(
        rig: NotifierRig, token: TokenFactory, query: str, status: int) -> None:
    supervisor = token(role="supervisor", sub="sup-1")
    await rig.set_prefs("cm-1", token())
    refused = await rig.client.get(f"/v1/preferences/cm-1?{query}", headers=bearer(supervisor))
    assert refused.status == status, await refused.text()
    assert refused.content_type == "application/problem+json"


async def entry_count(rig: NotifierRig) -> int:
    count: int = await rig.notifier.pool.fetchval("SELECT count(*) FROM notifier.directory")
    return count


@pytest.mark.parametrize("who", ["supervisor", "participant naming no case"])
async def test_a_participant_entry_naming_no_case_is_refused_and_stores_nothing(
        rig: NotifierRig, token: TokenFactory, who: str) -> None:
    """A participant hears only of their own case's milestones: an entry with no case could
    never be sent anything, yet said they had opted in."""
    caller, body = ((token(role="supervisor", sub="sup-1"), {"role": "participant", "cases": []})
                    if who == "supervisor" else (token(role="participant", sub="jo", cases=[]), {}))
    response = await rig.client.put("/v1/preferences/jo", headers=bearer(caller), json={
        "email": PARTICIPANTS_OWN, "delivery": "immediate", "timezone": "UTC",
        "celebrations": True, **body})
    problem = await response.json()
    assert response.status == 422, problem
    assert [e["field"] for e in problem["errors"]] == ["body.cases"]
    assert await entry_count(rig) == 0


async def test_a_case_named_twice_is_stored_once(rig: NotifierRig, token: TokenFactory) -> None:
    participant = token(role="participant", sub="jo", cases=[JOS_CASE])
    stored = await rig.set_prefs("jo", participant, cases=[JOS_CASE, JOS_CASE])
    assert stored["cases"] == [JOS_CASE]
    assert (await preferences(rig, participant, "/v1/preferences/jo"))["cases"] == [JOS_CASE]


async def test_reading_someone_elses_preferences_is_refused_saying_reading(
        rig: NotifierRig, token: TokenFactory) -> None:
    await rig.set_prefs("cm-2", token(sub="cm-2"))
    response = await rig.client.get("/v1/preferences/cm-2", headers=bearer(token()))
    problem = await response.json()
    assert response.status == 403, problem
    assert "read and set your own" in problem["detail"], problem
