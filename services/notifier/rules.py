"""What to tell whom, and when: pure functions from the case read model and events to notices.

Two families:

* timed notices follow from the current state of a case (reviews still to hold, steps and
  goals with dates). ``timed_notices`` is recomputed after every event and the schedule is
  reconciled with it, so a review held, a transfer, a closure or a revised date simply
  changes the answer.
* celebrations follow from one event (a step completed, a goal achieved) and are keyed by
  that event, so replaying the feed finds them already there. So does the handover a case
  manager gets when a case is transferred to them.

Keys are deterministic: a notice has the same key however often the feed is replayed, and the
key names the date it is about, so a rescheduled review is a new notice, never a resend.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid5
from zoneinfo import ZoneInfo

from schemas import events as ev
from services.notifier.casemodel import CaseModel, FeedItem, Goal, Review, Step


class Kind(StrEnum):
    REVIEW_REMINDER = "review_reminder"
    REVIEW_DUE_TODAY = "review_due_today"
    REVIEW_OVERDUE = "review_overdue"
    STEP_NUDGE = "step_nudge"
    GOAL_TARGET_DATE = "goal_target_date"
    SMALL_WIN = "small_win"
    MILESTONE = "milestone"
    CASE_TRANSFERRED = "case_transferred"
    DAILY_DIGEST = "daily_digest"


CELEBRATIONS = frozenset({Kind.SMALL_WIN, Kind.MILESTONE})
# about a day rather than an event: each reaches its reader on that day at their own local time
DATED = frozenset({Kind.REVIEW_REMINDER, Kind.REVIEW_DUE_TODAY, Kind.REVIEW_OVERDUE,
                   Kind.STEP_NUDGE, Kind.GOAL_TARGET_DATE})
# ahead of a day: useless once that day's moment has passed for the reader, so not sent late
HEADS_UP = frozenset({Kind.REVIEW_REMINDER, Kind.REVIEW_DUE_TODAY})
OPEN_STEP_STATUSES = frozenset({"not_started", "in_progress"})
# The westernmost offset in use (UTC-12): the last place a day's wall-clock time comes.
LAST_OFFSET_BEHIND_UTC = timedelta(hours=12)
# Days far enough from the calendar's ends that a moment on them converts to UTC and back.
SCHEDULABLE_DAYS = (date(1900, 1, 1), date(9998, 12, 31))
# A handover lists this many steps past their dates at most, and says how many more there are.
HANDOVER_STEPS = 5
_READER_REFS = UUID("5b0e7c52-6a43-4d0e-9d55-1f3c2a7e9b61")


class RecipientRole(StrEnum):
    CASE_MANAGER = "case_manager"
    PARTICIPANT = "participant"
    SUPERVISORS = "supervisors"
    USER = "user"


@dataclass(frozen=True)
class RuleSettings:
    reminder_days_before: int = 3
    overdue_grace_days: int = 2
    nudge_days_after: int = 1
    send_time: time = time(9, 0)
    timezone: str = "UTC"

    def at_send_time(self, day: date, days_later: int = 0) -> datetime | None:
        """The moment on ``day`` (moved by ``days_later``) when dated notices go out, in the
        service's time zone; None for a day no notice can be scheduled on. The records API
        refuses such dates, but an event may come from elsewhere, and one odd date must not
        stop the feed for everyone."""
        try:
            moved = day + timedelta(days=days_later)
        except OverflowError:
            return None
        if not SCHEDULABLE_DAYS[0] <= moved <= SCHEDULABLE_DAYS[1]:
            return None
        return datetime.combine(moved, self.send_time, tzinfo=ZoneInfo(self.timezone))

    def still_ahead_somewhere(self, moment: datetime, now: datetime) -> bool:
        """Whether the wall-clock time of ``moment`` (from ``at_send_time``, so in the
        schedule's zone) is still to come on its day for a reader somewhere: readers get dated
        notices at their own local time."""
        return moment.replace(tzinfo=UTC) + LAST_OFFSET_BEHIND_UTC > now


DEFAULT_RULES = RuleSettings()


@dataclass(frozen=True)
class Notice:
    key: str
    kind: Kind
    case_id: UUID | None
    agency: str
    recipient_role: RecipientRole
    recipient: str
    due_at: datetime
    context: dict[str, Any] = field(default_factory=dict)
    source_event: UUID | None = None


def participant_recipient(case_id: UUID) -> str:
    return f"participant:{case_id}"


# --------------------------------------------------------------------------------------------
# timed notices
# --------------------------------------------------------------------------------------------


def timed_notices(case: CaseModel, rules: RuleSettings) -> list[Notice]:
    """Every dated notice the case calls for right now; none once the case is closed."""
    if case.status != "open":
        return []
    notices: list[Notice] = []
    for review in case.reviews.values():
        notices += review_notices(case, review, rules)
    for step in case.steps.values():
        notices += step_nudges(case, step, rules)
    for goal in case.goals.values():
        notices += goal_target_notices(case, goal, rules)
    return sorted(notices, key=lambda n: n.key)


def _to_manager(case: CaseModel, key: str, kind: Kind, due_at: datetime,
                context: dict[str, Any]) -> Notice:
    return Notice(key, kind, case.case_id, case.agency, RecipientRole.CASE_MANAGER,
                  case.case_manager, due_at, {"participant": case.participant_called, **context})


def review_notices(case: CaseModel, review: Review, rules: RuleSettings) -> list[Notice]:
    """Reminder N days before and on the day; overdue after the grace days (manager and
    supervisors). A reminder whose moment had passed everywhere when the review was scheduled
    is left out; delivery cancels one whose moment had passed for its reader (``HEADS_UP``)."""
    due = review.due_date
    context = {"review_id": str(review.review_id), "due_date": due.isoformat()}
    base = f"{review.review_id}:{due.isoformat()}"
    notices = []
    before = rules.at_send_time(due, -rules.reminder_days_before)
    if before is not None and rules.still_ahead_somewhere(before, review.scheduled_at):
        notices.append(_to_manager(
            case, f"review_reminder:{base}:{rules.reminder_days_before}d",
            Kind.REVIEW_REMINDER, before, context))
    on_the_day = rules.at_send_time(due)
    if on_the_day is not None and rules.still_ahead_somewhere(on_the_day, review.scheduled_at):
        notices.append(_to_manager(case, f"review_due_today:{base}", Kind.REVIEW_DUE_TODAY,
                                   on_the_day, context))
    overdue_at = rules.at_send_time(due, rules.overdue_grace_days)
    if overdue_at is None:
        return notices
    overdue_context = {**context, "grace_days": rules.overdue_grace_days,
                       "case_manager": case.case_manager}
    notices.append(_to_manager(case, f"review_overdue:{base}:case_manager",
                               Kind.REVIEW_OVERDUE, overdue_at, overdue_context))
    notices.append(Notice(f"review_overdue:{base}:supervisors", Kind.REVIEW_OVERDUE,
                          case.case_id, case.agency, RecipientRole.SUPERVISORS, "supervisors",
                          overdue_at, {"participant": case.participant_called,
                                       **overdue_context}))
    return notices


def step_nudges(case: CaseModel, step: Step, rules: RuleSettings) -> list[Notice]:
    """A gentle nudge once an open step of an active goal is past its due date."""
    goal = case.goals.get(step.goal_id)
    if step.due_date is None or step.status not in OPEN_STEP_STATUSES:
        return []
    if goal is not None and goal.status != "active":
        return []
    due_at = rules.at_send_time(step.due_date, rules.nudge_days_after)
    if due_at is None:
        return []
    return [_to_manager(case, f"step_nudge:{step.step_id}:{step.due_date.isoformat()}",
                        Kind.STEP_NUDGE, due_at, {
                            "step_id": str(step.step_id), "description": step.description,
                            "due_date": step.due_date.isoformat(), **_owner_context(step),
                            **_goal_context(goal)})]


def _owner_context(step: Step) -> dict[str, Any]:
    """Who took the step on, when known (the nudge's wording follows it)."""
    if step.owner is None:
        return {}
    return {"owner": step.owner, "support_name": step.support_name}


def goal_target_notices(case: CaseModel, goal: Goal, rules: RuleSettings) -> list[Notice]:
    """On an active goal's target date: a moment to notice progress or agree a new date."""
    due_at = rules.at_send_time(goal.target_date) if goal.target_date is not None else None
    if goal.target_date is None or due_at is None or goal.status != "active":
        return []
    return [_to_manager(case, f"goal_target_date:{goal.goal_id}:{goal.target_date.isoformat()}",
                        Kind.GOAL_TARGET_DATE, due_at,
                        {"target_date": goal.target_date.isoformat(), **_goal_context(goal)})]


def _goal_context(goal: Goal | None) -> dict[str, Any]:
    if goal is None:
        return {}
    return {"goal_id": str(goal.goal_id), "goal_title": goal.title,
            "in_their_words": goal.in_their_words}


# --------------------------------------------------------------------------------------------
# celebrations
# --------------------------------------------------------------------------------------------


def event_notices(case: CaseModel, item: FeedItem, payload: ev.EventPayload,
                  rules: RuleSettings = DEFAULT_RULES) -> list[Notice]:
    """What the event itself calls for, sent as soon as possible (never for a closed case):
    celebrations, and the handover of a transferred case. ``rules``: for the day in the
    schedule's zone the handover counts overdue from."""
    if case.status != "open":
        return []
    if isinstance(payload, ev.ActionStepCompleted):
        return [small_win(case, item, payload)]
    if isinstance(payload, ev.GoalStatusChanged) and payload.status == "achieved":
        return milestone(case, item, payload)
    if (isinstance(payload, ev.CaseTransferred)
            and payload.to_case_manager != payload.from_case_manager):
        return [handover(case, item, payload, rules)]
    return []


@dataclass(frozen=True)
class Withdrawal:
    """Celebrations of ``kind`` about one step or goal (``subject`` names the context field)
    that the record no longer bears out: those still waiting are not sent."""

    kind: Kind
    subject: str
    subject_id: UUID


def withdrawn_celebrations(payload: ev.EventPayload) -> Withdrawal | None:
    """A step no longer completed or a goal no longer achieved (a reversal, with its reason).
    A completion or achievement recorded again later is a new event, celebrated anew.
    A case transferred on: the handover to the case manager handing it on, if still waiting,
    is no longer theirs to read."""
    if isinstance(payload, ev.CaseTransferred):
        return Withdrawal(Kind.CASE_TRANSFERRED, "reader_ref",
                          reader_ref(payload.from_case_manager))
    if isinstance(payload, ev.ActionStepStatusChanged) and payload.from_status == "completed":
        return Withdrawal(Kind.SMALL_WIN, "step_id", payload.step_id)
    if (isinstance(payload, ev.GoalStatusChanged) and payload.from_status == "achieved"
            and payload.status != "achieved"):
        return Withdrawal(Kind.MILESTONE, "goal_id", payload.goal_id)
    return None


@dataclass(frozen=True)
class Rewording:
    """Celebrations of ``kind`` about one step or goal (``subject`` names the context field)
    still waiting quote it as the plan now reads: ``words`` replace those in their context."""

    kind: Kind
    subject: str
    subject_id: UUID
    words: dict[str, Any]


def reworded_celebrations(before: CaseModel, after: CaseModel) -> list[Rewording]:
    """A step or goal reworded (ActionStepRevised, GoalRevised): a small win or milestone of
    it still waiting (quiet hours, a digest, a retry) names it as it now reads, not as it read
    when it was completed or achieved."""
    if before.steps is after.steps and before.goals is after.goals:
        return []  # evolve makes new dicts only for what an event changed: most change neither
    found = []
    for step in after.steps.values():
        words = _step_words(after, step)
        was = before.steps.get(step.step_id)
        if was is not None and words != _step_words(before, was):
            found.append(Rewording(Kind.SMALL_WIN, "step_id", step.step_id, words))
    for goal in after.goals.values():
        words = _goal_context(goal)
        if goal.goal_id in before.goals and words != _goal_context(before.goals[goal.goal_id]):
            found.append(Rewording(Kind.MILESTONE, "goal_id", goal.goal_id, words))
    return found


def _step_words(case: CaseModel, step: Step) -> dict[str, Any]:
    """What a small win says of its step: the step, who took it on and its goal."""
    owner = {"owner": step.owner} if step.owner is not None else {}
    return {"description": step.description, **owner,
            **_goal_context(case.goals.get(step.goal_id))}


def small_win(case: CaseModel, item: FeedItem, p: ev.ActionStepCompleted) -> Notice:
    context = {"step_id": str(p.step_id), "description": p.description, "owner": p.owner,
               "note": p.note, **_goal_context(case.goals.get(p.goal_id))}
    notice = _to_manager(case, f"small_win:{item.event_id}", Kind.SMALL_WIN, item.recorded_at,
                         context)
    return replace(notice, source_event=item.event_id)


def milestone(case: CaseModel, item: FeedItem, p: ev.GoalStatusChanged) -> list[Notice]:
    goal = case.goals.get(p.goal_id)
    context = {"goal_id": str(p.goal_id), "goal_title": p.title,
               "in_their_words": goal.in_their_words if goal else None}
    to_manager = _to_manager(case, f"milestone:{item.event_id}:case_manager", Kind.MILESTONE,
                             item.recorded_at, context)
    # Always scheduled; at delivery it goes out only if the participant opted in with an
    # address (preferences are not in the feed, so the schedule must not depend on them).
    to_participant = Notice(f"milestone:{item.event_id}:participant", Kind.MILESTONE,
                            case.case_id, case.agency, RecipientRole.PARTICIPANT,
                            participant_recipient(case.case_id), item.recorded_at,
                            {"participant": case.participant_called, **context})
    return [replace(to_manager, source_event=item.event_id),
            replace(to_participant, source_event=item.event_id)]


# --------------------------------------------------------------------------------------------
# the handover of a transferred case
# --------------------------------------------------------------------------------------------


def reader_ref(user_id: str) -> UUID:
    """A handover's reader as a UUID: a waiting handover is withdrawn by a UUID in its
    context (``Withdrawal``), and a user id is not one."""
    return uuid5(_READER_REFS, user_id)


def handover(case: CaseModel, item: FeedItem, p: ev.CaseTransferred,
             rules: RuleSettings) -> Notice:
    """The case manager a case is transferred to hears, at the transfer, who handed it on and
    why, the next plan review and what was past its date that day in the schedule's zone.
    The overdue notice and the nudges may have gone to the one who left, and are not sent
    again. Addressed to that person by name (not to whoever holds the case later): a later
    transfer withdraws it if still waiting."""
    day = item.recorded_at.astimezone(ZoneInfo(rules.timezone)).date()
    context = {"participant": case.participant_called, "from_case_manager": p.from_case_manager,
               "transferred_by": item.actor, "reason": p.reason, **_needs_attention(case, day),
               "reader_ref": str(reader_ref(p.to_case_manager))}
    return Notice(f"case_transferred:{item.event_id}", Kind.CASE_TRANSFERRED, case.case_id,
                  case.agency, RecipientRole.USER, p.to_case_manager, item.recorded_at, context,
                  source_event=item.event_id)


def _needs_attention(case: CaseModel, day: date) -> dict[str, Any]:
    """The next plan review and whether it was overdue on ``day``, and the steps past their
    dates then (the first few, and how many in all)."""
    review = min(case.reviews.values(), key=lambda r: r.due_date, default=None)
    late = _steps_past(case, day)
    return {"review_due": review.due_date.isoformat() if review else None,
            "review_overdue": review is not None and review.due_date < day,
            "overdue_steps": [{"step_id": str(s.step_id), "description": s.description,
                               "due_date": s.due_date.isoformat() if s.due_date else None}
                              for s in late[:HANDOVER_STEPS]],
            "overdue_step_count": len(late)}


def _steps_past(case: CaseModel, day: date) -> list[Step]:
    """Open steps of active goals whose date was before ``day``, soonest first (as the
    caseload counts overdue steps, and as a nudge would be sent for each)."""
    def active(step: Step) -> bool:
        goal = case.goals.get(step.goal_id)
        return goal is None or goal.status == "active"

    late = [s for s in case.steps.values() if s.due_date is not None and s.due_date < day
            and s.status in OPEN_STEP_STATUSES and active(s)]
    return sorted(late, key=lambda s: (s.due_date or day, s.description))
