"""What a refusal says to the person who reads it: statuses in words, not API values such as
"cannot_be_done_yet", and a way to put things right."""

from __future__ import annotations

import re
from datetime import timedelta
from uuid import UUID, uuid4

import pytest

from schemas import api
from services.records import domain as d
from tests.conftest import TokenFactory
from tests.records_api import CaseApi
from tests.test_domain_steps import TODAY, add_step, new_case

SNAKE_CASE = re.compile(r"\b[a-z]+_[a-z_]+\b")


def refusal(case: d.InMemoryCase, command: d.Command) -> d.DomainError:
    with pytest.raises(d.DomainError) as refused:
        case.execute(command)
    return refused.value


def step_status(step: UUID, status: str) -> d.Command:
    return d.ChangeActionStepStatus(step, api.StepStatusInput.model_validate({"status": status}))


@pytest.mark.parametrize(("status", "said"), [
    ("in_progress", 'The step is already marked "in progress".'),
    ("cannot_be_done_yet", 'The step is already marked "cannot be done yet".'),
])
def test_a_step_status_is_said_in_words(status: str, said: str) -> None:
    case, goal = new_case()
    step = add_step(case, goal)
    case.execute(step_status(step, status))
    assert refusal(case, step_status(step, status)).detail == said


def test_a_step_reversal_names_the_status_in_words() -> None:
    case, goal = new_case()
    step = add_step(case, goal)
    case.execute(step_status(step, "in_progress"))
    detail = refusal(case, step_status(step, "not_started")).detail
    assert detail == ('A reason is required to change a step that was marked "in progress"'
                      " (a reversal).")


def test_a_requirement_status_is_said_in_words() -> None:
    case, _ = new_case()
    requirement = uuid4()
    case.execute(d.RecordRequirement(requirement, api.RequirementInput(title="Report monthly")))
    not_met = d.ChangeRequirementStatus(requirement, api.RequirementStatusInput(
        status="not_met"))
    assert refusal(case, not_met).detail == ('A reason is required to record a requirement as'
                                             ' "not met".')
    case.execute(d.ChangeRequirementStatus(requirement, api.RequirementStatusInput(
        status="in_progress")))
    again = d.ChangeRequirementStatus(requirement, api.RequirementStatusInput(
        status="in_progress"))
    assert refusal(case, again).detail == 'The requirement is already marked "in progress".'


def test_a_goal_set_aside_for_later_is_said_so() -> None:
    """ "The goal is already future." was not English."""
    case, _ = new_case()
    goal = uuid4()
    case.execute(d.SetGoal(goal, api.GoalInput(title="Night classes", domain="education",
                                               source="agency", status="future")))
    detail = refusal(case, d.ChangeGoalStatus(goal, api.GoalStatusInput(status="future"))).detail
    assert detail == 'The goal is already marked "future".'


def test_a_step_for_an_achieved_goal_says_how_to_go_on() -> None:
    case, goal = new_case()
    case.execute(d.ChangeGoalStatus(goal, api.GoalStatusInput(status="achieved")))
    error = refusal(case, d.AddActionStep(uuid4(), goal, api.StepInput(
        description="Book the practical test", owner="participant")))
    assert error.code == "goal_achieved"
    assert "set this goal active again (with a reason)" in error.detail


def test_a_review_cancelled_by_closing_says_how_to_schedule_the_next() -> None:
    case, _ = new_case()
    review = uuid4()
    case.execute(d.AgreePlan(review, api.AgreementInput(
        participation="in_person", present=["Ray", "cm-1"], participant_statement="Mine.")))
    case.execute(d.CloseCase(api.CloseInput(reason="Moved away")))
    case.execute(d.ReopenCase(api.ReopenInput(reason="Came back")))
    error = refusal(case, d.HoldReview(review, uuid4(), api.ReviewHeldInput()))
    assert error.code == "review_not_pending"
    assert error.detail == ("This review was cancelled when the case was closed; agreeing the"
                            " plan with the participant again schedules the next review.")


def test_a_review_moved_into_the_past_says_what_date_it_can_take() -> None:
    case, _ = new_case()
    review = uuid4()
    case.execute(d.AgreePlan(review, api.AgreementInput(
        participation="in_person", present=["Ray", "cm-1"], participant_statement="Mine.")))
    error = refusal(case, d.RescheduleReview(review, api.RescheduleReviewInput(
        due_date=TODAY - timedelta(days=1), reason="Ray asked")))
    assert error.detail == f"A review can be moved to today ({TODAY}) or a later date."


# --------------------------------------------------------------------------------------------
# over HTTP
# --------------------------------------------------------------------------------------------

async def test_a_version_past_the_latest_says_which_versions_there_are(cm: CaseApi) -> None:
    """A case with one version answered "the case has 1 versions", and did not say what to
    ask for instead."""
    case_id = await cm.open_case()
    beyond = await cm.call("GET", f"/v1/cases/{case_id}?as_of_version=2", expect=422)
    assert beyond["detail"] == ("as_of_version 2 is past this case's latest version, 1:"
                                " ask for 1 or lower")
    assert beyond["current_version"] == 1
    diff = await cm.call("GET", f"/v1/cases/{case_id}/diff?from_version=0&to_version=3",
                         expect=422)
    assert diff["detail"] == ("to_version 3 is past this case's latest version, 1:"
                              " ask for 1 or lower")


async def test_time_travel_to_before_the_opening_says_from_when_to_ask(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    before = await cm.call("GET", f"/v1/cases/{case_id}?as_of=2020-01-01T00:00:00Z",
                           expect=404)
    assert before["detail"] == ("the case was opened at 2026-03-02T09:00:00+00:00, after the"
                                " time asked for: ask for as_of from then on")


def test_no_refusal_above_shows_an_api_value() -> None:
    """Guards the helper the refusals share: every status of steps, goals and requirements
    reads without underscores."""
    case, goal = new_case()
    step = add_step(case, goal)
    for status in ("in_progress", "cannot_be_done_yet", "no_longer_needed"):
        payload = {"status": status, "reason": "a change of plan"}
        case.execute(d.ChangeActionStepStatus(step, api.StepStatusInput.model_validate(payload)))
        detail = refusal(case, step_status(step, status)).detail
        assert not SNAKE_CASE.search(detail), detail


@pytest.mark.parametrize(("who", "method", "path", "body", "says"), [
    ({"role": "supervisor", "sub": "sup-1"}, "POST", "notes", {"text": "Hello"},
     "supervisors read, audit, reopen and transfer a case; its case manager writes the plan"),
    ({"role": "participant", "sub": "jo"}, "GET", "history", None,
     "participants read their own current plan; its history, diffs and exports are for staff"),
    ({"role": "participant", "sub": "jo"}, "POST", "notes", {"text": "Hello"},
     "participants read their plan; their case manager records changes with them"),
    ({"role": "auditor", "sub": "court-1"}, "POST", "notes", {"text": "Hello"},
     "auditors read a case; they never change it"),
    ({"role": "case_manager", "sub": "cm-2"}, "POST", "notes", {"text": "Hello"},
     "this case is not on your caseload; a supervisor can transfer it to you"),
])
async def test_a_refused_role_is_told_what_it_may_do(
        cm: CaseApi, token: TokenFactory, who: dict[str, str], method: str, path: str,
        body: dict[str, str] | None, says: str) -> None:
    """It answered "the supervisor role may not write here": no word on who does."""
    case_id = await cm.open_case()
    scope = {"cases": [case_id]} if who["role"] in ("participant", "auditor") else {}
    refused = await cm.call(method, f"/v1/cases/{case_id}/{path}", body, expect=403,
                            token=token(**who, **scope))
    assert refused["detail"] == says
