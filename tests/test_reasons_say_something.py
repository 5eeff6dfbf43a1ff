"""Rule 5, a reason says why: a goal discontinued "n/a", a case reopened "none", a fourth active
goal allowed "tbd" were recorded, and told the participant, supervisors and courts nothing
(an audit). A reason that is only a placeholder, or holds fewer than two letters or digits, is
refused as a missing one is (422 ``reason_required`` naming the field), wherever a reason is
recorded; other texts keep their own rule, a letter or a digit
(docs/decisions/0101-plan-domain.md, rule 5)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from schemas import api
from schemas import events as ev
from services.records import domain as d
from services.records.domain import words
from tests.records_api import CaseApi, event_count

TODAY = date(2026, 3, 2)
CTX = d.DecisionContext(today=TODAY, actor=d.Actor("cm-1", "case_manager"))

# What a hurried form gets instead of a reason: placeholders, however written, and a letter.
NON_REASONS = ["n/a", "N/A", "NA", "n.a.", "N / A", "\uff2e\uff0f\uff21", "none", "None.",
               "nil", "null", "nothing", "no reason", "No reason!", "no-reason given",
               "not applicable", "Not Applicable", "tbd", "TBA", "tbc", "x", "X", "xx", "XXX",
               "test", "unknown", "Unknown.", "idk", "1", "\u00e9", "a.", "?", "...", "-"]
# Reasons that say why, some holding a placeholder's word, or two letters of another script.
REAL_REASONS = ["Jo moved", "Whereabouts unknown since March, letters returned",
                "Test results came back clear", "None of the courses fit Jo's shifts",
                "TBD by the court on 3 May: hearing moved", "N/A for Jo: no licence needed",
                "\u751f\u75c5", "Ok to stop: Jo found work"]
REAL = "Jo found work and asked to focus on it"


def new_case() -> tuple[d.InMemoryCase, UUID]:
    case = d.InMemoryCase(uuid4(), CTX, datetime(2026, 3, 2, 9, tzinfo=UTC))
    case.execute(d.OpenCase("agency-a", api.OpenCase.model_validate(
        {"participant": {"name": "Jo"}, "case_manager": "cm-1", "risk_level": "moderate"})))
    goal = uuid4()
    case.execute(d.SetGoal(goal, api.GoalInput(title="Steady work", domain="employment",
                                               source="agency")))
    return case, goal


def add_step(case: d.InMemoryCase, goal: UUID, status: str | None = None) -> UUID:
    step = uuid4()
    case.execute(d.AddActionStep(step, goal, api.StepInput(description="Call the depot",
                                                           owner="participant")))
    if status is not None:
        case.execute(d.ChangeActionStepStatus(step, api.StepStatusInput(status=status)))
    return step


def add_requirement(case: d.InMemoryCase, status: str | None = None) -> UUID:
    requirement = uuid4()
    case.execute(d.RecordRequirement(requirement, api.RequirementInput(title="Community hours")))
    if status is not None:
        case.execute(d.ChangeRequirementStatus(requirement,
                                               api.RequirementStatusInput(status=status)))
    return requirement


# --------------------------------------------------------------------------------------------
# every place a reason is recorded, each arranged so that only the reason can refuse it
# --------------------------------------------------------------------------------------------

Arrange = Callable[[d.InMemoryCase, UUID, str], d.Command]


def remove_strength(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    strength = uuid4()
    case.execute(d.RecordStrength(strength, api.StrengthInput(category="skill",
                                                              description="Fixes bikes")))
    return d.RemoveStrength(strength, api.RemovalReason(reason=reason))


def remove_support(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    support = uuid4()
    case.execute(d.AddSupport(support, api.SupportInput(name="Maria (sister)")))
    return d.RemoveSupport(support, api.RemovalReason(reason=reason))


def discontinue_goal(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    return d.ChangeGoalStatus(goal, api.GoalStatusInput(status="discontinued", reason=reason))


def reverse_achieved_goal(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    case.execute(d.ChangeGoalStatus(goal, api.GoalStatusInput(status="achieved")))
    return d.ChangeGoalStatus(goal, api.GoalStatusInput(status="active", reason=reason))


def reverse_discontinued_goal(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    case.execute(discontinue_goal(case, goal, REAL))
    return d.ChangeGoalStatus(goal, api.GoalStatusInput(status="paused", reason=reason))


def override_the_cap(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    for title in ("Housing", "Health"):
        case.execute(d.SetGoal(uuid4(), api.GoalInput(title=title, domain="other",
                                                      source="agency")))
    return d.SetGoal(uuid4(), api.GoalInput(title="A fourth", domain="housing",
                                            source="agency", override_reason=reason))


def resume_at_the_cap(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    case.execute(d.ChangeGoalStatus(goal, api.GoalStatusInput(status="paused")))
    for title in ("Housing", "Health", "Driving"):
        case.execute(d.SetGoal(uuid4(), api.GoalInput(title=title, domain="other",
                                                      source="agency")))
    return d.ChangeGoalStatus(goal, api.GoalStatusInput(status="active", override_reason=reason))


def step_no_longer_needed(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    return d.ChangeActionStepStatus(add_step(case, goal), api.StepStatusInput(
        status="no_longer_needed", reason=reason))


def step_uncompleted(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    step = add_step(case, goal)
    case.execute(d.CompleteActionStep(step, api.StepCompleteInput()))
    return d.ChangeActionStepStatus(step, api.StepStatusInput(status="in_progress",
                                                              reason=reason))


def step_back_to_not_started(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    return d.ChangeActionStepStatus(add_step(case, goal, "in_progress"), api.StepStatusInput(
        status="not_started", reason=reason))


def waive_requirement(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    return d.ChangeRequirementStatus(add_requirement(case), api.RequirementStatusInput(
        status="waived", reason=reason))


def requirement_not_met(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    return d.ChangeRequirementStatus(add_requirement(case), api.RequirementStatusInput(
        status="not_met", reason=reason))


def reverse_met_requirement(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    return d.ChangeRequirementStatus(add_requirement(case, "met"), api.RequirementStatusInput(
        status="in_progress", reason=reason))


def transfer(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    return d.TransferCase(api.TransferInput(case_manager="cm-2", reason=reason))


def close(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    return d.CloseCase(api.CloseInput(reason=reason))


def reopen(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    case.execute(d.CloseCase(api.CloseInput(reason="Moved away")))
    return d.ReopenCase(api.ReopenInput(reason=reason))


def reschedule_review(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    review = uuid4()
    case.execute(d.AgreePlan(review, api.AgreementInput(
        participation="in_person", present=["Jo"], participant_statement="Yes, let's go")))
    return d.RescheduleReview(review, api.RescheduleReviewInput(
        due_date=TODAY + timedelta(days=40), reason=reason))


# a revision needs no reason, but one given is recorded, and read, as one
def revise_goal(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    return d.ReviseGoal(goal, api.GoalRevision(title="Work I enjoy", reason=reason))


def revise_step(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    return d.ReviseActionStep(add_step(case, goal), api.StepRevision(
        description="Call the depot on Monday", reason=reason))


def revise_strength(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    strength = uuid4()
    case.execute(d.RecordStrength(strength, api.StrengthInput(category="skill",
                                                              description="Fixes bikes")))
    return d.ReviseStrength(strength, api.StrengthRevision(description="Fixes any bike",
                                                           reason=reason))


def update_participant(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    return d.UpdateParticipantDetails(api.UpdateParticipant(preferred_name="Jojo",
                                                            reason=reason))


REASONS: dict[str, tuple[Arrange, str]] = {
    "remove a strength": (remove_strength, "reason"),
    "remove a support": (remove_support, "reason"),
    "discontinue a goal": (discontinue_goal, "reason"),
    "reverse an achieved goal": (reverse_achieved_goal, "reason"),
    "reverse a discontinued goal": (reverse_discontinued_goal, "reason"),
    "override the cap": (override_the_cap, "override_reason"),
    "resume a goal at the cap": (resume_at_the_cap, "override_reason"),
    "a step no longer needed": (step_no_longer_needed, "reason"),
    "uncomplete a step": (step_uncompleted, "reason"),
    "a step back to not started": (step_back_to_not_started, "reason"),
    "waive a requirement": (waive_requirement, "reason"),
    "a requirement not met": (requirement_not_met, "reason"),
    "reverse a met requirement": (reverse_met_requirement, "reason"),
    "transfer": (transfer, "reason"),
    "close": (close, "reason"),
    "reopen": (reopen, "reason"),
    "reschedule a review": (reschedule_review, "reason"),
    "revise a goal, saying why": (revise_goal, "reason"),
    "revise a step, saying why": (revise_step, "reason"),
    "revise a strength, saying why": (revise_strength, "reason"),
    "update the participant, saying why": (update_participant, "reason"),
}


def refused_reason(kind: str, reason: str) -> d.RuleViolation:
    arrange, field = REASONS[kind]
    case, goal = new_case()
    command = arrange(case, goal, reason)
    version, state = case.version, case.state
    with pytest.raises(d.RuleViolation) as refused:
        case.execute(command)
    assert (refused.value.code, refused.value.field) == ("reason_required", field)
    assert (case.version, case.state) == (version, state)  # nothing recorded
    return refused.value


@pytest.mark.parametrize("reason", ["n/a", "none", "x", "No reason."])
@pytest.mark.parametrize("kind", sorted(REASONS))
def test_a_reason_that_says_nothing_is_refused_wherever_a_reason_is_recorded(
        kind: str, reason: str) -> None:
    refused_reason(kind, reason)


@pytest.mark.parametrize("reason", NON_REASONS)
def test_every_form_of_a_non_reason_is_refused(reason: str) -> None:
    refused_reason("discontinue a goal", reason)
    refused_reason("override the cap", reason)


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_a_reason_that_says_why_is_recorded_as_given(kind: str) -> None:
    arrange, field = REASONS[kind]
    case, goal = new_case()
    events = case.execute(arrange(case, goal, REAL))
    assert [getattr(e, field) for e in events if field in type(e).model_fields] == [REAL]


@pytest.mark.parametrize("reason", REAL_REASONS)
def test_a_placeholder_word_inside_a_real_reason_is_not_refused(reason: str) -> None:
    case, goal = new_case()
    [event] = case.execute(discontinue_goal(case, goal, reason))
    assert isinstance(event, ev.GoalStatusChanged)
    assert (event.status, event.reason) == ("discontinued", reason)


def test_the_refusal_tells_the_case_manager_what_a_reason_is_for() -> None:
    detail = refused_reason("discontinue a goal", "N/A").detail
    assert detail.startswith("Say why, in words (reason):"), detail
    for said in ('"N/A"', "participant", "supervisors", "courts", "why this was done"):
        assert said in detail, (said, detail)
    assert d.load_base_guide().check("detail", detail) == []  # person-first, as staff text is
    assert '(override_reason)' in refused_reason("override the cap", "tbd").detail
    long = "?" * 30  # quoted back shortened
    assert f'"{long[:20]}\u2026"' in refused_reason("close", long).detail


def test_a_missing_reason_keeps_its_own_words() -> None:
    case, goal = new_case()
    with pytest.raises(d.RuleViolation) as refused:
        case.execute(d.ChangeGoalStatus(goal, api.GoalStatusInput(status="discontinued")))
    assert (refused.value.code, refused.value.detail) == (
        "reason_required", "A reason is required to discontinue a goal.")


def test_an_override_not_needed_is_not_recorded_and_not_judged() -> None:
    """Below the cap nothing is overridden: the override_reason is not recorded (rule 1), so
    it is not read as a reason either."""
    case, _ = new_case()
    [event] = case.execute(d.SetGoal(uuid4(), api.GoalInput(
        title="Housing", domain="housing", source="agency", override_reason="n/a")))
    assert isinstance(event, ev.GoalSet)
    assert event.override_reason is None


@pytest.mark.parametrize("text", ["n/a", "none", "tbd", "x", "test", "unknown"])
def test_other_texts_keep_their_own_rule_a_letter_or_a_digit(text: str) -> None:
    """Only reasons are read for a placeholder: a note, a title, a step are the case
    manager's and participant's words, and a letter or a digit is enough there."""
    assert words.has_words(text)
    case, goal = new_case()
    [note] = case.execute(d.AddNote(uuid4(), api.NoteInput(text=text, goal_id=goal)))
    [goal_set] = case.execute(d.SetGoal(uuid4(), api.GoalInput(
        title=text, domain="other", source="participant", in_their_words=text,
        why_it_matters=text, status="future")))
    [step] = case.execute(d.AddActionStep(uuid4(), goal, api.StepInput(description=text,
                                                                       owner="participant")))
    assert isinstance(note, ev.NoteAdded)
    assert note.text == text
    assert isinstance(goal_set, ev.GoalSet)
    assert (goal_set.title, goal_set.in_their_words, goal_set.why_it_matters) == (text,) * 3
    assert isinstance(step, ev.ActionStepAdded)
    assert step.description == text


def test_a_reason_recorded_before_the_rule_still_reads_and_its_goal_is_worked_on() -> None:
    """Only reasons decided now are judged: a goal discontinued "n/a" before the rule folds,
    and is set active again with a reason that says why."""
    case, goal = new_case()
    legacy = ev.GoalStatusChanged(goal_id=goal, title="Steady work", from_status="active",
                                  status="discontinued", reason="n/a")
    version = case.version + 1
    at = case.started_at + timedelta(seconds=version)
    case.state = d.evolve(case.state, legacy, version=version, recorded_at=at,
                          case_id=case.case_id)
    case.stream.append((legacy, version, at))
    assert case.state is not None
    assert case.state.goals[goal].status == "discontinued"
    [event] = case.execute(d.ChangeGoalStatus(goal, api.GoalStatusInput(status="active",
                                                                        reason=REAL)))
    assert isinstance(event, ev.GoalStatusChanged)
    assert event.reason == REAL


# --------------------------------------------------------------------------------------------
# through the API: the same 422 naming the field where it was given, nothing written
# --------------------------------------------------------------------------------------------


async def _case_at_the_cap(cm: CaseApi) -> dict[str, str]:
    case_id = await cm.open_case(risk_level="high")
    goal = await cm.goal(case_id)
    step = await cm.step(case_id, goal)
    strength = await cm.strength(case_id)
    support = (await cm.call("POST", f"/v1/cases/{case_id}/supports",
                             {"name": "Maria (sister)"}, expect=201))["id"]
    requirement = (await cm.call("POST", f"/v1/cases/{case_id}/requirements",
                                 {"title": "Community hours"}, expect=201))["id"]
    await cm.agree(case_id)
    review = (await cm.plan(case_id))["next_review"]["review_id"]
    for title in ("Second", "Third"):
        await cm.goal(case_id, title=title)
    return {"case": case_id, "goal": goal, "step": step, "strength": strength,
            "support": str(support), "requirement": str(requirement), "review": review}


API_NON_REASONS: list[tuple[str, str, dict[str, Any], str]] = [
    ("DELETE", "{case}/strengths/{strength}", {"reason": "n/a"}, "body.reason"),
    ("DELETE", "{case}/strengths/{strength}?reason=N%2FA", {}, "query.reason"),
    ("DELETE", "{case}/supports/{support}?reason=none", {}, "query.reason"),
    ("DELETE", "{case}/supports/{support}", {"reason": "tbd"}, "body.reason"),
    ("POST", "{case}/goals/{goal}/status", {"status": "discontinued", "reason": "NA"},
     "body.reason"),
    ("POST", "{case}/goals/{goal}/status", {"status": "discontinued", "reason": "no reason"},
     "body.reason"),
    ("POST", "{case}/goals", {"title": "A fourth", "domain": "housing", "source": "agency",
                              "override_reason": "n/a"}, "body.override_reason"),
    ("POST", "{case}/steps/{step}/status", {"status": "no_longer_needed", "reason": "x"},
     "body.reason"),
    ("POST", "{case}/requirements/{requirement}/status", {"status": "waived",
                                                          "reason": "not applicable"},
     "body.reason"),
    ("POST", "{case}/transfer", {"case_manager": "cm-2", "reason": "test"}, "body.reason"),
    ("POST", "{case}/reviews/{review}/reschedule", {"due_date": "2026-04-20",
                                                    "reason": "tba"}, "body.reason"),
    ("PATCH", "{case}/goals/{goal}", {"title": "Work I enjoy", "reason": "nil"},
     "body.reason"),
    ("POST", "{case}/close", {"reason": "unknown"}, "body.reason"),
]


async def test_a_non_reason_is_refused_on_every_endpoint_and_writes_nothing(
        cm: CaseApi, fresh_database_url: str) -> None:
    ids = await _case_at_the_cap(cm)
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=1)
    try:
        for method, template, body, field in API_NON_REASONS:
            path = "/v1/cases/" + template.format(**ids)
            before = await event_count(pool)
            problem = await cm.call(method, path, body or None, expect=422)
            assert problem["type"].rsplit("/", 1)[-1] == "reason-required", (path, problem)
            assert [e["field"] for e in problem["errors"]] == [field], (path, problem)
            assert "Say why, in words" in problem["detail"], (path, problem)
            assert await event_count(pool) == before, path
        # the same writes, saying why, are recorded
        await cm.call("POST", f"/v1/cases/{ids['case']}/goals/{ids['goal']}/status",
                      {"status": "discontinued", "reason": REAL}, expect=200)
        await cm.call("DELETE", f"/v1/cases/{ids['case']}/strengths/{ids['strength']}"
                      "?reason=Recorded+twice", expect=200)
    finally:
        await pool.close()


async def test_a_closed_case_is_reopened_only_with_a_reason_that_says_why(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    await cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "Moved away"}, expect=200)
    for reason in ("n/a", "None", "x"):
        problem = await cm.call("POST", f"/v1/cases/{case_id}/reopen", {"reason": reason},
                                expect=422)
        assert [e["field"] for e in problem["errors"]] == ["body.reason"], problem
        assert (await cm.plan(case_id))["status"] == "closed"
    await cm.call("POST", f"/v1/cases/{case_id}/reopen", {"reason": "Jo came back to us"},
                  expect=200)
    assert (await cm.plan(case_id))["status"] == "open"
