"""The practice rules at their edges, as a practitioner would expect them (an audit against the
practice texts in shared/domain/): a reason or a participant's words must say something
(rules 2 and 5), a guide term is found however its words are joined (rule 7), and a refusal
says truly why (rule 4)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from schemas import api
from services.records import domain as d
from tests.records_api import CaseApi, event_count

TODAY = date(2025, 5, 5)
CTX = d.DecisionContext(today=TODAY, actor=d.Actor("cm-1", "case_manager"))

# What a hurried form gets: punctuation that satisfies "not empty" and says nothing.
WORDLESS = [".", "-", "\u2014", "...", "?!", "/"]
WITH_WORDS = "Jo moved to her sister's"


def new_case() -> tuple[d.InMemoryCase, UUID]:
    case = d.InMemoryCase(uuid4(), CTX, datetime(2025, 5, 5, 9, tzinfo=UTC))
    case.execute(d.OpenCase("agency-a", api.OpenCase.model_validate(
        {"participant": {"name": "Jo"}, "case_manager": "cm-1", "risk_level": "high"})))
    goal = uuid4()
    case.execute(d.SetGoal(goal, api.GoalInput(title="Steady work", domain="employment",
                                               source="court")))
    return case, goal


# --------------------------------------------------------------------------------------------
# rule 5: every reason says why, in words
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


def override_the_cap(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    for _ in range(2):
        case.execute(d.SetGoal(uuid4(), api.GoalInput(title="More", domain="other",
                                                      source="agency")))
    return d.SetGoal(uuid4(), api.GoalInput(title="A fourth", domain="housing",
                                            source="agency", override_reason=reason))


def resume_at_the_cap(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    case.execute(d.ChangeGoalStatus(goal, api.GoalStatusInput(status="paused")))
    for _ in range(3):
        case.execute(d.SetGoal(uuid4(), api.GoalInput(title="More", domain="other",
                                                      source="agency")))
    return d.ChangeGoalStatus(goal, api.GoalStatusInput(status="active", override_reason=reason))


def step_no_longer_needed(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    step = uuid4()
    case.execute(d.AddActionStep(step, goal, api.StepInput(description="Call the depot",
                                                           owner="participant")))
    return d.ChangeActionStepStatus(step, api.StepStatusInput(status="no_longer_needed",
                                                              reason=reason))


def waive_requirement(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    requirement = uuid4()
    case.execute(d.RecordRequirement(requirement, api.RequirementInput(title="Community hours")))
    return d.ChangeRequirementStatus(requirement, api.RequirementStatusInput(status="waived",
                                                                             reason=reason))


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


def revise_goal(case: d.InMemoryCase, goal: UUID, reason: str) -> d.Command:
    return d.ReviseGoal(goal, api.GoalRevision(title="Work I enjoy", reason=reason))


REASONS: dict[str, tuple[Arrange, str]] = {
    "remove a strength": (remove_strength, "reason"),
    "remove a support": (remove_support, "reason"),
    "discontinue a goal": (discontinue_goal, "reason"),
    "reverse an achieved goal": (reverse_achieved_goal, "reason"),
    "override the cap": (override_the_cap, "override_reason"),
    "resume a goal at the cap": (resume_at_the_cap, "override_reason"),
    "a step no longer needed": (step_no_longer_needed, "reason"),
    "waive a requirement": (waive_requirement, "reason"),
    "transfer": (transfer, "reason"),
    "close": (close, "reason"),
    "reopen": (reopen, "reason"),
    "reschedule a review": (reschedule_review, "reason"),
    "revise a goal, saying why": (revise_goal, "reason"),
}


@pytest.mark.parametrize("reason", WORDLESS)
@pytest.mark.parametrize("kind", sorted(REASONS))
def test_a_reason_without_words_is_refused_and_nothing_is_recorded(kind: str,
                                                                   reason: str) -> None:
    arrange, field = REASONS[kind]
    case, goal = new_case()
    command = arrange(case, goal, reason)
    version = case.version
    with pytest.raises(d.RuleViolation) as refused:
        case.execute(command)
    assert (refused.value.code, refused.value.field) == ("reason_required", field)
    assert "in words" in refused.value.detail
    assert case.version == version


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_a_reason_in_words_is_recorded(kind: str) -> None:
    arrange, _ = REASONS[kind]
    case, goal = new_case()
    assert case.execute(arrange(case, goal, WITH_WORDS))


# --------------------------------------------------------------------------------------------
# rule 2: a participant's goal is in their words, and punctuation is nobody's words
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("words", WORDLESS)
def test_a_participant_goal_needs_words_of_theirs(words: str) -> None:
    case, _ = new_case()
    with pytest.raises(d.RuleViolation) as refused:
        case.execute(d.SetGoal(uuid4(), api.GoalInput(
            title="Get my licence", domain="other", source="participant",
            in_their_words=words)))
    assert (refused.value.code, refused.value.field) == ("in_their_words_required",
                                                         "in_their_words")
    goal = uuid4()
    case.execute(d.SetGoal(goal, api.GoalInput(title="Get my licence", domain="other",
                                               source="participant",
                                               in_their_words="I want to drive to work")))
    with pytest.raises(d.RuleViolation) as refused:
        case.execute(d.ReviseGoal(goal, api.GoalRevision(in_their_words=words)))
    assert (refused.value.code, refused.value.field) == ("in_their_words_required",
                                                         "in_their_words")


def test_words_in_any_script_are_words() -> None:
    case, _ = new_case()
    [event] = case.execute(d.SetGoal(uuid4(), api.GoalInput(
        title="Work", domain="employment", source="participant", in_their_words="\u4ed5\u4e8b")))
    assert event.in_their_words == "\u4ed5\u4e8b"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# rule 7: a term is found however its words are joined
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "term"), [
    ("History of substance-abuse", "substance abuse"),
    ("a drug-abuse programme", "drug abuse"),
    ("Seemed in-denial about the debt", "in denial"),
    ("Known here as a frequent-flyer", "frequent flyer"),
    ("Jo, a former substance\u2013abuser", "substance abuser"),
    ("Told Jo I understand-how-you-feel", "I understand how you feel"),
    # the forms the brief names, as they are also written
    ("NON-COMPLIANT with curfew", "non-compliant"),
    ("non compliant again", "non-compliant"),
    ("Noncompliant", "noncompliant"),
    ("Two Addicts in the group", "addict"),
    ("an Offender's file", "offender"),
    ("Manipulative", "manipulative"),
    ("Failed to attend", "failed to"),
    ("I KNOW", "I know"),
])
def test_a_term_is_found_however_its_words_are_joined(text: str, term: str) -> None:
    assert [w.term for w in d.load_base_guide().check("text", text)] == [term]


@pytest.mark.parametrize("text", ["substance-abusive", "in-denialism", "I-knowledge",
                                  "failed-tone", "drug-abusive"])
def test_joined_words_that_only_begin_like_a_term_are_not_flagged(text: str) -> None:
    assert d.load_base_guide().check("text", text) == []


# --------------------------------------------------------------------------------------------
# rule 4: a step owned by a support who was removed
# --------------------------------------------------------------------------------------------


def test_a_step_cannot_be_given_to_a_removed_support_and_says_so() -> None:
    case, goal = new_case()
    support = uuid4()
    case.execute(d.AddSupport(support, api.SupportInput(name="Maria (sister)")))
    case.execute(d.RemoveSupport(support, api.RemovalReason(reason="Maria moved away")))
    with pytest.raises(d.RuleViolation) as refused:
        case.execute(d.AddActionStep(uuid4(), goal, api.StepInput(
            description="Drive Jo to the interview", owner="support", support_id=support)))
    assert (refused.value.code, refused.value.field) == ("unknown_support", "support_id")
    assert "was removed" in refused.value.detail
    assert "There is no support" not in refused.value.detail


# --------------------------------------------------------------------------------------------
# through the API: refused with a clear 422 naming the field, nothing written
# --------------------------------------------------------------------------------------------


async def _case_with_items(cm: CaseApi) -> dict[str, str]:
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


API_REASONS: list[tuple[str, str, dict[str, Any], str]] = [
    ("DELETE", "{case}/strengths/{strength}", {"reason": "."}, "reason"),
    ("DELETE", "{case}/strengths/{strength}?reason=...", {}, "reason"),
    ("DELETE", "{case}/supports/{support}", {"reason": "-"}, "reason"),
    ("POST", "{case}/goals/{goal}/status", {"status": "discontinued", "reason": "?"},
     "reason"),
    ("POST", "{case}/goals", {"title": "A fourth", "domain": "housing", "source": "agency",
                              "override_reason": "!!"}, "override_reason"),
    ("POST", "{case}/steps/{step}/status", {"status": "no_longer_needed", "reason": "."},
     "reason"),
    ("POST", "{case}/requirements/{requirement}/status", {"status": "waived", "reason": "."},
     "reason"),
    ("POST", "{case}/transfer", {"case_manager": "cm-2", "reason": "..."}, "reason"),
    ("POST", "{case}/close", {"reason": "\u2014"}, "reason"),
    ("POST", "{case}/reviews/{review}/reschedule", {"due_date": "2026-04-20", "reason": "."},
     "reason"),
    ("PATCH", "{case}/goals/{goal}", {"title": "Work I enjoy", "reason": "."}, "reason"),
    ("POST", "{case}/goals", {"title": "Drive", "domain": "other", "source": "participant",
                              "in_their_words": "...", "status": "future"}, "in_their_words"),
]


async def test_wordless_reasons_are_refused_on_every_endpoint_and_write_nothing(
        cm: CaseApi, fresh_database_url: str) -> None:
    ids = await _case_with_items(cm)
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=1)
    try:
        for method, template, body, field in API_REASONS:
            path = "/v1/cases/" + template.format(**ids)
            before = await event_count(pool)
            problem = await cm.call(method, path, body or None, expect=422)
            expected = "in-their-words-required" if field == "in_their_words" else "reason-required"
            assert problem["type"].rsplit("/", 1)[-1] == expected, (path, problem)
            # a reason given as ?reason= is named where it was given (twenty-second session)
            where = "query" if "?reason=" in template else "body"
            assert [e["field"] for e in problem["errors"]] == [f"{where}.{field}"], (path,
                                                                                   problem)
            assert await event_count(pool) == before, path
    finally:
        await pool.close()


async def test_a_closed_case_is_reopened_only_with_a_reason_in_words(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    await cm.call("POST", f"/v1/cases/{case_id}/close", {"reason": "Moved away"}, expect=200)
    problem = await cm.call("POST", f"/v1/cases/{case_id}/reopen", {"reason": "."}, expect=422)
    assert [e["field"] for e in problem["errors"]] == ["body.reason"]
    assert (await cm.plan(case_id))["status"] == "closed"
    await cm.call("POST", f"/v1/cases/{case_id}/reopen", {"reason": "Came back"}, expect=200)


async def test_a_hyphenated_term_in_staff_text_answers_a_warning(cm: CaseApi) -> None:
    case_id = await cm.open_case()
    note = await cm.call("POST", f"/v1/cases/{case_id}/notes",
                         {"text": "Long history of substance-abuse; seemed in-denial"},
                         expect=201)
    assert [(w["field"], w["term"]) for w in note["warnings"]] == [
        ("text", "substance abuse"), ("text", "in denial")]
    assert all(w["suggestion"] for w in note["warnings"])


async def test_staff_text_in_every_kind_of_write_answers_person_first_warnings(
        cm: CaseApi) -> None:
    """The brief's terms, as staff write them, in each field a person writes through the API;
    the participant's own words beside them are never flagged."""
    case = await cm.open_case()
    goal = await cm.goal(case)
    await cm.agree(case)
    review = (await cm.plan(case))["next_review"]["review_id"]
    writes: list[tuple[str, str, dict[str, Any], str, str]] = [
        ("POST", f"reviews/{review}/held", {"summary": "Seemed resistant",
                                            "participant_statement": "I was resistant"},
         "summary", "resistant"),
        ("POST", "strengths", {"category": "past_success", "description":
                               "Stayed sober a year, though an addict since 19"},
         "description", "addict"),
        ("POST", "goals", {"title": "Stop being non compliant", "domain": "legal",
                           "source": "participant", "in_their_words": "I know I can do this",
                           "status": "future"}, "title", "non-compliant"),
        ("POST", f"goals/{goal}/steps", {"description": "Check the OFFENDERS list",
                                         "owner": "case_manager"}, "description", "offender"),
        ("PATCH", f"goals/{goal}", {"why_it_matters": "Jo has been manipulative"},
         "why_it_matters", "manipulative"),
        ("POST", "notes", {"text": "I know, I told Jo: she failed to call"}, "text", "I know"),
        ("POST", "supports", {"name": "Sam", "relationship": "fellow ex-offender"},
         "relationship", "ex-offender"),
        ("POST", f"goals/{goal}/status", {"status": "paused", "reason": "Noncompliant"},
         "reason", "noncompliant"),
    ]
    for method, path, body, field, term in writes:
        answer = await cm.call(method, f"/v1/cases/{case}/{path}", body)
        assert answer.get("version"), (path, answer)
        found = [(w["field"], w["term"]) for w in answer["warnings"]]
        assert found[0] == (field, term), (path, found)
        assert all(w["field"] != "in_their_words" for w in answer["warnings"])
        assert all(w["suggestion"] for w in answer["warnings"])
