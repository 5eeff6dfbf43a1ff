"""The notifier's own picture of a case, folded from feed events (pure: no I/O).

It keeps only what notices need: who manages the case, how to address the participant, the
goals and steps (in the participant's words), and the reviews still to be held.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any
from uuid import UUID

from schemas import events as ev

# Feed events whose payloads change the read model; every other type is ignored unparsed, so a
# new event type in the records service never stalls the notifier.
RELEVANT_TYPES = frozenset({
    "CaseOpened", "ParticipantDetailsUpdated", "CaseTransferred", "CaseClosed", "CaseReopened",
    "GoalSet", "GoalRevised", "GoalStatusChanged", "ActionStepAdded", "ActionStepRevised",
    "ActionStepStatusChanged", "ActionStepCompleted", "ReviewScheduled", "ReviewHeld",
})


@dataclass(frozen=True)
class FeedItem:
    """One event of the records feed, as the notifier needs it."""

    checkpoint: str
    case_id: UUID
    version: int
    event_id: UUID
    type: str
    schema_version: int
    data: dict[str, Any]
    agency: str
    recorded_at: datetime
    actor: str | None = None  # who wrote the event (``actor_of`` its metadata), when known

    def payload(self) -> ev.EventPayload:
        return ev.parse_event(self.type, self.schema_version, self.data)


def actor_of(metadata: dict[str, Any]) -> str | None:
    """The user id of whoever wrote an event, from the feed event's metadata; None when the
    metadata does not say (an event written by another system)."""
    actor = metadata.get("actor")
    sub = actor.get("sub") if isinstance(actor, dict) else None
    return sub if isinstance(sub, str) and sub else None


@dataclass(frozen=True)
class Goal:
    goal_id: UUID
    title: str
    in_their_words: str | None
    status: str
    target_date: date | None


@dataclass(frozen=True)
class Step:
    step_id: UUID
    goal_id: UUID
    description: str
    due_date: date | None
    status: str
    owner: str | None = None  # None: stored before the notifier kept it
    support_name: str | None = None


@dataclass(frozen=True)
class Review:
    review_id: UUID
    due_date: date
    scheduled_at: datetime


@dataclass(frozen=True)
class CaseModel:
    case_id: UUID
    agency: str
    case_manager: str
    status: str
    participant_name: str
    preferred_name: str | None
    participant_email: str | None
    version: int
    goals: dict[UUID, Goal] = field(default_factory=dict)
    steps: dict[UUID, Step] = field(default_factory=dict)
    reviews: dict[UUID, Review] = field(default_factory=dict)

    @property
    def participant_called(self) -> str:
        return self.preferred_name or self.participant_name


def evolve(case: CaseModel | None, item: FeedItem, payload: ev.EventPayload) -> CaseModel | None:
    """The case after ``payload``; None while the case is unknown (its opening not yet seen)."""
    if isinstance(payload, ev.CaseOpened):
        return CaseModel(item.case_id, payload.agency, payload.case_manager, "open",
                         payload.participant.name, payload.participant.preferred_name,
                         payload.participant.email, item.version)
    if case is None:
        return None
    changed = _apply(case, item, payload)
    return replace(changed, version=item.version)


def _apply(case: CaseModel, item: FeedItem, p: ev.EventPayload) -> CaseModel:
    match p:
        case ev.ParticipantDetailsUpdated():
            return _participant(case, p)
        case ev.CaseTransferred():
            return replace(case, case_manager=p.to_case_manager)
        case ev.CaseClosed():
            # as in the records service, closing cancels the pending review for good: a
            # reopened case has none until its plan is agreed again
            return replace(case, status="closed", reviews={})
        case ev.CaseReopened():
            return replace(case, status="open")
        case ev.GoalSet():
            goal = Goal(p.goal_id, p.title, p.in_their_words, p.status, p.target_date)
            return replace(case, goals={**case.goals, p.goal_id: goal})
        case ev.GoalRevised():
            return _goal_revised(case, p)
        case ev.GoalStatusChanged():
            return _with_goal(case, p.goal_id, status=p.status, title=p.title)
        case ev.ActionStepAdded():
            step = Step(p.step_id, p.goal_id, p.description, p.due_date, "not_started",
                        p.owner, p.support_name)
            return replace(case, steps={**case.steps, p.step_id: step})
        case ev.ActionStepRevised():
            return _step_revised(case, p)
        case ev.ActionStepStatusChanged():
            return _with_step(case, p.step_id, status=p.status)
        case ev.ActionStepCompleted():
            return _with_step(case, p.step_id, status="completed")
        case ev.ReviewScheduled():
            review = Review(p.review_id, p.due_date, item.recorded_at)
            return replace(case, reviews={**case.reviews, p.review_id: review})
        case ev.ReviewHeld():
            return replace(case, reviews={k: v for k, v in case.reviews.items()
                                          if k != p.review_id})
    return case


def _participant(case: CaseModel, p: ev.ParticipantDetailsUpdated) -> CaseModel:
    name = p.name or case.participant_name
    preferred = None if "preferred_name" in p.cleared else (p.preferred_name
                                                             or case.preferred_name)
    email = None if "email" in p.cleared else (p.email or case.participant_email)
    return replace(case, participant_name=name, preferred_name=preferred,
                   participant_email=email)


def _goal_revised(case: CaseModel, p: ev.GoalRevised) -> CaseModel:
    goal = case.goals.get(p.goal_id)
    if goal is None:
        return case
    words = None if "in_their_words" in p.cleared else (p.in_their_words or goal.in_their_words)
    target = None if "target_date" in p.cleared else (p.target_date or goal.target_date)
    return _with_goal(case, p.goal_id, title=p.title or goal.title, in_their_words=words,
                      target_date=target)


def _step_revised(case: CaseModel, p: ev.ActionStepRevised) -> CaseModel:
    step = case.steps.get(p.step_id)
    if step is None:
        return case
    due = None if "due_date" in p.cleared else (p.due_date or step.due_date)
    support = None if "support_name" in p.cleared else (p.support_name or step.support_name)
    return _with_step(case, p.step_id, description=p.description or step.description,
                      due_date=due, goal_id=p.goal_id, owner=p.owner or step.owner,
                      support_name=support)


def _with_goal(case: CaseModel, goal_id: UUID, **changes: Any) -> CaseModel:
    goal = case.goals.get(goal_id)
    if goal is None:
        return case
    return replace(case, goals={**case.goals, goal_id: replace(goal, **changes)})


def _with_step(case: CaseModel, step_id: UUID, **changes: Any) -> CaseModel:
    step = case.steps.get(step_id)
    if step is None:
        return case
    return replace(case, steps={**case.steps, step_id: replace(step, **changes)})
