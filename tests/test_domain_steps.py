"""Action steps: owners and due dates, completion as an event (rule 4), reasons (rule 5)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest

from schemas import api
from schemas import events as ev
from services.records import domain as d
from tests.test_domain_goals import record_strength

TODAY = date(2025, 4, 10)
CTX = d.DecisionContext(today=TODAY, actor=d.Actor("cm-1", "case_manager"))


def new_case() -> tuple[d.InMemoryCase, UUID]:
    case = d.InMemoryCase(uuid4(), CTX, datetime(2025, 4, 10, 9, tzinfo=UTC))
    case.execute(d.OpenCase("agency-a", api.OpenCase.model_validate(
        {"participant": {"name": "Ray"}, "case_manager": "cm-1", "risk_level": "low"})))
    goal = uuid4()
    case.execute(d.SetGoal(goal, api.GoalInput(title="Get a driving licence", domain="other",
                                               source="participant",
                                               in_their_words="drive to work")))
    return case, goal


def add_step(case: d.InMemoryCase, goal: UUID, **fields: Any) -> UUID:
    data: dict[str, Any] = {"description": "Book the theory test", "owner": "participant"}
    data.update(fields)
    step = uuid4()
    case.execute(d.AddActionStep(step, goal, api.StepInput.model_validate(data)))
    return step


def step_status(case: d.InMemoryCase, step: UUID, new: str,
                reason: str | None = None) -> list[ev.EventPayload]:
    return case.execute(d.ChangeActionStepStatus(step, api.StepStatusInput(
        status=new, reason=reason)))


def steps(case: d.InMemoryCase) -> dict[UUID, d.StepState]:
    assert case.state is not None
    return dict(case.state.steps)


def test_a_step_records_owner_due_date_and_goal() -> None:
    case, goal = new_case()
    [event] = case.execute(d.AddActionStep(uuid4(), goal, api.StepInput.model_validate(
        {"description": "Book the theory test", "owner": "case_manager",
         "due_date": "2025-04-20"})))
    assert isinstance(event, ev.ActionStepAdded)
    assert (event.owner, event.due_date, event.goal_id) == ("case_manager", date(2025, 4, 20),
                                                            goal)
    assert case.state is not None
    assert case.state.goals[goal].step_ids == (event.step_id,)
    assert steps(case)[event.step_id].status == "not_started"


def test_a_support_owned_step_names_the_support() -> None:
    case, goal = new_case()
    with pytest.raises(d.RuleViolation) as refused:
        add_step(case, goal, owner="support")
    assert (refused.value.code, refused.value.field) == ("support_required", "support_name")
    step = add_step(case, goal, owner="support", support_name="Uncle Joe")
    assert steps(case)[step].support_name == "Uncle Joe"


def test_a_step_can_be_owned_by_a_recorded_support() -> None:
    case, goal = new_case()
    support = uuid4()
    case.execute(d.AddSupport(support, api.SupportInput(name="Maria (sister)")))
    step = add_step(case, goal, owner="support", support_id=str(support))
    assert (steps(case)[step].support_id, steps(case)[step].support_name) == (
        support, "Maria (sister)")
    with pytest.raises(d.RuleViolation) as refused:
        add_step(case, goal, owner="support", support_id=str(uuid4()))
    assert (refused.value.code, refused.value.field) == ("unknown_support", "support_id")


def test_renaming_the_support_of_a_step_unlinks_the_recorded_support() -> None:
    """A step moved from Maria (a recorded support) to a coach named in words is no longer
    linked to Maria."""
    case, goal = new_case()
    support = uuid4()
    case.execute(d.AddSupport(support, api.SupportInput(name="Maria (sister)")))
    step = add_step(case, goal, owner="support", support_id=str(support))
    [event] = case.execute(d.ReviseActionStep(step, api.StepRevision(support_name="Coach Lee")))
    assert isinstance(event, ev.ActionStepRevised)
    assert (event.support_name, event.cleared) == ("Coach Lee", ("support_id",))
    assert (steps(case)[step].support_name, steps(case)[step].support_id) == ("Coach Lee", None)


def test_a_step_stays_revisable_after_its_support_is_removed() -> None:
    """Maria moved away: her step keeps her as its owner, and its date and wording can still
    change (a body sending her back with them, echoing the whole step, too); naming a
    removed support as a new owner is what is refused, and naming her alone changes
    nothing."""
    case, goal = new_case()
    support = uuid4()
    case.execute(d.AddSupport(support, api.SupportInput(name="Maria (sister)")))
    step = add_step(case, goal, owner="support", support_id=str(support))
    case.execute(d.RemoveSupport(support, api.RemovalReason(reason="Maria moved away")))
    [event] = case.execute(d.ReviseActionStep(step, api.StepRevision(
        description="Book the theory test online", due_date=date(2025, 5, 2))))
    assert isinstance(event, ev.ActionStepRevised)
    assert (event.support_id, event.support_name, event.cleared) == (None, None, ())
    assert (steps(case)[step].support_id, steps(case)[step].support_name) == (
        support, "Maria (sister)")
    [echoed] = case.execute(d.ReviseActionStep(step, api.StepRevision(
        support_id=support, support_name="Maria (sister)", due_date=date(2025, 5, 9))))
    assert isinstance(echoed, ev.ActionStepRevised)
    assert echoed.due_date == date(2025, 5, 9)
    with pytest.raises(d.InvalidTransition) as unchanged:
        case.execute(d.ReviseActionStep(step, api.StepRevision(support_id=support)))
    assert unchanged.value.code == "no_change"
    other = uuid4()
    case.execute(d.AddSupport(other, api.SupportInput(name="Sam (friend)")))
    case.execute(d.RemoveSupport(other, api.RemovalReason(reason="Sam moved away")))
    with pytest.raises(d.RuleViolation) as refused:
        case.execute(d.ReviseActionStep(step, api.StepRevision(support_id=other)))
    assert refused.value.code == "unknown_support"


def test_a_removed_support_is_not_taken_again_by_name() -> None:
    """0101 rule 4: a removed support is refused. By id it was, but a step naming the same
    person in words (any case) went to someone no longer in the plan. Someone of the same
    name still in it may be named."""
    case, goal = new_case()
    ray = uuid4()
    case.execute(d.AddSupport(ray, api.SupportInput(name="Uncle Ray")))
    case.execute(d.RemoveSupport(ray, api.RemovalReason(reason="Ray moved away")))
    version = case.version
    with pytest.raises(d.RuleViolation) as refused:
        add_step(case, goal, owner="support", support_name="uncle ray")
    assert (refused.value.code, refused.value.field) == ("unknown_support", "support_name")
    assert "Uncle Ray was removed from this plan's supports" in refused.value.detail
    assert case.version == version
    case.execute(d.AddSupport(uuid4(), api.SupportInput(name="Uncle Ray")))  # back again
    step = add_step(case, goal, owner="support", support_name="Uncle Ray")
    assert steps(case)[step].support_name == "Uncle Ray"


def test_support_fields_only_apply_to_support_owned_steps() -> None:
    case, goal = new_case()
    with pytest.raises(d.RuleViolation) as refused:
        add_step(case, goal, owner="participant", support_name="Uncle Joe")
    assert (refused.value.code, refused.value.field) == ("support_not_owner", "support_name")
    with pytest.raises(d.RuleViolation) as refused:
        add_step(case, goal, owner="case_manager", support_id=str(uuid4()))
    assert (refused.value.code, refused.value.field) == ("support_not_owner", "support_id")


def test_the_steps_of_a_discontinued_goal_are_only_set_aside() -> None:
    """Completing a step of a goal set aside would be celebrated as a small win toward it:
    its steps can only become no longer needed."""
    case, goal = new_case()
    step, other = add_step(case, goal), add_step(case, goal)
    case.execute(d.ChangeGoalStatus(goal, api.GoalStatusInput(
        status="discontinued", reason="Ray chose to take the bus")))
    version = case.version
    refused_writes: list[d.Command] = [
        d.CompleteActionStep(step, api.StepCompleteInput()),
        *(d.ChangeActionStepStatus(step, api.StepStatusInput(status=new))
          for new in ("completed", "in_progress"))]
    for command in refused_writes:
        with pytest.raises(d.InvalidTransition) as refused:
            case.execute(command)
        assert refused.value.code == "goal_discontinued"
    assert case.version == version
    [event] = step_status(case, other, "no_longer_needed", reason="Taking the bus instead")
    assert isinstance(event, ev.ActionStepStatusChanged)
    assert (event.status, event.reason) == ("no_longer_needed", "Taking the bus instead")
    assert steps(case)[step].status == "not_started"


@pytest.mark.parametrize(("goal_status", "reason"), [("achieved", None),
                                                     ("discontinued", "Changed plans")])
def test_no_steps_are_added_to_finished_goals(goal_status: str, reason: str | None) -> None:
    case, goal = new_case()
    case.execute(d.ChangeGoalStatus(goal, api.GoalStatusInput(
        status=goal_status, reason=reason)))
    with pytest.raises(d.InvalidTransition) as refused:
        add_step(case, goal)
    assert refused.value.code == f"goal_{goal_status}"


def test_steps_can_be_added_to_a_paused_goal() -> None:
    case, goal = new_case()
    case.execute(d.ChangeGoalStatus(goal, api.GoalStatusInput(status="paused")))
    add_step(case, goal)
    assert len(steps(case)) == 1


def test_a_step_on_an_unknown_goal_is_not_found() -> None:
    case, _ = new_case()
    with pytest.raises(d.NotFound):
        add_step(case, uuid4())


def test_a_step_links_only_to_live_strengths() -> None:
    case, goal = new_case()
    with pytest.raises(d.RuleViolation, match="no strength"):
        add_step(case, goal, strength_ids=[str(uuid4())])


def test_a_step_builds_on_recorded_strengths_each_once() -> None:
    case, goal = new_case()
    strength = record_strength(case)
    [event] = case.execute(d.AddActionStep(uuid4(), goal, api.StepInput(
        description="Ask the depot for a reference", owner="participant",
        strength_ids=[strength, strength])))
    assert isinstance(event, ev.ActionStepAdded)
    assert event.strength_ids == (strength,)
    assert steps(case)[event.step_id].strength_ids == (strength,)


def test_a_step_revision_checks_only_the_strengths_it_newly_links() -> None:
    """A link to a strength removed since stays revisable; linking a removed one anew is
    refused."""
    case, goal = new_case()
    kept, added, gone = record_strength(case), record_strength(case), record_strength(case)
    step = add_step(case, goal, strength_ids=[str(kept)])
    for strength in (kept, gone):
        case.execute(d.RemoveStrength(strength, api.RemovalReason(reason="Recorded twice")))
    [event] = case.execute(d.ReviseActionStep(step, api.StepRevision(
        strength_ids=[kept, added, added])))
    assert isinstance(event, ev.ActionStepRevised)
    assert event.strength_ids == (kept, added)
    assert steps(case)[step].strength_ids == (kept, added)
    with pytest.raises(d.RuleViolation) as refused:
        case.execute(d.ReviseActionStep(step, api.StepRevision(strength_ids=[kept, gone])))
    assert (refused.value.code, refused.value.field) == ("strength_removed", "strength_ids")


# --------------------------------------------------------------------------------------------
# completion: a small win
# --------------------------------------------------------------------------------------------


def test_completing_a_step_is_an_event_with_a_snapshot_for_the_celebration() -> None:
    case, goal = new_case()
    step = add_step(case, goal)
    [event] = case.execute(d.CompleteActionStep(step, api.StepCompleteInput(note="Passed!")))
    assert isinstance(event, ev.ActionStepCompleted)
    assert (event.step_id, event.goal_id, event.description, event.owner) == (
        step, goal, "Book the theory test", "participant")
    assert event.from_status == "not_started"
    state = steps(case)[step]
    assert (state.status, state.completion_note) == ("completed", "Passed!")
    assert state.completed_at is not None


def test_a_step_cannot_be_completed_twice() -> None:
    case, goal = new_case()
    step = add_step(case, goal)
    case.execute(d.CompleteActionStep(step, api.StepCompleteInput()))
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(d.CompleteActionStep(step, api.StepCompleteInput()))
    assert refused.value.code == "step_already_completed"
    with pytest.raises(d.InvalidTransition) as refused:
        step_status(case, step, "completed")
    assert refused.value.code == "step_already_completed"


def test_the_status_form_of_completion_also_records_a_completion() -> None:
    case, goal = new_case()
    step = add_step(case, goal)
    step_status(case, step, "in_progress")
    [event] = step_status(case, step, "completed")
    assert isinstance(event, ev.ActionStepCompleted)
    assert event.from_status == "in_progress"


def test_reopening_a_completed_step_needs_a_reason() -> None:
    case, goal = new_case()
    step = add_step(case, goal)
    case.execute(d.CompleteActionStep(step, api.StepCompleteInput(note="Passed!")))
    with pytest.raises(d.RuleViolation) as refused:
        step_status(case, step, "in_progress")
    assert refused.value.code == "reason_required"
    [event] = step_status(case, step, "in_progress", reason="Test date was cancelled")
    assert isinstance(event, ev.ActionStepStatusChanged)
    assert (event.from_status, event.status) == ("completed", "in_progress")
    assert event.reason == "Test date was cancelled"
    assert (steps(case)[step].completed_at, steps(case)[step].completion_note) == (None, None)


def test_a_completion_by_status_records_its_reason_as_a_reason_not_a_note() -> None:
    """Setting a step no longer needed back to completed needs a reason: it is recorded as
    the event's reason (history shows it), never as the completion's note (a celebration
    quotes the note)."""
    case, goal = new_case()
    step = add_step(case, goal)
    step_status(case, step, "no_longer_needed", reason="Got a lift share instead")
    [event] = step_status(case, step, "completed", reason="Marked by mistake: Ray had called")
    assert isinstance(event, ev.ActionStepCompleted)
    assert (event.reason, event.note) == ("Marked by mistake: Ray had called", None)
    assert steps(case)[step].completion_note is None
    other = add_step(case, goal)
    [done] = case.execute(d.CompleteActionStep(other, api.StepCompleteInput(note="Went early")))
    assert isinstance(done, ev.ActionStepCompleted)
    assert (done.reason, done.note) == (None, "Went early")


def test_no_longer_needed_needs_a_reason_and_blocks_plain_completion() -> None:
    case, goal = new_case()
    step = add_step(case, goal)
    with pytest.raises(d.RuleViolation):
        step_status(case, step, "no_longer_needed")
    step_status(case, step, "no_longer_needed", reason="Got a lift share instead")
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(d.CompleteActionStep(step, api.StepCompleteInput()))
    assert refused.value.code == "step_no_longer_needed"
    with pytest.raises(d.RuleViolation):
        step_status(case, step, "in_progress")


def test_forward_moves_need_no_reason_but_going_back_does() -> None:
    case, goal = new_case()
    step = add_step(case, goal)
    step_status(case, step, "in_progress")
    step_status(case, step, "cannot_be_done_yet")
    step_status(case, step, "in_progress")
    with pytest.raises(d.RuleViolation):
        step_status(case, step, "not_started")
    step_status(case, step, "not_started", reason="Started on the wrong form")
    assert steps(case)[step].status == "not_started"


def test_same_step_status_is_refused_and_unknown_step_not_found() -> None:
    case, goal = new_case()
    step = add_step(case, goal)
    with pytest.raises(d.InvalidTransition, match='already marked "not started"') as refused:
        step_status(case, step, "not_started")
    assert (refused.value.code, refused.value.field) == ("no_change", "status")
    with pytest.raises(d.NotFound) as not_found:
        case.execute(d.CompleteActionStep(uuid4(), api.StepCompleteInput()))
    assert not_found.value.code == "step_not_found"


# --------------------------------------------------------------------------------------------
# revisions
# --------------------------------------------------------------------------------------------


def test_moving_a_step_from_a_support_to_the_participant_clears_the_support() -> None:
    case, goal = new_case()
    step = add_step(case, goal, owner="support", support_name="Uncle Joe",
                    due_date="2025-05-01")
    [event] = case.execute(d.ReviseActionStep(step, api.StepRevision.model_validate(
        {"owner": "participant", "due_date": "2025-05-08", "reason": "Joe is working away"})))
    assert isinstance(event, ev.ActionStepRevised)
    assert (event.owner, event.due_date) == ("participant", date(2025, 5, 8))
    assert event.reason == "Joe is working away"
    assert event.cleared == ("support_name",)
    state = steps(case)[step]
    assert (state.owner, state.support_name, state.due_date) == ("participant", None,
                                                                 date(2025, 5, 8))


def test_moving_a_step_to_a_support_needs_the_support_named() -> None:
    case, goal = new_case()
    step = add_step(case, goal)
    with pytest.raises(d.RuleViolation):
        case.execute(d.ReviseActionStep(step, api.StepRevision(owner="support")))
    case.execute(d.ReviseActionStep(step, api.StepRevision(owner="support",
                                                           support_name="Coach Lee")))
    assert steps(case)[step].support_name == "Coach Lee"


def test_a_step_revision_that_changes_nothing_is_refused() -> None:
    case, goal = new_case()
    step = add_step(case, goal)
    with pytest.raises(d.InvalidTransition, match="Nothing would change"):
        case.execute(d.ReviseActionStep(step, api.StepRevision(owner="participant")))
