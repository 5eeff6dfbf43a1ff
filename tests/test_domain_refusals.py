"""Refusals, in words (decision 0101): a case manager reads a refusal's detail, often in their
own app, so it names statuses in words and, where there is one, the way on."""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID, uuid4

import pytest

from schemas import api
from services.records import domain as d
from tests.test_domain_steps import new_case


def goal_input(**fields: object) -> api.GoalInput:
    return api.GoalInput.model_validate({"title": "Another", "domain": "other",
                                         "source": "agency", **fields})


def closed(case: d.InMemoryCase, goal: UUID) -> d.Command:
    case.execute(d.CloseCase(api.CloseInput(reason="Moved away")))
    return d.AddNote(uuid4(), api.NoteInput(text="Called"))


def at_the_cap(case: d.InMemoryCase, goal: UUID) -> d.Command:
    for _ in range(2):
        case.execute(d.SetGoal(uuid4(), goal_input()))
    return d.SetGoal(uuid4(), goal_input())


def participant_goal_without_their_words(case: d.InMemoryCase, goal: UUID) -> d.Command:
    return d.SetGoal(uuid4(), goal_input(source="participant"))


def discontinued_goal_achieved(case: d.InMemoryCase, goal: UUID) -> d.Command:
    case.execute(d.ChangeGoalStatus(goal, api.GoalStatusInput(status="discontinued",
                                                              reason="Not now")))
    return d.ChangeGoalStatus(goal, api.GoalStatusInput(status="achieved"))


def step_on_an_achieved_goal(case: d.InMemoryCase, goal: UUID) -> d.Command:
    case.execute(d.ChangeGoalStatus(goal, api.GoalStatusInput(status="achieved")))
    return d.AddActionStep(uuid4(), goal, api.StepInput(description="Call", owner="participant"))


def step_of_a_discontinued_goal(case: d.InMemoryCase, goal: UUID) -> d.Command:
    step = uuid4()
    case.execute(d.AddActionStep(step, goal, api.StepInput(description="Call",
                                                           owner="participant")))
    case.execute(d.ChangeGoalStatus(goal, api.GoalStatusInput(status="discontinued",
                                                              reason="Not now")))
    return d.CompleteActionStep(step, api.StepCompleteInput())


def step_no_longer_needed_completed(case: d.InMemoryCase, goal: UUID) -> d.Command:
    step = uuid4()
    case.execute(d.AddActionStep(step, goal, api.StepInput(description="Call",
                                                           owner="participant")))
    case.execute(d.ChangeActionStepStatus(step, api.StepStatusInput(
        status="no_longer_needed", reason="Found another way")))
    return d.CompleteActionStep(step, api.StepCompleteInput())


def step_with_an_unnamed_support(case: d.InMemoryCase, goal: UUID) -> d.Command:
    return d.AddActionStep(uuid4(), goal, api.StepInput(description="Drive Sam",
                                                        owner="support"))


def review_cancelled_by_closing(case: d.InMemoryCase, goal: UUID) -> d.Command:
    review = uuid4()
    case.execute(d.AgreePlan(review, api.AgreementInput(
        participation="in_person", present=["Sam"], participant_statement="Yes")))
    case.execute(d.CloseCase(api.CloseInput(reason="Moved away")))
    case.execute(d.ReopenCase(api.ReopenInput(reason="Came back")))
    return d.HoldReview(review, uuid4(), api.ReviewHeldInput())


def reopening_an_open_case(case: d.InMemoryCase, goal: UUID) -> d.Command:
    return d.ReopenCase(api.ReopenInput(reason="Came back"))


REFUSALS: dict[str, tuple[Callable[[d.InMemoryCase, UUID], d.Command], str, str]] = {
    "closed case": (closed, "case_closed", "reopen it (with a reason) before changing"),
    "goal cap": (at_the_cap, "active_goal_limit",
                 "Set this goal as 'future', pause or complete another goal, or give an "
                 "override_reason."),
    "their words": (participant_goal_without_their_words, "in_their_words_required",
                    "what they want in their own words"),
    "achieve discontinued": (discontinued_goal_achieved, "goal_discontinued",
                             "set it active again (with a reason) first"),
    "step on achieved goal": (step_on_an_achieved_goal, "goal_achieved",
                              "set this goal active again (with a reason) first, or add the "
                              "step to another goal"),
    "step of discontinued goal": (step_of_a_discontinued_goal, "goal_discontinued",
                                  "set the goal active again (with a reason) to work on"),
    "step no longer needed": (step_no_longer_needed_completed, "step_no_longer_needed",
                              "change its status with a reason to complete it"),
    "unnamed support": (step_with_an_unnamed_support, "support_required",
                        "Name the support who owns this step (support_name or support_id)"),
    "cancelled review": (review_cancelled_by_closing, "review_not_pending",
                         "agreeing the plan with the participant again schedules the next"),
    "reopen open case": (reopening_an_open_case, "case_open",
                         "only a closed case can be reopened"),
}


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_a_refusal_says_what_to_do_instead(refusal: str) -> None:
    arrange, code, way_on = REFUSALS[refusal]
    case, goal = new_case()
    command = arrange(case, goal)
    with pytest.raises(d.DomainError) as refused:
        case.execute(command)
    assert refused.value.code == code
    assert way_on in refused.value.detail
