"""Every role by every case endpoint: who may read, audit and write, and tenancy (404)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, TokenFactory, bearer
from tests.records_api import CaseApi, event_count


@dataclass
class Case:
    id: str
    strength: str
    goal: str
    step: str
    support: str
    requirement: str
    review: str


async def build_case(cm: CaseApi) -> Case:
    case_id = await cm.open_case()
    strength = await cm.strength(case_id)
    goal = await cm.goal(case_id)
    step = await cm.step(case_id, goal)
    support = (await cm.call("POST", f"/v1/cases/{case_id}/supports", {"name": "Coach Lee"},
                             expect=201))["id"]
    requirement = (await cm.call("POST", f"/v1/cases/{case_id}/requirements",
                                 {"title": "Report monthly"}, expect=201))["id"]
    await cm.agree(case_id)
    review = (await cm.plan(case_id))["next_review"]["review_id"]
    return Case(case_id, strength, goal, step, support, requirement, review)


READS = ["GET {c}", "GET {c}/history", "GET {c}/diff?from_version=1&to_version=2",
         "GET {c}/verify", "GET {c}?as_of_version=1", "GET {c}/export",
         "GET {c}/export?format=csv", "GET {c}/export?format=pdf"]
WRITES: list[tuple[str, dict[str, Any] | None]] = [
    ("PATCH {c}/participant", {"pronouns": "she/her"}),
    ("POST {c}/strengths", {"category": "interest", "description": "Chess"}),
    ("PATCH {c}/strengths/{strength}", {"description": "Fixes bikes and scooters"}),
    ("DELETE {c}/strengths/{strength}", {"reason": "duplicate"}),
    ("POST {c}/goals", {"title": "Housing", "domain": "housing", "source": "agency"}),
    ("PATCH {c}/goals/{goal}", {"why_it_matters": "For my kids"}),
    ("POST {c}/goals/{goal}/status", {"status": "paused", "reason": "Jo needs a break"}),
    ("POST {c}/goals/{goal}/steps", {"description": "Call the landlord", "owner": "participant"}),
    ("PATCH {c}/steps/{step}", {"due_date": "2026-04-01"}),
    ("POST {c}/steps/{step}/status", {"status": "in_progress"}),
    ("POST {c}/steps/{step}/complete", {}),
    ("POST {c}/supports", {"name": "Uncle Ray"}),
    ("DELETE {c}/supports/{support}", {"reason": "moved away"}),
    ("POST {c}/requirements", {"title": "Community service 40h"}),
    ("POST {c}/requirements/{requirement}/status", {"status": "in_progress"}),
    ("POST {c}/agreements", {"participation": "phone", "present": ["Jo"],
                             "participant_statement": "Still agree", "outcome": "agreed"}),
    ("POST {c}/reviews/{review}/held", {"summary": "Good progress"}),
    ("POST {c}/reviews/{review}/reschedule", {"due_date": "2030-04-20",
                                               "reason": "Jo is on shift"}),
    ("POST {c}/notes", {"text": "Met at the library"}),
    ("POST {c}/transfer", {"case_manager": "cm-9", "reason": "caseload balance"}),
    ("POST {c}/close", {"reason": "Plan complete"}),
    ("POST {c}/reopen", {"reason": "Jo asked to return"}),
]

# who → (read plan, audit reads, writes, transfer)
PRINCIPALS: dict[str, tuple[dict[str, Any], int, int, int, int]] = {
    "owner": ({"sub": "cm-1"}, 200, 200, 0, 0),
    "other case manager": ({"sub": "cm-2"}, 403, 403, 403, 403),
    "supervisor": ({"role": "supervisor", "sub": "sup-1"}, 200, 200, 403, 0),
    "auditor named": ({"role": "auditor", "sub": "court-1", "cases": "{c}"}, 200, 200, 403, 403),
    "auditor not named": ({"role": "auditor", "sub": "court-1"}, 404, 404, 404, 404),
    "analyst": ({"role": "analyst", "sub": "an-1"}, 403, 403, 403, 403),
    "participant own": ({"role": "participant", "sub": "p-1", "cases": "{c}"}, 200, 403, 403,
                        403),
    "participant other": ({"role": "participant", "sub": "p-2"}, 404, 404, 404, 404),
    "service": ({"role": "service", "sub": "notifier"}, 403, 403, 403, 403),
    "other agency supervisor": ({"role": "supervisor", "sub": "sup-x", "agency": "agency-b"},
                                404, 404, 404, 404),
    "other agency case manager": ({"sub": "cm-1", "agency": "agency-b"}, 404, 404, 404, 404),
}


def _path(template: str, case: Case) -> str:
    return template.format(c=f"/v1/cases/{case.id}", **{k: v for k, v in vars(case).items()
                                                        if k != "id"})


def _token(token: TokenFactory, spec: dict[str, Any], case: Case) -> str:
    claims = dict(spec)
    if "cases" in claims:
        claims["cases"] = [case.id]
    return token(**claims)


@pytest.fixture
async def client(make_records_client: ClientFactory, fresh_database_url: str) -> TestClient:
    return await make_records_client(fresh_database_url)


@pytest.fixture
async def db(fresh_database_url: str) -> Any:
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


@pytest.mark.parametrize("who", sorted(PRINCIPALS))
async def test_role_matrix(client: TestClient, token: TokenFactory, db: asyncpg.Pool,
                           who: str) -> None:
    owner = CaseApi(client, token(sub="cm-1"))
    case = await build_case(owner)
    spec, read, audit, write, transfer = PRINCIPALS[who]
    headers = bearer(_token(token, spec, case))
    for template in READS:
        response = await client.get(_path(template.split(" ", 1)[1], case), headers=headers)
        expected = read if template == "GET {c}" else audit
        assert response.status == expected, (who, template, await response.text())
    for template, body in WRITES:
        target = case if write or transfer else await build_case(owner)
        method, path = template.split(" ", 1)
        before = await event_count(db)
        response = await client.request(method, _path(path, target), json=body,
                                        headers=headers)
        # reopening, as transferring, says who holds the case, not what the plan says
        expected = transfer if path.endswith(("/transfer", "/reopen")) else write
        if template == "POST {c}/reopen" and expected == 0:
            expected = 409  # the case is open: reopening it is refused on its merits
        if expected == 0:
            assert response.status < 300, (who, template, await response.text())
        else:
            assert response.status == expected, (who, template, await response.text())
            assert await event_count(db) == before, (who, template)
        assert response.content_type in {"application/json", "application/problem+json"}


@pytest.mark.parametrize(("who", "expected"), [
    ({"sub": "cm-1"}, 201), ({"sub": "cm-2"}, 403), ({"role": "supervisor"}, 201),
    ({"role": "auditor"}, 403), ({"role": "analyst"}, 403), ({"role": "participant"}, 403),
    ({"role": "service"}, 403),
])
async def test_who_may_open_a_case_for_cm_1(client: TestClient, token: TokenFactory,
                                            who: dict[str, Any], expected: int) -> None:
    response = await client.post("/v1/cases", json={
        "participant": {"name": "Ana"}, "case_manager": "cm-1", "risk_level": "low"},
        headers=bearer(token(**who)))
    assert response.status == expected, await response.text()


@pytest.mark.parametrize(("who", "expected"), [
    ({"sub": "cm-1"}, 200), ({"role": "supervisor"}, 200), ({"role": "auditor"}, 403),
    ({"role": "analyst"}, 403), ({"role": "participant"}, 403), ({"role": "service"}, 403),
])
async def test_who_may_list_caseloads(client: TestClient, token: TokenFactory,
                                      who: dict[str, Any], expected: int) -> None:
    response = await client.get("/v1/cases", headers=bearer(token(**who)))
    assert response.status == expected


async def test_case_managers_list_only_their_own_caseload(client: TestClient,
                                                          token: TokenFactory) -> None:
    response = await client.get("/v1/cases?case_manager=cm-2", headers=bearer(token()))
    assert response.status == 403


async def test_an_auditors_write_is_refused_without_reading_the_case(
        client: TestClient, token: TokenFactory, db: asyncpg.Pool) -> None:
    """The answer comes from the token alone: a case whose events this code cannot read (one
    of a newer schema) still answers the auditor 403, where reading it would fail."""
    from uuid import UUID, uuid4

    case_id = await CaseApi(client, token(sub="cm-1")).open_case()
    await db.execute(
        "INSERT INTO records.events (stream_id, version, event_id, type, schema_version, data,"
        " metadata, agency, recorded_at, prev_hash, hash) VALUES ($1, 2, $2, 'NoteAdded', 99,"
        " '{}', '{}', 'agency-a', now(), '', '')", UUID(case_id), uuid4())
    await db.execute("UPDATE records.streams SET version = 2 WHERE stream_id = $1",
                     UUID(case_id))
    auditor = token(role="auditor", sub="court-1", cases=[case_id])
    response = await client.post(f"/v1/cases/{case_id}/notes", json={"text": "hello"},
                                 headers=bearer(auditor))
    assert response.status == 403, await response.text()


async def test_supervisor_and_auditor_reads_are_logged(client: TestClient, token: TokenFactory,
                                                       db: asyncpg.Pool) -> None:
    owner = CaseApi(client, token(sub="cm-1"))
    case_id = await owner.open_case()
    await owner.plan(case_id)
    await client.get(f"/v1/cases/{case_id}", headers=bearer(token(role="supervisor",
                                                                  sub="sup-1")))
    await client.get(f"/v1/cases/{case_id}/history",
                     headers=bearer(token(role="auditor", sub="court-1", cases=[case_id])))
    rows = await db.fetch("SELECT actor_sub, action FROM records.access_log ORDER BY id")
    assert [(r["actor_sub"], r["action"]) for r in rows] == [("sup-1", "read_plan"),
                                                             ("court-1", "audit")]


async def test_a_supervisors_head_on_a_case_is_a_logged_read(client: TestClient,
                                                            token: TokenFactory,
                                                            db: asyncpg.Pool) -> None:
    """HEAD shows no plan, but it does show that the case exists and its version (ETag):
    a read of the case, logged as GET's is."""
    case_id = await CaseApi(client, token(sub="cm-1")).open_case()
    answer = await client.head(f"/v1/cases/{case_id}",
                               headers=bearer(token(role="supervisor", sub="sup-1")))
    assert (answer.status, answer.headers["ETag"]) == (200, '"1"')
    rows = await db.fetch("SELECT actor_sub, action, case_id FROM records.access_log")
    assert [(r["actor_sub"], r["action"], str(r["case_id"])) for r in rows] == [
        ("sup-1", "read_plan", case_id)]


@pytest.mark.parametrize("role", ["analyst", "service"])
async def test_a_role_that_reads_no_case_learns_nothing_of_which_cases_exist(
        client: TestClient, token: TokenFactory, db: asyncpg.Pool, role: str) -> None:
    """403 for every case id, real, made up or another agency's: a 403 for a real case beside
    a 404 for a made-up id told an analyst which ids exist."""
    owner = CaseApi(client, token(sub="cm-1"))
    real = await owner.open_case()
    elsewhere = await CaseApi(client, token(sub="cm-1", agency="agency-b")).open_case()
    headers = bearer(token(role=role, sub="x-1"))
    for case_id in (real, elsewhere, str(uuid.uuid4())):
        for path in ("", "/history", "/verify", "/export?format=csv"):
            response = await client.get(f"/v1/cases/{case_id}{path}", headers=headers)
            assert response.status == 403, (case_id, path)
        before = await event_count(db)
        response = await client.post(f"/v1/cases/{case_id}/notes", json={"text": "x"},
                                     headers=headers)
        assert response.status == 403, case_id
        assert await event_count(db) == before, case_id
