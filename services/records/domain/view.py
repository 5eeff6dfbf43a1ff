"""The current-plan view of a state (pure, time-independent: due dates, not "overdue" flags).

:func:`plan_document` is the one definition of the view's shape, as plain data. Every write
stores it as JSON (:func:`plan_json`), so it is built without pydantic: validating the nested
``PlanView`` on each write cost more than the rest of the projection. :func:`plan_view`
validates the same document into the ``PlanView`` model, which keeps the two in step (a field
the model does not know is refused; tests compare the JSON of both over random plans).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from schemas.api import PlanView
from services.common.jsonenc import encode_json
from services.records.domain.state import NoteState, PlanState, ReviewState, StepState

Document = dict[str, Any]


def _step(step: StepState, live_strengths: set[UUID]) -> Document:
    return {
        "step_id": step.step_id, "goal_id": step.goal_id, "description": step.description,
        "owner": step.owner, "support_name": step.support_name, "support_id": step.support_id,
        "due_date": step.due_date, "status": step.status, "status_reason": step.status_reason,
        "strength_ids": [sid for sid in step.strength_ids if sid in live_strengths],
        "added_at": step.added_at, "completed_at": step.completed_at,
        "completion_note": step.completion_note,
    }


def _review(review: ReviewState, pending_id: UUID | None) -> Document:
    # a review neither held nor pending was cancelled when the case closed
    status = ("held" if review.held else
              "scheduled" if review.review_id == pending_id else "cancelled")
    return {
        "review_id": review.review_id, "due_date": review.due_date, "basis": review.basis,
        "interval_days": review.interval_days, "risk_level": review.risk_level,
        "status": status, "scheduled_at": review.scheduled_at,
        "held_on": review.held_on, "summary": review.summary,
        "participant_statement": review.participant_statement,
    }


def _goals(state: PlanState) -> list[Document]:
    live_strengths = {sid for sid, s in state.strengths.items() if not s.removed}
    steps = state.steps
    return [
        {
            "goal_id": g.goal_id, "title": g.title, "domain": g.domain, "source": g.source,
            "status": g.status, "in_their_words": g.in_their_words,
            "why_it_matters": g.why_it_matters, "target_date": g.target_date,
            "strength_ids": [sid for sid in g.strength_ids if sid in live_strengths],
            "risk_factors": list(g.risk_factors), "override_reason": g.override_reason,
            "set_at": g.set_at, "status_changed_at": g.status_changed_at,
            "status_reason": g.status_reason, "achieved_at": g.achieved_at,
            "steps": [_step(steps[sid], live_strengths) for sid in g.step_ids if sid in steps],
        }
        for g in state.goals.values()
    ]


def _items(state: PlanState) -> Document:
    return {
        "strengths": [
            {"strength_id": s.strength_id, "category": s.category, "description": s.description,
             "in_their_words": s.in_their_words, "recorded_at": s.recorded_at}
            for s in state.strengths.values() if not s.removed
        ],
        "goals": _goals(state),
        "supports": [
            {"support_id": s.support_id, "name": s.name, "kind": s.kind,
             "relationship": s.relationship, "contact": s.contact,
             "description": s.description, "added_at": s.added_at}
            for s in state.supports.values() if not s.removed
        ],
        "requirements": [
            {"requirement_id": r.requirement_id, "title": r.title, "description": r.description,
             "source": r.source, "reference": r.reference, "due_date": r.due_date,
             "status": r.status, "status_reason": r.status_reason,
             "recorded_at": r.recorded_at}
            for r in state.requirements.values()
        ],
    }


def note_document(note: NoteState) -> Document:
    """A note as the plan's ``recent_notes`` shows it."""
    return {"note_id": note.note_id, "text": note.text, "goal_id": note.goal_id,
            "recorded_at": note.recorded_at, "version": note.version}


def _agreement(state: PlanState) -> Document | None:
    a = state.agreement
    if a is None:
        return None
    return {"participation": a.participation, "present": list(a.present),
            "participant_statement": a.participant_statement, "outcome": a.outcome,
            "goal_ids": list(a.goal_ids), "recorded_at": a.recorded_at, "version": a.version}


def _closure(state: PlanState) -> Document | None:
    if state.closed_at is None or state.closure_reason is None:
        return None
    return {"reason": state.closure_reason, "outcome": state.closure_outcome,
            "closed_at": state.closed_at}


def plan_document(state: PlanState) -> Document:
    """The plan as the API shows it, as plain data (ids, dates and times as Python objects):
    live items in the order they were recorded; removed strengths and supports are left out
    (their history stays in the events)."""
    p = state.participant
    pending = state.pending_review
    return {
        "case_id": state.case_id, "version": state.version, "status": state.status,
        "participant": {"name": p.name, "preferred_name": p.preferred_name,
                        "pronouns": p.pronouns, "email": p.email,
                        "external_ref": p.external_ref},
        "case_manager": state.case_manager, "risk_level": state.risk_level,
        **_items(state),
        "agreement": _agreement(state),
        "next_review": None if pending is None else _review(pending, state.pending_review_id),
        "updated_at": state.updated_at, "agency": state.agency, "opened_at": state.opened_at,
        "active_goal_count": state.active_goal_count,
        "max_active_goals": state.policy.max_active_goals,
        "reviews": [_review(r, state.pending_review_id) for r in state.reviews.values()],
        "recent_notes": [note_document(n) for n in state.notes],
        "note_count": state.note_count,
        "closure": _closure(state),
    }


def plan_json(state: PlanState) -> str:
    """The plan document as JSON text, as pydantic would write it (UTC times end in ``Z``)."""
    return encode_json(plan_document(state)).decode()


def plan_view(state: PlanState) -> PlanView:
    """The plan document validated into the API's ``PlanView`` model."""
    return PlanView.model_validate(plan_document(state))
