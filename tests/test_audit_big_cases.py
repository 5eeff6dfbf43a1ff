"""Big cases and big caseloads (an audit, sixteenth session): reads of a long history hold a
page of it at a time, not the whole plan or the whole stream; paging visits everything once.

Memory is measured with tracemalloc in the test's own process (the service runs in it), with
pages made small, so the bound is the page and not the case. No timings are asserted."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from schemas import api
from schemas.queries import MAX_EVENTS_LISTED
from services.records.application.cases import to_new_event
from services.records.domain import (
    Actor,
    AddActionStep,
    AddNote,
    ChangeGoalStatus,
    CompleteActionStep,
    DecisionContext,
    InMemoryCase,
    OpenCase,
    SetGoal,
)
from services.records.projections.rebuild import rebuild_projections
from services.records.store import events as events_module
from services.records.store.events import EventStore
from tests.conftest import ClientFactory, TokenFactory, bearer
from tests.records_api import CaseApi, event_count

AGENCY = "agency-a"
LONG = ("Met at the library and went through the week's plans together. " * 70)[:4000]
SMALL_PAGE = 20  # events a page while measuring: the bound is a page, not the case


def in_memory_case() -> InMemoryCase:
    ctx = DecisionContext(today=date(2026, 3, 2), actor=Actor(sub="cm-1", role="case_manager"))
    case = InMemoryCase(uuid4(), ctx, datetime(2026, 1, 5, tzinfo=UTC))
    case.execute(OpenCase(AGENCY, api.OpenCase.model_validate(
        {"participant": {"name": "Riley Park"}, "case_manager": "cm-1",
         "risk_level": "moderate"})))
    return case


def with_goals(case: InMemoryCase, goals: int) -> InMemoryCase:
    """Goals reached one after another, each with four steps done: nothing leaves the plan,
    so its document grows with every goal (texts at the size limit)."""
    for _ in range(goals):
        goal_id = uuid4()
        case.execute(SetGoal(goal_id, api.GoalInput(
            title="Steady work", domain="employment", source="participant",
            in_their_words=LONG, why_it_matters=LONG)))
        steps = [uuid4() for _ in range(4)]
        for step_id in steps:
            case.execute(AddActionStep(step_id, goal_id, api.StepInput(
                description=LONG, owner="participant", due_date=date(2026, 6, 1))))
            case.execute(CompleteActionStep(step_id, api.StepCompleteInput(note=LONG)))
        case.execute(ChangeGoalStatus(goal_id, api.GoalStatusInput(status="achieved")))
    return case


def with_notes(case: InMemoryCase, notes: int) -> InMemoryCase:
    for n in range(notes):
        case.execute(AddNote(uuid4(), api.NoteInput(text=f"{n} {LONG}"[:4000])))
    return case


async def stored(pool: asyncpg.Pool, case: InMemoryCase) -> str:
    """The case's events appended through the event store, its plan row by a rebuild."""
    store = EventStore(pool)
    events = [to_new_event(payload) for payload, _, _ in case.stream]
    metadata = {"actor": {"sub": "cm-1", "role": "case_manager"}, "agency": AGENCY}
    for start in range(0, len(events), 500):
        await store.append(case.case_id, events[start:start + 500], expected_version=start,
                           agency=AGENCY, metadata=metadata)
    await rebuild_projections(pool)
    return str(case.case_id)


async def peak_bytes(ask: Callable[[], Awaitable[None]]) -> int:
    """The most memory allocated at once (beyond what was held before) while ``ask`` ran."""
    tracemalloc.start()
    try:
        await ask()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


async def read_through(client: TestClient, path: str, token: str) -> int:
    """Status of a GET whose body is read and dropped as it streams."""
    async with client.get(path, headers=bearer(token)) as response:
        async for _ in response.content.iter_chunked(1 << 16):
            pass
        return response.status


@pytest.fixture
async def goals_case(fresh_pool: asyncpg.Pool) -> str:
    return await stored(fresh_pool, with_goals(in_memory_case(), 80))  # 801 events


async def view_bytes(pool: asyncpg.Pool, case_id: str) -> int:
    size = await pool.fetchval("SELECT octet_length(view::text) FROM records.plans"
                               " WHERE case_id = $1", UUID(case_id))
    return int(size)


@pytest.mark.parametrize("read", ["verify", "history?limit=20", "export?format=jsonl",
                                  "export?format=csv"])
async def test_an_audited_read_of_a_big_plan_does_not_hold_the_plan(
        client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool, goals_case: str,
        monkeypatch: pytest.MonkeyPatch, read: str) -> None:
    """Every audited read loaded and parsed the current plan document only to authorize the
    reader: on a case of 500 goals and 2,500 steps (a 24 MB plan) a verify, a history page or
    an export grew the service by ~50 MiB, whatever it read."""
    plan_size = await view_bytes(fresh_pool, goals_case)
    assert plan_size > 3_000_000
    monkeypatch.setattr(events_module, "READ_PAGE", SMALL_PAGE)
    supervisor = token(role="supervisor", sub="sup-1")
    path = f"/v1/cases/{goals_case}/{read}"
    assert await read_through(client, path, supervisor) == 200  # warm: first-use imports
    statuses: list[int] = []

    async def ask() -> None:
        statuses.append(await read_through(client, path, supervisor))

    peak = await peak_bytes(ask)
    assert statuses == [200]
    assert peak < plan_size // 2, (peak, plan_size)


async def test_the_plan_and_a_fhir_export_still_show_the_whole_plan(
        cm: CaseApi, client: TestClient, token: TokenFactory, goals_case: str) -> None:
    plan = await cm.plan(goals_case)
    steps = sum(len(goal["steps"]) for goal in plan["goals"])
    assert (plan["version"], len(plan["goals"]), steps) == (801, 80, 320)
    supervisor = token(role="supervisor", sub="sup-1")
    async with client.get(f"/v1/cases/{goals_case}/export?format=fhir",
                          headers=bearer(supervisor)) as response:
        assert response.status == 200
        bundle = await response.json(content_type=None)
    kinds = Counter(entry["resource"]["resourceType"] for entry in bundle["entry"])
    assert (kinds["Goal"], kinds["Provenance"]) == (80, 801)


async def test_a_write_to_a_long_case_reads_its_history_a_page_at_a_time(
        make_records_client: ClientFactory, fresh_database_url: str,
        fresh_pool: asyncpg.Pool, token: TokenFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A write on a case the instance has not cached folded the whole stream read in one
    query: on a case of 20,000 long notes the first write grew the service by 210 MiB."""
    case_id = await stored(fresh_pool, with_notes(in_memory_case(), 1500))
    history_size = int(await fresh_pool.fetchval(
        "SELECT sum(octet_length(data::text)) FROM records.events"))
    assert history_size > 5_000_000
    cm = CaseApi(await make_records_client(fresh_database_url), token())  # nothing cached
    monkeypatch.setattr(events_module, "READ_PAGE", SMALL_PAGE)
    answers: list[Any] = []

    async def write() -> None:
        answers.append(await cm.call("POST", f"/v1/cases/{case_id}/notes",
                                     {"text": "Riley chose Tuesday"}, expect=201))

    peak = await peak_bytes(write)
    assert answers[0]["version"] == 1502
    assert (await cm.plan(case_id))["note_count"] == 1501
    assert peak < history_size // 4, (peak, history_size)


async def test_history_pages_visit_every_event_once_and_the_limit_is_named(
        cm: CaseApi, fresh_pool: asyncpg.Pool, token: TokenFactory) -> None:
    case_id = await stored(fresh_pool, with_notes(in_memory_case(), 1206))  # 1,207 events
    for limit in (MAX_EVENTS_LISTED, 333):
        seen: list[int] = []
        after: int | None = 0
        while after is not None:
            page = await cm.call("GET", f"/v1/cases/{case_id}/history?after_version={after}"
                                        f"&limit={limit}", expect=200)
            assert len(page["events"]) <= limit
            seen += [e["version"] for e in page["events"]]
            after = page["next_after_version"]
        assert seen == list(range(1, 1208)), limit
    before = await event_count(fresh_pool)
    for bad in (f"limit={MAX_EVENTS_LISTED + 1}", "limit=0"):
        problem = await cm.call("GET", f"/v1/cases/{case_id}/history?{bad}", expect=422)
        assert "limit" in {e["field"].rpartition(".")[2] for e in problem["errors"]}
    assert await event_count(fresh_pool) == before


async def test_a_diff_across_a_long_case_lists_a_page_of_events(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    case_id = await stored(fresh_pool, with_goals(in_memory_case(), 60))  # 601 events
    answer = await cm.call("GET", f"/v1/cases/{case_id}/diff?from_version=1&to_version=601",
                           expect=200)
    assert len(answer["events"]) == MAX_EVENTS_LISTED
    assert answer["next_after_version"] == MAX_EVENTS_LISTED + 1
    assert len({c["path"] for c in answer["changes"] if c["path"].count(".") == 1
                and c["path"].startswith("goals.")}) == 60


# --- a caseload of 5,000 cases ---------------------------------------------------------------

CASES = 5000
MANAGERS = 7

# One real plan row copied per case, each with its own id, manager, status and review date.
_COPIES = """
INSERT INTO records.plans (case_id, agency, version, status, case_manager, risk_level,
    participant_name, next_review_due, open_step_due_dates, active_goals, opened_at,
    updated_at, view)
SELECT gen_random_uuid(), t.agency, t.version,
       CASE WHEN i % 5 = 0 THEN 'closed' ELSE 'open' END, 'cm-' || (i % $2), t.risk_level,
       'Participant ' || i,
       CASE WHEN i % 5 = 0 OR i % 13 = 0 THEN NULL ELSE DATE '2026-03-02' - 40 + i % 90 END,
       '{}'::date[], t.active_goals, t.opened_at, t.updated_at, t.view
FROM records.plans t, generate_series(1, $1) AS i WHERE t.case_id = $3"""


@pytest.fixture
async def caseload(fresh_pool: asyncpg.Pool) -> dict[str, dict[str, Any]]:
    template = await stored(fresh_pool, in_memory_case())
    await fresh_pool.execute(_COPIES, CASES - 1, MANAGERS, UUID(template))
    await fresh_pool.execute("ANALYZE records.plans")
    rows = await fresh_pool.fetch("SELECT case_id, case_manager, status, next_review_due"
                                  " FROM records.plans")
    return {str(r["case_id"]): dict(r) for r in rows}


async def every_page(api_: CaseApi, query: str, limit: int) -> AsyncIterator[list[Any]]:
    after: str | None = None
    while True:
        cursor = f"&after={after}" if after else ""
        page = await api_.call("GET", f"/v1/cases?{query}&limit={limit}{cursor}", expect=200)
        assert len(page["cases"]) <= limit
        yield page["cases"]
        after = page["next_after"]
        if after is None:
            return


def matching(caseload: dict[str, dict[str, Any]], query: str) -> set[str]:
    wanted = dict(part.split("=") for part in query.split("&") if part)

    def keeps(row: dict[str, Any]) -> bool:
        due = row["next_review_due"]
        return (row["case_manager"] == wanted.get("case_manager", row["case_manager"])
                and row["status"] == wanted.get("status", row["status"])
                and ("review_due_before" not in wanted or (
                    due is not None and due < date.fromisoformat(wanted["review_due_before"]))))
    return {case_id for case_id, row in caseload.items() if keeps(row)}


@pytest.mark.parametrize("order", ["case_id", "next_review"])
@pytest.mark.parametrize("query", ["", "status=open", "status=closed", "case_manager=cm-3",
                                   "review_due_before=2026-03-02",
                                   "case_manager=cm-2&status=open&review_due_before=2026-04-15"])
async def test_caseload_pages_of_5000_cases_show_each_case_once(
        client: TestClient, token: TokenFactory, caseload: dict[str, dict[str, Any]],
        order: str, query: str) -> None:
    supervisor = CaseApi(client, token(role="supervisor", sub="sup-1"))
    shown: list[str] = []
    async for cases in every_page(supervisor, f"order={order}&{query}", 200):
        shown += [c["case_id"] for c in cases]
    assert len(shown) == len(set(shown))
    assert set(shown) == matching(caseload, query)
    if order == "next_review":  # soonest first, none scheduled last
        dues = [caseload[case_id]["next_review_due"] or date.max for case_id in shown]
        assert dues == sorted(dues)


async def test_the_caseload_limit_is_named_and_the_access_log_pages_each_entry_once(
        client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool,
        caseload: dict[str, dict[str, Any]]) -> None:
    supervisor = CaseApi(client, token(role="supervisor", sub="sup-1"))
    for bad in ("limit=201", "limit=0"):
        problem = await supervisor.call("GET", f"/v1/cases?{bad}", expect=422)
        assert "limit" in {e["field"].rpartition(".")[2] for e in problem["errors"]}
    async for _ in every_page(supervisor, "order=case_id", 200):
        pass  # logs one entry per case shown: 5,000
    logged: list[int] = []
    after = ""
    for _ in range(200):  # the server is shared: another database's open transaction holds
        page = await supervisor.call(  # entries back a while (held_back), then they follow
            "GET", f"/v1/access-log?limit=500{after and f'&after={after}'}", expect=200)
        logged += [entry["id"] for entry in page["entries"]]
        after = page["next_after"] or page["checkpoint"]
        if page["next_after"] is None and page["held_back"] == 0:
            break
        if page["next_after"] is None:
            await asyncio.sleep(0.1)
    assert len(logged) == len(set(logged)) == CASES
    problem = await supervisor.call("GET", "/v1/access-log?limit=501", expect=422)
    assert "limit" in {e["field"].rpartition(".")[2] for e in problem["errors"]}


async def test_a_windowed_fhir_export_does_not_hold_the_plan_as_it_is_now(
        client: TestClient, token: TokenFactory, fresh_pool: asyncpg.Pool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A court's window that closed before most of the plan was written: its FHIR export
    folds the plan as of the window's last version (small) and never needs the document as it
    is now; it read and parsed that document (3 MB here) all the same, and kept it while the
    events streamed."""
    case = with_goals(in_memory_case(), 80)
    events = [to_new_event(payload) for payload, _, _ in case.stream]
    metadata = {"actor": {"sub": "cm-1", "role": "case_manager"}, "agency": AGENCY}
    times = iter([datetime(2026, 1, 5, tzinfo=UTC), datetime(2026, 2, 5, tzinfo=UTC)])
    store = EventStore(fresh_pool, clock=lambda: next(times))
    await store.append(case.case_id, events[:11], expected_version=0, agency=AGENCY,
                       metadata=metadata)  # opened, one goal reached
    await store.append(case.case_id, events[11:], expected_version=11, agency=AGENCY,
                       metadata=metadata)
    await rebuild_projections(fresh_pool)
    case_id = str(case.case_id)
    plan_size = await view_bytes(fresh_pool, case_id)
    assert plan_size > 3_000_000
    monkeypatch.setattr(events_module, "READ_PAGE", SMALL_PAGE)
    court = token(role="auditor", sub="court-1", cases=[case_id],
                  window_to=datetime(2026, 1, 31, tzinfo=UTC))
    path = f"/v1/cases/{case_id}/export?format=fhir"
    assert await read_through(client, path, court) == 200  # warm: first-use imports
    statuses: list[int] = []

    async def ask() -> None:
        statuses.append(await read_through(client, path, court))

    peak = await peak_bytes(ask)
    assert statuses == [200]
    assert peak < plan_size // 2, (peak, plan_size)
    async with client.get(path, headers=bearer(court)) as response:
        bundle = await response.json(content_type=None)
    kinds = Counter(entry["resource"]["resourceType"] for entry in bundle["entry"])
    assert (kinds["Goal"], kinds["Provenance"]) == (1, 11)


def with_short_goals(case: InMemoryCase, goals: int) -> InMemoryCase:
    """Goals reached one after another, each with four steps done, in few words: the case's
    states, not its texts, are what grows."""
    for _ in range(goals):
        goal_id = uuid4()
        case.execute(SetGoal(goal_id, api.GoalInput(title="Steady work", domain="employment",
                                                    source="agency")))
        for _ in range(4):
            step_id = uuid4()
            case.execute(AddActionStep(step_id, goal_id, api.StepInput(
                description="Visit", owner="participant", due_date=date(2026, 6, 1))))
            case.execute(CompleteActionStep(step_id, api.StepCompleteInput()))
        case.execute(ChangeGoalStatus(goal_id, api.GoalStatusInput(status="achieved")))
    return case


async def test_a_rebuild_holds_one_state_of_a_long_case_at_a_time(
        fresh_pool: asyncpg.Pool) -> None:
    """A rebuild kept every state a case went through while it folded it, and a goal's event
    copies the plan's goals, so its memory grew with the square of the case's length (an
    audit: 13 MiB for a case of 1,000 events, 176 MiB for 4,000). Four times the events now
    take about four times the memory: the case's events are read whole, its states one at a
    time."""
    await stored(fresh_pool, with_short_goals(in_memory_case(), 100))  # 1,001 events
    short = await peak_bytes(lambda: rebuild_projections(fresh_pool))
    await stored(fresh_pool, with_short_goals(in_memory_case(), 400))  # and 4,001 more
    both = await peak_bytes(lambda: rebuild_projections(fresh_pool))
    assert both < 6 * short, (short, both)
