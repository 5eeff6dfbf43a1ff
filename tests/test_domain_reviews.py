"""Agreement (rule 2) and review scheduling by risk (rule 6)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from schemas import api
from schemas import events as ev
from services.records import domain as d

TODAY = date(2025, 1, 15)
CTX = d.DecisionContext(today=TODAY, actor=d.Actor("cm-1", "case_manager"))


def new_case(risk: str = "moderate", with_goal: bool = True) -> d.InMemoryCase:
    case = d.InMemoryCase(uuid4(), CTX, datetime(2025, 1, 15, 9, tzinfo=UTC))
    case.execute(d.OpenCase("agency-a", api.OpenCase.model_validate(
        {"participant": {"name": "Jo"}, "case_manager": "cm-1", "risk_level": risk})))
    if with_goal:
        case.execute(d.SetGoal(uuid4(), api.GoalInput(
            title="Stable housing", domain="housing", source="participant",
            in_their_words="a place where my daughter can visit")))
    return case


def agree(case: d.InMemoryCase, review_id: UUID | None = None,
          **fields: Any) -> list[ev.EventPayload]:
    data: dict[str, Any] = {"participation": "in_person", "present": ["Jo", "cm-1"],
                            "participant_statement": "This is my plan."}
    data.update(fields)
    return case.execute(d.AgreePlan(review_id or uuid4(),
                                    api.AgreementInput.model_validate(data)))


def hold(case: d.InMemoryCase, review_id: UUID, next_id: UUID | None = None,
         **fields: Any) -> list[ev.EventPayload]:
    return case.execute(d.HoldReview(review_id, next_id or uuid4(),
                                     api.ReviewHeldInput.model_validate(fields)))


def state(case: d.InMemoryCase) -> d.PlanState:
    assert case.state is not None
    return case.state


# --------------------------------------------------------------------------------------------
# agreement
# --------------------------------------------------------------------------------------------


def test_agreement_needs_at_least_one_active_goal() -> None:
    case = new_case(with_goal=False)
    with pytest.raises(d.InvalidTransition) as refused:
        agree(case)
    assert refused.value.code == "plan_has_no_goals"
    case.execute(d.SetGoal(uuid4(), api.GoalInput(title="Later", domain="education",
                                                  source="agency", status="future")))
    with pytest.raises(d.InvalidTransition):
        agree(case)


@pytest.mark.parametrize(("risk", "days"), [("high", 30), ("moderate", 60), ("low", 90)])
def test_agreeing_records_the_voice_and_schedules_the_first_review_by_risk(
        risk: str, days: int) -> None:
    case = new_case(risk)
    review_id = uuid4()
    agreed, scheduled = agree(case, review_id, participation="video")
    assert isinstance(agreed, ev.PlanAgreed)
    assert (agreed.participation, agreed.outcome) == ("video", "agreed")
    assert agreed.present == ("Jo", "cm-1")
    assert agreed.participant_statement == "This is my plan."
    assert agreed.goal_ids == tuple(state(case).goals)
    assert isinstance(scheduled, ev.ReviewScheduled)
    assert scheduled.review_id == review_id
    assert scheduled.due_date == TODAY + timedelta(days=days)
    assert (scheduled.basis, scheduled.interval_days, scheduled.risk_level) == (
        "plan_agreed", days, risk)
    assert state(case).pending_review_id == review_id


@pytest.mark.parametrize("outcome", ["did_not_agree", "could_not_answer"])
def test_disagreement_is_recorded_and_schedules_nothing(outcome: str) -> None:
    case = new_case()
    [event] = agree(case, outcome=outcome, participant_statement="Not the housing part.")
    assert isinstance(event, ev.PlanAgreed)
    assert event.outcome == outcome
    assert state(case).pending_review_id is None
    assert state(case).agreement is not None
    assert state(case).agreement.outcome == outcome  # type: ignore[union-attr]


def test_agency_review_intervals_come_from_the_policy() -> None:
    case = new_case("high")
    ctx = d.DecisionContext(today=TODAY, policy=d.AgencyPolicy(review_days_high=14))
    _, scheduled = case.execute(d.AgreePlan(uuid4(), api.AgreementInput(
        participation="phone", present=["Jo"], participant_statement="ok")), ctx=ctx)
    assert isinstance(scheduled, ev.ReviewScheduled)
    assert scheduled.due_date == date(2025, 1, 29)


def test_agreeing_again_keeps_the_pending_review() -> None:
    case = new_case()
    first = uuid4()
    agree(case, first)
    events = agree(case, participant_statement="Still my plan, with the new step.")
    assert [type(e) for e in events] == [ev.PlanAgreed]
    assert state(case).pending_review_id == first


# --------------------------------------------------------------------------------------------
# reviews held
# --------------------------------------------------------------------------------------------


def test_holding_the_pending_review_schedules_the_next_from_the_date_held() -> None:
    case = new_case("high")
    first, second = uuid4(), uuid4()
    agree(case, first)
    case.ctx = d.DecisionContext(today=date(2025, 2, 12))
    held, scheduled = hold(case, first, second, held_on="2025-02-10",
                           summary="Signed the lease", participant_statement="Feels good")
    assert isinstance(held, ev.ReviewHeld)
    assert (held.held_on, held.due_date) == (date(2025, 2, 10), date(2025, 2, 14))
    assert isinstance(scheduled, ev.ReviewScheduled)
    assert (scheduled.review_id, scheduled.basis) == (second, "review_held")
    assert scheduled.due_date == date(2025, 2, 10) + timedelta(days=30)
    assert state(case).pending_review_id == second
    assert state(case).reviews[first].held


def test_a_review_held_records_the_summary_and_the_participants_own_words() -> None:
    case = new_case()
    first = uuid4()
    agree(case, first)
    held, _ = hold(case, first, summary="Signed the lease",
                   participant_statement="I finally have my own key")
    assert isinstance(held, ev.ReviewHeld)
    assert (held.summary, held.participant_statement) == ("Signed the lease",
                                                          "I finally have my own key")
    review = state(case).reviews[first]
    assert (review.held_on, review.summary, review.participant_statement) == (
        TODAY, "Signed the lease", "I finally have my own key")


def test_the_plan_as_it_stood_when_a_review_was_held_has_no_review_pending() -> None:
    """Time travel can stop between the two events of holding a review."""
    case = new_case()
    first = uuid4()
    agree(case, first)
    hold(case, first)
    as_held = d.fold(case.stream[:-1], case_id=case.case_id)
    assert as_held is not None
    assert isinstance(case.stream[-2][0], ev.ReviewHeld)
    assert as_held.pending_review_id is None
    view = d.plan_view(as_held)
    assert view.next_review is None
    assert [r.status for r in view.reviews] == ["held"]


def test_held_on_defaults_to_today_and_cannot_be_in_the_future() -> None:
    case = new_case("low")
    first = uuid4()
    agree(case, first)
    with pytest.raises(d.RuleViolation) as refused:
        hold(case, first, held_on="2025-01-16")
    assert (refused.value.code, refused.value.field) == ("held_on_in_future", "held_on")
    held, scheduled = hold(case, first)
    assert isinstance(held, ev.ReviewHeld)
    assert isinstance(scheduled, ev.ReviewScheduled)
    assert held.held_on == TODAY
    assert scheduled.due_date == TODAY + timedelta(days=90)


def test_a_review_is_not_recorded_as_held_before_it_was_scheduled() -> None:
    """A mistyped year would schedule the next review in the past, overdue at once."""
    case = new_case()
    first = uuid4()
    agree(case, first)
    version = case.version
    with pytest.raises(d.RuleViolation, match=f"scheduled on {TODAY}") as refused:
        hold(case, first, held_on=str(TODAY - timedelta(days=1)))
    assert (refused.value.code, refused.value.field) == ("held_on_before_scheduled",
                                                         "held_on")
    assert case.version == version
    held, _ = hold(case, first, held_on=str(TODAY))
    assert isinstance(held, ev.ReviewHeld)


def test_a_review_id_already_used_is_refused() -> None:
    case = new_case()
    first = uuid4()
    agree(case, first)
    with pytest.raises(d.InvalidTransition, match=f"already has a review {first}") as refused:
        hold(case, first, first)  # the next review under the id of the one held
    assert refused.value.code == "duplicate_id"
    case.execute(d.CloseCase(api.CloseInput(reason="Moved away")))
    case.execute(d.ReopenCase(api.ReopenInput(reason="Came back")))
    with pytest.raises(d.InvalidTransition) as refused:
        agree(case, first)  # the first review again, after the closing cancelled it
    assert refused.value.code == "duplicate_id"


def test_a_review_cannot_be_held_twice() -> None:
    case = new_case()
    first = uuid4()
    agree(case, first)
    hold(case, first)
    with pytest.raises(d.InvalidTransition) as refused:
        hold(case, first)
    assert refused.value.code == "review_already_held"


def test_an_unknown_review_is_not_found() -> None:
    case = new_case()
    agree(case)
    with pytest.raises(d.NotFound) as refused:
        hold(case, uuid4())
    assert refused.value.code == "review_not_found"


def test_only_the_pending_review_can_be_held() -> None:
    case = new_case()
    first = uuid4()
    agree(case, first)
    case.execute(d.CloseCase(api.CloseInput(reason="Moved away")))
    assert state(case).pending_review_id is None  # closing cancels the pending review
    case.execute(d.ReopenCase(api.ReopenInput(reason="Came back")))
    with pytest.raises(d.InvalidTransition) as refused:
        hold(case, first)
    assert refused.value.code == "review_not_pending"
    second = uuid4()
    agree(case, second)
    with pytest.raises(d.InvalidTransition, match=f"the next review is {second}") as refused:
        hold(case, first)
    assert refused.value.code == "review_not_pending"


def test_a_risk_reassessment_at_review_sets_the_next_interval() -> None:
    case = new_case("low")
    first = uuid4()
    agree(case, first)
    held, scheduled = hold(case, first, risk_level="high")
    assert isinstance(held, ev.ReviewHeld)
    assert held.risk_level == "high"
    assert isinstance(scheduled, ev.ReviewScheduled)
    assert (scheduled.interval_days, scheduled.risk_level) == (30, "high")
    assert state(case).risk_level == "high"


def test_rescheduling_moves_the_same_review() -> None:
    case = new_case()
    first = uuid4()
    agree(case, first)
    scheduled = state(case).reviews[first]
    assert (scheduled.basis, scheduled.interval_days) == ("plan_agreed", 60)
    [event] = case.execute(d.RescheduleReview(first, api.RescheduleReviewInput(
        due_date=date(2025, 3, 1), reason="Participant in hospital")))
    assert isinstance(event, ev.ReviewScheduled)
    assert (event.review_id, event.basis, event.reason) == (first, "rescheduled",
                                                            "Participant in hospital")
    moved = state(case).pending_review
    assert moved is not None
    assert (moved.review_id, moved.due_date, moved.basis, moved.interval_days) == (
        first, date(2025, 3, 1), "rescheduled", None)
    assert (moved.risk_level, moved.scheduled_at) == ("moderate", scheduled.scheduled_at)
    with pytest.raises(d.RuleViolation):
        case.execute(d.RescheduleReview(first, api.RescheduleReviewInput(
            due_date=date(2025, 1, 1), reason="typo")))
    with pytest.raises(d.RuleViolation, match=f"today [(]{TODAY}[)]") as refused:
        case.execute(d.RescheduleReview(first, api.RescheduleReviewInput(  # yesterday is past
            due_date=TODAY - timedelta(days=1), reason="typo")))
    assert (refused.value.code, refused.value.field) == ("due_date_in_past", "due_date")
    with pytest.raises(d.InvalidTransition) as unchanged:
        case.execute(d.RescheduleReview(first, api.RescheduleReviewInput(
            due_date=date(2025, 3, 1), reason="Same day")))
    assert (unchanged.value.code, unchanged.value.field) == ("no_change", "due_date")
    [today] = case.execute(d.RescheduleReview(first, api.RescheduleReviewInput(
        due_date=TODAY, reason="Jo can come in today")))
    assert isinstance(today, ev.ReviewScheduled)


def test_reviews_are_scheduled_again_after_reopening_and_reagreeing() -> None:
    case = new_case("moderate")
    agree(case)
    case.execute(d.CloseCase(api.CloseInput(reason="Completed")))
    case.execute(d.ReopenCase(api.ReopenInput(reason="Asked for support again")))
    review = uuid4()
    events = agree(case, review)
    assert [type(e) for e in events] == [ev.PlanAgreed, ev.ReviewScheduled]
    assert state(case).pending_review_id == review
