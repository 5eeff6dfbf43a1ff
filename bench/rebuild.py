"""Projection rebuild rate over 100,000 events (2,000 cases of 50 events each).

    .venv/bin/python -m bench.rebuild [--cases 2000] [--events-per-case 50]

The events are decided by the real domain and appended through the event store (so they are
chained and valid), then ``rebuild_projections`` is timed. Uses DATABASE_URL's server when set,
otherwise an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, date, datetime
from uuid import UUID, uuid4

from bench.common import postgres_server, scratch_database
from schemas import api
from services.common.database import create_pool
from services.records.domain import DecisionContext, InMemoryCase
from services.records.domain import commands as cmd
from services.records.http.app import migrate
from services.records.projections.rebuild import rebuild_projections
from services.records.store.events import EventStore, NewEvent


def one_case(events_per_case: int) -> InMemoryCase:
    case = InMemoryCase(uuid4(), DecisionContext(today=date(2026, 3, 2)),
                        datetime(2026, 3, 2, tzinfo=UTC))
    case.execute(cmd.OpenCase(agency="bench", body=api.OpenCase.model_validate(
        {"participant": {"name": "Participant"}, "case_manager": "cm-1",
         "risk_level": "moderate"})))
    strength = uuid4()
    case.execute(cmd.RecordStrength(strength, api.StrengthInput(
        category="skill", description="Repairs bikes")))
    goal = uuid4()
    case.execute(cmd.SetGoal(goal, api.GoalInput.model_validate({
        "title": "Steady work", "domain": "employment", "source": "participant",
        "in_their_words": "A job with my hands", "strength_ids": [str(strength)]})))
    steps: list[UUID] = []
    while case.version < events_per_case:
        if len(steps) < 10:
            step = uuid4()
            case.execute(cmd.AddActionStep(step, goal, api.StepInput.model_validate(
                {"description": f"Step {len(steps)}", "owner": "participant",
                 "due_date": "2026-04-01"})))
            steps.append(step)
        elif steps:
            case.execute(cmd.CompleteActionStep(steps.pop(), api.StepCompleteInput()))
        else:
            case.execute(cmd.AddNote(uuid4(), api.NoteInput(text="Met at the library")))
    return case


async def main(cases: int, events_per_case: int) -> None:
    with postgres_server() as server:
        async with scratch_database(server) as database_url:
            await migrate(database_url)
            pool = await create_pool(database_url, max_size=4)
            store = EventStore(pool)
            total = 0
            for _ in range(cases):
                case = one_case(events_per_case)
                new = [NewEvent(uuid4(), e.event_type, e.schema_version, e.model_dump(mode="json"))
                       for e, _, _ in case.stream]
                await store.append(case.case_id, new, expected_version=0, agency="bench",
                                   metadata={"actor": {"sub": "cm-1", "role": "case_manager"}})
                total += len(new)
            started = time.perf_counter()
            stats = await rebuild_projections(pool)
            elapsed = time.perf_counter() - started
            await pool.close()
    print(f"{'events':>10}{'cases':>8}{'seconds':>10}{'events/s':>12}")
    print(f"{stats.events:>10}{stats.cases:>8}{elapsed:>10.2f}{stats.events / elapsed:>12.0f}")
    assert stats.events == total


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--events-per-case", type=int, default=50)
    options = parser.parse_args()
    asyncio.run(main(options.cases, options.events_per_case))
