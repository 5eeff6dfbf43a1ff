"""A case manager's working week through the records API (an audit): a first meeting, the
weeks after, a transfer, a closing and a reopening, each answer checked against what the
plan view and the history show right afterwards; and the defects the audit found."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.conftest import FakeClock, TokenFactory
from tests.records_api import CaseApi, event_count

pytestmark = pytest.mark.usefixtures("fresh_database_url")


def _statement(text: str, *present: str) -> dict[str, Any]:
    return {"participation": "in_person", "present": list(present or ["Jo"]),
            "participant_statement": text}


async def _support(cm: CaseApi, case_id: str, name: str) -> str:
    added = await cm.call("POST", f"/v1/cases/{case_id}/supports", {"name": name}, expect=201)
    return str(added["id"])


async def test_a_step_given_to_a_recorded_support_carries_that_supports_name(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    """A step given to Uncle Ray by his id was recorded as Coach Lee's: the plan named one
    person and linked another, so removing Uncle Ray left Coach Lee's step linked to him."""
    case_id = await cm.open_case()
    goal = await cm.goal(case_id)
    ray = await _support(cm, case_id, "Uncle Ray")
    before = await event_count(fresh_pool)

    refused = await cm.call("POST", f"/v1/cases/{case_id}/goals/{goal}/steps", {
        "description": "Drive Jo to the interview", "owner": "support", "support_id": ray,
        "support_name": "Coach Lee"}, expect=422)

    assert refused["type"].endswith("/support-name-mismatch")
    assert [e["field"] for e in refused["errors"]] == ["body.support_name"]
    assert "Uncle Ray" in refused["detail"]
    assert "leave support_name out" in refused["detail"]
    assert await event_count(fresh_pool) == before
    # the same name, however it is capitalised, is the recorded support's own
    step = await cm.step(case_id, goal, "Drive Jo to the interview", owner="support",
                         support_id=ray, support_name="uncle ray")
    [shown] = (await cm.plan(case_id))["goals"][0]["steps"]
    assert (shown["step_id"], shown["support_id"], shown["support_name"]) == (
        step, ray, "Uncle Ray")


async def test_revising_a_step_cannot_name_one_support_and_link_another(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    case_id = await cm.open_case()
    goal = await cm.goal(case_id)
    ray = await _support(cm, case_id, "Uncle Ray")
    ann = await _support(cm, case_id, "Neighbour Ann")
    step = await cm.step(case_id, goal, "Lend Jo the tools", owner="support", support_id=ray)
    before = await event_count(fresh_pool)

    refused = await cm.call("PATCH", f"/v1/cases/{case_id}/steps/{step}",
                            {"support_id": ann, "support_name": "Uncle Ray"}, expect=422)

    assert [e["field"] for e in refused["errors"]] == ["body.support_name"]
    assert "Neighbour Ann" in refused["detail"]
    assert await event_count(fresh_pool) == before
    moved = await cm.call("PATCH", f"/v1/cases/{case_id}/steps/{step}", {"support_id": ann},
                          expect=200)
    assert moved["events"][0]["data"]["support_name"] == "Neighbour Ann"


@pytest.mark.parametrize("statement", [".", "-", "?!", "…"])
async def test_an_agreement_records_a_statement_in_words(
        cm: CaseApi, fresh_pool: asyncpg.Pool, statement: str) -> None:
    """Rule 2: the plan became agreed, with a review scheduled and counted as co-created, on a
    participant statement of "." that said nothing of what the participant said."""
    case_id = await cm.open_case()
    await cm.goal(case_id)
    before = await event_count(fresh_pool)

    refused = await cm.call("POST", f"/v1/cases/{case_id}/agreements", _statement(statement),
                            expect=422)

    assert refused["type"].endswith("/participant-statement-required")
    assert [e["field"] for e in refused["errors"]] == ["body.participant_statement"]
    assert await event_count(fresh_pool) == before
    plan = await cm.plan(case_id)
    assert (plan["agreement"], plan["next_review"]) == (None, None)


async def test_an_agreement_names_who_was_present_in_words(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    case_id = await cm.open_case()
    await cm.goal(case_id)
    before = await event_count(fresh_pool)

    refused = await cm.call("POST", f"/v1/cases/{case_id}/agreements",
                            _statement("Yes, this is my plan", "Jo", "-"), expect=422)

    assert refused["type"].endswith("/present-required")
    assert [e["field"] for e in refused["errors"]] == ["body.present"]
    assert await event_count(fresh_pool) == before
    # a disagreement is the participant's voice too, held to the same
    refused = await cm.call("POST", f"/v1/cases/{case_id}/agreements",
                            {**_statement("."), "outcome": "did_not_agree"}, expect=422)
    assert refused["type"].endswith("/participant-statement-required")
    assert await event_count(fresh_pool) == before


async def test_a_first_meeting_and_the_weeks_after_read_the_same_in_plan_and_history(
        cm: CaseApi, clock: FakeClock, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    """The sequence the audit played: each answer's version is the plan's and the history's
    last, the plan reads what was just written, and a transfer moves who may write."""
    case_id = await cm.open_case(risk_level="high")
    base = f"/v1/cases/{case_id}"
    goal = await cm.goal(case_id, strength_ids=[await cm.strength(case_id)])
    ray = await _support(cm, case_id, "Uncle Ray")
    step = await cm.step(case_id, goal, "Drive Jo to the garage", owner="support",
                         support_id=ray, due_date="2026-03-09")
    first = await cm.call("POST", f"{base}/agreements",
                          {**_statement("Not yet, I want to think"), "outcome": "did_not_agree",
                           "participation": "phone"}, expect=201)
    assert "id" not in first
    agreed = await cm.call("POST", f"{base}/agreements", _statement("Yes, this is my plan"),
                           expect=201)
    plan = await cm.plan(case_id)
    assert plan["version"] == agreed["version"]
    assert plan["next_review"]["review_id"] == agreed["id"]
    assert plan["next_review"]["due_date"] == "2026-04-01"  # high risk: 30 days

    blocked = await cm.call("POST", f"{base}/steps/{step}/status", {
        "status": "cannot_be_done_yet", "reason": "Ray's car is in for repair"}, expect=200)
    clock.advance(days=10)
    held = await cm.call("POST", f"{base}/reviews/{agreed['id']}/held",
                         {"summary": "Jo found a lift", "risk_level": "moderate"}, expect=200)
    plan = await cm.plan(case_id)
    assert (plan["risk_level"], plan["next_review"]["review_id"],
            plan["next_review"]["due_date"]) == ("moderate", held["id"], "2026-05-11")
    history = await cm.call("GET", f"{base}/history?after_version={blocked['version'] - 1}")
    assert [(e["type"], e["reason"]) for e in history["events"]] == [
        ("ActionStepStatusChanged", "Ray's car is in for repair"),
        ("ReviewHeld", None), ("ReviewScheduled", None)]

    await cm.call("POST", f"{base}/transfer", {"case_manager": "cm-2",
                                              "reason": "Sam joins the housing team"}, expect=200)
    before = await event_count(fresh_pool)
    await cm.call("POST", f"{base}/notes", {"text": "Called Jo"}, expect=403)
    assert await event_count(fresh_pool) == before
    sam = CaseApi(cm.client, token(sub="cm-2"))
    done = await sam.call("POST", f"{base}/steps/{step}/complete",
                          {"note": "Ray drove Jo on Tuesday"}, expect=200)
    assert (await sam.plan(case_id))["goals"][0]["steps"][0]["status"] == "completed"
    assert done["events"][0]["actor"] == "cm-2"
