"""The plan API end to end: building a plan with a participant, rules, versions, time travel."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from datetime import date, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.records.http.app import RECORDS
from services.records.store import events as events_module
from services.records.store.events import EventStore, NewEvent
from tests.conftest import FakeClock, TokenFactory, bearer
from tests.records_api import CaseApi, event_count

pytestmark = pytest.mark.usefixtures("fresh_database_url")


async def test_opening_a_case_answers_201_with_location_and_etag(client: TestClient,
                                                                  token: TokenFactory) -> None:
    response = await client.post("/v1/cases", json={
        "participant": {"name": "Jordan Rivera"}, "case_manager": "cm-1",
        "risk_level": "high"}, headers={"Authorization": f"Bearer {token()}"})
    body = await response.json()
    assert response.status == 201, body
    assert response.headers["Location"] == f"/v1/cases/{body['case_id']}"
    assert response.headers["ETag"] == '"1"'
    assert body["version"] == 1
    assert [e["type"] for e in body["events"]] == ["CaseOpened"]
    assert body["events"][0]["actor"] == "cm-1"
    assert body["warnings"] == []


async def test_building_a_plan_with_the_participant(cm: CaseApi, clock: FakeClock) -> None:
    case_id = await cm.open_case(risk_level="moderate")
    strength = await cm.strength(case_id)
    goal = await cm.goal(case_id, strength_ids=[strength])
    step = await cm.step(case_id, goal, due_date="2026-03-09")
    support = await cm.call("POST", f"/v1/cases/{case_id}/supports",
                            {"name": "Aunt Maria", "relationship": "aunt"}, expect=201)
    requirement = await cm.call("POST", f"/v1/cases/{case_id}/requirements",
                                {"title": "Attend 8 group sessions"}, expect=201)
    agreed = await cm.agree(case_id)
    assert [e["type"] for e in agreed["events"]] == ["PlanAgreed", "ReviewScheduled"]
    completed = await cm.call("POST", f"/v1/cases/{case_id}/steps/{step}/complete",
                              {"note": "Jo went on Tuesday"}, expect=200)
    assert [e["type"] for e in completed["events"]] == ["ActionStepCompleted"]

    plan = await cm.plan(case_id)
    assert set(plan) >= {"case_id", "version", "status", "participant", "case_manager",
                         "risk_level", "strengths", "goals", "supports", "requirements",
                         "agreement", "next_review", "updated_at"}
    assert plan["version"] == completed["version"] == 9
    assert plan["status"] == "open"
    assert plan["goals"][0]["in_their_words"] == "I want a job where I use my hands"
    assert plan["goals"][0]["steps"][0]["status"] == "completed"
    assert plan["goals"][0]["strength_ids"] == [strength]
    assert plan["supports"][0]["support_id"] == support["id"]
    assert plan["requirements"][0]["requirement_id"] == requirement["id"]
    assert plan["agreement"]["participation"] == "in_person"
    # moderate risk: the first review is 60 days after agreement
    assert plan["next_review"]["due_date"] == (clock.now.date() + timedelta(days=60)).isoformat()


async def test_holding_a_review_schedules_the_next_by_risk(cm: CaseApi,
                                                           clock: FakeClock) -> None:
    case_id = await cm.open_case(risk_level="high")
    await cm.goal(case_id)
    agreed = await cm.agree(case_id)
    review = (await cm.plan(case_id))["next_review"]
    assert review["due_date"] == (clock.now.date() + timedelta(days=30)).isoformat()
    assert agreed["id"] == review["review_id"], "the agreement answers with the review it set"
    clock.advance(days=28)
    held = await cm.call("POST", f"/v1/cases/{case_id}/reviews/{review['review_id']}/held",
                         {"summary": "Jo has kept every appointment"}, expect=200)
    assert [e["type"] for e in held["events"]] == ["ReviewHeld", "ReviewScheduled"]
    next_review = (await cm.plan(case_id))["next_review"]
    assert next_review["review_id"] == held["id"]
    assert next_review["due_date"] == (clock.now.date() + timedelta(days=30)).isoformat()
    again = await cm.call("POST", f"/v1/cases/{case_id}/reviews/{review['review_id']}/held",
                          {}, expect=409)
    assert again["status"] == 409


async def test_a_review_is_not_recorded_as_held_before_it_was_scheduled(
        cm: CaseApi, clock: FakeClock) -> None:
    """A mistyped year would put the next review in the past, overdue at once."""
    case_id = await cm.open_case()
    await cm.goal(case_id)
    await cm.agree(case_id)
    review = (await cm.plan(case_id))["next_review"]
    clock.advance(days=50)
    year_early = (clock.now.date() - timedelta(days=365)).isoformat()
    refused = await cm.call("POST", f"/v1/cases/{case_id}/reviews/{review['review_id']}/held",
                            {"summary": "Good progress", "held_on": year_early}, expect=422)
    assert refused["errors"][0]["field"].endswith("held_on")
    assert (await cm.plan(case_id))["next_review"] == review


async def test_the_steps_of_a_discontinued_goal_are_not_worked_on(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    goal = await cm.goal(case_id)
    step = await cm.step(case_id, goal)
    await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/status",
                  {"status": "discontinued", "reason": "Jo chose another path"}, expect=200)
    for path, body in ((f"steps/{step}/complete", {}),
                       (f"steps/{step}/status", {"status": "in_progress"})):
        refused = await cm.call("POST", f"/v1/cases/{case_id}/{path}", body, expect=409)
        assert refused["type"].endswith("goal-discontinued")
    await cm.call("POST", f"/v1/cases/{case_id}/steps/{step}/status",
                  {"status": "no_longer_needed", "reason": "its goal was set aside"}, expect=200)


async def test_closing_shows_the_pending_review_as_cancelled(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    await cm.goal(case_id)
    await cm.agree(case_id)
    await cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "Plan complete"}, expect=200)
    plan = await cm.plan(case_id)
    assert plan["next_review"] is None
    assert [r["status"] for r in plan["reviews"]] == ["cancelled"]


async def test_a_removed_strength_leaves_the_steps_that_built_on_it_too(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    strength = await cm.strength(case_id)
    goal = await cm.goal(case_id, strength_ids=[strength])
    await cm.step(case_id, goal, strength_ids=[strength])
    await cm.call("DELETE", f"/v1/cases/{case_id}/strengths/{strength}",
                  {"reason": "Jo asked to reword it"}, expect=200)
    [goal_view] = (await cm.plan(case_id))["goals"]
    assert goal_view["strength_ids"] == []
    assert goal_view["steps"][0]["strength_ids"] == []


async def test_the_short_forms_need_no_body(cm: CaseApi) -> None:
    """`…/complete` and `…/held` take only optional fields: a bare POST will do."""
    case_id = await cm.open_case()
    goal = await cm.goal(case_id)
    step = await cm.step(case_id, goal)
    await cm.agree(case_id)
    done = await cm.call("POST", f"/v1/cases/{case_id}/steps/{step}/complete", expect=200)
    assert [e["type"] for e in done["events"]] == ["ActionStepCompleted"]
    review = (await cm.plan(case_id))["next_review"]["review_id"]
    held = await cm.call("POST", f"/v1/cases/{case_id}/reviews/{review}/held", expect=200)
    assert [e["type"] for e in held["events"]] == ["ReviewHeld", "ReviewScheduled"]
    refused = await cm.call("POST", f"/v1/cases/{case_id}/notes", expect=415)  # text needed
    assert refused["status"] == 415


async def test_a_disagreement_is_recorded_and_schedules_nothing(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    await cm.goal(case_id)
    result = await cm.agree(case_id, outcome="did_not_agree")
    assert [e["type"] for e in result["events"]] == ["PlanAgreed"]
    assert "id" not in result, "nothing was created"
    plan = await cm.plan(case_id)
    assert plan["next_review"] is None
    assert plan["agreement"]["outcome"] == "did_not_agree"


async def test_the_fourth_active_goal_needs_an_override_reason(cm: CaseApi,
                                                               fresh_pool: asyncpg.Pool) -> None:
    case_id = await cm.open_case()
    for title in ["Steady work", "A place of my own", "Reconnect with my daughter"]:
        await cm.goal(case_id, title=title)
    before = await event_count(fresh_pool)
    refused = await cm.call("POST", f"/v1/cases/{case_id}/goals", {
        "title": "Learn to drive", "domain": "education", "source": "participant",
        "in_their_words": "I want my licence"}, expect=422)
    assert "override_reason" in str(refused)
    assert await event_count(fresh_pool) == before
    future = await cm.goal(case_id, title="Learn to drive", status="future")
    assert future
    allowed = await cm.call("POST", f"/v1/cases/{case_id}/goals", {
        "title": "Finish GED", "domain": "education", "source": "court",
        "override_reason": "court order requires it now"}, expect=201)
    assert allowed["events"][0]["data"]["override_reason"] == "court order requires it now"
    assert allowed["events"][0]["reason"] == "court order requires it now"


async def test_participant_goals_need_their_own_words(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    refused = await cm.call("POST", f"/v1/cases/{case_id}/goals", {
        "title": "Find work", "domain": "employment", "source": "participant"}, expect=422)
    assert refused["errors"][0]["field"].endswith("in_their_words")


async def test_invalid_transitions_are_refused(cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    case_id = await cm.open_case()
    goal = await cm.goal(case_id)
    step = await cm.step(case_id, goal)
    await cm.call("POST", f"/v1/cases/{case_id}/steps/{step}/complete", {}, expect=200)
    await cm.call("POST", f"/v1/cases/{case_id}/steps/{step}/complete", {}, expect=409)
    await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/status",
                  {"status": "discontinued"}, expect=422)  # a reason is required
    await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/status",
                  {"status": "discontinued", "reason": "Jo chose another path"}, expect=200)
    await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/status",
                  {"status": "achieved"}, expect=409)
    await cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "plan complete"},
                  expect=200)
    before = await event_count(fresh_pool)
    await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "late note"}, expect=409)
    await cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "again"}, expect=409)
    assert await event_count(fresh_pool) == before
    await cm.call("POST", f"/v1/cases/{case_id}/reopen", {"reason": "Jo asked to come back"},
                  expect=200)
    await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "welcome back"}, expect=201)


async def test_removals_need_a_reason_in_body_or_query(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    strength = await cm.strength(case_id)
    await cm.call("DELETE", f"/v1/cases/{case_id}/strengths/{strength}", expect=422)
    removed = await cm.call("DELETE",
                            f"/v1/cases/{case_id}/strengths/{strength}?reason=recorded+twice",
                            expect=200)
    assert removed["events"][0]["reason"] == "recorded twice"
    support = (await cm.call("POST", f"/v1/cases/{case_id}/supports", {"name": "Coach Lee"},
                             expect=201))["id"]
    await cm.call("DELETE", f"/v1/cases/{case_id}/supports/{support}",
                  {"reason": "moved away"}, expect=200)
    plan = await cm.plan(case_id)
    assert plan["strengths"] == []
    assert plan["supports"] == []


async def test_language_guide_warns_but_the_write_succeeds(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    result = await cm.call("POST", f"/v1/cases/{case_id}/notes",
                           {"text": "Client is non-compliant and an addict."}, expect=201)
    terms = {w["term"].lower() for w in result["warnings"]}
    assert {"non-compliant", "addict"} <= terms
    assert all(w["suggestion"] for w in result["warnings"])
    clean = await cm.call("POST", f"/v1/cases/{case_id}/notes",
                          {"text": "Jo chose to reschedule and named a new day."}, expect=201)
    assert clean["warnings"] == []


async def test_if_match_refuses_a_stale_write_with_the_current_version(
        cm: CaseApi, client: TestClient, fresh_pool: asyncpg.Pool) -> None:
    case_id = await cm.open_case()
    await cm.strength(case_id)
    before = await event_count(fresh_pool)
    stale = await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "hello"},
                          headers={"If-Match": '"1"'}, expect=412)
    assert stale["current_version"] == 2
    assert await event_count(fresh_pool) == before
    fresh = await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "hello"},
                          headers={"If-Match": '"2"'}, expect=201)
    assert fresh["version"] == 3


async def test_concurrent_writers_without_if_match_all_succeed(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    goal = await cm.goal(case_id)
    steps = [await cm.step(case_id, goal, description=f"step {n}") for n in range(4)]

    async def writer(n: int) -> Any:
        if n < 4:
            return await cm.call("POST", f"/v1/cases/{case_id}/steps/{steps[n]}/complete", {})
        return await cm.call("POST", f"/v1/cases/{case_id}/strengths",
                             {"category": "talent", "description": f"talent {n}"})

    results = await asyncio.gather(*[writer(n) for n in range(8)])
    assert all("version" in r for r in results), results
    assert sorted(r["version"] for r in results) == list(range(7, 15))
    plan = await cm.plan(case_id)
    assert plan["version"] == 14
    assert all(s["status"] == "completed" for s in plan["goals"][0]["steps"])
    assert len(plan["strengths"]) == 4


async def test_concurrent_keyed_writers_all_succeed_and_replay(cm: CaseApi,
                                                               fresh_pool: asyncpg.Pool) -> None:
    """Racing writes that each carry an Idempotency-Key: every one lands once, and a retry
    of each key answers the original result."""
    case_id = await cm.open_case()

    async def writer(n: int) -> Any:
        return await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": f"note {n}"},
                             headers={"Idempotency-Key": f"race-note-{n}"}, expect=201)

    first = await asyncio.gather(*[writer(n) for n in range(8)])
    assert sorted(r["version"] for r in first) == list(range(2, 10))
    count = await event_count(fresh_pool)
    again = await asyncio.gather(*[writer(n) for n in range(8)])
    assert [r["version"] for r in again] == [r["version"] for r in first]
    assert await event_count(fresh_pool) == count


async def racing(cm: CaseApi, pool: asyncpg.Pool, *requests: Awaitable[Any]) -> list[Any]:
    """Send ``requests`` while appends are held up, and let the first through only once every
    one has looked for its Idempotency-Key and waits for its turn at its case."""
    locks = cm.client.app[RECORDS].commands.case_locks
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE records.streams IN EXCLUSIVE MODE")  # reads go on
        sent = asyncio.gather(*requests)
        for _ in range(3000):  # up to 30 s
            if locks.writers() == len(requests):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"only {locks.writers()} of {len(requests)} writes arrived")
    return list(await sent)


async def test_a_retry_racing_its_original_gets_the_original_answer(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    """A client resends before the first answer came. Each copy answers as the original did
    (they got 412 against the version the original left, or 409 case-exists for an opening),
    the write happens once, and the same key with another body is refused as reused."""
    case_id = await cm.open_case()
    headers = {"Idempotency-Key": "note-once", "If-Match": '"1"'}

    def note(text: str) -> Awaitable[Any]:
        return cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": text}, headers=headers)

    answers = await racing(cm, fresh_pool, *[note("Jo called") for _ in range(4)], note("other"))
    assert answers[:4] == [answers[0]] * 4, answers
    assert answers[0]["version"] == 2
    assert answers[4]["type"].endswith("idempotency-key-reused"), answers[4]
    body = {"participant": {"name": "Ana"}, "case_manager": "cm-1", "risk_level": "low"}
    opened = await racing(cm, fresh_pool, *[cm.call("POST", "/v1/cases", body,
                                                headers={"Idempotency-Key": "open-once"})
                                        for _ in range(4)])
    assert opened == [opened[0]] * 4, opened
    assert await event_count(fresh_pool) == 3


async def test_a_burst_of_writers_to_one_case_all_succeed(cm: CaseApi) -> None:
    """Independent writes succeed on their merits, never on timing: a burst of 120 writers
    to one case used to run out of retries (503 contention)."""
    case_id = await cm.open_case()
    answers = await asyncio.gather(*[cm.call("POST", f"/v1/cases/{case_id}/notes",
                                             {"text": f"note {n}"}) for n in range(120)])
    assert sorted(a.get("version", a.get("status")) for a in answers) == list(range(2, 122))


async def test_concurrent_writers_are_re_decided_against_the_new_state(cm: CaseApi) -> None:
    """Two writers race to add a third active goal: the loser is refused by the cap rule."""
    case_id = await cm.open_case()
    await cm.goal(case_id, title="one")
    await cm.goal(case_id, title="two")
    results = await asyncio.gather(*[cm.call("POST", f"/v1/cases/{case_id}/goals", {
        "title": f"three-{n}", "domain": "housing", "source": "agency"}) for n in range(4)])
    assert sum("version" in r for r in results) == 1
    assert sum(r.get("status") == 422 for r in results) == 3


async def test_idempotency_key_replays_the_original_answer(cm: CaseApi,
                                                           fresh_pool: asyncpg.Pool) -> None:
    case_id = await cm.open_case()
    headers = {"Idempotency-Key": "note-7f3a"}
    first = await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Jo called"},
                          headers=headers, expect=201)
    count = await event_count(fresh_pool)
    second = await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Jo called"},
                           headers=headers, expect=201)
    assert second == first
    # the same JSON encoded another way (a client library's retry, say) is the same request
    respaced = await cm.client.post(f"/v1/cases/{case_id}/notes",
                                    data=b'{ "text" :  "Jo called" }',
                                    headers={**bearer(cm.token), **headers,
                                             "Content-Type": "application/json"})
    assert respaced.status == 201
    assert await respaced.json() == first
    assert await event_count(fresh_pool) == count
    other = await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "different"},
                          headers=headers, expect=422)
    assert other["type"].endswith("idempotency-key-reused")
    assert await event_count(fresh_pool) == count


async def test_an_idempotency_key_covers_the_query_string_too(cm: CaseApi,
                                                              fresh_pool: asyncpg.Pool) -> None:
    """A removal's reason may come as ?reason=: another reason is another request."""
    case_id = await cm.open_case()
    strength = await cm.strength(case_id)
    headers = {"Idempotency-Key": "remove-strength-1"}
    path = f"/v1/cases/{case_id}/strengths/{strength}"
    await cm.call("DELETE", f"{path}?reason=duplicate", headers=headers, expect=200)
    count = await event_count(fresh_pool)
    replay = await cm.call("DELETE", f"{path}?reason=duplicate", headers=headers, expect=200)
    assert replay["version"] == 3
    other = await cm.call("DELETE", f"{path}?reason=something-else", headers=headers,
                          expect=422)
    assert other["type"].endswith("idempotency-key-reused")
    assert await event_count(fresh_pool) == count


async def test_an_idempotency_key_belongs_to_the_path_it_was_first_sent_to(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    """The same key and body sent to another case is another request: replaying the first
    case's answer would lose the second note silently."""
    first, second = await cm.open_case(), await cm.open_case()
    headers = {"Idempotency-Key": "note-1"}
    answer = await cm.call("POST", f"/v1/cases/{first}/notes", {"text": "Jo called"},
                           headers=headers, expect=201)
    assert answer["case_id"] == first
    count = await event_count(fresh_pool)
    elsewhere = await cm.call("POST", f"/v1/cases/{second}/notes", {"text": "Jo called"},
                              headers=headers, expect=422)
    assert elsewhere["type"].endswith("idempotency-key-reused")
    assert await event_count(fresh_pool) == count


async def test_an_explicit_null_and_a_missing_field_are_different_requests(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    """A PATCH with "due_date": null clears the date, one without it leaves the date: under
    one key they are two requests, not a retry."""
    case_id = await cm.open_case()
    goal = await cm.goal(case_id)
    step = await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/steps",
                         {"description": "Call the landlord", "owner": "participant",
                          "due_date": "2026-03-20"}, expect=201)
    headers = {"Idempotency-Key": "clear-date"}
    path = f"/v1/cases/{case_id}/steps/{step['id']}"
    change = {"description": "Call the landlord together", "reason": "no date for now"}
    await cm.call("PATCH", path, {**change, "due_date": None}, headers=headers, expect=200)
    count = await event_count(fresh_pool)
    other = await cm.call("PATCH", path, change, headers=headers, expect=422)
    assert other["type"].endswith("idempotency-key-reused")
    assert await event_count(fresh_pool) == count


async def test_a_replayed_answer_says_it_is_one(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    headers = {**bearer(cm.token), "Idempotency-Key": "note-replay"}
    path = f"/v1/cases/{case_id}/notes"
    first = await cm.client.post(path, json={"text": "Jo called"}, headers=headers)
    assert "Idempotent-Replayed" not in first.headers
    again = await cm.client.post(path, json={"text": "Jo called"}, headers=headers)
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"


async def test_opening_a_case_is_idempotent_too(cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    body = {"participant": {"name": "Ana"}, "case_manager": "cm-1", "risk_level": "low"}
    headers = {"Idempotency-Key": "open-ana"}
    first = await cm.call("POST", "/v1/cases", body, headers=headers, expect=201)
    second = await cm.call("POST", "/v1/cases", body, headers=headers, expect=201)
    assert first["case_id"] == second["case_id"]
    assert await event_count(fresh_pool) == 1


async def test_an_idempotency_key_never_replays_another_agencys_answer(
        cm: CaseApi, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    """Agency ``a:b`` with sub ``c`` and agency ``a`` with sub ``b:c``: two callers whose
    names joined with a colon read the same."""
    body = {"participant": {"name": "Ana", "email": "ana@example.org"}, "case_manager": "c",
            "risk_level": "low"}
    headers = {"Idempotency-Key": "open-1"}
    theirs = await cm.call("POST", "/v1/cases", body, headers=headers, expect=201,
                           token=token(role="supervisor", sub="c", agency="a:b"))
    mine = await cm.call("POST", "/v1/cases", body, headers=headers, expect=201,
                         token=token(role="supervisor", sub="b:c", agency="a"))
    assert mine["case_id"] != theirs["case_id"]
    assert await event_count(fresh_pool) == 2
    assert [(r["stream_id"], r["agency"]) for r in await fresh_pool.fetch(
        "SELECT stream_id, data->>'agency' AS agency FROM records.events"
        " ORDER BY global_position")] == [
        (uuid.UUID(theirs["case_id"]), "a:b"), (uuid.UUID(mine["case_id"]), "a")]


async def test_a_step_set_back_to_completed_shows_its_reason_in_history(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    step = await cm.step(case_id, await cm.goal(case_id))
    path = f"/v1/cases/{case_id}/steps/{step}/status"
    await cm.call("POST", path, {"status": "no_longer_needed", "reason": "Agency closed"},
                  expect=200)
    answer = await cm.call("POST", path, {"status": "completed",
                                          "reason": "Marked by mistake: Jo had called"},
                           expect=200)
    [event] = answer["events"]
    assert (event["type"], event["reason"]) == ("ActionStepCompleted",
                                                "Marked by mistake: Jo had called")
    assert event["data"]["note"] is None
    history = await cm.call("GET", f"/v1/cases/{case_id}/history?after_version=4", expect=200)
    assert [e["reason"] for e in history["events"]] == ["Marked by mistake: Jo had called"]


async def test_history_pages_with_actor_reason_and_time(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    strength = await cm.strength(case_id)
    await cm.call("DELETE", f"/v1/cases/{case_id}/strengths/{strength}",
                  {"reason": "Jo asked to reword it"}, expect=200)
    for n in range(3):
        await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": f"note {n}"}, expect=201)
    first = await cm.call("GET", f"/v1/cases/{case_id}/history?limit=2", expect=200)
    assert [e["version"] for e in first["events"]] == [1, 2]
    assert first["next_after_version"] == 2
    second = await cm.call("GET", f"/v1/cases/{case_id}/history?after_version=2&limit=10",
                           expect=200)
    assert [e["version"] for e in second["events"]] == [3, 4, 5, 6]
    assert second["next_after_version"] is None
    removal = second["events"][0]
    assert removal["type"] == "StrengthRemoved"
    assert removal["actor"] == "cm-1"
    assert removal["role"] == "case_manager"
    assert removal["reason"] == "Jo asked to reword it"
    assert removal["recorded_at"].startswith("2026-03-02")


async def test_time_travel_by_version_and_by_time(cm: CaseApi, clock: FakeClock) -> None:
    case_id = await cm.open_case()
    await cm.strength(case_id, description="Good with numbers")
    clock.advance(days=2)
    await cm.goal(case_id)
    by_version = await cm.plan(case_id, as_of_version=2)
    assert by_version["version"] == 2
    assert by_version["goals"] == []
    assert by_version["strengths"][0]["description"] == "Good with numbers"
    by_time = await cm.plan(case_id, as_of="2026-03-03T00:00:00Z")
    assert by_time["version"] == 2
    before_open = await cm.call("GET", f"/v1/cases/{case_id}?as_of=2020-01-01T00:00:00Z",
                                expect=404)
    assert before_open["type"].endswith("not-yet-opened")
    assert before_open["detail"] == ("the case was opened at 2026-03-02T09:00:00+00:00,"
                                     " after the time asked for: ask for as_of from then on")
    assert [e["field"] for e in before_open["errors"]] == ["query.as_of"]
    beyond = await cm.call("GET", f"/v1/cases/{case_id}?as_of_version=4", expect=422)
    assert beyond["current_version"] == 3
    assert [e["field"] for e in beyond["errors"]] == ["query.as_of_version"]
    past_the_end = await cm.call("GET", f"/v1/cases/{case_id}/diff?from_version=1&to_version=9",
                                 expect=422)
    assert [e["field"] for e in past_the_end["errors"]] == ["query.to_version"]


async def test_time_travel_by_time_reads_a_plan_that_existed_when_clocks_disagreed(
        cm: CaseApi, clock: FakeClock) -> None:
    """Instances behind a load balancer stamp events with their own clocks: one running fast
    leaves a later version with an earlier time. As of a moment, the plan is every version up
    to the last one recorded by then, never a selection that skips one."""
    case_id = await cm.open_case()  # 09:00
    clock.advance(hours=1)  # an instance running an hour fast records the goal at 10:00
    await cm.goal(case_id)
    clock.advance(minutes=-30)  # the next write, on an instance with the right time: 09:30
    await cm.strength(case_id, description="Good with numbers")
    clock.advance(minutes=30)  # read later (a time still to come is refused): 10:00
    at_0945 = await cm.plan(case_id, as_of="2026-03-02T09:45:00Z")
    assert at_0945["version"] == 3
    assert len(at_0945["goals"]) == 1
    assert len(at_0945["strengths"]) == 1
    at_0915 = await cm.plan(case_id, as_of="2026-03-02T09:15:00Z")
    assert (at_0915["version"], at_0915["goals"]) == (1, [])
    clock.advance(minutes=-30)
    other = await cm.open_case()  # 09:30
    clock.advance(minutes=-20)
    await cm.strength(other)  # 09:10: the opening event is the one "in the future"
    clock.advance(hours=1)  # read later
    assert (await cm.plan(other, as_of="2026-03-02T09:15:00Z"))["version"] == 2


@pytest.mark.parametrize("page", [1, 2, 3])
async def test_time_travel_folded_in_small_pages_reads_the_plan_read_at_once(
        cm: CaseApi, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, page: int) -> None:
    """Time travel reads the stream a page (READ_PAGE events) at a time, as exports and
    diffs do, so a long history is never held whole: any page size gives the same plans, by
    version and by time, across the clocks' disagreement too."""
    case_id = await cm.open_case(risk_level="high")  # 09:00
    goal = await cm.goal(case_id)
    clock.advance(hours=1)  # an instance running an hour fast: 10:00
    step = await cm.step(case_id, goal, due_date="2026-03-20")
    clock.advance(minutes=-30)  # 09:30
    await cm.strength(case_id, description="Good with numbers")
    await cm.call("POST", f"/v1/cases/{case_id}/steps/{step}/complete", {}, expect=200)
    clock.advance(hours=2)
    await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "A good week"}, expect=201)
    clock.advance(hours=1)  # read later (a time still to come is refused)
    points = [f"as_of_version={v}" for v in range(1, 7)] + [
        f"as_of=2026-03-02T{t}Z" for t in ("09:00:00", "09:15:00", "09:45:00", "12:00:00")]

    async def plans() -> list[Any]:
        return [await cm.call("GET", f"/v1/cases/{case_id}?{point}", expect=200)
                for point in points]

    read_at_once = await plans()
    assert [p["version"] for p in read_at_once] == [1, 2, 3, 4, 5, 6, 2, 2, 5, 6]
    monkeypatch.setattr(events_module, "READ_PAGE", page)
    assert await plans() == read_at_once


async def test_diff_lists_what_changed_field_by_field(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    goal = await cm.goal(case_id, title="Find work")
    await cm.call("PATCH", f"/v1/cases/{case_id}/goals/{goal}",
                  {"title": "Find work in a bike shop"}, expect=200)
    diff = await cm.call("GET", f"/v1/cases/{case_id}/diff?from_version=2&to_version=3",
                         expect=200)
    changed = {c["path"]: c for c in diff["changes"]}
    title = changed[f"goals.{goal}.title"]
    assert title["from"] == "Find work"
    assert title["to"] == "Find work in a bike shop"
    assert [e["type"] for e in diff["events"]] == ["GoalRevised"]
    await cm.call("GET", f"/v1/cases/{case_id}/diff?from_version=1&to_version=9", expect=422)
    await cm.call("GET", f"/v1/cases/{case_id}/diff?from_version=3&to_version=2", expect=422)


async def test_verify_reports_an_intact_chain(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    await cm.strength(case_id)
    report = await cm.call("GET", f"/v1/cases/{case_id}/verify", expect=200)
    assert report["valid"] is True
    assert report["events_checked"] == 2
    assert report["first_broken_link"] is None


async def test_verify_names_the_first_broken_link_of_a_tampered_case(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    case_id = await cm.open_case()
    await cm.strength(case_id)
    await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Met at the library"},
                  expect=201)
    # Only a superuser bypassing the append-only trigger can do this: what verify is for.
    async with fresh_pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "UPDATE records.events SET data = jsonb_set(data, '{description}', '\"Rewritten\"')"
            " WHERE stream_id = $1 AND version = 2", uuid.UUID(case_id))
    report = await cm.call("GET", f"/v1/cases/{case_id}/verify", expect=200)
    assert report["valid"] is False
    assert report["first_broken_link"]["version"] == 2
    assert report["first_broken_link"]["problem"]


async def test_a_caseload_listing_never_shows_another_agencys_cases(
        cm: CaseApi, client: TestClient, token: TokenFactory) -> None:
    """Not to that agency's supervisor, nor to a case manager there whose id happens to be
    the same as the one whose caseload it is."""
    await cm.open_case()
    for who in (token(role="supervisor", sub="sup-b", agency="agency-b"),
                token(sub="cm-1", agency="agency-b")):
        response = await client.get("/v1/cases", headers=bearer(who))
        assert response.status == 200
        assert (await response.json())["cases"] == []
    assert len((await cm.call("GET", "/v1/cases", expect=200))["cases"]) == 1


async def test_caseload_lists_next_review_and_overdue_steps(
        client: TestClient, token: TokenFactory, clock: FakeClock) -> None:
    mine = CaseApi(client, token(sub="cm-1"))
    theirs = CaseApi(client, token(sub="cm-2"))
    a = await mine.open_case(risk_level="high")
    goal = await mine.goal(a)
    await mine.step(a, goal, due_date=(clock.now.date() + timedelta(days=2)).isoformat())
    await mine.agree(a)
    b = await mine.open_case(risk_level="low")
    await theirs.open_case(case_manager="cm-2")
    clock.advance(days=5)
    listing = await mine.call("GET", "/v1/cases", expect=200)
    rows = {r["case_id"]: r for r in listing["cases"]}
    assert set(rows) == {a, b}
    assert rows[a]["overdue_steps"] == 1
    assert rows[a]["next_review_due"] == (date(2026, 3, 2) + timedelta(days=30)).isoformat()
    assert rows[b]["next_review_due"] is None
    due_soon = await mine.call("GET", "/v1/cases?review_due_before=2026-04-15", expect=200)
    assert [r["case_id"] for r in due_soon["cases"]] == [a]
    page = await mine.call("GET", "/v1/cases?limit=1", expect=200)
    assert len(page["cases"]) == 1
    rest = await mine.call("GET", f"/v1/cases?limit=1&after={page['next_after']}", expect=200)
    assert rest["next_after"] is None
    assert {page["cases"][0]["case_id"], rest["cases"][0]["case_id"]} == {a, b}
    supervisor = CaseApi(client, token(role="supervisor", sub="sup-1"))
    everyone = await supervisor.call("GET", "/v1/cases", expect=200)
    assert len(everyone["cases"]) == 3
    only_cm2 = await supervisor.call("GET", "/v1/cases?case_manager=cm-2", expect=200)
    assert len(only_cm2["cases"]) == 1


async def test_overdue_steps_are_those_of_active_goals_of_an_open_case(
        cm: CaseApi, clock: FakeClock) -> None:
    """A goal paused, set aside or reached has no step to chase, nor has a closed case: they
    were counted as overdue, though no one could work on them (the notifier never nudged)."""
    case_id = await cm.open_case()
    yesterday = (clock.now.date() - timedelta(days=1)).isoformat()
    goals = {status: await cm.goal(case_id, title=f"a goal, {status}")
             for status in ("active", "paused", "discontinued")}
    for goal in goals.values():
        await cm.step(case_id, goal, due_date=yesterday)

    async def overdue() -> int:
        listing = await cm.call("GET", "/v1/cases", expect=200)
        return int(next(c for c in listing["cases"]
                        if c["case_id"] == case_id)["overdue_steps"])

    assert await overdue() == 3
    for status in ("paused", "discontinued"):
        await cm.call("POST", f"/v1/cases/{case_id}/goals/{goals[status]}/status",
                      {"status": status, "reason": "Jo chose to focus on work first"},
                      expect=200)
    assert await overdue() == 1
    await cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "Jo moved away"},
                  expect=200)
    assert await overdue() == 0


async def test_transfer_moves_the_case_to_another_caseload(client: TestClient,
                                                           token: TokenFactory) -> None:
    cm1 = CaseApi(client, token(sub="cm-1"))
    cm2 = CaseApi(client, token(sub="cm-2"))
    case_id = await cm1.open_case()
    await cm2.call("POST", f"/v1/cases/{case_id}/notes", {"text": "hi"}, expect=403)
    await cm1.call("POST", f"/v1/cases/{case_id}/transfer",
                   {"case_manager": "cm-2", "reason": "Jo moved across town"}, expect=200)
    await cm2.call("POST", f"/v1/cases/{case_id}/notes", {"text": "welcome"}, expect=201)
    await cm1.call("POST", f"/v1/cases/{case_id}/notes", {"text": "hi"}, expect=403)
    assert (await cm2.plan(case_id))["case_manager"] == "cm-2"


async def test_a_retried_transfer_gets_its_original_answer(client: TestClient,
                                                           token: TokenFactory,
                                                           fresh_pool: asyncpg.Pool) -> None:
    """The answer to a transfer was lost and the case manager who sent it resends it: the
    case is no longer theirs, yet the retry is the same request and answers as it did. The
    key is looked up before anything is decided; deciding first would answer 403."""
    cm1 = CaseApi(client, token(sub="cm-1"))
    case_id = await cm1.open_case()
    path, body = f"/v1/cases/{case_id}/transfer", {"case_manager": "cm-2",
                                                   "reason": "Jo moved across town"}
    headers = {**bearer(cm1.token), "Idempotency-Key": "transfer-jo"}
    first = await client.post(path, json=body, headers=headers)
    assert first.status == 200
    count = await event_count(fresh_pool)
    again = await client.post(path, json=body, headers=headers)
    assert again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()
    assert await event_count(fresh_pool) == count


async def test_metrics_count_appended_events_and_lost_races(cm: CaseApi,
                                                           client: TestClient) -> None:
    case_id = await cm.open_case()
    await asyncio.gather(*[cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": f"n{n}"})
                           for n in range(6)])
    text = await (await client.get("/metrics")).text()
    assert 'casetrail_events_appended_total{type="CaseOpened"} 1.0' in text
    assert 'casetrail_events_appended_total{type="NoteAdded"} 6.0' in text


async def test_writes_to_many_cases_at_once_each_update_their_own_plan(
        cm: CaseApi, client: TestClient) -> None:
    case_ids = [await cm.open_case(case_manager="cm-1") for _ in range(24)]
    answers = await asyncio.gather(*[
        cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": f"Talked about week {n}"},
                expect=201) for n, case_id in enumerate(case_ids)])
    assert [a["version"] for a in answers] == [2] * 24
    for n, case_id in enumerate(case_ids):
        plan = await cm.plan(case_id)
        assert plan["version"] == 2
        assert [note["text"] for note in plan["recent_notes"]] == [f"Talked about week {n}"]
    metrics = await (await client.get("/metrics")).text()
    statements = next(float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith("casetrail_append_batch_size_count"))
    assert statements < 24 + 24  # the 24 notes did not each take a statement of their own


async def test_history_shows_an_old_event_upcast_beside_its_recorded_form(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    """An ActionStepAdded of schema version 1 (the owner as free text) reads, in history and
    diffs, in today's schema, as the plan reads it; what was recorded, which the hash covers,
    stands beside it, and the chain still verifies."""
    case_id = await cm.open_case()
    goal = await cm.goal(case_id)
    step_id = uuid.uuid4()
    recorded = {"step_id": str(step_id), "goal_id": goal, "description": "Call Gran",
                "owner": "Gran", "due_date": None}
    await EventStore(fresh_pool).append(
        uuid.UUID(case_id), [NewEvent(uuid.uuid4(), "ActionStepAdded", 1, recorded)],
        expected_version=2, agency="agency-a", metadata={"actor": {"sub": "cm-1"}})
    history = await cm.call("GET", f"/v1/cases/{case_id}/history?after_version=2", expect=200)
    [entry] = history["events"]
    assert entry["schema_version"] == 2
    assert (entry["data"]["owner"], entry["data"]["support_name"]) == ("support", "Gran")
    assert entry["recorded_as"] == {"schema_version": 1, "data": recorded}
    diff = await cm.call("GET", f"/v1/cases/{case_id}/diff?from_version=2&to_version=3",
                         expect=200)
    assert diff["events"] == [entry]
    assert (await cm.call("GET", f"/v1/cases/{case_id}/verify", expect=200))["valid"]
    opened = (await cm.call("GET", f"/v1/cases/{case_id}/history?limit=1", expect=200))
    assert opened["events"][0]["recorded_as"] is None  # recorded in today's schema
