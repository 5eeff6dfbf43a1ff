"""Audit (session 22) of the records service's HTTP API against the brief, line by line: the
write answer `{case_id, version, id?, events, warnings}`, opening a case (201, `Location`,
`ETag`), the plan's fields, removals with the reason in the body or `?reason=`, the goal cap
with goals set aside for the future, the step statuses and their reasons, agreement outcomes
and the reviews they schedule, closing, reopening and transfer, history paging, diffs,
verification, time travel, and the language warnings on every text a person writes
(design.md "Records HTTP API", "Core bodies", "Practice rules" 1-7; decisions 0005, 0100,
0101). All through real HTTP on the test's own database."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, FakeClock, TokenFactory, bearer
from tests.records_api import PARTICIPANT, CaseApi

PROBLEM = "application/problem+json"
TODAY = date(2026, 3, 2)  # the injected clock's day (UTC agency)
WRITE_KEYS = {"case_id", "version", "events", "warnings"}
PLAN_KEYS = {"case_id", "version", "status", "participant", "case_manager", "risk_level",
             "strengths", "goals", "supports", "requirements", "agreement", "next_review",
             "updated_at"}
STATEMENT = "This is my plan and I am ready to start"


@pytest.fixture
async def client(make_records_client: ClientFactory, database_url: str,
                 clock: FakeClock) -> TestClient:
    """The records service on the session's database (each test writes its own cases; a
    database per test made this file take minutes)."""
    return await make_records_client(database_url, clock=clock)


async def _events(pool: asyncpg.Pool, case_id: str) -> int:
    """How many events the case has: the check that a refusal wrote nothing."""
    return int(await pool.fetchval(
        "SELECT count(*) FROM records.events WHERE stream_id = $1::uuid", case_id))


class Answer:
    def __init__(self, status: int, body: Any, headers: Any, content_type: str) -> None:
        self.status, self.body, self.headers, self.content_type = (
            status, body, headers, content_type)

    def __repr__(self) -> str:
        return f"<{self.status} {self.body!r}>"


async def _call(client: TestClient, method: str, path: str, token: str, body: Any = None,
                *, raw: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
    all_headers = {**bearer(token), **(headers or {})}
    if raw is not None:
        all_headers.setdefault("Content-Type", "application/json")
        response = await client.request(method, path, data=raw, headers=all_headers)
    elif body is None:
        response = await client.request(method, path, headers=all_headers)
    else:
        response = await client.request(method, path, json=body, headers=all_headers)
    text = await response.text()
    payload = json.loads(text) if text else None
    assert response.status < 500, (method, path, response.status, payload)
    if response.status >= 400:
        assert response.content_type == PROBLEM, (path, response.content_type, payload)
    return Answer(response.status, payload, response.headers, response.content_type)


def _fields(problem: Any) -> list[str]:
    return [error["field"] for error in problem.get("errors") or []]


def _types(answer: Answer) -> list[str]:
    return [event["type"] for event in answer.body["events"]]


def _check_write(answer: Answer, case_id: str, before: int, *, created: bool,
                 status: int = 200) -> None:
    """The brief's write answer: case_id, version, id only when an item was created, the events
    recorded (their versions following the one before) and warnings; ETag the new version."""
    assert answer.status == status, answer
    body = answer.body
    assert set(body) >= WRITE_KEYS, body
    assert set(body) <= WRITE_KEYS | {"id"}, body
    assert body["case_id"] == case_id
    versions = [event["version"] for event in body["events"]]
    assert versions == list(range(before + 1, before + 1 + len(versions))), versions
    assert versions
    assert body["version"] == versions[-1]
    assert answer.headers["ETag"] == f'"{body["version"]}"'
    assert isinstance(body["warnings"], list)
    assert ("id" in body) is created, body


async def _case(cm: CaseApi, risk_level: str = "moderate") -> str:
    return await cm.open_case(risk_level=risk_level)


async def _version(cm: CaseApi, case_id: str) -> int:
    return int((await cm.plan(case_id))["version"])


def _goal_body(title: str = "Find steady work", **extra: Any) -> dict[str, Any]:
    return {"title": title, "domain": "employment", "source": "participant",
            "in_their_words": "I want a job where I use my hands", **extra}


def _agreement(outcome: str | None = "agreed") -> dict[str, Any]:
    body: dict[str, Any] = {"participation": "in_person", "present": ["Jo", "Sam"],
                            "participant_statement": STATEMENT}
    if outcome is not None:
        body["outcome"] = outcome
    return body


# -- opening a case and the write answer -------------------------------------------------------


async def test_opening_a_case_answers_201_with_location_etag_and_the_write_answer(
        client: TestClient, cm: CaseApi) -> None:
    answer = await _call(client, "POST", "/v1/cases", cm.token, {
        "participant": PARTICIPANT, "case_manager": "cm-1", "risk_level": "low"})
    assert answer.status == 201, answer
    assert answer.headers["ETag"] == '"1"'
    case_id = answer.body["case_id"]
    assert answer.headers["Location"].endswith(f"/v1/cases/{case_id}")
    assert answer.body["version"] == 1
    assert _types(answer) == ["CaseOpened"]
    assert answer.body["warnings"] == []
    assert set(answer.body) >= WRITE_KEYS
    # the case is the item created: an `id`, if sent, is the case's
    assert answer.body.get("id", case_id) == case_id
    followed = await _call(client, "GET", answer.headers["Location"], cm.token)
    assert followed.status == 200, followed
    assert followed.headers["ETag"] == '"1"'
    assert followed.body["case_id"] == case_id
    assert followed.body["risk_level"] == "low"


async def test_every_write_answers_case_id_version_id_events_and_warnings(
        client: TestClient, cm: CaseApi) -> None:
    case_id = await _case(cm)
    base = f"/v1/cases/{case_id}"
    version = 1

    async def write(method: str, path: str, body: Any, *, created: str | None = None,
                    status: int = 200) -> Answer:
        nonlocal version
        answer = await _call(client, method, base + path, cm.token, body)
        _check_write(answer, case_id, version, created=created is not None, status=status)
        if created is not None:
            ids = [event["data"].get(created) for event in answer.body["events"]]
            assert answer.body["id"] in ids, (answer.body["id"], ids)
        version = answer.body["version"]
        return answer

    strength = (await write("POST", "/strengths", {"category": "skill", "description":
                            "Fixes bikes"}, created="strength_id", status=201)).body["id"]
    await write("PATCH", f"/strengths/{strength}", {"description": "Fixes bikes for neighbours"})
    other = (await write("POST", "/strengths", {"category": "interest", "description":
                         "Football"}, created="strength_id", status=201)).body["id"]
    await write("DELETE", f"/strengths/{other}", {"reason": "Recorded twice by mistake"})
    goal = (await write("POST", "/goals", _goal_body(strength_ids=[strength]),
                        created="goal_id", status=201)).body["id"]
    await write("PATCH", f"/goals/{goal}", {"why_it_matters": "To support my daughter"})
    step = (await write("POST", f"/goals/{goal}/steps", {"description": "Visit the job centre",
                        "owner": "participant"}, created="step_id", status=201)).body["id"]
    await write("PATCH", f"/steps/{step}", {"due_date": "2026-03-20"})
    await write("POST", f"/steps/{step}/status", {"status": "in_progress"})
    await write("POST", f"/steps/{step}/complete", {"note": "Went on Tuesday"})
    support = (await write("POST", "/supports", {"name": "Aunt May", "kind": "natural"},
                           created="support_id", status=201)).body["id"]
    await write("DELETE", f"/supports/{support}", {"reason": "Moved away"})
    requirement = (await write("POST", "/requirements", {"title": "Attend monthly check-in"},
                               created="requirement_id", status=201)).body["id"]
    await write("POST", f"/requirements/{requirement}/status", {"status": "in_progress"})
    agreed = await write("POST", "/agreements", _agreement(), created="review_id", status=201)
    assert _types(agreed) == ["PlanAgreed", "ReviewScheduled"]
    review = agreed.body["id"]
    await write("POST", f"/reviews/{review}/reschedule", {"due_date": "2026-04-20",
                                                        "reason": "Jo starts work that week"})
    held = await write("POST", f"/reviews/{review}/held", {"summary": "Good month"},
                       created="review_id")
    assert held.body["id"] != review
    assert _types(held) == ["ReviewHeld", "ReviewScheduled"]
    await write("POST", "/notes", {"text": "Met at the library"}, created="note_id", status=201)
    await write("PATCH", "/participant", {"preferred_name": "Jordan"})
    await write("POST", f"/goals/{goal}/status", {"status": "paused"})
    await write("POST", "/transfer", {"case_manager": "cm-2", "reason": "Caseload balancing"})


async def test_the_plan_has_every_field_the_brief_names(client: TestClient, cm: CaseApi) -> None:
    case_id = await _case(cm, "high")
    fresh = await _call(client, "GET", f"/v1/cases/{case_id}", cm.token)
    assert set(fresh.body) >= PLAN_KEYS, PLAN_KEYS - set(fresh.body)
    assert fresh.body["agreement"] is None
    assert fresh.body["next_review"] is None
    assert fresh.body["strengths"] == fresh.body["goals"] == fresh.body["supports"] == \
        fresh.body["requirements"] == []
    assert (fresh.body["status"], fresh.body["case_manager"], fresh.body["risk_level"]) == (
        "open", "cm-1", "high")
    assert fresh.body["participant"]["name"] == PARTICIPANT["name"]
    goal = await cm.goal(case_id)
    step = await cm.step(case_id, goal)
    await cm.strength(case_id)
    await cm.call("POST", f"/v1/cases/{case_id}/supports", {"name": "Aunt May"}, expect=201)
    await cm.call("POST", f"/v1/cases/{case_id}/requirements", {"title": "Check in monthly"},
                  expect=201)
    await cm.agree(case_id)
    plan = await _call(client, "GET", f"/v1/cases/{case_id}", cm.token)
    assert set(plan.body) >= PLAN_KEYS
    assert plan.headers["ETag"] == f'"{plan.body["version"]}"'
    assert [s["step_id"] for g in plan.body["goals"] for s in g["steps"]] == [step]
    assert len(plan.body["strengths"]) == len(plan.body["supports"]) == \
        len(plan.body["requirements"]) == 1
    assert plan.body["agreement"]["outcome"] == "agreed"
    assert plan.body["next_review"]["due_date"] == str(TODAY + timedelta(days=30))
    assert plan.body["updated_at"].endswith("Z")


# -- removals: the reason in the body or ?reason= -----------------------------------------------


async def _removable(cm: CaseApi, kind: str) -> tuple[str, str]:
    case_id = await _case(cm)
    if kind == "strengths":
        return case_id, await cm.strength(case_id)
    added = await cm.call("POST", f"/v1/cases/{case_id}/supports", {"name": "Coach Lee"},
                          expect=201)
    return case_id, str(added["id"])


REASON = "Jo's choice — moved on"


@pytest.mark.parametrize("kind", ["strengths", "supports"])
async def test_a_removal_takes_its_reason_from_the_body(
        client: TestClient, cm: CaseApi, kind: str) -> None:
    case_id, item = await _removable(cm, kind)
    answer = await _call(client, "DELETE", f"/v1/cases/{case_id}/{kind}/{item}", cm.token,
                         {"reason": REASON})
    _check_write(answer, case_id, 2, created=False)
    assert answer.body["events"][0]["data"]["reason"] == REASON
    assert answer.body["events"][0]["reason"] == REASON


@pytest.mark.parametrize("kind", ["strengths", "supports"])
async def test_a_removal_takes_its_reason_from_the_query(
        client: TestClient, cm: CaseApi, kind: str) -> None:
    case_id, item = await _removable(cm, kind)
    answer = await _call(client, "DELETE", f"/v1/cases/{case_id}/{kind}/{item}"
                         f"?reason={quote(REASON)}", cm.token)
    _check_write(answer, case_id, 2, created=False)
    assert answer.body["events"][0]["data"]["reason"] == REASON
    history = await cm.call("GET", f"/v1/cases/{case_id}/history", expect=200)
    assert history["events"][-1]["reason"] == REASON
    plan = await cm.plan(case_id)
    assert plan[kind] == []


REMOVALS_REFUSED = [
    pytest.param("", None, id="neither"),
    pytest.param("?reason=", None, id="blank-query"),
    pytest.param("?reason=%20%20", None, id="spaces-query"),
    pytest.param("?reason=.", None, id="punctuation-query"),
    pytest.param("", {}, id="empty-body"),
    pytest.param("", {"reason": "   "}, id="blank-body"),
    pytest.param("", {"reason": "-"}, id="punctuation-body"),
    pytest.param("", {"reason": None}, id="null-body"),
    pytest.param("?reason=Moved%20away", {"reason": "Recorded twice"}, id="both-different"),
    pytest.param("?reason=", {"reason": "Moved away"}, id="blank-query-and-body"),
]


@pytest.mark.parametrize("kind", ["strengths", "supports"])
@pytest.mark.parametrize(("query", "body"), REMOVALS_REFUSED)
async def test_a_removal_without_one_clear_reason_is_refused_and_writes_nothing(
        client: TestClient, cm: CaseApi, pool: asyncpg.Pool, kind: str, query: str,
        body: Any) -> None:
    case_id, item = await _removable(cm, kind)
    before = await _events(pool, case_id)
    answer = await _call(client, "DELETE", f"/v1/cases/{case_id}/{kind}/{item}{query}",
                         cm.token, body)
    assert 400 <= answer.status < 500, answer
    assert await _events(pool, case_id) == before
    assert len((await cm.plan(case_id))[kind]) == 1


@pytest.mark.parametrize("kind", ["strengths", "supports"])
async def test_a_removal_with_the_same_reason_in_body_and_query_is_one_removal_or_refused(
        client: TestClient, cm: CaseApi, pool: asyncpg.Pool, kind: str) -> None:
    case_id, item = await _removable(cm, kind)
    before = await _events(pool, case_id)
    answer = await _call(client, "DELETE", f"/v1/cases/{case_id}/{kind}/{item}"
                         "?reason=Moved%20away", cm.token, {"reason": "Moved away"})
    if answer.status >= 400:
        assert answer.status in (400, 422), answer
        assert await _events(pool, case_id) == before
    else:
        assert [e["data"]["reason"] for e in answer.body["events"]] == ["Moved away"]
        assert await _events(pool, case_id) == before + 1


@pytest.mark.parametrize("query", ["?reason=.", "?reason=%20", "?reason="])
async def test_a_reason_refused_from_the_query_is_named_as_the_query_parameter(
        client: TestClient, cm: CaseApi, query: str) -> None:
    """The problem's field-level `errors` name what the client sent: a reason given as
    `?reason=` and refused is `query.reason`, not a `body.reason` the request never had."""
    case_id, item = await _removable(cm, "strengths")
    answer = await _call(client, "DELETE", f"/v1/cases/{case_id}/strengths/{item}{query}",
                         cm.token)
    assert answer.status == 422, answer
    assert _fields(answer.body) == ["query.reason"], answer.body


async def test_a_removed_item_is_not_removed_twice(client: TestClient, cm: CaseApi) -> None:
    case_id, item = await _removable(cm, "supports")
    path = f"/v1/cases/{case_id}/supports/{item}?reason=Moved%20away"
    assert (await _call(client, "DELETE", path, cm.token)).status == 200
    again = await _call(client, "DELETE", path, cm.token)
    assert again.status == 409, again
    assert await _version(cm, case_id) == 3


# -- rule 1: few goals at a time ----------------------------------------------------------------


async def _three_active(cm: CaseApi) -> tuple[str, list[str]]:
    case_id = await _case(cm)
    goals = [await cm.goal(case_id, title) for title in (
        "Find steady work", "Find a flat near my daughter", "Get my driving licence")]
    return case_id, goals


async def test_a_fourth_active_goal_is_refused_but_a_future_one_does_not_count(
        client: TestClient, cm: CaseApi, pool: asyncpg.Pool) -> None:
    case_id, _ = await _three_active(cm)
    path = f"/v1/cases/{case_id}/goals"
    before = await _events(pool, case_id)
    refused = await _call(client, "POST", path, cm.token, _goal_body("Learn to swim"))
    assert refused.status == 422, refused
    assert refused.body["type"].endswith("/active-goal-limit"), refused.body
    assert _fields(refused.body) == ["body.override_reason"]
    assert await _events(pool, case_id) == before

    future = await _call(client, "POST", path, cm.token,
                         _goal_body("Learn to swim", status="future"))
    _check_write(future, case_id, 4, created=True, status=201)
    data = future.body["events"][0]["data"]
    assert (data["status"], data.get("override_reason")) == ("future", None)
    # an override_reason on a goal that needs none is not recorded as an override
    needless = await _call(client, "POST", path, cm.token, _goal_body(
        "Visit my brother", status="future", override_reason="Jo asked for it"))
    assert needless.status == 201, needless
    assert needless.body["events"][0]["data"].get("override_reason") is None
    plan = await cm.plan(case_id)
    assert plan["active_goal_count"] == 3
    assert sorted(g["status"] for g in plan["goals"]) == ["active"] * 3 + ["future"] * 2

    overridden = await _call(client, "POST", path, cm.token, _goal_body(
        "Learn to swim", override_reason="The court ordered it this month"))
    _check_write(overridden, case_id, 6, created=True, status=201)
    assert overridden.body["events"][0]["data"]["override_reason"] == \
        "The court ordered it this month"
    plan = await cm.plan(case_id)
    assert plan["active_goal_count"] == 4
    shown = next(g for g in plan["goals"] if g["goal_id"] == overridden.body["id"])
    assert shown["override_reason"] == "The court ordered it this month"


async def test_a_goal_moved_back_to_active_against_a_full_cap_needs_an_override(
        client: TestClient, cm: CaseApi, pool: asyncpg.Pool) -> None:
    case_id, goals = await _three_active(cm)
    future = await cm.goal(case_id, "Learn to swim", status="future")
    status = f"/v1/cases/{case_id}/goals/{{}}/status"
    before = await _events(pool, case_id)
    refused = await _call(client, "POST", status.format(future), cm.token, {"status": "active"})
    assert refused.status == 422, refused
    assert _fields(refused.body) == ["body.override_reason"]
    assert await _events(pool, case_id) == before

    paused = await _call(client, "POST", status.format(goals[0]), cm.token, {"status": "paused"})
    assert paused.status == 200, paused  # pausing needs no reason
    freed = await _call(client, "POST", status.format(future), cm.token,
                        {"status": "active", "override_reason": "Not needed now"})
    assert freed.status == 200, freed
    data = freed.body["events"][0]["data"]
    assert (data["from_status"], data["status"], data.get("override_reason")) == (
        "future", "active", None)

    back = await _call(client, "POST", status.format(goals[0]), cm.token, {"status": "active"})
    assert back.status == 422, back
    assert _fields(back.body) == ["body.override_reason"]
    back = await _call(client, "POST", status.format(goals[0]), cm.token,
                       {"status": "active", "override_reason": "Jo is ready for all four"})
    assert back.status == 200, back
    data = back.body["events"][0]["data"]
    assert (data["from_status"], data["status"], data["override_reason"]) == (
        "paused", "active", "Jo is ready for all four")
    assert (await cm.plan(case_id))["active_goal_count"] == 4

    # an achieved goal reopened at the cap needs its reason and the override
    achieved = await _call(client, "POST", status.format(goals[1]), cm.token,
                           {"status": "achieved"})
    assert achieved.status == 200, achieved
    only_reason = await _call(client, "POST", status.format(goals[1]), cm.token,
                              {"status": "active", "reason": "The job ended"})
    assert only_reason.status == 422
    assert _fields(only_reason.body) == ["body.override_reason"]
    no_reason = await _call(client, "POST", status.format(goals[1]), cm.token,
                            {"status": "active", "override_reason": "Jo wants to keep at it"})
    assert no_reason.status == 422
    assert _fields(no_reason.body) == ["body.reason"]


GOAL_MOVES = [
    # (from, to, reason needed)
    ("active", "paused", False), ("active", "future", False), ("active", "achieved", False),
    ("active", "discontinued", True), ("paused", "active", False),
    ("future", "paused", False), ("achieved", "paused", True), ("achieved", "future", True),
    ("discontinued", "active", True), ("discontinued", "future", True),
    ("discontinued", "paused", True),
]


async def _goal_at(cm: CaseApi, case_id: str, status: str) -> str:
    goal = await cm.goal(case_id, f"Goal to be {status}",
                         status="future" if status == "future" else "active")
    if status in ("paused", "achieved"):
        await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/status", {"status": status},
                      expect=200)
    if status == "discontinued":
        await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/status",
                      {"status": status, "reason": "Jo chose another path"}, expect=200)
    return goal


@pytest.mark.parametrize(("old", "new", "needs_reason"), GOAL_MOVES)
async def test_goal_status_changes_need_a_reason_only_for_discontinuing_and_reversals(
        client: TestClient, cm: CaseApi, old: str, new: str, needs_reason: bool) -> None:
    case_id = await _case(cm)
    goal = await _goal_at(cm, case_id, old)
    path = f"/v1/cases/{case_id}/goals/{goal}/status"
    bare = await _call(client, "POST", path, cm.token, {"status": new})
    if needs_reason:
        assert bare.status == 422, bare
        assert _fields(bare.body) == ["body.reason"], bare
        bare = await _call(client, "POST", path, cm.token,
                           {"status": new, "reason": "Talked it through with Jo"})
    assert bare.status == 200, bare
    data = bare.body["events"][0]["data"]
    assert (bare.body["events"][0]["type"], data["from_status"], data["status"]) == (
        "GoalStatusChanged", old, new)
    same = await _call(client, "POST", path, cm.token, {"status": new, "reason": "Again"})
    assert same.status == 409, same


async def test_a_discontinued_goal_is_not_achieved_directly(
        client: TestClient, cm: CaseApi) -> None:
    case_id = await _case(cm)
    goal = await _goal_at(cm, case_id, "discontinued")
    answer = await _call(client, "POST", f"/v1/cases/{case_id}/goals/{goal}/status", cm.token,
                         {"status": "achieved", "reason": "Jo did it anyway"})
    assert answer.status == 409, answer


# -- rule 4 and the step status endpoint -------------------------------------------------------

STEP_STATUSES = ["not_started", "in_progress", "completed", "cannot_be_done_yet",
                 "no_longer_needed"]


def _step_reason_needed(old: str, new: str) -> bool:
    """Decision 0101 rule 5: a step becoming no_longer_needed, any change from completed or
    no_longer_needed, in_progress -> not_started."""
    return new == "no_longer_needed" or old in ("completed", "no_longer_needed") or (
        old, new) == ("in_progress", "not_started")


async def _step_at(cm: CaseApi, case_id: str, goal: str, status: str) -> str:
    step = await cm.step(case_id, goal, f"A step that is {status.replace('_', ' ')}")
    if status == "completed":
        await cm.call("POST", f"/v1/cases/{case_id}/steps/{step}/complete", expect=200)
    elif status != "not_started":
        await cm.call("POST", f"/v1/cases/{case_id}/steps/{step}/status",
                      {"status": status, "reason": "Jo found another way"}, expect=200)
    return step


@pytest.mark.parametrize("old", STEP_STATUSES)
async def test_every_step_status_change_and_the_reasons_it_needs(
        client: TestClient, cm: CaseApi, pool: asyncpg.Pool, old: str) -> None:
    case_id = await _case(cm)
    goal = await cm.goal(case_id)
    for new in STEP_STATUSES:
        step = await _step_at(cm, case_id, goal, old)
        path = f"/v1/cases/{case_id}/steps/{step}/status"
        before = await _events(pool, case_id)
        bare = await _call(client, "POST", path, cm.token, {"status": new})
        if new == old:
            assert bare.status == 409, (old, new, bare)
            assert await _events(pool, case_id) == before
            continue
        reason = None
        if _step_reason_needed(old, new):
            assert bare.status == 422, (old, new, bare)
            assert _fields(bare.body) == ["body.reason"], (old, new, bare.body)
            assert await _events(pool, case_id) == before
            reason = "Talked it through with Jo"
            bare = await _call(client, "POST", path, cm.token, {"status": new, "reason": reason})
        assert bare.status == 200, (old, new, bare)
        event = bare.body["events"][0]
        expected = "ActionStepCompleted" if new == "completed" else "ActionStepStatusChanged"
        assert [e["type"] for e in bare.body["events"]] == [expected], (old, new)
        assert event["data"]["from_status"] == old, (old, new)
        assert event["data"].get("reason") == reason, (old, new, event)
        if new != "completed":
            assert event["data"]["status"] == new
        plan = await cm.plan(case_id)
        shown = next(s for g in plan["goals"] for s in g["steps"] if s["step_id"] == step)
        assert (shown["status"], shown["status_reason"]) == (new, reason), (old, new, shown)


async def test_complete_is_the_short_form_and_is_refused_twice(
        client: TestClient, cm: CaseApi, pool: asyncpg.Pool) -> None:
    case_id = await _case(cm)
    goal = await cm.goal(case_id)
    step = await cm.step(case_id, goal)
    path = f"/v1/cases/{case_id}/steps/{step}/complete"
    done = await _call(client, "POST", path, cm.token, {"note": "Went on Tuesday"})
    _check_write(done, case_id, 3, created=False)
    event = done.body["events"][0]
    assert event["type"] == "ActionStepCompleted"
    assert (event["data"]["from_status"], event["data"]["note"]) == ("not_started",
                                                                      "Went on Tuesday")
    plan = await cm.plan(case_id)
    shown = plan["goals"][0]["steps"][0]
    assert (shown["status"], shown["completion_note"]) == ("completed", "Went on Tuesday")
    assert shown["completed_at"] is not None
    before = await _events(pool, case_id)
    for again in (await _call(client, "POST", path, cm.token, {"note": "Again"}),
                  await _call(client, "POST", path, cm.token),
                  await _call(client, "POST", f"/v1/cases/{case_id}/steps/{step}/status",
                              cm.token, {"status": "completed", "reason": "Again"})):
        assert again.status == 409, again
    assert await _events(pool, case_id) == before
    # no body at all stands for {}; from in progress and from "cannot be done yet" too
    for status in ("in_progress", "cannot_be_done_yet"):
        other = await _step_at(cm, case_id, goal, status)
        short = await _call(client, "POST", f"/v1/cases/{case_id}/steps/{other}/complete",
                            cm.token)
        assert short.status == 200, short
        assert short.body["events"][0]["data"]["from_status"] == status
    dropped = await _step_at(cm, case_id, goal, "no_longer_needed")
    refused = await _call(client, "POST", f"/v1/cases/{case_id}/steps/{dropped}/complete",
                          cm.token)
    assert refused.status == 409, refused


# -- rule 6: agreement and reviews ---------------------------------------------------------------


@pytest.mark.parametrize(("risk", "days"), [("high", 30), ("moderate", 60), ("low", 90)])
async def test_agreeing_schedules_the_first_review_by_risk_level(
        client: TestClient, cm: CaseApi, risk: str, days: int) -> None:
    case_id = await _case(cm, risk)
    await cm.goal(case_id)
    answer = await _call(client, "POST", f"/v1/cases/{case_id}/agreements", cm.token,
                         _agreement(None))  # the outcome defaults to agreed
    _check_write(answer, case_id, 2, created=True, status=201)
    agreed, scheduled = answer.body["events"]
    assert agreed["type"] == "PlanAgreed"
    assert agreed["data"]["outcome"] == "agreed"
    assert scheduled["type"] == "ReviewScheduled"
    assert scheduled["data"]["due_date"] == str(TODAY + timedelta(days=days))
    assert (scheduled["data"]["interval_days"], scheduled["data"]["basis"],
            scheduled["data"]["risk_level"]) == (days, "plan_agreed", risk)
    assert answer.body["id"] == scheduled["data"]["review_id"]
    plan = await cm.plan(case_id)
    assert plan["next_review"]["review_id"] == answer.body["id"]
    assert plan["next_review"]["due_date"] == str(TODAY + timedelta(days=days))
    history = await cm.call("GET", f"/v1/cases/{case_id}/history", expect=200)
    assert [e["type"] for e in history["events"]][-2:] == ["PlanAgreed", "ReviewScheduled"]


@pytest.mark.parametrize("outcome", ["did_not_agree", "could_not_answer"])
async def test_only_agreed_schedules_a_review(
        client: TestClient, cm: CaseApi, outcome: str) -> None:
    case_id = await _case(cm, "high")
    await cm.goal(case_id)
    answer = await _call(client, "POST", f"/v1/cases/{case_id}/agreements", cm.token,
                         _agreement(outcome))
    _check_write(answer, case_id, 2, created=False, status=201)
    assert _types(answer) == ["PlanAgreed"]
    assert answer.body["events"][0]["data"]["outcome"] == outcome
    assert answer.body["events"][0]["data"]["participant_statement"] == STATEMENT
    plan = await cm.plan(case_id)
    assert plan["next_review"] is None
    assert plan["agreement"]["outcome"] == outcome
    later = await _call(client, "POST", f"/v1/cases/{case_id}/agreements", cm.token,
                        _agreement("agreed"))
    assert _types(later) == ["PlanAgreed", "ReviewScheduled"]
    assert (await cm.plan(case_id))["next_review"]["due_date"] == str(TODAY + timedelta(30))


async def test_an_unknown_outcome_is_refused(client: TestClient, cm: CaseApi) -> None:
    case_id = await _case(cm)
    await cm.goal(case_id)
    answer = await _call(client, "POST", f"/v1/cases/{case_id}/agreements", cm.token,
                         _agreement("maybe"))
    assert answer.status == 422, answer
    assert _fields(answer.body) == ["body.outcome"], answer


async def test_re_agreeing_keeps_the_review_due_and_holding_it_schedules_the_next(
        client: TestClient, cm: CaseApi, clock: FakeClock) -> None:
    case_id = await _case(cm, "moderate")
    await cm.goal(case_id)
    first = (await cm.agree(case_id))["id"]
    again = await _call(client, "POST", f"/v1/cases/{case_id}/agreements", cm.token,
                        _agreement("agreed"))
    assert _types(again) == ["PlanAgreed"]
    assert "id" not in again.body
    assert (await cm.plan(case_id))["next_review"]["review_id"] == first
    clock.advance(days=55)
    held_on = TODAY + timedelta(days=54)
    held = await _call(client, "POST", f"/v1/cases/{case_id}/reviews/{first}/held", cm.token,
                       {"held_on": str(held_on), "summary": "Jo has held the job for a month",
                        "risk_level": "high"})
    _check_write(held, case_id, 5, created=True)
    was_held, scheduled = held.body["events"]
    assert (was_held["type"], was_held["data"]["review_id"], was_held["data"]["held_on"]) == (
        "ReviewHeld", first, str(held_on))
    assert scheduled["type"] == "ReviewScheduled"
    assert (scheduled["data"]["basis"], scheduled["data"]["interval_days"],
            scheduled["data"]["due_date"]) == ("review_held", 30,
                                               str(held_on + timedelta(days=30)))
    assert held.body["id"] == scheduled["data"]["review_id"] != first
    plan = await cm.plan(case_id)
    assert plan["next_review"]["review_id"] == held.body["id"]
    assert plan["risk_level"] == "high"
    twice = await _call(client, "POST", f"/v1/cases/{case_id}/reviews/{first}/held", cm.token)
    assert twice.status == 409, twice


# -- closing, reopening and transfer -------------------------------------------------------------


async def test_a_closed_case_refuses_every_write_until_reopened_with_a_reason(
        client: TestClient, cm: CaseApi, pool: asyncpg.Pool) -> None:
    case_id = await _case(cm)
    goal = await cm.goal(case_id)
    step = await cm.step(case_id, goal)
    strength = await cm.strength(case_id)
    review = (await cm.agree(case_id))["id"]
    base = f"/v1/cases/{case_id}"
    for body in ({}, {"reason": ""}, {"reason": "."}, {"reason": "Moved", "outcome": "gone"}):
        refused = await _call(client, "POST", f"{base}/close", cm.token, body)
        assert refused.status == 422, (body, refused)
    closed = await _call(client, "POST", f"{base}/close", cm.token,
                         {"reason": "Jo finished the programme", "outcome": "completed"})
    _check_write(closed, case_id, 6, created=False)
    assert closed.body["events"][0]["data"] == {"reason": "Jo finished the programme",
                                                "outcome": "completed"}
    plan = await cm.plan(case_id)
    assert plan["status"] == "closed"
    assert plan["next_review"] is None
    assert plan["closure"]["outcome"] == "completed"
    before = await _events(pool, case_id)
    writes: list[tuple[str, str, Any]] = [
        ("POST", "/goals", _goal_body("Another goal")),
        ("PATCH", f"/goals/{goal}", {"title": "Find work I enjoy"}),
        ("POST", f"/goals/{goal}/status", {"status": "paused"}),
        ("POST", f"/goals/{goal}/steps", {"description": "Call Sam", "owner": "participant"}),
        ("POST", f"/steps/{step}/complete", {}),
        ("POST", f"/steps/{step}/status", {"status": "in_progress"}),
        ("POST", "/strengths", {"category": "skill", "description": "Cooks for friends"}),
        ("DELETE", f"/strengths/{strength}", {"reason": "Recorded by mistake"}),
        ("POST", "/supports", {"name": "Aunt May"}),
        ("POST", "/requirements", {"title": "Check in monthly"}),
        ("POST", "/notes", {"text": "Called to say goodbye"}),
        ("POST", "/agreements", _agreement()),
        ("POST", f"/reviews/{review}/held", {}),
        ("POST", "/transfer", {"case_manager": "cm-2", "reason": "Caseload balancing"}),
        ("POST", "/close", {"reason": "Closing again"}),
        ("PATCH", "/participant", {"preferred_name": "Jordan"}),
    ]
    for method, path, body in writes:
        answer = await _call(client, method, base + path, cm.token, body)
        assert answer.status in (409, 422), (method, path, answer)
        if answer.status == 409:
            assert "closed" in answer.body["detail"], answer.body
    assert await _events(pool, case_id) == before
    for body in ({}, {"reason": "  "}, {"reason": "?!"}):
        refused = await _call(client, "POST", f"{base}/reopen", cm.token, body)
        assert refused.status == 422, (body, refused)
    reopened = await _call(client, "POST", f"{base}/reopen", cm.token,
                           {"reason": "Jo asked for help again"})
    _check_write(reopened, case_id, 7, created=False)
    assert _types(reopened) == ["CaseReopened"]
    assert (await cm.plan(case_id))["status"] == "open"
    twice = await _call(client, "POST", f"{base}/reopen", cm.token, {"reason": "Again"})
    assert twice.status == 409, twice
    note = await _call(client, "POST", f"{base}/notes", cm.token, {"text": "Welcome back"})
    assert note.status == 201, note


async def test_a_transfer_needs_a_reason_and_another_case_manager(
        client: TestClient, cm: CaseApi, pool: asyncpg.Pool) -> None:
    case_id = await _case(cm)
    path = f"/v1/cases/{case_id}/transfer"
    before = await _events(pool, case_id)
    for body in ({"case_manager": "cm-2"}, {"case_manager": "cm-2", "reason": ""},
                 {"case_manager": "cm-2", "reason": " "}, {"case_manager": "cm-2", "reason": "-"},
                 {"reason": "Caseload balancing"}):
        refused = await _call(client, "POST", path, cm.token, body)
        assert refused.status == 422, (body, refused)
    same = await _call(client, "POST", path, cm.token,
                       {"case_manager": "cm-1", "reason": "Caseload balancing"})
    assert same.status == 409, same
    assert await _events(pool, case_id) == before
    moved = await _call(client, "POST", path, cm.token,
                        {"case_manager": "cm-2", "reason": "Caseload balancing"})
    _check_write(moved, case_id, 1, created=False)
    assert moved.body["events"][0]["data"] == {"from_case_manager": "cm-1",
                                               "to_case_manager": "cm-2",
                                               "reason": "Caseload balancing"}
    assert moved.body["events"][0]["reason"] == "Caseload balancing"


# -- history, diff, verify -----------------------------------------------------------------------


async def _six_versions(cm: CaseApi) -> str:
    case_id = await _case(cm)
    goal = await cm.goal(case_id)
    strength = await cm.strength(case_id)
    await cm.call("DELETE", f"/v1/cases/{case_id}/strengths/{strength}",
                  {"reason": "Recorded twice"}, expect=200)
    await cm.step(case_id, goal)
    await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Met at the library"},
                  expect=201)
    return case_id


async def test_history_pages_by_after_version_and_limit(client: TestClient, cm: CaseApi) -> None:
    case_id = await _six_versions(cm)
    path = f"/v1/cases/{case_id}/history"
    seen: list[int] = []
    after: int | None = 0
    pages = 0
    while after is not None:
        page = await _call(client, "GET", f"{path}?after_version={after}&limit=2", cm.token)
        assert page.status == 200, page
        seen += [event["version"] for event in page.body["events"]]
        after = page.body["next_after_version"]
        pages += 1
        assert pages < 10
    assert seen == [1, 2, 3, 4, 5, 6]
    whole = await _call(client, "GET", path, cm.token)
    assert [e["version"] for e in whole.body["events"]] == seen
    assert whole.body["next_after_version"] is None
    removal = whole.body["events"][3]
    assert (removal["type"], removal["actor"], removal["role"], removal["reason"]) == (
        "StrengthRemoved", "cm-1", "case_manager", "Recorded twice")
    assert all(e["recorded_at"].endswith("Z") for e in whole.body["events"])
    for query in ("after_version=6", "after_version=5&limit=1"):
        tail = await _call(client, "GET", f"{path}?{query}", cm.token)
        assert tail.status == 200, (query, tail)
        assert tail.body["next_after_version"] is None, (query, tail)
    assert (await _call(client, "GET", f"{path}?after_version=6", cm.token)).body["events"] == []
    biggest = await _call(client, "GET", f"{path}?limit=500", cm.token)
    assert biggest.status == 200
    for query in ("limit=0", "limit=501", "limit=-1", "limit=abc", "limit=1.5", "limit=",
                  "after_version=-1", "after_version=x", "after_version=1e3", "page=2"):
        refused = await _call(client, "GET", f"{path}?{query}", cm.token)
        assert refused.status in (400, 422), (query, refused)


async def test_diff_between_two_versions_and_its_bounds(client: TestClient, cm: CaseApi) -> None:
    case_id = await _six_versions(cm)
    path = f"/v1/cases/{case_id}/diff"
    diff = await _call(client, "GET", f"{path}?from_version=1&to_version=2", cm.token)
    assert diff.status == 200, diff
    assert (diff.body["from_version"], diff.body["to_version"]) == (1, 2)
    assert any(change["change"] == "added" and change["path"].startswith("goals")
               for change in diff.body["changes"]), diff.body
    whole = await _call(client, "GET", f"{path}?from_version=0&to_version=6", cm.token)
    assert whole.status == 200, whole
    for query, status in (("from_version=3&to_version=2", 422),
                          ("from_version=2&to_version=2", 422),
                          ("from_version=1&to_version=7", None),
                          ("from_version=1&to_version=99", None),
                          ("from_version=-1&to_version=2", 422),
                          ("from_version=1", 422), ("to_version=2", 422),
                          ("from_version=a&to_version=2", 422)):
        refused = await _call(client, "GET", f"{path}?{query}", cm.token)
        assert refused.status >= 400, (query, refused)
        if status is not None:
            assert refused.status == status, (query, refused)


async def test_verify_answers_the_chain_is_whole(client: TestClient, cm: CaseApi) -> None:
    case_id = await _six_versions(cm)
    answer = await _call(client, "GET", f"/v1/cases/{case_id}/verify", cm.token)
    assert answer.status == 200, answer
    assert answer.body["case_id"] == case_id
    assert answer.body["valid"] is True, answer.body
    assert answer.body["events_checked"] == 6, answer.body
    assert answer.body["first_broken_link"] is None
    history = await cm.call("GET", f"/v1/cases/{case_id}/history", expect=200)
    assert answer.body["head_hash"] == history["events"][-1]["hash"]


# -- time travel ----------------------------------------------------------------------------------


async def test_as_of_version_and_as_of_are_one_or_the_other_and_well_formed(
        client: TestClient, cm: CaseApi) -> None:
    case_id = await _six_versions(cm)
    path = f"/v1/cases/{case_id}"
    first = await _call(client, "GET", f"{path}?as_of_version=1", cm.token)
    assert first.status == 200, first
    assert first.headers["ETag"] == '"1"'
    assert first.body["version"] == 1
    assert first.body["goals"] == []
    at = await _call(client, "GET", f"{path}?as_of=2026-03-02T09:00:00Z", cm.token)
    assert at.status == 200, at
    assert at.body["version"] == 6, at
    both = await _call(client, "GET", f"{path}?as_of_version=2&as_of=2026-03-02T09:00:00Z",
                       cm.token)
    assert both.status == 422, both
    for query in ("as_of_version=0", "as_of_version=-1", "as_of_version=abc",
                  "as_of_version=1.5", "as_of_version=", "as_of_version=%202",
                  "as_of_version=7", "as_of_version=99999999999", "as_of=yesterday",
                  "as_of=2026-03-02", "as_of=", "as_of=2026-13-02T09:00:00Z",
                  "as_of_version=2&as_of_version=3", "version=2"):
        refused = await _call(client, "GET", f"{path}?{query}", cm.token)
        assert refused.status in (400, 404, 422), (query, refused)


# -- rule 7: language warnings on every text a person writes ---------------------------------------

TERM = "offender"
FLAGGED = "Jo is an offender who fixes bikes"


async def _rich_case(cm: CaseApi) -> dict[str, str]:
    case_id = await _case(cm)
    goal = await cm.goal(case_id)
    ids = {"case": case_id, "goal": goal, "step": await cm.step(case_id, goal),
           "strength": await cm.strength(case_id)}
    ids["support"] = str((await cm.call("POST", f"/v1/cases/{case_id}/supports",
                                        {"name": "Aunt May"}, expect=201))["id"])
    ids["requirement"] = str((await cm.call("POST", f"/v1/cases/{case_id}/requirements",
                                            {"title": "Check in monthly"}, expect=201))["id"])
    return ids


# (method, path, body, the field the warning names); "{x}" filled from _rich_case
CHECKED = [
    ("POST", "/goals", {"title": FLAGGED, "domain": "legal", "source": "court"}, "title"),
    ("POST", "/goals", {"title": "Keep my flat", "domain": "housing", "source": "agency",
                        "why_it_matters": FLAGGED}, "why_it_matters"),
    ("POST", "/goals", {"title": "Keep my flat", "domain": "housing", "source": "agency",
                        "override_reason": FLAGGED, "status": "active"}, None),
    ("PATCH", "/goals/{goal}", {"title": FLAGGED}, "title"),
    ("PATCH", "/goals/{goal}", {"why_it_matters": FLAGGED}, "why_it_matters"),
    ("PATCH", "/goals/{goal}", {"target_date": "2026-06-01", "reason": FLAGGED}, "reason"),
    ("POST", "/goals/{goal}/status", {"status": "discontinued", "reason": FLAGGED}, "reason"),
    ("POST", "/strengths", {"category": "skill", "description": FLAGGED}, "description"),
    ("PATCH", "/strengths/{strength}", {"description": FLAGGED}, "description"),
    ("PATCH", "/strengths/{strength}", {"category": "talent", "reason": FLAGGED}, "reason"),
    ("DELETE", "/strengths/{strength}", {"reason": FLAGGED}, "reason"),
    ("DELETE", "/strengths/{strength}?reason=" + quote(FLAGGED), None, "reason"),
    ("POST", "/goals/{goal}/steps", {"description": FLAGGED, "owner": "participant"},
     "description"),
    ("PATCH", "/steps/{step}", {"description": FLAGGED}, "description"),
    ("PATCH", "/steps/{step}", {"due_date": "2026-04-01", "reason": FLAGGED}, "reason"),
    ("POST", "/steps/{step}/status", {"status": "no_longer_needed", "reason": FLAGGED},
     "reason"),
    ("POST", "/steps/{step}/status", {"status": "completed", "reason": FLAGGED}, "reason"),
    ("POST", "/steps/{step}/complete", {"note": FLAGGED}, "note"),
    ("POST", "/supports", {"name": "Coach Lee", "description": FLAGGED}, "description"),
    ("POST", "/supports", {"name": "Coach Lee", "relationship": FLAGGED}, "relationship"),
    ("POST", "/supports", {"name": "Coach Lee", "contact": FLAGGED}, "contact"),
    ("DELETE", "/supports/{support}", {"reason": FLAGGED}, "reason"),
    ("POST", "/requirements", {"title": FLAGGED}, "title"),
    ("POST", "/requirements", {"title": "Check in", "description": FLAGGED}, "description"),
    ("POST", "/requirements/{requirement}/status", {"status": "waived", "reason": FLAGGED},
     "reason"),
    ("POST", "/notes", {"text": FLAGGED}, "text"),
    ("POST", "/notes", {"text": "Jo is non-compliant and I know why"}, "text"),
    ("PATCH", "/participant", {"preferred_name": "Jordan", "reason": FLAGGED}, "reason"),
    ("POST", "/transfer", {"case_manager": "cm-2", "reason": FLAGGED}, "reason"),
    ("POST", "/close", {"reason": FLAGGED}, "reason"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), CHECKED,
                         ids=[f"{c[0]} {c[1]} {c[3]}" for c in CHECKED])
async def test_a_language_warning_names_the_field_it_was_found_in(
        client: TestClient, cm: CaseApi, method: str, path: str, body: Any,
        field: str | None) -> None:
    ids = await _rich_case(cm)
    if field is None:  # the override reason: a fourth active goal so it is recorded
        for title in ("Second goal", "Third goal"):
            await cm.goal(ids["case"], title)
        field = "override_reason"
    answer = await _call(client, method, f"/v1/cases/{ids['case']}" + path.format(**ids),
                         cm.token, body)
    assert answer.status in (200, 201), answer
    warnings = answer.body["warnings"]
    assert warnings, (method, path, answer.body)
    assert {w["field"] for w in warnings} == {field}, warnings
    for warning in warnings:
        assert all(warning[key] for key in ("term", "suggestion", "message")), warning
    if "non-compliant" in str(body):
        assert {w["term"] for w in warnings} == {"non-compliant", "I know"}, warnings
    else:
        assert [w["term"] for w in warnings] == [TERM], warnings


async def test_warnings_on_a_reopen_a_reschedule_and_a_review_summary(
        client: TestClient, cm: CaseApi) -> None:
    ids = await _rich_case(cm)
    base = f"/v1/cases/{ids['case']}"
    review = (await cm.agree(ids["case"]))["id"]
    moved = await cm.call("POST", f"{base}/reviews/{review}/reschedule",
                          {"due_date": "2026-04-20", "reason": FLAGGED}, expect=200)
    assert [(w["field"], w["term"]) for w in moved["warnings"]] == [("reason", TERM)]
    held = await cm.call("POST", f"{base}/reviews/{review}/held", {"summary": FLAGGED},
                         expect=200)
    assert [(w["field"], w["term"]) for w in held["warnings"]] == [("summary", TERM)]
    await cm.call("POST", f"{base}/close", {"reason": "Jo moved away"}, expect=200)
    reopened = await cm.call("POST", f"{base}/reopen", {"reason": FLAGGED}, expect=200)
    assert [(w["field"], w["term"]) for w in reopened["warnings"]] == [("reason", TERM)]


async def test_a_write_with_two_flagged_fields_names_each(client: TestClient,
                                                          cm: CaseApi) -> None:
    case_id = await _case(cm)
    answer = await cm.call("POST", f"/v1/cases/{case_id}/goals", {
        "title": "Stop being an addict", "domain": "substance_use", "source": "agency",
        "why_it_matters": "Jo failed to attend twice"}, expect=201)
    assert sorted((w["field"], w["term"]) for w in answer["warnings"]) == [
        ("title", "addict"), ("why_it_matters", "failed to")]


PARTICIPANTS_OWN = [
    ("POST", "/goals", {"title": "Find steady work", "domain": "employment",
                        "source": "participant", "in_their_words": "I know I was an addict"}),
    ("POST", "/strengths", {"category": "past_success", "description": "Kept a job a year",
                            "in_their_words": "I know I was an offender once"}),
    ("POST", "/agreements", {"participation": "phone", "present": ["Jo"],
                             "participant_statement": "I know I was an offender once"}),
    ("POST", "/notes", {"text": "Jo said: \u201cI know I was an addict\u201d"}),
]


@pytest.mark.parametrize(("method", "path", "body"), PARTICIPANTS_OWN,
                         ids=["goal-in-their-words", "strength-in-their-words",
                              "agreement-statement", "quoted-in-a-note"])
async def test_the_participants_own_words_are_not_corrected(
        client: TestClient, cm: CaseApi, method: str, path: str, body: Any) -> None:
    """Decision 0101 rule 7: `in_their_words`, `participant_statement` and what the writer
    quotes are recorded verbatim and not checked."""
    case_id = await _case(cm)
    await cm.goal(case_id)
    answer = await _call(client, method, f"/v1/cases/{case_id}{path}", cm.token, body)
    assert answer.status == 201, answer
    assert answer.body["warnings"] == [], answer.body
    recorded = answer.body["events"][0]["data"]
    assert any("I know" in str(v) for v in recorded.values()), recorded


async def test_an_idempotent_replay_answers_the_same_warnings_and_id(
        client: TestClient, cm: CaseApi, pool: asyncpg.Pool) -> None:
    case_id = await _case(cm)
    headers = {"Idempotency-Key": f"s22-note-{case_id}"}
    first = await _call(client, "POST", f"/v1/cases/{case_id}/notes", cm.token,
                        {"text": FLAGGED}, headers=headers)
    before = await _events(pool, case_id)
    again = await _call(client, "POST", f"/v1/cases/{case_id}/notes", cm.token,
                        {"text": FLAGGED}, headers=headers)
    assert again.status == first.status == 201
    assert again.body == first.body
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert await _events(pool, case_id) == before


async def test_a_revision_that_changes_nothing_is_refused_and_echoed_text_not_warned_again(
        client: TestClient, cm: CaseApi, token: TokenFactory) -> None:
    case_id = await _case(cm)
    goal = (await cm.call("POST", f"/v1/cases/{case_id}/goals", {
        "title": "Stay away from offenders", "domain": "legal", "source": "court"},
        expect=201))
    assert [w["field"] for w in goal["warnings"]] == ["title"]
    path = f"/v1/cases/{case_id}/goals/{goal['id']}"
    same = await _call(client, "PATCH", path, cm.token, {"title": "Stay away from offenders"})
    assert same.status == 409, same
    moved = await _call(client, "PATCH", path, cm.token,
                        {"title": "Stay away from offenders", "target_date": "2026-09-01"})
    assert moved.status == 200, moved
    assert moved.body["warnings"] == [], moved.body
    assert moved.body["events"][0]["data"].get("title") is None


# -- more of the lifecycle ------------------------------------------------------------------------


async def test_a_transferred_case_is_written_by_its_new_case_manager_only(
        client: TestClient, cm: CaseApi, token: TokenFactory, pool: asyncpg.Pool) -> None:
    case_id = await _case(cm)
    await cm.call("POST", f"/v1/cases/{case_id}/transfer",
                  {"case_manager": "cm-2", "reason": "Caseload balancing"}, expect=200)
    before = await _events(pool, case_id)
    old = await _call(client, "POST", f"/v1/cases/{case_id}/notes", cm.token,
                      {"text": "Called Jo"})
    assert old.status in (403, 404), old
    assert await _events(pool, case_id) == before
    new = await _call(client, "POST", f"/v1/cases/{case_id}/notes", token(sub="cm-2"),
                      {"text": "Called Jo"})
    assert new.status == 201, new
    plan = await _call(client, "GET", f"/v1/cases/{case_id}", token(sub="cm-2"))
    assert plan.body["case_manager"] == "cm-2"


async def test_closing_cancels_the_review_and_agreeing_after_reopening_schedules_anew(
        client: TestClient, cm: CaseApi, clock: FakeClock) -> None:
    case_id = await _case(cm, "low")
    await cm.goal(case_id)
    first = (await cm.agree(case_id))["id"]
    base = f"/v1/cases/{case_id}"
    await cm.call("POST", f"{base}/close", {"reason": "Jo moved away", "outcome": "moved"},
                  expect=200)
    plan = await cm.plan(case_id)
    assert plan["next_review"] is None
    assert [(r["review_id"], r["status"]) for r in plan["reviews"]] == [(first, "cancelled")]
    clock.advance(days=10)
    await cm.call("POST", f"{base}/reopen", {"reason": "Jo came back to town"}, expect=200)
    assert (await cm.plan(case_id))["next_review"] is None
    held = await _call(client, "POST", f"{base}/reviews/{first}/held", cm.token, {})
    assert held.status == 409, held
    again = await _call(client, "POST", f"{base}/agreements", cm.token, _agreement())
    assert _types(again) == ["PlanAgreed", "ReviewScheduled"]
    assert again.body["events"][1]["data"]["due_date"] == str(TODAY + timedelta(days=100))
    assert (await cm.plan(case_id))["next_review"]["review_id"] == again.body["id"] != first


async def test_a_review_is_held_on_a_day_between_its_scheduling_and_today(
        client: TestClient, cm: CaseApi, clock: FakeClock, pool: asyncpg.Pool) -> None:
    case_id = await _case(cm, "high")
    await cm.goal(case_id)
    review = (await cm.agree(case_id))["id"]
    path = f"/v1/cases/{case_id}/reviews/{review}/held"
    clock.advance(days=3)
    before = await _events(pool, case_id)
    for held_on in (str(TODAY - timedelta(days=1)), str(TODAY + timedelta(days=4)),
                    "2026-02-30", "yesterday"):
        refused = await _call(client, "POST", path, cm.token, {"held_on": held_on})
        assert refused.status == 422, (held_on, refused)
        assert _fields(refused.body) == ["body.held_on"], refused.body
    assert await _events(pool, case_id) == before
    held = await _call(client, "POST", path, cm.token)  # no body: held today
    assert held.status == 200, held
    assert held.body["events"][0]["data"]["held_on"] == str(TODAY + timedelta(days=3))
    assert held.body["events"][1]["data"]["due_date"] == str(TODAY + timedelta(days=33))


async def test_a_review_is_moved_only_with_a_reason_and_to_today_or_later(
        client: TestClient, cm: CaseApi) -> None:
    case_id = await _case(cm)
    await cm.goal(case_id)
    review = (await cm.agree(case_id))["id"]
    path = f"/v1/cases/{case_id}/reviews/{review}/reschedule"
    for body in ({"due_date": "2026-04-10"}, {"due_date": "2026-04-10", "reason": "."},
                 {"due_date": "2026-03-01", "reason": "Jo is away"}):
        refused = await _call(client, "POST", path, cm.token, body)
        assert refused.status == 422, (body, refused)
    moved = await _call(client, "POST", path, cm.token,
                        {"due_date": "2026-04-10", "reason": "Jo is away that week"})
    assert moved.status == 200, moved
    data = moved.body["events"][0]["data"]
    assert (data["basis"], data["review_id"], data["due_date"], data["reason"]) == (
        "rescheduled", review, "2026-04-10", "Jo is away that week")
    assert "id" not in moved.body
    assert (await cm.plan(case_id))["next_review"]["due_date"] == "2026-04-10"


async def test_an_agreement_names_the_active_goals_and_needs_names_and_a_statement(
        client: TestClient, cm: CaseApi, pool: asyncpg.Pool) -> None:
    case_id = await _case(cm)
    path = f"/v1/cases/{case_id}/agreements"
    none_yet = await _call(client, "POST", path, cm.token, _agreement("did_not_agree"))
    assert none_yet.status == 409, none_yet
    active = await cm.goal(case_id)
    await cm.goal(case_id, "Learn to swim", status="future")
    before = await _events(pool, case_id)
    for bad in ({"present": []}, {"present": ["-"]}, {"participant_statement": "."},
                {"participation": "letter"}, {"participant_statement": None}):
        refused = await _call(client, "POST", path, cm.token, {**_agreement(), **bad})
        assert refused.status == 422, (bad, refused)
    assert await _events(pool, case_id) == before
    agreed = await _call(client, "POST", path, cm.token,
                         {**_agreement(), "participation": "video"})
    data = agreed.body["events"][0]["data"]
    assert (data["goal_ids"], data["participation"], data["present"]) == (
        [active], "video", ["Jo", "Sam"])


async def test_steps_of_an_achieved_or_discontinued_goal(client: TestClient, cm: CaseApi) -> None:
    case_id = await _case(cm)
    goal = await cm.goal(case_id)
    step = await cm.step(case_id, goal)
    base = f"/v1/cases/{case_id}"
    await cm.call("POST", f"{base}/goals/{goal}/status",
                  {"status": "discontinued", "reason": "Jo chose another path"}, expect=200)
    for path, body in ((f"/steps/{step}/complete", {}),
                       (f"/steps/{step}/status", {"status": "in_progress"}),
                       (f"/goals/{goal}/steps", {"description": "Call", "owner": "participant"})):
        refused = await _call(client, "POST", base + path, cm.token, body)
        assert refused.status == 409, (path, refused)
    dropped = await _call(client, "POST", f"{base}/steps/{step}/status", cm.token,
                          {"status": "no_longer_needed", "reason": "The goal was set aside"})
    assert dropped.status == 200, dropped
    other = await cm.goal(case_id, "Keep my flat")
    await cm.call("POST", f"{base}/goals/{other}/status", {"status": "achieved"}, expect=200)
    added = await _call(client, "POST", f"{base}/goals/{other}/steps", cm.token,
                        {"description": "Pay the rent", "owner": "participant"})
    assert added.status == 409, added


async def test_a_revision_takes_no_reason_in_its_query(client: TestClient, cm: CaseApi,
                                                       pool: asyncpg.Pool) -> None:
    case_id = await _case(cm)
    strength = await cm.strength(case_id)
    before = await _events(pool, case_id)
    answer = await _call(client, "PATCH", f"/v1/cases/{case_id}/strengths/{strength}"
                         "?reason=Typo", cm.token, {"description": "Mends bikes"})
    assert answer.status in (400, 422), answer
    assert await _events(pool, case_id) == before


async def test_a_removal_retried_with_its_key_is_replayed_and_another_reason_refused(
        client: TestClient, cm: CaseApi, pool: asyncpg.Pool) -> None:
    case_id, item = await _removable(cm, "strengths")
    path = f"/v1/cases/{case_id}/strengths/{item}"
    key = {"Idempotency-Key": f"s22-remove-{case_id}"}
    first = await _call(client, "DELETE", f"{path}?reason=Moved%20away", cm.token, headers=key)
    assert first.status == 200, first
    again = await _call(client, "DELETE", f"{path}?reason=Moved%20away", cm.token, headers=key)
    assert (again.status, again.body) == (200, first.body)
    other = await _call(client, "DELETE", f"{path}?reason=Another", cm.token, headers=key)
    assert other.status == 422, other
    assert await _events(pool, case_id) == 3


async def test_a_long_reason_in_the_query_is_taken_or_refused_as_a_problem(
        served_records: tuple[int, asyncpg.Pool], token: TokenFactory) -> None:
    """A reason within the body's 4000 characters, sent as ?reason= to the service as it runs
    (its own runner, decision 0013): recorded, or refused with a problem, never bare text.
    4000 non-ASCII characters outgrow the 8 KiB request line once percent-encoded."""
    port, pool = served_records
    base = f"http://127.0.0.1:{port}/v1/cases"
    headers = bearer(token())
    reason = ("Jo\u2019s choice \u2014 caf\u00e9 " * 200)[:4000].strip()
    async with aiohttp.ClientSession() as session:
        async with session.post(base, json={"participant": PARTICIPANT, "case_manager": "cm-1",
                                            "risk_level": "low"}, headers=headers) as opened:
            case_id = (await opened.json())["case_id"]
        async with session.post(f"{base}/{case_id}/strengths", headers=headers, json={
                "category": "skill", "description": "Fixes bikes"}) as recorded:
            item = (await recorded.json())["id"]
        async with session.delete(f"{base}/{case_id}/strengths/{item}?reason=" + quote(reason),
                                  headers=headers) as answer:
            status, content_type, text = answer.status, answer.content_type, await answer.text()
    assert status < 500, text
    if status >= 400:
        assert content_type == PROBLEM, (status, text)
        assert await _events(pool, case_id) == 2
    else:
        assert json.loads(text)["events"][0]["data"]["reason"] == reason


@pytest.mark.parametrize(("raw", "recorded"), [
    ("Moved+away", "Moved away"),  # form encoding: "+" is a space
    ("Moved%20away", "Moved away"),
    ("Jo%2BSam%20agreed", "Jo+Sam agreed"),
])
async def test_a_query_reason_is_read_as_form_encoding_reads_it(
        client: TestClient, cm: CaseApi, raw: str, recorded: str) -> None:
    case_id, item = await _removable(cm, "supports")
    answer = await _call(client, "DELETE", f"/v1/cases/{case_id}/supports/{item}?reason={raw}",
                         cm.token)
    assert answer.status == 200, answer
    assert answer.body["events"][0]["data"]["reason"] == recorded


async def test_a_transfer_to_the_same_case_manager_spelt_with_spaces_is_refused(
        client: TestClient, cm: CaseApi, pool: asyncpg.Pool) -> None:
    case_id = await _case(cm)
    answer = await _call(client, "POST", f"/v1/cases/{case_id}/transfer", cm.token,
                         {"case_manager": " cm-1 ", "reason": "Caseload balancing"})
    assert answer.status in (409, 422), answer
    assert await _events(pool, case_id) == 1


async def test_a_removed_strength_leaves_the_goals_it_was_linked_to(
        client: TestClient, cm: CaseApi) -> None:
    case_id = await _case(cm)
    strength = await cm.strength(case_id)
    goal = await cm.goal(case_id, strength_ids=[strength])
    await cm.call("DELETE", f"/v1/cases/{case_id}/strengths/{strength}?reason=Recorded%20twice",
                  expect=200)
    plan = await cm.plan(case_id)
    assert plan["strengths"] == []
    assert next(g for g in plan["goals"] if g["goal_id"] == goal)["strength_ids"] == []
    relink = await _call(client, "POST", f"/v1/cases/{case_id}/goals", cm.token,
                         _goal_body("Keep my flat", strength_ids=[strength]))
    assert relink.status == 422, relink
    assert _fields(relink.body) == ["body.strength_ids"]
    before = await _call(client, "GET", f"/v1/cases/{case_id}?as_of_version=3", cm.token)
    assert [s["strength_id"] for s in before.body["strengths"]] == [strength]


async def test_updated_at_is_the_time_of_the_last_event(
        client: TestClient, cm: CaseApi, clock: FakeClock) -> None:
    case_id = await _case(cm)
    opened = (await cm.plan(case_id))["updated_at"]
    clock.advance(hours=2, microseconds=7)
    note = await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Met at the library"},
                         expect=201)
    plan = await cm.plan(case_id)
    assert plan["updated_at"] == note["events"][0]["recorded_at"] != opened
    assert (await cm.plan(case_id, as_of_version=1))["updated_at"] == opened
