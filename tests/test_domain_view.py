"""Folding events into state and the current-plan view."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from asyncpg.pgproto.pgproto import UUID as PgUUID
from hypothesis import given, settings

from schemas import api
from schemas import events as ev
from services.records import domain as d
from services.records.domain.state import RECENT_NOTES
from tests.conftest import FakeClock
from tests.test_rebuild import KINDS, Move, command_for, moves

TODAY = date(2025, 2, 1)
START = datetime(2025, 2, 1, 9, tzinfo=UTC)
BRIEF_KEYS = {"case_id", "version", "status", "participant", "case_manager", "risk_level",
              "strengths", "goals", "supports", "requirements", "agreement", "next_review",
              "updated_at"}


def scenario() -> tuple[d.InMemoryCase, dict[str, UUID]]:
    case = d.InMemoryCase(uuid4(), d.DecisionContext(today=TODAY), START)
    ids = {name: uuid4() for name in ("kept", "dropped", "goal", "later", "step", "done",
                                      "support", "req", "review")}
    case.execute(d.OpenCase("agency-a", api.OpenCase.model_validate(
        {"participant": {"name": "Taylor", "pronouns": "she/her"}, "case_manager": "cm-1",
         "risk_level": "high"})))
    for key in ("kept", "dropped"):
        case.execute(d.RecordStrength(ids[key], api.StrengthInput(
            category="skill", description=f"strength {key}")))
    case.execute(d.SetGoal(ids["goal"], api.GoalInput.model_validate(
        {"title": "Get my GED", "domain": "education", "source": "participant",
         "in_their_words": "finish what I started", "target_date": "2025-12-01",
         "strength_ids": [str(ids["kept"]), str(ids["dropped"])]})))
    case.execute(d.SetGoal(ids["later"], api.GoalInput(
        title="Learn to drive", domain="other", source="agency", status="future")))
    case.execute(d.AddActionStep(ids["step"], ids["goal"], api.StepInput.model_validate(
        {"description": "Enrol in evening class", "owner": "participant",
         "due_date": "2025-02-20"})))
    case.execute(d.AddActionStep(ids["done"], ids["goal"], api.StepInput(
        description="Find the class timetable", owner="case_manager")))
    case.execute(d.CompleteActionStep(ids["done"], api.StepCompleteInput(note="Printed it")))
    case.execute(d.RemoveStrength(ids["dropped"], api.RemovalReason(reason="Recorded twice")))
    case.execute(d.AddSupport(ids["support"], api.SupportInput(name="Gran", kind="natural")))
    case.execute(d.RecordRequirement(ids["req"], api.RequirementInput(title="Monthly check-in")))
    case.execute(d.AgreePlan(ids["review"], api.AgreementInput(
        participation="in_person", present=["Taylor", "Gran"],
        participant_statement="I want this")))
    case.execute(d.AddNote(uuid4(), api.NoteInput(text="Good first meeting")))
    return case, ids


def test_the_plan_view_shows_the_current_plan() -> None:
    case, ids = scenario()
    assert case.state is not None
    view = d.plan_view(case.state)
    dumped = view.model_dump(mode="json")
    assert set(dumped) >= BRIEF_KEYS
    assert view.case_id == case.case_id
    assert view.version == case.version == 14
    assert (view.agency, view.opened_at) == ("agency-a", START + timedelta(seconds=1))
    assert (view.status, view.case_manager, view.risk_level) == ("open", "cm-1", "high")
    assert view.participant.pronouns == "she/her"
    assert [s.strength_id for s in view.strengths] == [ids["kept"]]
    goal, later = view.goals
    assert goal.goal_id == ids["goal"]
    assert goal.strength_ids == [ids["kept"]]  # the removed strength is not shown
    assert [s.step_id for s in goal.steps] == [ids["step"], ids["done"]]
    assert [s.status for s in goal.steps] == ["not_started", "completed"]
    assert goal.steps[0].due_date == date(2025, 2, 20)
    assert goal.steps[1].completion_note == "Printed it"
    assert later.status == "future"
    assert (view.active_goal_count, view.max_active_goals) == (1, 3)
    assert [s.name for s in view.supports] == ["Gran"]
    assert view.requirements[0].status == "pending"
    assert view.agreement is not None
    assert (view.agreement.outcome, view.agreement.version) == ("agreed", 12)
    assert view.next_review is not None
    assert view.next_review.review_id == ids["review"]
    assert view.next_review.due_date == TODAY + timedelta(days=30)
    assert view.updated_at == START + timedelta(seconds=14)
    assert view.note_count == 1
    assert dumped["goals"][0]["steps"][0]["due_date"] == "2025-02-20"


def test_fold_equals_step_by_step_evolve_and_resumes_from_a_snapshot() -> None:
    case, _ = scenario()
    folded = d.fold(case.stream, case_id=case.case_id)
    assert folded == case.state
    head, tail = case.stream[:6], case.stream[6:]
    snapshot = d.fold(head, case_id=case.case_id)
    assert d.fold(tail, case_id=case.case_id, state=snapshot) == case.state


def test_evolve_never_changes_an_earlier_state() -> None:
    case, ids = scenario()
    as_of_5 = d.fold(case.stream[:5], case_id=case.case_id)
    assert as_of_5 is not None
    copy = d.fold(case.stream[:5], case_id=case.case_id)
    d.fold(case.stream[5:], case_id=case.case_id, state=as_of_5)
    assert as_of_5 == copy
    assert as_of_5.version == 5
    assert ids["step"] not in as_of_5.steps
    assert d.plan_view(as_of_5).next_review is None


def test_folding_survives_the_store_round_trip_including_upcasting() -> None:
    case, _ = scenario()
    stored = [(e.event_type, e.schema_version, ev.dump_event(e), v, at)
              for e, v, at in case.stream]
    # an old stream wrote ActionStepAdded at v1, with a free-text owner
    step = next(i for i, s in enumerate(stored) if s[0] == "ActionStepAdded")
    _, _, data, version, at = stored[step]
    v1 = {k: data[k] for k in ("step_id", "goal_id", "description", "due_date")}
    v1["owner"] = "Gran"
    stored[step] = ("ActionStepAdded", 1, v1, version, at)
    parsed = [(ev.parse_event(t, sv, data), v, at) for t, sv, data, v, at in stored]
    state = d.fold(parsed, case_id=case.case_id)
    assert state is not None
    step_state = state.steps[v1_step_id(v1)]
    assert (step_state.owner, step_state.support_name) == ("support", "Gran")


def v1_step_id(data: dict[str, object]) -> UUID:
    return UUID(str(data["step_id"]))


def test_a_stream_must_start_with_case_opened_and_name_its_case() -> None:
    note = ev.NoteAdded(note_id=uuid4(), text="hello")
    with pytest.raises(d.FoldError, match="starts with CaseOpened"):
        d.evolve(None, note, version=1, recorded_at=START)
    opened = ev.CaseOpened(participant=ev.Participant(name="X"), case_manager="cm",
                           risk_level="low", agency="a")
    with pytest.raises(d.FoldError, match="case_id"):
        d.evolve(None, opened, version=1, recorded_at=START)
    state = d.evolve(None, opened, version=1, recorded_at=START, case_id=uuid4())
    with pytest.raises(d.FoldError):
        d.evolve(state, opened, version=2, recorded_at=START)


def test_the_view_hides_a_steps_links_to_removed_strengths() -> None:
    case, ids = scenario()
    step = uuid4()
    case.execute(d.AddActionStep(step, ids["goal"], api.StepInput(
        description="Show the tutor my welding", owner="participant",
        strength_ids=[ids["kept"]])))
    assert case.state is not None
    [shown] = [s for s in d.plan_view(case.state).goals[0].steps if s.step_id == step]
    assert shown.strength_ids == [ids["kept"]]
    case.execute(d.RemoveStrength(ids["kept"], api.RemovalReason(reason="Recorded twice")))
    assert case.state is not None
    [shown] = [s for s in d.plan_view(case.state).goals[0].steps if s.step_id == step]
    assert shown.strength_ids == []
    assert case.state.steps[step].strength_ids == (ids["kept"],)  # kept in the record


def test_the_view_lists_each_review_as_held_scheduled_or_cancelled() -> None:
    case, ids = scenario()
    assert case.state is not None
    assert [r.status for r in d.plan_view(case.state).reviews] == ["scheduled"]
    case.execute(d.HoldReview(ids["review"], uuid4(), api.ReviewHeldInput()))
    view = d.plan_view(case.state)
    assert [r.status for r in view.reviews] == ["held", "scheduled"]
    assert view.next_review is not None
    assert (view.next_review.review_id, view.next_review.status) == (view.reviews[1].review_id,
                                                                     "scheduled")
    case.execute(d.CloseCase(api.CloseInput(reason="Moved", outcome="moved")))
    assert [r.status for r in d.plan_view(case.state).reviews] == ["held", "cancelled"]


def test_a_closed_case_view_shows_the_closure_and_no_pending_review() -> None:
    case, _ = scenario()
    case.execute(d.CloseCase(api.CloseInput(reason="Moved", outcome="moved")))
    assert case.state is not None
    view = d.plan_view(case.state)
    assert view.status == "closed"
    assert view.next_review is None
    assert view.closure is not None
    assert (view.closure.reason, view.closure.outcome) == ("Moved", "moved")


def test_one_stream_folds_alike_under_every_case_id_it_is_read_as() -> None:
    """Folding keeps nothing between streams: the same 50 events read as two cases give two
    plans, each with its own id and every event. (How fast folding is, is measured by
    bench/rebuild.py, not asserted here.)"""
    case, _ = scenario()
    for index in range(36):
        case.execute(d.AddNote(uuid4(), api.NoteInput(text=f"check-in {index}")))
    stream = case.stream
    assert len(stream) == 50
    first, second = uuid4(), uuid4()
    one, other = d.fold(stream, case_id=first), d.fold(stream, case_id=second)
    assert one is not None
    assert other is not None
    assert (one.case_id, one.version, other.case_id, other.version) == (first, 50, second, 50)
    assert d.plan_json(one).replace(str(first), str(second)) == d.plan_json(other)


# --------------------------------------------------------------------------------------------
# The stored plan JSON (plan_json, written on every append) equals the validated view
# --------------------------------------------------------------------------------------------


def states_of_a_run(run: list[Move]) -> Iterator[d.PlanState]:
    """Every state of a case driven by the rebuild test's random moves (refusals skipped).

    Recording times alternate between whole seconds and odd microseconds, so both shapes of
    timestamp are written."""
    clock = FakeClock()
    case = d.InMemoryCase(uuid4(), d.DecisionContext(today=clock.now.date()), clock.now)
    case.execute(d.OpenCase("agency-a", api.OpenCase.model_validate({
        "participant": {"name": "Jordan", "preferred_name": "Jo", "email": "jo@example.org"},
        "case_manager": "cm-1", "risk_level": "high"})))
    assert case.state is not None
    yield case.state
    for move in run:
        command = command_for(move, case.state, clock)
        if command is None:
            continue
        at = clock.now + timedelta(microseconds=(case.version % 2) * (case.version * 1009 + 1))
        try:
            case.execute(command, ctx=d.DecisionContext(today=clock.now.date()), at=at)
        except d.DomainError:
            continue
        yield case.state


def assert_json_equals_view(state: d.PlanState) -> None:
    assert json.loads(d.plan_json(state)) == d.plan_view(state).model_dump(mode="json")


@settings(max_examples=40, deadline=None)
@given(run=moves)
def test_the_plan_json_equals_the_validated_view_in_every_state(run: list[Move]) -> None:
    for state in states_of_a_run(run):
        assert_json_equals_view(state)


def states_of_the_scenario_carried_on() -> Iterator[d.PlanState]:
    """The scenario above, then its review held, more notes than the view keeps, closure."""
    case, ids = scenario()
    for recorded in range(1, case.version + 1):
        state = d.fold(case.stream[:recorded], case_id=case.case_id)
        assert state is not None
        yield state
    commands: list[d.Command] = [
        d.HoldReview(ids["review"], uuid4(), api.ReviewHeldInput(summary="Went well")),
        *(d.AddNote(uuid4(), api.NoteInput(text=f"check-in {n}")) for n in range(RECENT_NOTES)),
        d.CloseCase(api.CloseInput(reason="Moved", outcome="moved")),
    ]
    for command in commands:
        case.execute(command)
        assert case.state is not None
        yield case.state


def test_the_plan_json_is_checked_on_plans_with_every_kind_of_item() -> None:
    """Guards the property test above: the states checked show every part of the view."""
    rng = random.Random(11)
    runs = [[(rng.choice(KINDS), rng.randrange(10), rng.randrange(100)) for _ in range(150)]
            for _ in range(4)]
    seen: set[str] = set()
    for states in (*map(states_of_a_run, runs), states_of_the_scenario_carried_on()):
        for state in states:
            assert_json_equals_view(state)
            seen |= parts_shown(state)
    assert seen == PARTS


def test_ids_read_from_the_database_are_written_like_any_other() -> None:
    case, _ = scenario()
    assert case.state is not None
    state = replace(case.state, case_id=PgUUID(str(case.case_id)))
    assert type(state.case_id) is not UUID
    assert json.loads(d.plan_json(state))["case_id"] == str(case.case_id)
    assert_json_equals_view(state)


PARTS = {"goal with steps", "goal target date", "goal without target date", "achieved goal",
         "removed strength", "live strength", "removed support", "live support", "support step",
         "completed step", "requirement", "requirement status reason", "agreement",
         "next review", "held review", "recent notes full", "closure", "time with microseconds",
         "time on the second"}


def parts_shown(state: d.PlanState) -> set[str]:
    goals, steps = list(state.goals.values()), list(state.steps.values())
    times = [state.updated_at, *(s.added_at for s in steps)]
    found = {
        "goal with steps": any(g.step_ids for g in goals),
        "goal target date": any(g.target_date is not None for g in goals),
        "goal without target date": any(g.target_date is None for g in goals),
        "achieved goal": any(g.achieved_at is not None for g in goals),
        "removed strength": any(s.removed for s in state.strengths.values()),
        "live strength": any(not s.removed for s in state.strengths.values()),
        "removed support": any(s.removed for s in state.supports.values()),
        "live support": any(not s.removed for s in state.supports.values()),
        "support step": any(s.support_id is not None for s in steps),
        "completed step": any(s.completed_at is not None for s in steps),
        "requirement": bool(state.requirements),
        "requirement status reason": any(r.status_reason for r in state.requirements.values()),
        "agreement": state.agreement is not None,
        "next review": state.pending_review is not None,
        "held review": any(r.held for r in state.reviews.values()),
        "recent notes full": len(state.notes) == RECENT_NOTES < state.note_count,
        "closure": state.closed_at is not None,
        "time with microseconds": any(t.microsecond for t in times),
        "time on the second": any(not t.microsecond for t in times),
    }
    return {part for part, shown in found.items() if shown}
