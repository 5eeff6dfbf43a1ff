"""Projection rebuild rate over 100,000 events (2,000 cases of 50 events each), and how long
writes wait while it runs.

    .venv/bin/python -m bench.rebuild [--cases 2000] [--events-per-case 50] [--writers 0]

The events are decided by the real domain and appended through the event store (so they are
chained and valid), then ``rebuild_projections`` is timed. With ``--writers N``, N writers in
a process of their own add notes to random cases through the application (a pool like the
records service's, its 30 s command timeout included), each pausing ``--pause`` seconds
between writes, while the rebuild runs; it prints the longest any write that overlapped the
rebuild took, and how many failed (a 503 in the service). Uses DATABASE_URL's server when
set, otherwise an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from multiprocessing.connection import Connection
from uuid import UUID, uuid4

from bench.common import postgres_server, scratch_database
from schemas import api
from services.common.auth import Principal, Role
from services.common.database import create_pool
from services.records.application.cases import CaseCommands, WriteRequest
from services.records.application.language import LanguageGuides
from services.records.domain import DecisionContext, InMemoryCase
from services.records.domain import commands as cmd
from services.records.http.app import migrate
from services.records.projections.rebuild import rebuild_projections
from services.records.store.events import EventStore, NewEvent, utc_now

CASE_MANAGER = Principal("cm-1", Role.CASE_MANAGER, "bench")


def one_case(events_per_case: int, agency: str = "bench") -> InMemoryCase:
    """A case of ``events_per_case`` events, decided by the domain: a strength, a goal, steps
    added and completed, then notes; case manager cm-1."""
    case = InMemoryCase(uuid4(), DecisionContext(today=date(2026, 3, 2)),
                        datetime(2026, 3, 2, tzinfo=UTC))
    case.execute(cmd.OpenCase(agency=agency, body=api.OpenCase.model_validate(
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


@dataclass(frozen=True)
class Write:
    started: float  # time.monotonic(), the same clock in every process on Linux
    finished: float
    ok: bool


async def _write_notes(database_url: str, cases: list[UUID], writers: int, pause: float,
                       control: Connection) -> list[Write]:
    pool = await create_pool(database_url, max_size=writers)  # the service's command timeout
    commands = CaseCommands(EventStore(pool), LanguageGuides(None), utc_now)
    writes: list[Write] = []
    stopping = asyncio.Event()

    async def writer() -> None:
        while not stopping.is_set():
            started = time.monotonic()
            try:
                await commands.execute(WriteRequest(random.choice(cases), cmd.AddNote(
                    uuid4(), api.NoteInput(text="Jo called about the bike shop")), CASE_MANAGER))
                ok = True
            except Exception:  # counted: the service answers 503
                ok = False
            writes.append(Write(started, time.monotonic(), ok))
            await asyncio.sleep(pause)

    tasks = [asyncio.create_task(writer()) for _ in range(writers)]
    control.send("writing")
    await asyncio.to_thread(control.recv)  # until the rebuild is over
    stopping.set()
    await asyncio.gather(*tasks)
    await pool.close()
    return writes


def write_notes(database_url: str, cases: list[UUID], writers: int, pause: float,
                control: Connection) -> None:
    """The writers' process: its own event loop, so that the rebuild's folding (CPU in the
    bench's loop) does not count as waiting."""
    writes = asyncio.run(_write_notes(database_url, cases, writers, pause, control))
    control.send([(w.started, w.finished, w.ok) for w in writes])  # plain tuples pickle anywhere


async def seed(database_url: str, cases: int, events_per_case: int) -> tuple[list[UUID], int]:
    pool = await create_pool(database_url, max_size=4)
    store = EventStore(pool)
    ids, total = [], 0
    for _ in range(cases):
        case = one_case(events_per_case)
        new = [NewEvent(uuid4(), e.event_type, e.schema_version, e.model_dump(mode="json"))
               for e, _, _ in case.stream]
        await store.append(case.case_id, new, expected_version=0, agency="bench",
                           metadata={"actor": {"sub": "cm-1", "role": "case_manager"}})
        ids.append(case.case_id)
        total += len(new)
    await pool.close()
    return ids, total


async def timed_rebuild(database_url: str) -> tuple[int, int, float, float]:
    """Events and cases rebuilt, and when the rebuild started and ended (monotonic)."""
    pool = await create_pool(database_url, max_size=4, command_timeout=None)
    started = time.monotonic()
    stats = await rebuild_projections(pool)
    ended = time.monotonic()
    await pool.close()
    return stats.events, stats.cases, started, ended


def report_writes(writes: list[Write], started: float, ended: float) -> None:
    during = [w for w in writes if w.finished >= started and w.started <= ended]
    failed = sum(not w.ok for w in during)
    longest = max((w.finished - w.started for w in during), default=0.0)
    before = [w.finished - w.started for w in writes if w.finished < started]
    print(f"{'writes':>10}{'failed':>8}{'longest s':>11}{'longest before s':>18}")
    print(f"{len(during):>10}{failed:>8}{longest:>11.3f}{max(before, default=0.0):>18.3f}")


async def main(cases: int, events_per_case: int, writers: int, pause: float) -> None:
    with postgres_server() as server:
        async with scratch_database(server) as database_url:
            await migrate(database_url)
            ids, total = await seed(database_url, cases, events_per_case)
            process = None
            if writers:
                control, theirs = multiprocessing.get_context("spawn").Pipe()
                process = multiprocessing.get_context("spawn").Process(
                    target=write_notes, args=(database_url, ids, writers, pause, theirs))
                process.start()
                assert control.recv() == "writing"
                await asyncio.sleep(2)  # writes settle before the rebuild starts
            events, rebuilt, started, ended = await timed_rebuild(database_url)
            if process is not None:
                await asyncio.sleep(2)  # and go on after it
                control.send("stop")
                writes = [Write(*w) for w in control.recv()]
                process.join()
    elapsed = ended - started
    print(f"{'events':>10}{'cases':>8}{'seconds':>10}{'events/s':>12}")
    print(f"{events:>10}{rebuilt:>8}{elapsed:>10.2f}{events / elapsed:>12.0f}")
    if process is not None:
        report_writes(writes, started, ended)
    else:
        assert events == total


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--events-per-case", type=int, default=50)
    parser.add_argument("--writers", type=int, default=0)
    parser.add_argument("--pause", type=float, default=0.05)
    options = parser.parse_args()
    asyncio.run(main(options.cases, options.events_per_case, options.writers, options.pause))
