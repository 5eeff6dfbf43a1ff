"""The current plan says why each goal and step is in its status: the reason recorded with its
latest status change (`status_reason`), for everyone who reads the plan, after a rebuild, in
the FHIR export and from a plan document stored before the plan showed it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from fhir.resources.R4B.bundle import Bundle

from services.records.export.signing import write_key_pair
from services.records.http.app import migrate as migrate_records
from services.records.projections.rebuild import rebuild_projections
from tests.conftest import ClientFactory, TokenFactory, bearer
from tests.records_api import CaseApi, event_count
from tests.test_audit_upgrade_releases import RELEASES, _database_holding, _dump

ON_HOLD = "Jo is caring for her mother this month"
SET_ASIDE = "The course closed its intake"
BACK_ON = "A new course opens in May"
NOT_YET = "Waiting for the bank to open an account"
NOT_NEEDED = "The landlord set up the payments"
NEEDED_AFTER_ALL = "It was done after all, on paper"
STARTED_BY_MISTAKE = "Marked in progress on the wrong step"


@pytest.fixture
async def client(make_records_client: ClientFactory, fresh_database_url: str) -> TestClient:
    return await make_records_client(fresh_database_url)


@pytest.fixture
def cm(client: TestClient, token: TokenFactory) -> CaseApi:
    return CaseApi(client, token())


async def goal_status(cm: CaseApi, case_id: str, goal: str, status: str,
                      reason: str | None = None) -> None:
    body = {"status": status, **({"reason": reason} if reason else {})}
    await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/status", body, expect=200)


async def step_status(cm: CaseApi, case_id: str, step: str, status: str,
                      reason: str | None = None) -> None:
    body = {"status": status, **({"reason": reason} if reason else {})}
    await cm.call("POST", f"/v1/cases/{case_id}/steps/{step}/status", body, expect=200)


def goals_of(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["goal_id"]: g for g in plan["goals"]}


def steps_of(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step_id"]: s for g in plan["goals"] for s in g["steps"]}


def reasons(plan: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """Each goal's and step's status and the reason shown for it, by id."""
    items = [*plan["goals"], *(s for g in plan["goals"] for s in g["steps"])]
    return {item.get("step_id", item["goal_id"]): (item["status"], item["status_reason"])
            for item in items}


async def rich_case(cm: CaseApi) -> tuple[str, dict[str, str]]:
    """A case whose goals and steps went through every status change that takes a reason."""
    case_id = await cm.open_case()
    ids = {"paused": await cm.goal(case_id, "Finish my GED"),
           "discontinued": await cm.goal(case_id, "Take the welding course"),
           "reactivated": await cm.goal(case_id, "Get my licence back")}
    ids["step_not_yet"] = await cm.step(case_id, ids["reactivated"], "Open a bank account")
    ids["step_not_needed"] = await cm.step(case_id, ids["reactivated"], "Set up rent payments")
    ids["step_reversed"] = await cm.step(case_id, ids["reactivated"], "Book the eye test")
    ids["step_back"] = await cm.step(case_id, ids["reactivated"], "Call the DMV")
    await goal_status(cm, case_id, ids["paused"], "paused", ON_HOLD)
    await goal_status(cm, case_id, ids["discontinued"], "discontinued", SET_ASIDE)
    await goal_status(cm, case_id, ids["reactivated"], "discontinued", "Jo chose another path")
    await goal_status(cm, case_id, ids["reactivated"], "active", BACK_ON)
    await step_status(cm, case_id, ids["step_not_yet"], "cannot_be_done_yet", NOT_YET)
    await step_status(cm, case_id, ids["step_not_needed"], "no_longer_needed", NOT_NEEDED)
    await step_status(cm, case_id, ids["step_reversed"], "no_longer_needed", "Done elsewhere")
    await step_status(cm, case_id, ids["step_reversed"], "completed", NEEDED_AFTER_ALL)
    await step_status(cm, case_id, ids["step_back"], "in_progress")
    await step_status(cm, case_id, ids["step_back"], "not_started", STARTED_BY_MISTAKE)
    return case_id, ids


async def test_each_status_change_that_takes_a_reason_shows_it_in_the_plan(
        cm: CaseApi) -> None:
    """Before, the plan showed the status and when it changed, never why: a case manager, a
    participant or a supervisor had to open the history to learn it."""
    case_id, ids = await rich_case(cm)
    shown = reasons(await cm.plan(case_id))
    assert shown == {
        ids["paused"]: ("paused", ON_HOLD),
        ids["discontinued"]: ("discontinued", SET_ASIDE),
        ids["reactivated"]: ("active", BACK_ON),
        ids["step_not_yet"]: ("cannot_be_done_yet", NOT_YET),
        ids["step_not_needed"]: ("no_longer_needed", NOT_NEEDED),
        ids["step_reversed"]: ("completed", NEEDED_AFTER_ALL),
        ids["step_back"]: ("not_started", STARTED_BY_MISTAKE),
    }


async def test_a_first_status_or_a_later_change_without_a_reason_shows_none(
        cm: CaseApi) -> None:
    """A reason belongs to the change it was given with: the next change without one clears
    it (a goal back from a pause is not still "on hold because…"); a goal or step as it was
    set shows none, and a cap override stays in `override_reason`, not here. A completion's
    note stays the note."""
    case_id = await cm.open_case()
    goal = await cm.goal(case_id, "Finish my GED")
    fresh = await cm.goal(case_id, "Get my licence back")
    step = await cm.step(case_id, goal, "Open a bank account")
    done = await cm.step(case_id, goal, "Call the DMV")
    untouched = await cm.step(case_id, goal, "Book the eye test")
    await goal_status(cm, case_id, goal, "paused", ON_HOLD)
    await step_status(cm, case_id, step, "cannot_be_done_yet", NOT_YET)
    await step_status(cm, case_id, done, "cannot_be_done_yet", NOT_YET)
    assert reasons(await cm.plan(case_id))[goal] == ("paused", ON_HOLD)

    await goal_status(cm, case_id, goal, "active")
    await step_status(cm, case_id, step, "in_progress")
    await cm.call("POST", f"/v1/cases/{case_id}/steps/{done}/complete",
                  {"note": "Jo booked it herself"}, expect=200)
    plan = await cm.plan(case_id)
    assert reasons(plan) == {goal: ("active", None), fresh: ("active", None),
                             step: ("in_progress", None), done: ("completed", None),
                             untouched: ("not_started", None)}
    assert steps_of(plan)[done]["completion_note"] == "Jo booked it herself"

    await cm.goal(case_id, "Save for a deposit")  # the third active goal: the cap
    over_cap = await cm.goal(case_id, "Join the five-a-side team", status="future")
    await cm.call("POST", f"/v1/cases/{case_id}/goals/{over_cap}/status",
                  {"status": "active", "override_reason": "Jo asked to keep all four"},
                  expect=200)
    shown = goals_of(await cm.plan(case_id))[over_cap]
    assert (shown["status_reason"], shown["override_reason"]) == \
        (None, "Jo asked to keep all four")


async def test_a_refused_status_change_writes_nothing_and_keeps_the_reason_shown(
        cm: CaseApi, fresh_database_url: str) -> None:
    case_id = await cm.open_case()
    goal = await cm.goal(case_id)
    await goal_status(cm, case_id, goal, "paused", ON_HOLD)
    before = await cm.plan(case_id)
    conn = await asyncpg.connect(fresh_database_url)
    try:
        events = await event_count(conn)
        problem = await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/status",
                                {"status": "discontinued", "reason": "."}, expect=422)
        assert problem["type"].endswith("/reason-required")
        assert [e["field"] for e in problem["errors"]] == ["body.reason"]
        assert await event_count(conn) == events
    finally:
        await conn.close()
    assert await cm.plan(case_id) == before


async def test_participant_case_manager_and_supervisor_read_the_same_reasons(
        client: TestClient, cm: CaseApi, token: TokenFactory) -> None:
    """The participant reads their plan as staff do (decision 0004), reasons included: the
    reason a step cannot be done yet is as much theirs as the status it explains."""
    case_id, ids = await rich_case(cm)
    staff = await cm.plan(case_id)
    for reader in (token(role="participant", sub="jo", cases=[case_id]),
                   token(role="supervisor", sub="sup-1")):
        response = await client.get(f"/v1/cases/{case_id}", headers=bearer(reader))
        assert response.status == 200
        assert reasons(await response.json()) == reasons(staff)
    assert reasons(staff)[ids["step_not_yet"]] == ("cannot_be_done_yet", NOT_YET)


async def test_time_travel_and_a_diff_show_the_reason_of_their_version(
        cm: CaseApi, token: TokenFactory) -> None:
    case_id = await cm.open_case()
    goal = await cm.goal(case_id)
    paused = await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/status",
                           {"status": "paused", "reason": ON_HOLD}, expect=200)
    await goal_status(cm, case_id, goal, "active")
    supervisor = CaseApi(cm.client, token(role="supervisor", sub="sup-1"))
    then = await supervisor.plan(case_id, as_of_version=paused["version"])
    assert reasons(then)[goal] == ("paused", ON_HOLD)
    assert reasons(await supervisor.plan(case_id))[goal] == ("active", None)
    diff = await supervisor.call(
        "GET", f"/v1/cases/{case_id}/diff?from_version={paused['version'] - 1}"
               f"&to_version={paused['version']}", expect=200)
    assert {"change": "changed", "path": f"goals.{goal}.status_reason", "from": None,
            "to": ON_HOLD} in diff["changes"]


async def test_a_rebuilt_projection_gives_the_same_plan(
        cm: CaseApi, fresh_database_url: str) -> None:
    case_id, _ = await rich_case(cm)
    before = await cm.plan(case_id)
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=2)
    try:
        await rebuild_projections(pool)
    finally:
        await pool.close()
    assert await cm.plan(case_id) == before


async def test_the_fhir_export_gives_the_reasons(
        make_records_client: ClientFactory, fresh_database_url: str, token: TokenFactory,
        tmp_path: Path) -> None:
    """FHIR has an element for each: `Goal.statusReason` (a string) and
    `CarePlan.activity.detail.statusReason` (a CodeableConcept, its text)."""
    key = tmp_path / "export.pem"
    write_key_pair(key)
    client = await make_records_client(fresh_database_url,
                                       CASETRAIL_EXPORT_SIGNING_KEY_FILE=str(key))
    cm = CaseApi(client, token())
    case_id, ids = await rich_case(cm)
    response = await client.get(f"/v1/cases/{case_id}/export?format=fhir",
                                headers=bearer(token(role="supervisor", sub="sup-1")))
    assert response.status == 200
    raw = await response.read()
    Bundle.model_validate_json(raw)
    resources = [e["resource"] for e in json.loads(raw)["entry"]]
    goals = {r["id"]: r.get("statusReason") for r in resources if r["resourceType"] == "Goal"}
    assert goals == {ids["paused"]: ON_HOLD, ids["discontinued"]: SET_ASIDE,
                     ids["reactivated"]: BACK_ON}
    [plan] = [r for r in resources if r["resourceType"] == "CarePlan"]
    tasks = {a["detail"]["description"]: a["detail"].get("statusReason")
             for a in plan["activity"] if a["detail"]["kind"] == "Task"}
    assert tasks == {"Open a bank account": {"text": NOT_YET},
                     "Set up rent payments": {"text": NOT_NEEDED},
                     "Book the eye test": {"text": NEEDED_AFTER_ALL},
                     "Call the DMV": {"text": STARTED_BY_MISTAKE}}


# ---------------------------------------------------------- plans stored before the change


@pytest.fixture
def upgraded_database_url(postgres_server_url: str) -> Iterator[str]:
    """The thirteenth session's release's own database (goals paused, discontinued and taken
    back, steps set no longer needed and completed again, all with reasons), not migrated."""
    [release] = [r for r in RELEASES if r.name == "release-2026-12-06-thirteenth-session"]
    yield from _database_holding(postgres_server_url, "casetrail_reasons", _dump(release))


async def test_a_plan_stored_before_the_change_answers_its_reasons_without_a_rebuild(
        upgraded_database_url: str, make_records_client: ClientFactory,
        token: TokenFactory) -> None:
    """Its stored document has no `status_reason`: answered as stored, it broke the plan's
    schema, and filled in with null it would say "no reason" where one was recorded. The
    read folds such a plan from its events, so it answers what a rebuild stores, and stores
    it, so the next read answers the stored plan again."""
    await migrate_records(upgraded_database_url)
    client = await make_records_client(upgraded_database_url)
    pool = await asyncpg.create_pool(upgraded_database_url, min_size=1, max_size=2)
    try:
        cases = await pool.fetch("SELECT case_id, agency FROM records.plans"
                                 " WHERE jsonb_array_length(view->'goals') > 0")
        assert cases
        stored = await pool.fetch("SELECT view FROM records.plans"
                                  " WHERE jsonb_array_length(view->'goals') > 0")
        assert all("status_reason" not in json.loads(r["view"])["goals"][0] for r in stored)

        async def plans() -> dict[str, Any]:
            answers = {}
            for case in cases:
                reader = bearer(token(role="supervisor", sub="sup-1", agency=case["agency"]))
                response = await client.get(f"/v1/cases/{case['case_id']}", headers=reader)
                assert response.status == 200, await response.text()
                answers[str(case["case_id"])] = await response.json()
            return answers

        before = await plans()
        shown = {reason for plan in before.values() for _, reason in reasons(plan).values()}
        assert {"The lease fell through", "It was done after all"} <= shown, shown
        # the read stored what it folded: the next read answers the stored plan (each read of
        # a 20,000-event case folded its history again, 1.1-1.4 s, until a write or a rebuild)
        stored = await pool.fetch("SELECT view FROM records.plans"
                                  " WHERE jsonb_array_length(view->'goals') > 0")
        assert all("status_reason" in json.loads(r["view"])["goals"][0] for r in stored)
        assert await plans() == before
        await rebuild_projections(pool)
        assert await plans() == before
    finally:
        await pool.close()


async def test_a_read_answers_at_once_when_the_plans_are_held_and_stores_nothing(
        upgraded_database_url: str, make_records_client: ClientFactory,
        token: TokenFactory) -> None:
    """Storing what a read folded is a saving, not part of the answer: while a rebuild's last
    phase holds the plans table the read answers without waiting for it."""
    await migrate_records(upgraded_database_url)
    client = await make_records_client(upgraded_database_url)
    holder = await asyncpg.connect(upgraded_database_url)
    try:
        case = await holder.fetchrow("SELECT case_id, agency FROM records.plans"
                                     " WHERE jsonb_array_length(view->'goals') > 0 LIMIT 1")
        async with holder.transaction():
            await holder.execute("LOCK TABLE records.plans IN EXCLUSIVE MODE")
            reader = bearer(token(role="supervisor", sub="sup-1", agency=case["agency"]))
            async with asyncio.timeout(10):
                response = await client.get(f"/v1/cases/{case['case_id']}", headers=reader)
            assert response.status == 200, await response.text()
            assert "status_reason" in (await response.json())["goals"][0]
        view = json.loads(await holder.fetchval(
            "SELECT view FROM records.plans WHERE case_id = $1", case["case_id"]))
        assert "status_reason" not in view["goals"][0]
    finally:
        await holder.close()
