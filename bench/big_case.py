"""Big cases: what a long history and a large plan cost the records service, read by read.

    .venv/bin/python -m bench.big_case [--events 2000 20000]

For each size, one case decided by the domain (``InMemoryCase``), as the sixteenth session's
audit built it: a strength per 100 events, a goal per 40 (its texts at the 4,000-character
limit, five steps of 4,000 characters, four of them completed with a note of 4,000, then
achieved or paused), and notes of 4,000 characters to the size; appended through the event
store 500 events at a time, its plan row by a rebuild.

Each read is asked once through `casetrail records` in a process of its own (fresh for every
read, after one `/healthz`) by a client that reads and drops the answer, the service's resident
memory sampled every 20 ms: a history page of 500, the chain check, the four exports (PDF
answers 422 past its bound), the plan as of the middle version, the diff of the last event and
of the whole history, and the plan. Then, in one more fresh process, a note after a cache miss
and the note after it. Prints markdown tables, the sizes side by side in each cell. Uses
DATABASE_URL's server when set, otherwise an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID, uuid4

import aiohttp

from bench.common import free_port, postgres_server, scratch_database, wait_ready
from bench.export import peak_resident, resident_kib
from schemas import api
from services.common.auth import issue_token
from services.common.database import create_pool
from services.records.application.cases import to_new_event
from services.records.domain import Actor, DecisionContext, InMemoryCase
from services.records.domain import commands as cmd
from services.records.http.app import migrate
from services.records.projections.rebuild import rebuild_projections
from services.records.store.events import EventStore

AGENCY = "bench"
CASE_MANAGER = "cm-bench"
CHUNK = 500  # events per append, as the audit appended them
TEXT = ("Met at the library and talked through the week; " * 100)[:4000]
STEPS_PER_GOAL = 5


@dataclass(frozen=True)
class BigCase:
    case_id: UUID
    events: int
    goals: int
    plan_bytes: int
    data_bytes: int


def _text(n: int) -> str:
    return f"{n} {TEXT}"[:4000]


def build_case(size: int) -> InMemoryCase:
    """A case of ``size`` events: strengths, goals with their steps, then notes."""
    case = InMemoryCase(
        uuid4(),
        DecisionContext(today=date(2026, 3, 2), actor=Actor(CASE_MANAGER, "case_manager")),
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    case.execute(
        cmd.OpenCase(
            agency=AGENCY,
            body=api.OpenCase.model_validate(
                {
                    "participant": {"name": "Riley Park"},
                    "case_manager": CASE_MANAGER,
                    "risk_level": "moderate",
                }
            ),
        )
    )
    strengths = [_add_strength(case, n) for n in range(size // 100)]
    for number in range(size // 40):
        _add_goal(case, number, strengths[:20])
    while case.version < size:
        case.execute(cmd.AddNote(uuid4(), api.NoteInput(text=_text(case.version))))
    return case


def _add_strength(case: InMemoryCase, n: int) -> UUID:
    strength = uuid4()
    case.execute(
        cmd.RecordStrength(strength, api.StrengthInput(category="skill", description=_text(n)))
    )
    return strength


def _add_goal(case: InMemoryCase, number: int, strengths: list[UUID]) -> None:
    """A goal with five steps, four completed; achieved, or paused one time in three."""
    goal = uuid4()
    case.execute(
        cmd.SetGoal(
            goal,
            api.GoalInput(
                title=f"Goal {number}",
                domain="employment",
                source="participant",
                in_their_words=TEXT,
                why_it_matters=TEXT,
                strength_ids=strengths,
            ),
        )
    )
    if number == 0:
        case.execute(
            cmd.AgreePlan(
                uuid4(),
                api.AgreementInput(
                    participation="in_person", present=["Riley"], participant_statement="mine"
                ),
            )
        )
    steps = [uuid4() for _ in range(STEPS_PER_GOAL)]
    for step in steps:
        case.execute(
            cmd.AddActionStep(
                step,
                goal,
                api.StepInput(description=TEXT, owner="participant", due_date=date(2026, 6, 1)),
            )
        )
    for step in steps[:-1]:
        case.execute(cmd.CompleteActionStep(step, api.StepCompleteInput(note=TEXT)))
    status = (
        api.GoalStatusInput(status="achieved")
        if number % 3 != 2
        else api.GoalStatusInput(status="paused", reason="later")
    )
    case.execute(cmd.ChangeGoalStatus(goal, status))


async def fill(database_url: str, sizes: list[int]) -> list[BigCase]:
    """One case per size, appended through the event store; plan rows by a rebuild."""
    await migrate(database_url)
    pool = await create_pool(database_url, max_size=2, command_timeout=None)
    try:
        store = EventStore(pool)
        metadata = {"actor": {"sub": CASE_MANAGER, "role": "case_manager"}}
        case_ids = []
        for size in sizes:
            case = build_case(size)
            events = [to_new_event(event) for event, _, _ in case.stream]
            for start in range(0, size, CHUNK):
                await store.append(
                    case.case_id,
                    events[start : start + CHUNK],
                    expected_version=start,
                    agency=AGENCY,
                    metadata=metadata,
                )
            case_ids.append(case.case_id)
        await rebuild_projections(pool)
        sized = (
            "SELECT (SELECT octet_length(view::text) FROM records.plans WHERE case_id = $1),"
            " (SELECT sum(octet_length(data::text)) FROM records.events WHERE stream_id = $1)"
        )
        cases = []
        for size, case_id in zip(sizes, case_ids, strict=True):
            plan_bytes, data_bytes = await pool.fetchrow(sized, case_id)
            cases.append(BigCase(case_id, size, size // 40, plan_bytes, data_bytes))
        return cases
    finally:
        await pool.close()


@dataclass(frozen=True)
class Ask:
    """One request on a case: ``path`` follows ``/v1/cases/{id}``."""

    name: str
    path: Callable[[int], str]  # of the case's number of events
    method: str = "GET"
    body: dict[str, Any] | None = None
    expect: tuple[int, ...] = (200,)


READS = [
    Ask("`history?limit=500`", lambda n: "/history?limit=500"),
    Ask("`verify`", lambda n: "/verify"),
    Ask("`export?format=jsonl`", lambda n: "/export?format=jsonl"),
    Ask("`export?format=csv`", lambda n: "/export?format=csv"),
    Ask("`export?format=fhir`", lambda n: "/export?format=fhir"),
    Ask("`export?format=pdf`", lambda n: "/export?format=pdf", expect=(200, 422)),
    Ask("`as_of_version=` half the events", lambda n: f"?as_of_version={n // 2}"),
    Ask("`diff` of the last event", lambda n: f"/diff?from_version={n - 1}&to_version={n}"),
    Ask("`diff` 1 → the last", lambda n: f"/diff?from_version=1&to_version={n}"),
    Ask("the plan (`GET /v1/cases/{id}`)", lambda n: ""),
]
NOTE = Ask(
    "a note (`POST …/notes`)",
    lambda n: "/notes",
    "POST",
    {"text": "Called to check on the interview."},
    expect=(201,),
)


@dataclass(frozen=True)
class Figures:
    status: int
    received: int
    seconds: float
    growth_kib: int


async def ask_once(
    session: aiohttp.ClientSession, url: str, pid: int, token: str, case: BigCase, ask: Ask
) -> Figures:
    """The answer's status and bytes, seconds, and the resident growth while it ran."""
    received = 0
    before = resident_kib(pid)
    async with peak_resident(pid) as peak:
        started = time.perf_counter()
        async with session.request(
            ask.method,
            f"{url}/v1/cases/{case.case_id}{ask.path(case.events)}",
            json=ask.body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            async for chunk in response.content.iter_chunked(1 << 16):
                received += len(chunk)
        elapsed = time.perf_counter() - started
    if response.status not in ask.expect:
        raise RuntimeError(f"{ask.name} on {case.events} events: {response.status}")
    return Figures(response.status, received, elapsed, peak[0] - before)


@asynccontextmanager
async def records_service(
    database_url: str, secret: str
) -> AsyncIterator[tuple[aiohttp.ClientSession, str, int]]:
    """A fresh `casetrail records` process, asked one `/healthz`; a session, its URL and pid."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CASETRAIL_JWT_SECRET": secret,
        "CASETRAIL_LOG_LEVEL": "warning",
    }
    # the service's log (a warning per process) to stderr, so stdout holds only the tables
    service = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "records",
        "--port",
        str(port),
        env=env,
        stdout=sys.stderr,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            async with session.get(f"{url}/healthz") as response:
                await response.read()
            yield session, url, service.pid
    finally:
        service.terminate()
        await service.wait()


async def measure(database_url: str, cases: list[BigCase]) -> list[tuple[str, list[Figures]]]:
    """Each read on each case in a fresh process; then two notes on each, one process a case."""
    secret = secrets.token_urlsafe(32)
    supervisor = issue_token(secret, sub="sup-bench", role="supervisor", agency=AGENCY)
    manager = issue_token(secret, sub=CASE_MANAGER, role="case_manager", agency=AGENCY)
    rows: list[tuple[str, list[Figures]]] = []
    for ask in READS:
        figures = []
        for case in cases:
            async with records_service(database_url, secret) as (session, url, pid):
                figures.append(await ask_once(session, url, pid, supervisor, case, ask))
        rows.append((ask.name, figures))
    first, later = [], []
    for case in cases:
        async with records_service(database_url, secret) as (session, url, pid):
            first.append(await ask_once(session, url, pid, manager, case, NOTE))
            later.append(await ask_once(session, url, pid, manager, case, NOTE))
    rows += [
        ("a note, first write (cache miss)", first),
        ("a note, the next write (cached)", later),
    ]
    return rows


def _cells(figures: Sequence[Figures]) -> str:
    def answer(f: Figures) -> str:
        size = f"{f.received / 1e6:.2f}"
        return size if f.status < 300 else f"{size} ({f.status})"

    columns = [
        [answer(f) for f in figures],
        [f"{f.seconds:.2f}" for f in figures],
        [f"+{f.growth_kib / 1024:.1f}" for f in figures],
    ]
    return " | ".join(" / ".join(column) for column in columns)


def print_tables(cases: list[BigCase], rows: list[tuple[str, list[Figures]]]) -> None:
    print("| events | plan document MB | goals | steps | events' data MB |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for case in cases:
        print(
            f"| {case.events:,} | {case.plan_bytes / 1e6:.1f} | {case.goals:,}"
            f" | {case.goals * STEPS_PER_GOAL:,} | {case.data_bytes / 1e6:.1f} |"
        )
    sizes = " / ".join(f"{case.events:,}" for case in cases)
    print()
    print(f"| read ({sizes} events) | answer MB | seconds | growth MiB |")
    print("| --- | ---: | ---: | ---: |")
    for name, figures in rows:
        print(f"| {name} | {_cells(figures)} |")


async def main(sizes: list[int]) -> None:
    with postgres_server() as server:
        async with scratch_database(server) as database_url:
            started = time.perf_counter()
            cases = await fill(database_url, sizes)
            filled = time.perf_counter() - started
            rows = await measure(database_url, cases)
    print(f"built, appended and projected in {filled:.0f} s; each read in a fresh process")
    print()
    print_tables(cases, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, nargs="+", default=[2000, 20000])
    options = parser.parse_args()
    asyncio.run(main(options.events))
