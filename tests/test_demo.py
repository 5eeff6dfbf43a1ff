"""The demo caseload: loaded through the real rules, once, and written as the practice asks."""

from __future__ import annotations

import json

import asyncpg

from services.records.application.cases import CaseCommands
from services.records.application.language import LanguageGuides
from services.records.demo import load_demo
from services.records.domain.language import CHECKED_FIELDS
from services.records.store.events import EventStore
from tests.conftest import FakeClock


async def test_demo_loads_once_with_plans_in_different_states(fresh_pool: asyncpg.Pool) -> None:
    clock = FakeClock()
    commands = CaseCommands(EventStore(fresh_pool, clock), LanguageGuides(None), clock)
    assert await load_demo(commands, clock) is True
    count = await fresh_pool.fetchval("SELECT count(*) FROM records.events")
    assert await load_demo(commands, clock) is False
    assert await fresh_pool.fetchval("SELECT count(*) FROM records.events") == count
    rows = await fresh_pool.fetch("SELECT participant_name, status, next_review_due"
                                  " FROM records.plans ORDER BY participant_name")
    states = {r["participant_name"]: (r["status"], r["next_review_due"]) for r in rows}
    assert states["Marcus Bell"][0] == "closed"
    assert states["Jordan Rivera"][1] is not None  # agreed: a review is scheduled
    assert states["Sam Chen"][1] is None  # did not agree yet: nothing scheduled


async def test_a_demo_plan_closed_as_completed_was_agreed_and_reached_its_goal(
        fresh_pool: asyncpg.Pool) -> None:
    """A case closed with the outcome "completed" had a plan to complete: one the participant
    agreed to, with a goal achieved (Marcus's case once closed "Plan completed" on no plan)."""
    clock = FakeClock()
    await load_demo(CaseCommands(EventStore(fresh_pool, clock), LanguageGuides(None), clock),
                    clock)
    completed = await fresh_pool.fetch(
        "SELECT participant_name, view FROM records.plans"
        " WHERE view->'closure'->>'outcome' = 'completed'")
    assert completed
    for row in completed:
        plan = json.loads(row["view"])
        agreement = plan["agreement"] or {}
        assert agreement.get("outcome") == "agreed", row["participant_name"]
        assert "achieved" in {goal["status"] for goal in plan["goals"]}, row["participant_name"]


async def test_the_demo_documents_as_the_language_guide_asks(fresh_pool: asyncpg.Pool) -> None:
    """The demo is what a newcomer copies: none of its staff-written text draws a warning."""
    clock = FakeClock()
    await load_demo(CaseCommands(EventStore(fresh_pool, clock), LanguageGuides(None), clock),
                    clock)
    guide = LanguageGuides(None).for_agency("demo-agency")
    rows = await fresh_pool.fetch("SELECT type, data FROM records.events")
    flagged = [(row["type"], warning.term) for row in rows
               for field in CHECKED_FIELDS[row["type"]]
               for warning in guide.check(field, json.loads(row["data"]).get(field) or "")]
    assert rows
    assert flagged == []
