"""Goals: the active-goal cap (rule 1), the participant's voice (2), links to strengths (3),
reasons for discontinuations and reversals (5)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest

from schemas import api
from schemas import events as ev
from services.records import domain as d

TODAY = date(2025, 3, 3)
CTX = d.DecisionContext(today=TODAY, actor=d.Actor("cm-1", "case_manager"))


def new_case(policy: d.AgencyPolicy | None = None) -> d.InMemoryCase:
    case = d.InMemoryCase(uuid4(), d.DecisionContext(today=TODAY, policy=policy),
                          datetime(2025, 3, 3, 9, tzinfo=UTC))
    case.execute(d.OpenCase("agency-a", api.OpenCase.model_validate(
        {"participant": {"name": "Dana"}, "case_manager": "cm-1", "risk_level": "moderate"})))
    case.ctx = CTX
    return case


def goal_body(**fields: Any) -> api.GoalInput:
    data: dict[str, Any] = {"title": "Steady work", "domain": "employment", "source": "court"}
    data.update(fields)
    return api.GoalInput.model_validate(data)


def set_goal(case: d.InMemoryCase, **fields: Any) -> UUID:
    goal_id = uuid4()
    case.execute(d.SetGoal(goal_id, goal_body(**fields)))
    return goal_id


def status(case: d.InMemoryCase, goal_id: UUID, new: str, **fields: Any) -> list[ev.EventPayload]:
    return case.execute(d.ChangeGoalStatus(
        goal_id, api.GoalStatusInput.model_validate({"status": new, **fields})))


def state(case: d.InMemoryCase) -> d.PlanState:
    assert case.state is not None
    return case.state


# --------------------------------------------------------------------------------------------
# rule 1: few goals at a time
# --------------------------------------------------------------------------------------------


def test_a_fourth_active_goal_is_refused_and_nothing_is_recorded() -> None:
    case = new_case()
    for _ in range(3):
        set_goal(case)
    version = case.version
    with pytest.raises(d.RuleViolation) as refused:
        set_goal(case, title="A fourth")
    assert refused.value.code == "active_goal_limit"
    assert refused.value.field == "override_reason"
    assert "3" in refused.value.detail
    assert case.version == version
    assert state(case).active_goal_count == 3


def test_the_override_reason_lets_a_fourth_goal_in_and_is_recorded() -> None:
    case = new_case()
    for _ in range(3):
        set_goal(case)
    [event] = case.execute(d.SetGoal(uuid4(), goal_body(
        override_reason="Court added a condition at the hearing")))
    assert isinstance(event, ev.GoalSet)
    assert event.override_reason == "Court added a condition at the hearing"
    assert state(case).active_goal_count == 4
    assert state(case).goals[event.goal_id].override_reason == (
        "Court added a condition at the hearing")


def test_a_goal_keeps_its_override_reason_through_later_status_changes() -> None:
    """The plan still shows why a goal went over the cap after it is paused and resumed."""
    case = new_case()
    for _ in range(3):
        set_goal(case)
    goal = set_goal(case, override_reason="Court added a condition at the hearing")
    [paused] = status(case, goal, "paused")
    assert isinstance(paused, ev.GoalStatusChanged)
    assert paused.override_reason is None  # no override happened on pausing
    status(case, goal, "active", override_reason="The hearing date is close")
    status(case, goal, "paused")
    assert state(case).goals[goal].override_reason == "The hearing date is close"


def test_an_override_is_not_recorded_when_the_cap_was_not_reached() -> None:
    case = new_case()
    [event] = case.execute(d.SetGoal(uuid4(), goal_body(override_reason="just in case")))
    assert isinstance(event, ev.GoalSet)
    assert event.override_reason is None


def test_future_goals_do_not_count_against_the_cap() -> None:
    case = new_case()
    for _ in range(3):
        set_goal(case)
    later = set_goal(case, status="future", title="Go back to college")
    assert state(case).goals[later].status == "future"
    assert state(case).active_goal_count == 3


@pytest.mark.parametrize("parked", ["future", "paused"])
def test_reactivating_a_goal_at_the_cap_needs_an_override(parked: str) -> None:
    case = new_case()
    goal = set_goal(case)
    status(case, goal, parked)
    for _ in range(3):
        set_goal(case)
    with pytest.raises(d.RuleViolation, match="limit is 3"):
        status(case, goal, "active")
    [event] = status(case, goal, "active", override_reason="Housing deadline moved up")
    assert isinstance(event, ev.GoalStatusChanged)
    assert (event.from_status, event.status) == (parked, "active")
    assert event.override_reason == "Housing deadline moved up"
    assert state(case).goals[goal].override_reason == "Housing deadline moved up"
    assert state(case).active_goal_count == 4


def test_achieving_a_goal_makes_room_for_another() -> None:
    case = new_case()
    goals = [set_goal(case) for _ in range(3)]
    status(case, goals[0], "achieved")
    set_goal(case, title="Next step")
    assert state(case).active_goal_count == 3


def test_the_cap_follows_the_agency_policy_in_the_context() -> None:
    case = new_case()
    strict = d.DecisionContext(today=TODAY, policy=d.AgencyPolicy(max_active_goals=2))
    case.execute(d.SetGoal(uuid4(), goal_body()), ctx=strict)
    case.execute(d.SetGoal(uuid4(), goal_body()), ctx=strict)
    with pytest.raises(d.RuleViolation):
        case.execute(d.SetGoal(uuid4(), goal_body()), ctx=strict)


def test_without_a_policy_in_the_context_the_case_snapshot_applies() -> None:
    case = new_case(policy=d.AgencyPolicy(max_active_goals=4))
    assert state(case).policy.max_active_goals == 4
    for _ in range(4):
        set_goal(case)  # CTX has no policy: the snapshot taken at CaseOpened (4) applies
    with pytest.raises(d.RuleViolation, match="limit is 4"):
        set_goal(case)


# --------------------------------------------------------------------------------------------
# rule 2: the participant's voice
# --------------------------------------------------------------------------------------------


def test_a_participant_goal_needs_their_own_words() -> None:
    case = new_case()
    with pytest.raises(d.RuleViolation) as refused:
        set_goal(case, source="participant")
    assert (refused.value.code, refused.value.field) == ("in_their_words_required",
                                                         "in_their_words")
    goal = set_goal(case, source="participant", in_their_words="I want to drive my kids")
    assert state(case).goals[goal].in_their_words == "I want to drive my kids"
    assert state(case).goals[goal].source == "participant"


def test_court_and_agency_goals_do_not_need_in_their_words() -> None:
    case = new_case()
    set_goal(case, source="court")
    set_goal(case, source="agency")
    assert len(state(case).goals) == 2


def test_their_words_cannot_be_cleared_from_a_participant_goal() -> None:
    case = new_case()
    goal = set_goal(case, source="participant", in_their_words="my own place")
    with pytest.raises(d.RuleViolation, match="own") as refused:
        case.execute(d.ReviseGoal(goal, api.GoalRevision.model_validate(
            {"in_their_words": None})))
    assert (refused.value.code, refused.value.field) == ("in_their_words_required",
                                                         "in_their_words")
    assert state(case).goals[goal].in_their_words == "my own place"


def test_a_participant_goal_is_revised_in_their_words_too() -> None:
    case = new_case()
    goal = set_goal(case, source="participant", in_their_words="my own place")
    [event] = case.execute(d.ReviseGoal(goal, api.GoalRevision(
        title="A flat near my work", in_their_words="a place near my job")))
    assert isinstance(event, ev.GoalRevised)
    assert (event.title, event.in_their_words, event.cleared) == (
        "A flat near my work", "a place near my job", ())
    assert state(case).goals[goal].in_their_words == "a place near my job"


def test_words_given_with_a_court_goal_may_be_cleared() -> None:
    case = new_case()
    goal = set_goal(case, source="court", in_their_words="the judge's wording")
    [event] = case.execute(d.ReviseGoal(goal, api.GoalRevision.model_validate(
        {"in_their_words": None})))
    assert isinstance(event, ev.GoalRevised)
    assert event.cleared == ("in_their_words",)
    assert state(case).goals[goal].in_their_words is None


# --------------------------------------------------------------------------------------------
# rule 3: strengths first
# --------------------------------------------------------------------------------------------


def record_strength(case: d.InMemoryCase) -> UUID:
    strength_id = uuid4()
    case.execute(d.RecordStrength(strength_id, api.StrengthInput(
        category="past_success", description="Held a warehouse job for two years")))
    return strength_id


def test_goals_link_to_recorded_strengths() -> None:
    case = new_case()
    strength = record_strength(case)
    goal = set_goal(case, strength_ids=[str(strength), str(strength)])
    assert state(case).goals[goal].strength_ids == (strength,)


def test_a_goal_cannot_link_to_an_unknown_strength() -> None:
    case = new_case()
    with pytest.raises(d.RuleViolation) as refused:
        set_goal(case, strength_ids=[str(uuid4())])
    assert (refused.value.code, refused.value.field) == ("unknown_strength", "strength_ids")


def test_a_goal_cannot_link_to_a_removed_strength() -> None:
    case = new_case()
    strength = record_strength(case)
    case.execute(d.RemoveStrength(strength, api.RemovalReason(reason="Recorded twice")))
    with pytest.raises(d.RuleViolation) as refused:
        set_goal(case, strength_ids=[str(strength)])
    assert (refused.value.code, refused.value.field) == ("strength_removed", "strength_ids")
    goal = set_goal(case)
    with pytest.raises(d.RuleViolation) as refused:
        case.execute(d.ReviseGoal(goal, api.GoalRevision(strength_ids=[strength])))
    assert (refused.value.code, refused.value.field) == ("strength_removed", "strength_ids")


def test_revising_a_goals_links_records_each_strength_and_risk_factor_once() -> None:
    case = new_case()
    first, second = record_strength(case), record_strength(case)
    goal = set_goal(case, strength_ids=[str(first)], risk_factors=["peers"])
    [event] = case.execute(d.ReviseGoal(goal, api.GoalRevision(
        strength_ids=[first, second, second], risk_factors=["peers", "housing", "peers"])))
    assert isinstance(event, ev.GoalRevised)
    assert (event.strength_ids, event.risk_factors) == ((first, second), ("peers", "housing"))
    revised = state(case).goals[goal]
    assert (revised.strength_ids, revised.risk_factors) == ((first, second),
                                                            ("peers", "housing"))
    with pytest.raises(d.InvalidTransition) as refused:  # the same links, repeated
        case.execute(d.ReviseGoal(goal, api.GoalRevision(
            strength_ids=[first, second, first], risk_factors=["peers", "housing", "housing"])))
    assert refused.value.code == "no_change"


# --------------------------------------------------------------------------------------------
# status transitions and rule 5 (reasons)
# --------------------------------------------------------------------------------------------


def test_discontinuing_needs_a_reason() -> None:
    case = new_case()
    goal = set_goal(case)
    with pytest.raises(d.RuleViolation) as refused:
        status(case, goal, "discontinued")
    assert (refused.value.code, refused.value.field) == ("reason_required", "reason")
    [event] = status(case, goal, "discontinued", reason="Moved out of state for family")
    assert isinstance(event, ev.GoalStatusChanged)
    assert event.reason == "Moved out of state for family"
    assert event.title == "Steady work"


def test_a_discontinued_goal_cannot_be_achieved() -> None:
    case = new_case()
    goal = set_goal(case)
    status(case, goal, "discontinued", reason="No longer wanted")
    with pytest.raises(d.InvalidTransition) as refused:
        status(case, goal, "achieved", reason="but it was")
    assert (refused.value.code, refused.value.field) == ("goal_discontinued", "status")


@pytest.mark.parametrize("reverse_to", ["active", "paused", "future"])
def test_reversing_an_achieved_goal_needs_a_reason(reverse_to: str) -> None:
    case = new_case()
    goal = set_goal(case)
    status(case, goal, "achieved")
    assert state(case).goals[goal].achieved_at is not None
    with pytest.raises(d.RuleViolation, match="reversal"):
        status(case, goal, reverse_to)
    status(case, goal, reverse_to, reason="The job offer fell through")
    assert state(case).goals[goal].status == reverse_to
    assert state(case).goals[goal].achieved_at is None


def test_reactivating_a_discontinued_goal_needs_a_reason() -> None:
    case = new_case()
    goal = set_goal(case)
    status(case, goal, "discontinued", reason="Not now")
    with pytest.raises(d.RuleViolation):
        status(case, goal, "active")
    status(case, goal, "active", reason="Ready again")
    assert state(case).goals[goal].status == "active"


def test_pausing_needs_no_reason_and_same_status_is_refused() -> None:
    case = new_case()
    goal = set_goal(case)
    status(case, goal, "paused")
    with pytest.raises(d.InvalidTransition) as refused:
        status(case, goal, "paused")
    assert (refused.value.code, refused.value.field) == ("no_change", "status")


def test_a_status_change_records_when_it_happened() -> None:
    case = new_case()
    goal = set_goal(case)
    set_at = state(case).goals[goal].set_at
    status(case, goal, "paused")
    paused = state(case).goals[goal]
    assert paused.set_at == set_at
    assert paused.status_changed_at > set_at
    assert paused.status_changed_at == state(case).updated_at


def test_unknown_goal_is_not_found() -> None:
    case = new_case()
    with pytest.raises(d.NotFound) as refused:
        status(case, uuid4(), "achieved")
    assert refused.value.code == "goal_not_found"


def test_the_same_goal_id_cannot_be_set_twice() -> None:
    case = new_case()
    goal_id = uuid4()
    case.execute(d.SetGoal(goal_id, goal_body()))
    with pytest.raises(d.InvalidTransition, match="already has"):
        case.execute(d.SetGoal(goal_id, goal_body()))


# --------------------------------------------------------------------------------------------
# revisions
# --------------------------------------------------------------------------------------------


def test_a_revision_records_only_what_changed() -> None:
    case = new_case()
    goal = set_goal(case, target_date="2025-09-01", why_it_matters="Rent")
    assert state(case).goals[goal].why_it_matters == "Rent"
    [event] = case.execute(d.ReviseGoal(goal, api.GoalRevision.model_validate(
        {"title": "Steady work", "why_it_matters": "Rent and pride", "target_date": None,
         "reason": "Talked it over"})))
    assert isinstance(event, ev.GoalRevised)
    assert event.title is None  # unchanged, so not recorded
    assert event.why_it_matters == "Rent and pride"
    assert event.cleared == ("target_date",)
    assert event.reason == "Talked it over"
    goal_state = state(case).goals[goal]
    assert (goal_state.why_it_matters, goal_state.target_date) == ("Rent and pride", None)
    assert goal_state.title == "Steady work"


def test_a_revision_that_only_changes_the_title_is_recorded() -> None:
    case = new_case()
    goal = set_goal(case)
    [event] = case.execute(d.ReviseGoal(goal, api.GoalRevision(title="Steady night work")))
    assert isinstance(event, ev.GoalRevised)
    assert (event.title, event.cleared) == ("Steady night work", ())
    assert state(case).goals[goal].title == "Steady night work"


def test_a_revision_that_changes_nothing_is_refused() -> None:
    case = new_case()
    goal = set_goal(case)
    with pytest.raises(d.InvalidTransition) as refused:
        case.execute(d.ReviseGoal(goal, api.GoalRevision(title="Steady work")))
    assert refused.value.code == "no_change"


def test_goal_links_to_risk_factors_are_kept() -> None:
    case = new_case()
    goal = set_goal(case, risk_factors=["peers", "employment", "peers"])
    assert state(case).goals[goal].risk_factors == ("peers", "employment")
