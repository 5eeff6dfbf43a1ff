"""Projections rebuilt from the events equal the live ones, after long random command runs."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import api
from services.common.auth import Principal, Role
from services.records.application.cases import CaseCommands, WriteRequest
from services.records.application.language import LanguageGuides
from services.records.domain import DomainError, PlanState
from services.records.domain import commands as cmd
from services.records.projections.rebuild import rebuild_projections
from services.records.store.events import EventStore, NewEvent
from tests.conftest import ClientFactory, FakeClock, TokenFactory
from tests.records_api import CaseApi
from tests.test_cli import run

OWNER = Principal("cm-1", Role.CASE_MANAGER, "agency-a")
SUPERVISOR = Principal("sup-1", Role.SUPERVISOR, "agency-a")
TEXTS = ["Jo fixed the bike chain", "Called the housing office", "Met Aunt Maria",
         "Client is non-compliant", "Wants to learn welding"]
KINDS = ["strength", "revise_strength", "remove_strength", "goal", "future_goal", "goal_status",
         "revise_goal", "step", "support_step", "complete_step", "step_status", "revise_step",
         "support", "remove_support", "requirement", "requirement_status", "agree",
         "hold_review", "reschedule_review", "note", "transfer", "close", "reopen",
         "participant", "advance_days"]
GOAL_STATUSES = ["active", "future", "paused", "achieved", "discontinued"]
STEP_STATUSES = ["not_started", "in_progress", "completed", "cannot_be_done_yet",
                 "no_longer_needed"]

Move = tuple[str, int, int]


def _pick(items: list[UUID], index: int) -> UUID:
    return items[index % len(items)] if items else uuid4()


def command_for(move: Move, state: PlanState, clock: FakeClock) -> cmd.AnyCommand | None:
    kind, index, choice = move
    text = TEXTS[choice % len(TEXTS)]
    strengths = [s for s, v in state.strengths.items() if not v.removed]
    goals, steps = list(state.goals), list(state.steps)
    supports = [s for s, v in state.supports.items() if not v.removed]
    requirements = list(state.requirements)
    due = (clock.now.date() + timedelta(days=choice % 20)).isoformat()
    match kind:
        case "strength":
            return cmd.RecordStrength(uuid4(), api.StrengthInput(category="skill",
                                                                 description=text))
        case "revise_strength":
            return cmd.ReviseStrength(_pick(strengths, index), api.StrengthRevision(
                description=f"{text} ({index})", reason=text))
        case "remove_strength":
            return cmd.RemoveStrength(_pick(strengths, index), api.RemovalReason(reason=text))
        case "goal" | "future_goal":
            return cmd.SetGoal(uuid4(), api.GoalInput.model_validate({
                "title": text, "domain": "housing", "source": "participant",
                "in_their_words": text, "target_date": due,
                "strength_ids": [str(s) for s in strengths[:index % 3]],
                "status": "future" if kind == "future_goal" else "active",
                "override_reason": "court order" if choice % 2 else None}))
        case "goal_status":
            return cmd.ChangeGoalStatus(_pick(goals, index), api.GoalStatusInput(
                status=GOAL_STATUSES[choice % 5], reason=text))  # type: ignore[arg-type]
        case "revise_goal":
            return cmd.ReviseGoal(_pick(goals, index), api.GoalRevision.model_validate(
                {"title": f"{text} {index}", "target_date": due}))
        case "step":
            return cmd.AddActionStep(uuid4(), _pick(goals, index), api.StepInput.model_validate(
                {"description": text, "owner": "participant", "due_date": due}))
        case "support_step":
            return cmd.AddActionStep(uuid4(), _pick(goals, index), api.StepInput.model_validate(
                {"description": text, "owner": "support", "due_date": due,
                 "support_id": str(_pick(supports, choice))}))
        case "complete_step":
            return cmd.CompleteActionStep(_pick(steps, index), api.StepCompleteInput(note=text))
        case "step_status":
            return cmd.ChangeActionStepStatus(_pick(steps, index), api.StepStatusInput(
                status=STEP_STATUSES[choice % 5], reason=text))  # type: ignore[arg-type]
        case "revise_step":
            return cmd.ReviseActionStep(_pick(steps, index), api.StepRevision.model_validate(
                {"due_date": due}))
        case "support":
            return cmd.AddSupport(uuid4(), api.SupportInput(name=text))
        case "remove_support":
            return cmd.RemoveSupport(_pick(supports, index), api.RemovalReason(reason=text))
        case "requirement":
            return cmd.RecordRequirement(uuid4(), api.RequirementInput(title=text))
        case "requirement_status":
            return cmd.ChangeRequirementStatus(_pick(requirements, index),
                                               api.RequirementStatusInput.model_validate(
                                                   {"status": "met", "reason": text}))
        case "agree":
            return cmd.AgreePlan(uuid4(), api.AgreementInput(
                participation="video", present=["Jo"], participant_statement=text))
        case "hold_review":
            pending = state.pending_review_id or uuid4()
            return cmd.HoldReview(pending, uuid4(), api.ReviewHeldInput(summary=text))
        case "reschedule_review":
            return cmd.RescheduleReview(state.pending_review_id or uuid4(),
                                        api.RescheduleReviewInput.model_validate(
                                            {"due_date": due, "reason": text}))
        case "note":
            return cmd.AddNote(uuid4(), api.NoteInput(text=text))
        case "transfer":
            return cmd.TransferCase(body=api.TransferInput(
                case_manager="cm-1" if state.case_manager != "cm-1" else "cm-2", reason=text))
        case "close":
            return cmd.CloseCase(body=api.CloseInput(reason=text))
        case "reopen":
            return cmd.ReopenCase(body=api.ReopenInput(reason=text))
        case "participant":
            return cmd.UpdateParticipantDetails(body=api.UpdateParticipant(pronouns="she/her"))
    clock.advance(days=choice % 40)
    return None


async def play(database_url: str, cases: list[list[Move]]) -> tuple[set[str], int]:
    """Run the moves; the kinds of command accepted at least once, and how many were refused."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    clock = FakeClock()
    commands = CaseCommands(EventStore(pool, clock), LanguageGuides(None), clock)
    accepted: set[str] = set()
    refused = 0
    try:
        for moves in cases:
            case_id = uuid4()
            await commands.execute(WriteRequest(case_id, cmd.OpenCase(
                agency="agency-a", body=api.OpenCase.model_validate({
                    "participant": {"name": "Jordan"}, "case_manager": "cm-1",
                    "risk_level": "high"})), SUPERVISOR))
            for move in moves:
                state = await commands.load(case_id)
                assert state is not None
                command = command_for(move, state, clock)
                if command is None:
                    continue
                who = SUPERVISOR if isinstance(command, cmd.TransferCase) else \
                    Principal(state.case_manager, Role.CASE_MANAGER, "agency-a")
                try:
                    await commands.execute(WriteRequest(case_id, command, who))
                    accepted.add(move[0])
                except DomainError:
                    refused += 1
    finally:
        await pool.close()
    return accepted, refused


Rows = list[dict[str, Any]]


async def snapshot(pool: asyncpg.Pool | asyncpg.Connection) -> tuple[Rows, Rows]:
    """The plans, and the outcome facts."""
    rows = await pool.fetch("SELECT * FROM records.plans ORDER BY case_id")
    facts = await pool.fetch("SELECT * FROM records.outcome_facts ORDER BY event_id")
    return [{**dict(r), "view": json.loads(r["view"])} for r in rows], [dict(f) for f in facts]


async def rebuild_and_compare(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        live = await snapshot(pool)
        stats = await rebuild_projections(pool)
        rebuilt = await snapshot(pool)
        assert stats.cases == len(live[0])
        assert rebuilt == live
    finally:
        await pool.close()


moves = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 9), st.integers(0, 99)),
                 min_size=20, max_size=80)


@settings(max_examples=int(os.environ.get("CASETRAIL_REBUILD_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(cases=st.lists(moves, min_size=1, max_size=3))
def test_rebuilt_projection_equals_the_live_one(fresh_database_url: str,
                                                cases: list[list[Move]]) -> None:
    asyncio.run(play(fresh_database_url, cases))
    asyncio.run(rebuild_and_compare(fresh_database_url))


def test_random_runs_exercise_both_accepted_and_refused_commands(fresh_database_url: str) -> None:
    """Guards the property test above against a generator whose commands all bounce."""
    import random

    rng = random.Random(7)
    run_moves = [[(rng.choice(KINDS), rng.randrange(10), rng.randrange(100))
                  for _ in range(120)] for _ in range(3)]
    accepted, refused = asyncio.run(play(fresh_database_url, run_moves))
    assert accepted == set(KINDS) - {"advance_days"}
    assert refused > 10
    assert asyncio.run(fact_kinds(fresh_database_url)) >= {
        "case_opened", "case_closed", "case_reopened", "plan_agreed", "step_completed",
        "review_held"}
    asyncio.run(rebuild_and_compare(fresh_database_url))


async def fact_kinds(database_url: str) -> set[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return {row["kind"] for row in await conn.fetch(
            "SELECT DISTINCT kind FROM records.outcome_facts")}
    finally:
        await conn.close()


def test_rebuild_command_line(fresh_database_url: str) -> None:
    asyncio.run(play(fresh_database_url, [[("strength", 0, 1), ("goal", 0, 2)]]))
    result = run("rebuild-projections", env={"DATABASE_URL": fresh_database_url})
    assert result.returncode == 0, result.stderr
    assert "rebuilt 1 cases from 3 events" in result.stdout


async def test_an_event_newer_than_this_code_is_named_not_a_bare_500(
        make_records_client: ClientFactory, fresh_database_url: str, fresh_pool: asyncpg.Pool,
        token: TokenFactory) -> None:
    """Say, after rolling back a deploy: the case holds an event of a schema version this
    code does not know. Reads and writes say so; the rebuild names the case and changes
    nothing."""
    client = await make_records_client(fresh_database_url)
    cm = CaseApi(client, token())
    case_id = await cm.open_case()
    await fresh_pool.execute(
        "INSERT INTO records.events (stream_id, version, event_id, type, schema_version, data,"
        " metadata, agency, recorded_at, prev_hash, hash) VALUES ($1, 2, $2, 'NoteAdded', 99,"
        " '{}', '{}', 'agency-a', now(), '', '')", UUID(case_id), uuid4())
    await fresh_pool.execute("UPDATE records.streams SET version = 2 WHERE stream_id = $1",
                             UUID(case_id))  # as the newer code's append would have
    for method, path, body in (("GET", f"/v1/cases/{case_id}?as_of_version=2", None),
                               ("POST", f"/v1/cases/{case_id}/notes", {"text": "Hello"})):
        problem = await cm.call(method, path, body, expect=500)
        assert problem["type"].endswith("unreadable-event"), problem
        assert "NoteAdded (schema_version 99)" in problem["detail"]
    plans = await fresh_pool.fetchval("SELECT count(*) FROM records.plans")
    rebuilt = run("rebuild-projections", env={"DATABASE_URL": fresh_database_url})
    assert rebuilt.returncode == 2
    assert f"case {case_id}: NoteAdded (schema_version 99)" in rebuilt.stderr
    assert "Traceback" not in rebuilt.stderr
    assert await fresh_pool.fetchval("SELECT count(*) FROM records.plans") == plans


async def test_events_naming_items_the_case_does_not_hold_do_not_stop_a_rebuild(
        make_records_client: ClientFactory, fresh_database_url: str, fresh_pool: asyncpg.Pool,
        token: TokenFactory) -> None:
    """Imported or legacy events may name a goal or step the case never had: they change only
    the version (0101), record no win or take-back, and the rebuild goes on (it stopped with
    a KeyError)."""
    cm = CaseApi(await make_records_client(fresh_database_url), token())
    case_id = UUID(await cm.open_case())
    goal, step = str(uuid4()), str(uuid4())
    odd = [("GoalStatusChanged", 1, {"goal_id": goal, "title": "Find work",
                                     "from_status": "active", "status": "achieved"}),
           ("ActionStepAdded", 2, {"step_id": step, "goal_id": goal, "description": "Call",
                                   "owner": "participant", "due_date": "2030-01-15"}),
           ("ActionStepCompleted", 2, {"step_id": str(uuid4()), "goal_id": goal,
                                       "description": "Call", "owner": "participant",
                                       "from_status": "in_progress"}),
           ("ActionStepStatusChanged", 1, {"step_id": str(uuid4()), "goal_id": goal,
                                           "from_status": "completed",
                                           "status": "in_progress", "reason": "by mistake"})]
    await EventStore(fresh_pool).append(
        case_id, [NewEvent(uuid4(), kind, version, data) for kind, version, data in odd],
        expected_version=1, agency="agency-a", metadata={"actor": {"sub": "importer"}})
    stats = await rebuild_projections(fresh_pool)
    assert stats.cases == 1
    assert await fresh_pool.fetchval(
        "SELECT version FROM records.plans WHERE case_id = $1", case_id) == 5
    assert [r["kind"] for r in await fresh_pool.fetch(
        "SELECT kind FROM records.outcome_facts ORDER BY version")] == ["case_opened"]
