"""The case lifecycle, participant details, strengths, supports, requirements and notes."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest

from schemas import api
from schemas import events as ev
from services.records import domain as d

TODAY = date(2025, 5, 5)
CTX = d.DecisionContext(today=TODAY, actor=d.Actor("cm-1", "case_manager"))
OPEN = api.OpenCase.model_validate({
    "participant": {"name": "Alex Rivera", "preferred_name": "Lex", "pronouns": "they/them",
                    "email": "lex@example.org"},
    "case_manager": "cm-1", "risk_level": "high"})


def new_case(ctx: d.DecisionContext = CTX) -> d.InMemoryCase:
    case = d.InMemoryCase(uuid4(), ctx, datetime(2025, 5, 5, 9, tzinfo=UTC))
    case.execute(d.OpenCase("agency-a", OPEN))
    return case


def state(case: d.InMemoryCase) -> d.PlanState:
    assert case.state is not None
    return case.state


# --------------------------------------------------------------------------------------------
# open, close, reopen, transfer
# --------------------------------------------------------------------------------------------


def test_opening_records_participant_agency_and_the_policy_in_force() -> None:
    ctx = d.DecisionContext(today=TODAY, policy=d.AgencyPolicy(max_active_goals=2,
                                                               review_days_high=14))
    [event] = d.decide(None, d.OpenCase("agency-b", OPEN), ctx)
    assert isinstance(event, ev.CaseOpened)
    assert (event.agency, event.case_manager, event.risk_level) == ("agency-b", "cm-1", "high")
    assert event.participant.preferred_name == "Lex"
    assert event.policy.max_active_goals == 2
    assert event.policy.review_interval_days.high == 14
    assert event.policy.review_interval_days.low == 90


def test_opening_without_a_policy_snapshots_the_defaults() -> None:
    [event] = d.decide(None, d.OpenCase("agency-a", OPEN), CTX)
    assert isinstance(event, ev.CaseOpened)
    assert event.policy == ev.PolicySnapshot(max_active_goals=3, review_interval_days=ev
                                             .ReviewIntervals(high=30, moderate=60, low=90))


def test_the_opened_case_holds_the_participant_and_the_agency() -> None:
    opened_at = datetime(2025, 5, 5, 9, tzinfo=UTC)
    state = d.evolve(None, ev.CaseOpened(
        participant=ev.Participant(name="Alex Rivera", external_ref="Docket 2025-77"),
        case_manager="cm-1", risk_level="low", agency="agency-b"),
        version=1, recorded_at=opened_at, case_id=uuid4())
    assert (state.agency, state.opened_at, state.updated_at) == ("agency-b", opened_at,
                                                                 opened_at)
    assert state.participant.external_ref == "Docket 2025-77"


def test_a_case_cannot_be_opened_twice() -> None:
    case = new_case()
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(d.OpenCase("agency-a", OPEN))
    assert refused.value.code == "case_exists"


def test_commands_on_a_missing_case_are_not_found() -> None:
    with pytest.raises(d.NotFound) as refused:
        d.decide(None, d.AddNote(uuid4(), api.NoteInput(text="hello")), CTX)
    assert refused.value.code == "case_not_found"


def close(case: d.InMemoryCase) -> None:
    case.execute(d.CloseCase(api.CloseInput(reason="Completed supervision",
                                            outcome="completed")))


WRITES_ON_A_CLOSED_CASE: list[Any] = [
    d.AddNote(uuid4(), api.NoteInput(text="hello")),
    d.SetGoal(uuid4(), api.GoalInput(title="Job", domain="employment", source="agency")),
    d.RecordStrength(uuid4(), api.StrengthInput(category="skill", description="Welding")),
    d.TransferCase(api.TransferInput(case_manager="cm-2", reason="Caseload balance")),
    d.CloseCase(api.CloseInput(reason="again")),
    d.UpdateParticipantDetails(api.UpdateParticipant(pronouns="she/her")),
    d.AddSupport(uuid4(), api.SupportInput(name="Pastor Kim")),
]


@pytest.mark.parametrize("command", WRITES_ON_A_CLOSED_CASE,
                         ids=lambda c: type(c).__name__)
def test_a_closed_case_refuses_every_write_but_reopen(command: d.Command) -> None:
    case = new_case()
    close(case)
    version = case.version
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(command)
    assert refused.value.code == "case_closed"
    assert case.version == version


def test_closing_and_reopening() -> None:
    case = new_case()
    close(case)
    assert (state(case).status, state(case).closure_outcome) == ("closed", "completed")
    [event] = case.execute(d.ReopenCase(api.ReopenInput(reason="New court order")))
    assert isinstance(event, ev.CaseReopened)
    assert event.reason == "New court order"
    reopened = state(case)
    assert (reopened.status, reopened.closed_at) == ("open", None)
    assert (reopened.closure_reason, reopened.closure_outcome) == (None, None)
    case.execute(d.AddNote(uuid4(), api.NoteInput(text="Back in touch")))


def test_an_open_case_cannot_be_reopened() -> None:
    case = new_case()
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(d.ReopenCase(api.ReopenInput(reason="?")))
    assert refused.value.code == "case_open"


def test_closing_needs_a_reason_at_the_edge() -> None:
    with pytest.raises(ValueError, match="reason"):
        api.CloseInput.model_validate({"outcome": "completed"})
    with pytest.raises(ValueError, match="reason"):
        api.ReopenInput.model_validate({"reason": "  "})


def test_transfer_records_both_case_managers_and_refuses_the_same_one() -> None:
    case = new_case()
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(d.TransferCase(api.TransferInput(case_manager="cm-1", reason="x")))
    assert (refused.value.code, refused.value.field) == ("same_case_manager", "case_manager")
    [event] = case.execute(d.TransferCase(api.TransferInput(case_manager="cm-2",
                                                            reason="Moved districts")))
    assert isinstance(event, ev.CaseTransferred)
    assert (event.from_case_manager, event.to_case_manager) == ("cm-1", "cm-2")
    assert state(case).case_manager == "cm-2"


# --------------------------------------------------------------------------------------------
# participant details
# --------------------------------------------------------------------------------------------


def test_participant_update_records_changes_and_clears() -> None:
    case = new_case()
    [event] = case.execute(d.UpdateParticipantDetails(api.UpdateParticipant.model_validate(
        {"preferred_name": "Lex", "pronouns": "he/him", "email": None})))
    assert isinstance(event, ev.ParticipantDetailsUpdated)
    assert event.preferred_name is None  # unchanged
    assert event.pronouns == "he/him"
    assert event.cleared == ("email",)
    participant = state(case).participant
    assert (participant.name, participant.pronouns, participant.email) == (
        "Alex Rivera", "he/him", None)


def test_participant_update_that_only_clears_a_detail_is_recorded_with_its_reason() -> None:
    case = new_case()
    [event] = case.execute(d.UpdateParticipantDetails(api.UpdateParticipant.model_validate(
        {"email": None, "reason": "Lex closed that mailbox"})))
    assert isinstance(event, ev.ParticipantDetailsUpdated)
    assert (event.cleared, event.reason) == (("email",), "Lex closed that mailbox")
    assert state(case).participant.email is None


def test_participant_update_that_changes_nothing_is_refused() -> None:
    case = new_case()
    with pytest.raises(d.InvalidTransition, match="Nothing would change"):
        case.execute(d.UpdateParticipantDetails(api.UpdateParticipant(name="Alex Rivera")))


# --------------------------------------------------------------------------------------------
# strengths and supports
# --------------------------------------------------------------------------------------------


def test_strengths_are_recorded_revised_and_removed_with_a_reason() -> None:
    case = new_case()
    strength = uuid4()
    case.execute(d.RecordStrength(strength, api.StrengthInput(
        category="coping_strategy", description="Walks to clear their head",
        in_their_words="walking helps me")))
    [revised] = case.execute(d.ReviseStrength(strength, api.StrengthRevision.model_validate(
        {"in_their_words": None})))
    assert isinstance(revised, ev.StrengthRevised)
    assert revised.cleared == ("in_their_words",)
    assert state(case).strengths[strength].in_their_words is None
    [removed] = case.execute(d.RemoveStrength(strength, api.RemovalReason(reason="Duplicate")))
    assert isinstance(removed, ev.StrengthRemoved)
    assert removed.reason == "Duplicate"
    assert state(case).strengths[strength].removed
    assert state(case).strengths[strength].removal_reason == "Duplicate"
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(d.RemoveStrength(strength, api.RemovalReason(reason="again")))
    assert refused.value.code == "strength_removed"
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(d.ReviseStrength(strength, api.StrengthRevision(description="x")))
    assert refused.value.code == "strength_removed"
    with pytest.raises(d.NotFound) as not_found:
        case.execute(d.RemoveStrength(uuid4(), api.RemovalReason(reason="x")))
    assert not_found.value.code == "strength_not_found"


def test_revising_a_strength_records_the_new_wording_and_the_reason() -> None:
    case = new_case()
    strength = uuid4()
    case.execute(d.RecordStrength(strength, api.StrengthInput(
        category="skill", description="Fixes bikes")))
    [event] = case.execute(d.ReviseStrength(strength, api.StrengthRevision(
        description="Fixes bikes for the neighbours' kids", reason="Lex told us more")))
    assert isinstance(event, ev.StrengthRevised)
    assert (event.description, event.category, event.cleared, event.reason) == (
        "Fixes bikes for the neighbours' kids", None, (), "Lex told us more")
    revised = state(case).strengths[strength]
    assert (revised.category, revised.description) == ("skill",
                                                       "Fixes bikes for the neighbours' kids")


def test_removal_reason_is_required_at_the_edge() -> None:
    with pytest.raises(ValueError, match="reason"):
        api.RemovalReason.model_validate({})


def test_supports_are_added_and_removed_once() -> None:
    case = new_case()
    support = uuid4()
    case.execute(d.AddSupport(support, api.SupportInput(name="Sam", relationship="friend")))
    [removed] = case.execute(d.RemoveSupport(support, api.RemovalReason(reason="Moved away")))
    assert isinstance(removed, ev.SupportRemoved)
    assert removed.reason == "Moved away"
    assert state(case).supports[support].removal_reason == "Moved away"
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(d.RemoveSupport(support, api.RemovalReason(reason="again")))
    assert refused.value.code == "support_removed"
    with pytest.raises(d.NotFound) as not_found:
        case.execute(d.RemoveSupport(uuid4(), api.RemovalReason(reason="x")))
    assert not_found.value.code == "support_not_found"


def test_a_support_is_recorded_with_who_they_are_and_how_to_reach_them() -> None:
    case = new_case()
    [event] = case.execute(d.AddSupport(uuid4(), api.SupportInput(
        name="Pastor Kim", kind="community", relationship="pastor", contact="555-0142",
        description="Runs the Tuesday meal")))
    assert isinstance(event, ev.SupportAdded)
    assert (event.name, event.kind, event.relationship, event.contact, event.description) == (
        "Pastor Kim", "community", "pastor", "555-0142", "Runs the Tuesday meal")
    support = state(case).supports[event.support_id]
    assert (support.kind, support.relationship, support.contact, support.description) == (
        "community", "pastor", "555-0142", "Runs the Tuesday meal")


# --------------------------------------------------------------------------------------------
# requirements
# --------------------------------------------------------------------------------------------


def requirement(case: d.InMemoryCase) -> UUID:
    requirement_id = uuid4()
    case.execute(d.RecordRequirement(requirement_id, api.RequirementInput.model_validate(
        {"title": "40 hours community service", "reference": "Order 2025-118",
         "due_date": "2025-08-01"})))
    return requirement_id


def req_status(case: d.InMemoryCase, requirement_id: UUID, new: str,
               reason: str | None = None) -> None:
    case.execute(d.ChangeRequirementStatus(requirement_id, api.RequirementStatusInput(
        status=new, reason=reason)))


def test_requirements_stay_distinct_from_goals() -> None:
    case = new_case()
    requirement_id = requirement(case)
    assert state(case).goals == {}
    item = state(case).requirements[requirement_id]
    assert (item.status, item.source, item.due_date) == ("pending", "court", date(2025, 8, 1))


def test_a_requirement_records_its_source_reference_and_description() -> None:
    case = new_case()
    [event] = case.execute(d.RecordRequirement(uuid4(), api.RequirementInput(
        title="Weekly group", description="Thursday evenings at the centre", source="agency",
        reference="Policy 4.2")))
    assert isinstance(event, ev.RequirementRecorded)
    assert (event.description, event.source, event.reference) == (
        "Thursday evenings at the centre", "agency", "Policy 4.2")
    item = state(case).requirements[event.requirement_id]
    assert (item.description, item.source, item.reference) == (
        "Thursday evenings at the centre", "agency", "Policy 4.2")


@pytest.mark.parametrize("new", ["waived", "not_met"])
def test_waiving_or_not_meeting_a_requirement_needs_a_reason(new: str) -> None:
    case = new_case()
    requirement_id = requirement(case)
    with pytest.raises(d.RuleViolation):
        req_status(case, requirement_id, new)
    req_status(case, requirement_id, new, reason="Judge modified the order")
    assert state(case).requirements[requirement_id].status == new
    assert state(case).requirements[requirement_id].status_reason == "Judge modified the order"


@pytest.mark.parametrize("old", ["waived", "not_met"])
def test_a_requirement_waived_or_not_met_changes_again_only_with_a_reason(old: str) -> None:
    case = new_case()
    requirement_id = requirement(case)
    req_status(case, requirement_id, old, reason="Judge modified the order")
    with pytest.raises(d.RuleViolation, match="reversal") as refused:
        req_status(case, requirement_id, "in_progress")
    assert (refused.value.code, refused.value.field) == ("reason_required", "reason")
    req_status(case, requirement_id, "in_progress", reason="The order was reinstated")
    item = state(case).requirements[requirement_id]
    assert (item.status, item.status_reason) == ("in_progress", "The order was reinstated")


def test_requirement_progress_and_reversal() -> None:
    case = new_case()
    requirement_id = requirement(case)
    req_status(case, requirement_id, "in_progress")
    with pytest.raises(d.RuleViolation, match="reversal"):  # started, then back to pending
        req_status(case, requirement_id, "pending")
    req_status(case, requirement_id, "met")
    with pytest.raises(d.RuleViolation, match="reversal"):
        req_status(case, requirement_id, "in_progress")
    with pytest.raises(d.InvalidTransition) as refused:
        req_status(case, requirement_id, "met")
    assert (refused.value.code, refused.value.field) == ("no_change", "status")
    with pytest.raises(d.NotFound) as not_found:
        req_status(case, uuid4(), "met")
    assert not_found.value.code == "requirement_not_found"


# --------------------------------------------------------------------------------------------
# notes, ids, determinism
# --------------------------------------------------------------------------------------------


def test_notes_are_counted_and_may_link_to_a_known_goal_only() -> None:
    case = new_case()
    for index in range(12):
        case.execute(d.AddNote(uuid4(), api.NoteInput(text=f"note {index}")))
    assert state(case).note_count == 12
    assert [n.text for n in state(case).notes][-1] == "note 11"
    assert len(state(case).notes) == 10
    with pytest.raises(d.RuleViolation) as refused:
        case.execute(d.AddNote(uuid4(), api.NoteInput(text="x", goal_id=uuid4())))
    assert (refused.value.code, refused.value.field) == ("unknown_goal", "goal_id")
    goal = uuid4()
    case.execute(d.SetGoal(goal, api.GoalInput(title="Job", domain="employment",
                                               source="agency")))
    [event] = case.execute(d.AddNote(uuid4(), api.NoteInput(text="Called the depot",
                                                            goal_id=goal)))
    assert isinstance(event, ev.NoteAdded)
    assert event.goal_id == goal
    assert state(case).notes[-1].goal_id == goal


CREATES: dict[str, Any] = {
    "strength": lambda item: d.RecordStrength(item, api.StrengthInput(
        category="skill", description="Welding")),
    "goal": lambda item: d.SetGoal(item, api.GoalInput(title="Job", domain="employment",
                                                       source="agency")),
    "support": lambda item: d.AddSupport(item, api.SupportInput(name="Pastor Kim")),
    "requirement": lambda item: d.RecordRequirement(item, api.RequirementInput(
        title="Monthly check-in")),
    "note": lambda item: d.AddNote(item, api.NoteInput(text="first")),
}


@pytest.mark.parametrize("kind", sorted(CREATES))
def test_a_created_id_cannot_be_reused(kind: str) -> None:
    """A second item under an id already used would overwrite the first in the plan."""
    case = new_case()
    item = uuid4()
    case.execute(CREATES[kind](item))
    version = case.version
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(CREATES[kind](item))
    assert refused.value.code == "duplicate_id"
    assert f"already has a {kind} {item}" in refused.value.detail
    assert case.version == version


def test_a_step_id_cannot_be_reused() -> None:
    case = new_case()
    goal, step = uuid4(), uuid4()
    case.execute(CREATES["goal"](goal))
    add = d.AddActionStep(step, goal, api.StepInput(description="Call", owner="participant"))
    case.execute(add)
    with pytest.raises(d.InvalidTransition, match=f"already has a step {step}") as refused:
        case.execute(add)
    assert refused.value.code == "duplicate_id"


def test_a_note_id_is_remembered_after_it_leaves_the_recent_notes() -> None:
    case = new_case()
    first = uuid4()
    case.execute(d.AddNote(first, api.NoteInput(text="first")))
    for n in range(15):
        case.execute(d.AddNote(uuid4(), api.NoteInput(text=f"note {n}")))
    assert first not in {n.note_id for n in state(case).notes}
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(d.AddNote(first, api.NoteInput(text="again")))
    assert refused.value.code == "duplicate_id"


def test_deciding_is_deterministic_and_does_not_touch_the_state() -> None:
    case = new_case()
    before = state(case)
    command = d.SetGoal(uuid4(), api.GoalInput(title="Job", domain="employment",
                                               source="agency"))
    first = d.decide(before, command, CTX)
    second = d.decide(before, command, CTX)
    assert first == second
    assert before.goals == {}
    assert before.version == 1


def test_created_ids_are_exposed_for_the_write_result() -> None:
    goal_id, note_id = uuid4(), uuid4()
    assert d.SetGoal(goal_id, api.GoalInput(title="J", domain="other",
                                            source="agency")).created_id == goal_id
    assert d.AddNote(note_id, api.NoteInput(text="x")).created_id == note_id
    assert d.CloseCase(api.CloseInput(reason="done")).created_id is None


def test_domain_errors_form_one_hierarchy_with_http_statuses() -> None:
    for cls, status in ((d.NotFound, 404), (d.InvalidTransition, 409), (d.RuleViolation, 422)):
        error = cls("some_code", "Some detail.", field="f")
        assert isinstance(error, d.DomainError)
        assert (error.code, error.detail, error.field, error.status) == (
            "some_code", "Some detail.", "f", status)
        assert str(error) == "Some detail."
