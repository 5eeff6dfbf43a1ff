"""decide: a command and the current plan in, the events to record out (pure).

The practice rules of the brief are enforced here (docs/decisions/0101-plan-domain.md):

1. at most ``max_active_goals`` active goals unless ``override_reason`` (recorded in the event);
2. participant goals carry ``in_their_words``; a plan is agreed only through PlanAgreed;
   every free text a body gives is in words (``words.check_body_words``);
3. goals and steps link only to recorded, not removed, strengths;
4. steps have owners (a support-owned step names the support) and a completion event;
5. removals, discontinuations, reversals and overrides need a reason, in words;
6. agreeing schedules the first review and holding a review the next, by risk level;
7. (language) is advisory and computed from the events by ``language.warnings_for``.

Time comes only from ``ctx.today``; ids of created items come with the command; so deciding
the same command against the same state always yields the same events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from schemas import api
from schemas import events as ev
from services.records.domain import commands as c
from services.records.domain.errors import InvalidTransition, NotFound, RuleViolation
from services.records.domain.policy import AgencyPolicy, DecisionContext
from services.records.domain.state import GoalState, PlanState, StepState
from services.records.domain.words import check_body_words, check_reason, has_words

Events = list[ev.EventPayload]


def decide(state: PlanState | None, command: c.Command, ctx: DecisionContext) -> Events:
    """The events that record ``command`` on the case in ``state`` (None: no such case).

    Raises NotFound, InvalidTransition or RuleViolation (all DomainError) when refused.
    """
    events = _decided(state, command, ctx)
    # after the plan's own refusals, so that those keep their codes (in_their_words_required)
    check_body_words(_body(command), recorded=_revised_item(state, command))
    return events


def _decided(state: PlanState | None, command: c.Command, ctx: DecisionContext) -> Events:
    if isinstance(command, c.OpenCase):
        if state is not None:
            raise InvalidTransition("case_exists", "This case is already open; a closed case "
                                    "is reopened, not opened again.")
        return _open_case(command, ctx)
    if state is None:
        raise NotFound("case_not_found", "There is no such case.")
    if state.status == "closed" and not isinstance(command, c.ReopenCase):
        raise _closed_refusal(command)
    handler = _DECIDERS.get(type(command))
    if handler is None:
        raise TypeError(f"decide() does not know the command {type(command).__name__}")
    events = handler(state, command, ctx)
    _check_reasons_have_words(events)
    return events


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _closed_refusal(command: c.Command) -> InvalidTransition:
    """Any write but reopen on a closed case; a transfer changes who holds the case, not the
    plan, and closing it again changes nothing, so each is told in its own words."""
    if isinstance(command, c.CloseCase):
        return InvalidTransition("case_closed", "This case is closed already; nothing was"
                                 " changed.")
    if isinstance(command, c.TransferCase):
        return InvalidTransition("case_closed", "This case is closed: reopen it (with a reason)"
                                 " before transferring it to another case manager.")
    return InvalidTransition("case_closed", "This case is closed; reopen it (with a reason) "
                             "before changing the plan.")


def _policy(state: PlanState, ctx: DecisionContext) -> AgencyPolicy:
    return ctx.policy if ctx.policy is not None else state.policy


def _body(command: c.Command) -> BaseModel:
    body = getattr(command, "body", None)
    if not isinstance(body, BaseModel):
        raise TypeError(f"the command {type(command).__name__} carries no body")
    return body


def _revised_item(state: PlanState | None, command: c.Command) -> object:
    """The item a revision revises, whose texts sent back unchanged are not new text (None for
    any other command). Called once ``_decided`` has found the item."""
    if state is None:
        return None
    if isinstance(command, c.UpdateParticipantDetails):
        return state.participant
    if isinstance(command, c.ReviseStrength):
        return state.strengths[command.strength_id]
    if isinstance(command, c.ReviseGoal):
        return state.goals[command.goal_id]
    if isinstance(command, c.ReviseActionStep):
        return state.steps[command.step_id]
    return None


def _require_reason(reason: str | None, why: str, field: str = "reason") -> str:
    if not reason:
        raise RuleViolation("reason_required", f"A reason is required {why}.", field=field)
    return reason


# The fields that record why something was done, in every event and in the body it came from.
_REASON_FIELDS = ("reason", "override_reason")


def _check_reasons_have_words(events: Events) -> None:
    """Rule 5: every reason recorded says why, in words (``words.check_reason``: not a
    placeholder such as "n/a", nor a single letter)."""
    for event in events:
        for field in (name for name in _REASON_FIELDS if name in type(event).model_fields):
            reason = getattr(event, field)
            if reason is not None:
                check_reason(reason, field)


def _said(status: str) -> str:
    """A status as a person reads it in a refusal: ``"cannot be done yet"``, not the API value
    ``cannot_be_done_yet``."""
    return '"' + status.replace("_", " ") + '"'


def _unique(ids: Iterable[UUID]) -> tuple[UUID, ...]:
    return tuple(dict.fromkeys(ids))


def _check_strengths(state: PlanState, ids: Iterable[UUID], field: str = "strength_ids") -> None:
    for strength_id in ids:
        strength = state.strengths.get(strength_id)
        if strength is None:
            raise RuleViolation("unknown_strength",
                                f"There is no strength {strength_id} in this plan.", field=field)
        if strength.removed:
            raise RuleViolation("strength_removed", f"The strength {strength_id} was removed"
                                " from this plan; leave it out, or record it again and name"
                                " the new one.", field=field)


def _check_new_id(items: Mapping[UUID, Any], item_id: UUID, what: str) -> None:
    if item_id in items:
        raise InvalidTransition("duplicate_id", f"This plan already has a {what} {item_id}.")


def _cap_override(state: PlanState, ctx: DecisionContext,
                  override_reason: str | None) -> str | None:
    """Rule 1: refuse one more active goal at the cap unless overridden.

    Returns the override reason to record (None when the cap is not exceeded: an override that
    did not happen is not recorded).
    """
    limit = _policy(state, ctx).max_active_goals
    active = state.active_goal_count
    if active < limit:
        return None
    if not override_reason:
        raise RuleViolation(
            "active_goal_limit",
            f"This plan already has {active} active goals and the limit is {limit}: focus on "
            "fewer goals at a time. Set this goal as 'future', pause or complete another goal, "
            "or give an override_reason.",
            field="override_reason",
        )
    return override_reason


def _diff(current: object, changes: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split requested changes into changed values and cleared fields (unchanged ones dropped)."""
    values: dict[str, Any] = {}
    cleared: list[str] = []
    for name, value in changes.items():
        if getattr(current, name) == value:
            continue
        if value is None:
            cleared.append(name)
        else:
            values[name] = value
    return values, cleared


def _no_change(what: str) -> InvalidTransition:
    return InvalidTransition("no_change", f"Nothing would change: the {what} already reads so.")


def _goal(state: PlanState, goal_id: UUID) -> GoalState:
    goal = state.goals.get(goal_id)
    if goal is None:
        raise NotFound("goal_not_found", f"There is no goal {goal_id} in this plan.")
    return goal


def _step(state: PlanState, step_id: UUID) -> StepState:
    step = state.steps.get(step_id)
    if step is None:
        raise NotFound("step_not_found", f"There is no action step {step_id} in this plan.")
    return step


def _support_owner(state: PlanState, owner: str, support_name: str | None,
                   support_id: UUID | None) -> tuple[str | None, UUID | None]:
    """Rule 4: a support-owned step names its support (by name or by a recorded support)."""
    if owner != "support":
        if support_name is not None or support_id is not None:
            raise RuleViolation("support_not_owner", "support_name and support_id apply only "
                                "when the owner is 'support'.",
                                field="support_name" if support_name is not None
                                else "support_id")
        return None, None
    if support_id is not None:
        support = state.supports.get(support_id)
        if support is None:
            raise RuleViolation("unknown_support",
                                f"There is no support {support_id} in this plan.",
                                field="support_id")
        if support.removed:
            raise RuleViolation("unknown_support", f"{support.name} was removed from this plan's "
                                "supports; name another support, or give the step to the "
                                "participant or the case manager.", field="support_id")
        if support_name is not None and support_name.casefold() != support.name.casefold():
            raise RuleViolation("support_name_mismatch", f"The support {support_id} is "
                                f"{support.name}: leave support_name out to give the step to "
                                "them, or give only support_name to name someone else.",
                                field="support_name")
        return support.name, support_id
    if support_name is None:
        raise RuleViolation("support_required", "Name the support who owns this step "
                            "(support_name or support_id).", field="support_name")
    # by name, a removed support was taken again: the step went to someone no longer there
    named = [s for s in state.supports.values()
             if s.name.casefold() == support_name.casefold()]
    if named and all(s.removed for s in named):
        raise RuleViolation("unknown_support", f"{named[0].name} was removed from this plan's "
                            "supports; name another support, or give the step to the "
                            "participant or the case manager.", field="support_name")
    return support_name, None


# --------------------------------------------------------------------------------------------
# case
# --------------------------------------------------------------------------------------------


def _open_case(cmd: c.OpenCase, ctx: DecisionContext) -> Events:
    policy = ctx.policy if ctx.policy is not None else AgencyPolicy()
    body = cmd.body
    return [ev.CaseOpened(
        participant=ev.Participant(**body.participant.model_dump()),
        case_manager=body.case_manager,
        risk_level=body.risk_level,
        agency=cmd.agency,
        policy=policy.to_snapshot(),
    )]


def _update_participant(state: PlanState, cmd: c.UpdateParticipantDetails,
                        ctx: DecisionContext) -> Events:
    values, cleared = _diff(state.participant, cmd.body.changes())
    if not values and not cleared:
        raise _no_change("participant's details")
    return [ev.ParticipantDetailsUpdated(**values, cleared=tuple(cleared),
                                         reason=cmd.body.reason)]


def _transfer(state: PlanState, cmd: c.TransferCase, ctx: DecisionContext) -> Events:
    if cmd.body.case_manager == state.case_manager:
        raise InvalidTransition("same_case_manager",
                                "The case is already with this case manager.",
                                field="case_manager")
    return [ev.CaseTransferred(from_case_manager=state.case_manager,
                               to_case_manager=cmd.body.case_manager, reason=cmd.body.reason)]


def _close(state: PlanState, cmd: c.CloseCase, ctx: DecisionContext) -> Events:
    return [ev.CaseClosed(reason=cmd.body.reason, outcome=cmd.body.outcome)]


def _reopen(state: PlanState, cmd: c.ReopenCase, ctx: DecisionContext) -> Events:
    if state.status == "open":
        raise InvalidTransition("case_open", "This case is open; only a closed case can be "
                                "reopened.")
    return [ev.CaseReopened(reason=cmd.body.reason)]


# --------------------------------------------------------------------------------------------
# strengths
# --------------------------------------------------------------------------------------------


def _record_strength(state: PlanState, cmd: c.RecordStrength, ctx: DecisionContext) -> Events:
    _check_new_id(state.strengths, cmd.strength_id, "strength")
    body = cmd.body
    return [ev.StrengthRecorded(strength_id=cmd.strength_id, category=body.category,
                                description=body.description,
                                in_their_words=body.in_their_words)]


def _live_strength(state: PlanState, strength_id: UUID) -> None:
    strength = state.strengths.get(strength_id)
    if strength is None:
        raise NotFound("strength_not_found", f"There is no strength {strength_id} in this plan.")
    if strength.removed:
        raise InvalidTransition("strength_removed", f"The strength {strength_id} was removed"
                                " from this plan; to use it again, record it as a new"
                                " strength.")


def _revise_strength(state: PlanState, cmd: c.ReviseStrength, ctx: DecisionContext) -> Events:
    _live_strength(state, cmd.strength_id)
    values, cleared = _diff(state.strengths[cmd.strength_id], cmd.body.changes())
    if not values and not cleared:
        raise _no_change("strength")
    return [ev.StrengthRevised(strength_id=cmd.strength_id, **values, cleared=tuple(cleared),
                               reason=cmd.body.reason)]


def _remove_strength(state: PlanState, cmd: c.RemoveStrength, ctx: DecisionContext) -> Events:
    _live_strength(state, cmd.strength_id)
    return [ev.StrengthRemoved(strength_id=cmd.strength_id, reason=cmd.body.reason)]


# --------------------------------------------------------------------------------------------
# goals
# --------------------------------------------------------------------------------------------


def _set_goal(state: PlanState, cmd: c.SetGoal, ctx: DecisionContext) -> Events:
    _check_new_id(state.goals, cmd.goal_id, "goal")
    body = cmd.body
    if body.source == "participant" and not has_words(body.in_their_words):
        raise RuleViolation("in_their_words_required", "A participant's goal records what they "
                            "want in their own words (in_their_words).", field="in_their_words")
    strength_ids = _unique(body.strength_ids)
    _check_strengths(state, strength_ids)
    override = _cap_override(state, ctx, body.override_reason) if body.status == "active" else None
    return [ev.GoalSet(
        goal_id=cmd.goal_id, title=body.title, domain=body.domain, source=body.source,
        status=body.status, in_their_words=body.in_their_words,
        why_it_matters=body.why_it_matters, target_date=body.target_date,
        strength_ids=strength_ids, risk_factors=tuple(dict.fromkeys(body.risk_factors)),
        override_reason=override,
    )]


def _revise_goal(state: PlanState, cmd: c.ReviseGoal, ctx: DecisionContext) -> Events:
    goal = _goal(state, cmd.goal_id)
    changes = cmd.body.changes()
    if "strength_ids" in changes:
        changes["strength_ids"] = _unique(changes["strength_ids"])
        _check_strengths(state, (s for s in changes["strength_ids"]
                                 if s not in goal.strength_ids))
    if "risk_factors" in changes:
        changes["risk_factors"] = tuple(dict.fromkeys(changes["risk_factors"]))
    values, cleared = _diff(goal, changes)
    their_words_lost = "in_their_words" in cleared or (
        "in_their_words" in values and not has_words(values["in_their_words"]))
    if goal.source == "participant" and their_words_lost:
        raise RuleViolation("in_their_words_required", "A participant's goal keeps their own "
                            "words; revise in_their_words, in words, instead of clearing it.",
                            field="in_their_words")
    if not values and not cleared:
        raise _no_change("goal")
    return [ev.GoalRevised(goal_id=cmd.goal_id, **values, cleared=tuple(cleared),
                           reason=cmd.body.reason)]


def _change_goal_status(state: PlanState, cmd: c.ChangeGoalStatus,
                        ctx: DecisionContext) -> Events:
    goal = _goal(state, cmd.goal_id)
    old, new, body = goal.status, cmd.body.status, cmd.body
    if old == new:
        raise InvalidTransition("no_change", f"The goal is already marked {_said(new)}.",
                                field="status")
    if old == "discontinued" and new == "achieved":
        raise InvalidTransition("goal_discontinued", "A discontinued goal cannot be achieved; "
                                "set it active again (with a reason) first.", field="status")
    if new == "discontinued":
        _require_reason(body.reason, "to discontinue a goal")
    elif old in ("achieved", "discontinued"):
        _require_reason(body.reason, f"to change a goal that was {old} (a reversal)")
    override = _cap_override(state, ctx, body.override_reason) if new == "active" else None
    return [ev.GoalStatusChanged(goal_id=goal.goal_id, title=goal.title, from_status=old,
                                 status=new, reason=body.reason, override_reason=override)]


# --------------------------------------------------------------------------------------------
# action steps
# --------------------------------------------------------------------------------------------


def _add_step(state: PlanState, cmd: c.AddActionStep, ctx: DecisionContext) -> Events:
    goal = _goal(state, cmd.goal_id)
    if goal.status in ("achieved", "discontinued"):
        raise InvalidTransition(f"goal_{goal.status}", f"The goal is {goal.status}; steps are "
                                "added to goals still being worked on: set this goal active "
                                "again (with a reason) first, or add the step to another goal.")
    _check_new_id(state.steps, cmd.step_id, "step")
    body = cmd.body
    support_name, support_id = _support_owner(state, body.owner, body.support_name,
                                              body.support_id)
    strength_ids = _unique(body.strength_ids)
    _check_strengths(state, strength_ids)
    return [ev.ActionStepAdded(
        step_id=cmd.step_id, goal_id=goal.goal_id, description=body.description,
        owner=body.owner, support_name=support_name, support_id=support_id,
        due_date=body.due_date, strength_ids=strength_ids,
    )]


def _revise_step(state: PlanState, cmd: c.ReviseActionStep, ctx: DecisionContext) -> Events:
    step = _step(state, cmd.step_id)
    changes = cmd.body.changes()
    owner = changes.get("owner", step.owner)
    # A support who has since been removed still owns the steps they took on: only a newly
    # named owner is checked, so those steps stay revisable (a body sending the step's own
    # support back unchanged, echoing the whole step, names no new one).
    named = {k for k in ("support_id", "support_name") if k in changes
             and changes[k] != getattr(step, k)}
    keeps_its_support = owner == step.owner == "support" and not named
    if not keeps_its_support:
        changes["support_name"], changes["support_id"] = _support_owner(
            state, owner, changes.get("support_name"), changes.get("support_id"))
    if "strength_ids" in changes:
        changes["strength_ids"] = _unique(changes["strength_ids"])
        _check_strengths(state, (s for s in changes["strength_ids"]
                                 if s not in step.strength_ids))
    values, cleared = _diff(step, changes)
    if not values and not cleared:
        raise _no_change("action step")
    return [ev.ActionStepRevised(step_id=step.step_id, goal_id=step.goal_id, **values,
                                 cleared=tuple(cleared), reason=cmd.body.reason)]


def _completed(step: StepState, *, note: str | None = None,
               reason: str | None = None) -> ev.ActionStepCompleted:
    return ev.ActionStepCompleted(step_id=step.step_id, goal_id=step.goal_id,
                                  description=step.description, owner=step.owner,
                                  from_status=step.status, note=note, reason=reason)


def _check_goal_worked_on(state: PlanState, step: StepState) -> None:
    """A discontinued goal's steps stay as they were (only "no longer needed" is recorded):
    completing one would be celebrated as a small win toward a goal set aside."""
    if state.goals[step.goal_id].status == "discontinued":
        raise InvalidTransition("goal_discontinued", "This step's goal was discontinued; set "
                                "the goal active again (with a reason) to work on its steps.")


def _change_step_status(state: PlanState, cmd: c.ChangeActionStepStatus,
                        ctx: DecisionContext) -> Events:
    step = _step(state, cmd.step_id)
    old, new, reason = step.status, cmd.body.status, cmd.body.reason
    if new != "no_longer_needed":
        _check_goal_worked_on(state, step)
    if old == new:
        if new == "completed":
            raise InvalidTransition("step_already_completed", "This step is already completed.")
        raise InvalidTransition("no_change", f"The step is already marked {_said(new)}.",
                                field="status")
    if new == "no_longer_needed":
        _require_reason(reason, "when a step is no longer needed")
    elif old in ("completed", "no_longer_needed") or (old, new) == ("in_progress", "not_started"):
        _require_reason(reason, f"to change a step that was marked {_said(old)} (a reversal)")
    if new == "completed":
        return [_completed(step, reason=reason)]
    return [ev.ActionStepStatusChanged(step_id=step.step_id, goal_id=step.goal_id,
                                       from_status=old, status=new, reason=reason)]


def _complete_step(state: PlanState, cmd: c.CompleteActionStep, ctx: DecisionContext) -> Events:
    step = _step(state, cmd.step_id)
    if step.status == "completed":
        raise InvalidTransition("step_already_completed", "This step is already completed.")
    _check_goal_worked_on(state, step)
    if step.status == "no_longer_needed":
        raise InvalidTransition("step_no_longer_needed", "This step was marked no longer "
                                "needed; change its status with a reason to complete it.")
    return [_completed(step, note=cmd.body.note)]


# --------------------------------------------------------------------------------------------
# supports and requirements
# --------------------------------------------------------------------------------------------


def _add_support(state: PlanState, cmd: c.AddSupport, ctx: DecisionContext) -> Events:
    _check_new_id(state.supports, cmd.support_id, "support")
    body = cmd.body
    return [ev.SupportAdded(support_id=cmd.support_id, name=body.name, kind=body.kind,
                            relationship=body.relationship, contact=body.contact,
                            description=body.description)]


def _remove_support(state: PlanState, cmd: c.RemoveSupport, ctx: DecisionContext) -> Events:
    support = state.supports.get(cmd.support_id)
    if support is None:
        raise NotFound("support_not_found", f"There is no support {cmd.support_id} in this plan.")
    if support.removed:
        raise InvalidTransition("support_removed", "This support was already removed.")
    return [ev.SupportRemoved(support_id=cmd.support_id, reason=cmd.body.reason)]


def _record_requirement(state: PlanState, cmd: c.RecordRequirement,
                        ctx: DecisionContext) -> Events:
    _check_new_id(state.requirements, cmd.requirement_id, "requirement")
    body = cmd.body
    return [ev.RequirementRecorded(requirement_id=cmd.requirement_id, title=body.title,
                                   description=body.description, source=body.source,
                                   reference=body.reference, due_date=body.due_date)]


def _change_requirement_status(state: PlanState, cmd: c.ChangeRequirementStatus,
                               ctx: DecisionContext) -> Events:
    requirement = state.requirements.get(cmd.requirement_id)
    if requirement is None:
        raise NotFound("requirement_not_found",
                       f"There is no requirement {cmd.requirement_id} in this plan.")
    old, new, reason = requirement.status, cmd.body.status, cmd.body.reason
    if old == new:
        raise InvalidTransition("no_change", f"The requirement is already marked {_said(new)}.",
                                field="status")
    if new in ("not_met", "waived"):
        _require_reason(reason, f"to record a requirement as {_said(new)}")
    elif old in ("met", "not_met", "waived") or (old, new) == ("in_progress", "pending"):
        _require_reason(reason, f"to change a requirement that was marked {_said(old)}"
                                " (a reversal)")
    return [ev.RequirementStatusChanged(requirement_id=cmd.requirement_id, from_status=old,
                                        status=new, reason=reason)]


# --------------------------------------------------------------------------------------------
# agreement and reviews
# --------------------------------------------------------------------------------------------


def _agree(state: PlanState, cmd: c.AgreePlan, ctx: DecisionContext) -> Events:
    active = tuple(g.goal_id for g in state.goals.values() if g.status == "active")
    if not active:
        raise InvalidTransition("plan_has_no_goals", "A plan needs at least one active goal "
                                "before the participant is asked to agree to it.")
    body = cmd.body
    _check_voice_recorded(body)
    out: Events = [ev.PlanAgreed(participation=body.participation, present=tuple(body.present),
                                 participant_statement=body.participant_statement,
                                 outcome=body.outcome, goal_ids=active)]
    # Only agreement schedules the first review; a review already pending stands.
    if body.outcome == "agreed" and state.pending_review_id is None:
        _check_new_id(state.reviews, cmd.review_id, "review")
        days = _policy(state, ctx).review_interval(state.risk_level)
        out.append(ev.ReviewScheduled(review_id=cmd.review_id,
                                      due_date=ctx.today + timedelta(days=days),
                                      basis="plan_agreed", interval_days=days,
                                      risk_level=state.risk_level))
    return out


def _check_voice_recorded(body: api.AgreementInput) -> None:
    """Rule 2: an agreement (or a disagreement) records what the participant said and who was
    there, in words: a statement of "." agreed a plan and scheduled its review on nothing."""
    if not has_words(body.participant_statement):
        raise RuleViolation("participant_statement_required", "Record what the participant "
                            "said about the plan, in words (participant_statement).",
                            field="participant_statement")
    if not all(has_words(name) for name in body.present):
        raise RuleViolation("present_required", "Name each person who was present, in words "
                            "(present).", field="present")


_AGREE_AGAIN = "agreeing the plan with the participant again schedules the next review."


def _next_review(state: PlanState) -> str:
    """What to do instead of acting on a review already held."""
    if state.pending_review_id is None:  # closing the case cancelled the next one
        return _AGREE_AGAIN
    return f"the next review is {state.pending_review_id}: hold or reschedule that one."


def _pending(state: PlanState, review_id: UUID) -> None:
    review = state.reviews.get(review_id)
    if review is None:
        raise NotFound("review_not_found", f"There is no review {review_id} in this plan.")
    if review.held:
        raise InvalidTransition("review_already_held", f"This review was already held on"
                                f" {review.held_on}; {_next_review(state)}")
    if state.pending_review_id is None:  # closing the case cancelled it
        raise InvalidTransition("review_not_pending", "This review was cancelled when the case "
                                f"was closed; {_AGREE_AGAIN}")
    if state.pending_review_id != review_id:
        raise InvalidTransition("review_not_pending", "This is not the review now scheduled; "
                                f"the next review is {state.pending_review_id}.")


def _hold_review(state: PlanState, cmd: c.HoldReview, ctx: DecisionContext) -> Events:
    _pending(state, cmd.review_id)
    review = state.reviews[cmd.review_id]
    body = cmd.body
    held_on = body.held_on or ctx.today
    if held_on > ctx.today:
        raise RuleViolation("held_on_in_future", "A review is recorded once it has been held; "
                            "held_on cannot be in the future.", field="held_on")
    policy = _policy(state, ctx)
    scheduled_on = policy.date_at(review.scheduled_at)  # the agency's day, as ``held_on`` is
    if held_on < scheduled_on:  # a mistyped year would schedule the next review in the past
        raise RuleViolation("held_on_before_scheduled", f"This review was scheduled on "
                            f"{scheduled_on}; held_on cannot be earlier.", field="held_on")
    _check_new_id(state.reviews, cmd.next_review_id, "review")
    risk = body.risk_level or state.risk_level
    days = policy.review_interval(risk)
    return [
        ev.ReviewHeld(review_id=cmd.review_id, held_on=held_on, due_date=review.due_date,
                      summary=body.summary, participant_statement=body.participant_statement,
                      risk_level=body.risk_level),
        ev.ReviewScheduled(review_id=cmd.next_review_id,
                           due_date=held_on + timedelta(days=days), basis="review_held",
                           interval_days=days, risk_level=risk),
    ]


def _reschedule_review(state: PlanState, cmd: c.RescheduleReview,
                       ctx: DecisionContext) -> Events:
    _pending(state, cmd.review_id)
    body = cmd.body
    if body.due_date < ctx.today:
        raise RuleViolation("due_date_in_past", f"A review can be moved to today "
                            f"({ctx.today}) or a later date.", field="due_date")
    if state.reviews[cmd.review_id].due_date == body.due_date:
        raise InvalidTransition("no_change", "The review is already due on that date.",
                                field="due_date")
    return [ev.ReviewScheduled(review_id=cmd.review_id, due_date=body.due_date,
                               basis="rescheduled", interval_days=None,
                               risk_level=state.risk_level, reason=body.reason)]


# --------------------------------------------------------------------------------------------
# notes
# --------------------------------------------------------------------------------------------


def _add_note(state: PlanState, cmd: c.AddNote, ctx: DecisionContext) -> Events:
    _check_new_id(state.note_ids, cmd.note_id, "note")
    if cmd.body.goal_id is not None and cmd.body.goal_id not in state.goals:
        raise RuleViolation("unknown_goal", f"There is no goal {cmd.body.goal_id} in this plan.",
                            field="goal_id")
    return [ev.NoteAdded(note_id=cmd.note_id, text=cmd.body.text, goal_id=cmd.body.goal_id)]


_Decider = Callable[[PlanState, Any, DecisionContext], Events]

_DECIDERS: dict[type[c.Command], _Decider] = {
    c.UpdateParticipantDetails: _update_participant,
    c.TransferCase: _transfer,
    c.CloseCase: _close,
    c.ReopenCase: _reopen,
    c.RecordStrength: _record_strength,
    c.ReviseStrength: _revise_strength,
    c.RemoveStrength: _remove_strength,
    c.SetGoal: _set_goal,
    c.ReviseGoal: _revise_goal,
    c.ChangeGoalStatus: _change_goal_status,
    c.AddActionStep: _add_step,
    c.ReviseActionStep: _revise_step,
    c.ChangeActionStepStatus: _change_step_status,
    c.CompleteActionStep: _complete_step,
    c.AddSupport: _add_support,
    c.RemoveSupport: _remove_support,
    c.RecordRequirement: _record_requirement,
    c.ChangeRequirementStatus: _change_requirement_status,
    c.AgreePlan: _agree,
    c.HoldReview: _hold_review,
    c.RescheduleReview: _reschedule_review,
    c.AddNote: _add_note,
}
