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
    assert state(case).status == "open"
    assert state(case).closed_at is None
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
    [removed] = case.execute(d.RemoveStrength(strength, api.RemovalReason(reason="Duplicate")))
    assert isinstance(removed, ev.StrengthRemoved)
    assert state(case).strengths[strength].removed
    with pytest.raises(d.InvalidTransition):
        case.execute(d.RemoveStrength(strength, api.RemovalReason(reason="again")))
    with pytest.raises(d.InvalidTransition):
        case.execute(d.ReviseStrength(strength, api.StrengthRevision(description="x")))
    with pytest.raises(d.NotFound):
        case.execute(d.RemoveStrength(uuid4(), api.RemovalReason(reason="x")))


def test_removal_reason_is_required_at_the_edge() -> None:
    with pytest.raises(ValueError, match="reason"):
        api.RemovalReason.model_validate({})


def test_supports_are_added_and_removed_once() -> None:
    case = new_case()
    support = uuid4()
    case.execute(d.AddSupport(support, api.SupportInput(name="Sam", relationship="friend")))
    case.execute(d.RemoveSupport(support, api.RemovalReason(reason="Moved away")))
    assert state(case).supports[support].removal_reason == "Moved away"
    with pytest.raises(d.InvalidTransition):
        case.execute(d.RemoveSupport(support, api.RemovalReason(reason="again")))
    with pytest.raises(d.NotFound):
        case.execute(d.RemoveSupport(uuid4(), api.RemovalReason(reason="x")))


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


@pytest.mark.parametrize("new", ["waived", "not_met"])
def test_waiving_or_not_meeting_a_requirement_needs_a_reason(new: str) -> None:
    case = new_case()
    requirement_id = requirement(case)
    with pytest.raises(d.RuleViolation):
        req_status(case, requirement_id, new)
    req_status(case, requirement_id, new, reason="Judge modified the order")
    assert state(case).requirements[requirement_id].status == new


def test_requirement_progress_and_reversal() -> None:
    case = new_case()
    requirement_id = requirement(case)
    req_status(case, requirement_id, "in_progress")
    with pytest.raises(d.RuleViolation, match="reversal"):  # started, then back to pending
        req_status(case, requirement_id, "pending")
    req_status(case, requirement_id, "met")
    with pytest.raises(d.RuleViolation, match="reversal"):
        req_status(case, requirement_id, "in_progress")
    with pytest.raises(d.InvalidTransition):
        req_status(case, requirement_id, "met")
    with pytest.raises(d.NotFound):
        req_status(case, uuid4(), "met")


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
    assert refused.value.field == "goal_id"


def test_a_created_id_cannot_be_reused() -> None:
    case = new_case()
    note = uuid4()
    case.execute(d.AddNote(note, api.NoteInput(text="first")))
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(d.AddNote(note, api.NoteInput(text="second")))
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
