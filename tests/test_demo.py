"""The demo caseload loads through the real rules, once."""

from __future__ import annotations

import asyncpg

from services.records.application.cases import CaseCommands
from services.records.application.language import LanguageGuides
from services.records.demo import load_demo
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
