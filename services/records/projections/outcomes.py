"""The outcome facts projection: one row per event that matters to outcome analytics.

Facts are read off each event with the case as the event left it, so the query side
never folds a case: a plan agreed (and whether it was co-created), a goal achieved (its domain,
days since it was set) or taken back from achieved, a small win (a completed step) or one
taken back, a review
held (on time or not), and the case opening, closing and reopening (for case-months). Written
in the same transaction as the events (a co-write) and rebuilt from them with the plans. All
SQL touching ``records.outcome_facts`` lives here, but for the rebuild's swap
(``projections/shadow.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from schemas import events as ev
from services.records.domain import PlanState
from services.records.projections.plans import Step
from services.records.projections.shadow import Projection
from services.records.store.events import CoWrite

_COLUMNS = ("event_id, case_id, version, agency, kind, occurred_on, domain, days, agreed,"
            " co_created, on_time, review_id, due_on, goal_id")


def _insert_into(table: str) -> str:
    """Facts into ``table`` (the facts, or a rebuild's shadow of them), given as one JSON
    array of rows in $1."""
    return f"""
INSERT INTO {table} ({_COLUMNS})
SELECT * FROM jsonb_to_recordset($1::jsonb) AS f(event_id uuid, case_id uuid, version int,
    agency text, kind text, occurred_on date, domain text, days int, agreed boolean,
    co_created boolean, on_time boolean, review_id uuid, due_on date, goal_id uuid)"""


_INSERT_ROWS = _insert_into("records.outcome_facts")
_ON_CONFLICT = "\nON CONFLICT (event_id) DO NOTHING"
# As the co-write of a batch of appends: only the facts of cases whose append succeeded.
_INSERT_WHEN_APPENDED = _INSERT_ROWS + "\nWHERE f.case_id IN {appended}" + _ON_CONFLICT


@dataclass(frozen=True)
class OutcomeFact:
    event_id: UUID
    case_id: UUID
    version: int  # the event's: orders a case's facts
    agency: str
    kind: str
    occurred_on: date  # the agency's date (its policy's time zone) of the event
    domain: str | None = None  # goal_achieved, goal_unachieved
    days: int | None = None  # goal_achieved: days from the goal being set
    agreed: bool | None = None  # plan_agreed: the participant agreed
    co_created: bool | None = None  # plan_agreed: agreed, with a goal in the participant's name
    on_time: bool | None = None  # review_held: held on or before its due date
    review_id: UUID | None = None  # review_due, review_held
    due_on: date | None = None  # review_due: the date it is due (the date in force: _CASE_REVIEWS)
    goal_id: UUID | None = None  # goal_achieved, goal_unachieved: pairs a take-back with its win


Found = tuple[str, dict[str, Any]]  # the fact's kind and its details
Reader = Callable[[Any, PlanState], Found | None]
CASE_LIFE = ("case_opened", "case_closed", "case_reopened")


def _case_life(kind: str) -> Reader:
    return lambda e, after: (kind, {})


def _agreed(e: ev.PlanAgreed, after: PlanState) -> Found:
    agreed = e.outcome == "agreed"
    theirs = any(after.goals[goal_id].source == "participant"
                 for goal_id in e.goal_ids if goal_id in after.goals)
    return "plan_agreed", {"agreed": agreed, "co_created": agreed and theirs}


# Events naming an item the case does not hold (imported, or older than a rule) record no
# fact: one odd event must not stop a rebuild, nor count a win or a take-back never made.

def _goal_status(e: ev.GoalStatusChanged, after: PlanState) -> Found | None:
    goal = after.goals.get(e.goal_id)
    if goal is None:
        return None
    if e.status == "achieved":
        local = after.policy.date_at
        days = (local(after.updated_at) - local(goal.set_at)).days
        return "goal_achieved", {"domain": goal.domain, "days": days, "goal_id": e.goal_id}
    if e.from_status == "achieved":
        return "goal_unachieved", {"domain": goal.domain, "goal_id": e.goal_id}
    return None


def _review_held(e: ev.ReviewHeld, after: PlanState) -> Found:
    return "review_held", {"on_time": e.held_on <= e.due_date, "review_id": e.review_id}


def _review_due(e: ev.ReviewScheduled, after: PlanState) -> Found:
    return "review_due", {"review_id": e.review_id, "due_on": e.due_date}


_READERS: dict[type[ev.EventPayload], Reader] = {
    ev.CaseOpened: _case_life("case_opened"), ev.CaseClosed: _case_life("case_closed"),
    ev.CaseReopened: _case_life("case_reopened"), ev.PlanAgreed: _agreed,
    ev.GoalStatusChanged: _goal_status,
    ev.ActionStepCompleted: lambda e, after: (
        ("step_completed", {}) if e.step_id in after.steps else None),
    ev.ActionStepStatusChanged: lambda e, after: (
        ("step_uncompleted", {}) if e.from_status == "completed" and e.step_id in after.steps
        else None),
    ev.ReviewHeld: _review_held,
    ev.ReviewScheduled: _review_due,
}


def fact_of(payload: ev.EventPayload, after: PlanState, event_id: UUID) -> OutcomeFact | None:
    """The fact ``payload`` records, if any (most events record none), given the case as the
    event left it."""
    reader = _READERS.get(type(payload))
    found = reader(payload, after) if reader is not None else None
    if found is None:
        return None
    kind, details = found
    return OutcomeFact(event_id, after.case_id, after.version, after.agency, kind,
                       after.policy.date_at(after.updated_at), **details)


def facts_of(steps: Iterable[Step]) -> list[OutcomeFact]:
    """The facts of a run of events, each read with the state it left."""
    return [fact for payload, event, state in steps
            if (fact := fact_of(payload, state, event.event_id)) is not None]


def facts_insert(facts: list[OutcomeFact]) -> list[CoWrite]:
    """The co-writes that record ``facts`` with the events they come from."""
    return [CoWrite(_INSERT_WHEN_APPENDED, asdict(fact)) for fact in facts]


# What a rebuild writes to (projections/shadow.py).
FACTS = Projection("records.outcome_facts", "event_id", _insert_into)


# How many rows (one a case) a read of the figures fetches at a time: an answer holds this many,
# however many facts the agency has. Tests lower it to read across many fetches.
READ_BATCH = 500

# Facts counted, their order not mattering (in the period): plans agreed, small wins and their
# take-backs; and facts walked in order: the case life (from the start), goals achieved and
# taken back (in the period).
_COUNTED = ("plan_agreed", "step_completed", "step_uncompleted")
_GOAL_KINDS = ("goal_achieved", "goal_unachieved")


class LifeEvent(NamedTuple):
    kind: str  # case_opened, case_closed, case_reopened
    occurred_on: date


class GoalEvent(NamedTuple):
    kind: str  # goal_achieved, goal_unachieved
    goal_id: UUID | None
    domain: str | None
    days: int | None  # goal_achieved: days from the goal being set


@dataclass(frozen=True)
class CaseOutcomes:
    """One case's facts of a period: counted where their order does not matter, in the order
    of its events where it does."""

    case_id: UUID
    not_agreed: int  # plans talked through that the participant did not agree to
    agreed: int  # agreed, none of the agreed goals in the participant's name
    co_created: int
    steps_completed: int
    steps_uncompleted: int  # completions taken back
    life: tuple[LifeEvent, ...]  # from the start
    goals: tuple[GoalEvent, ...]


def _in_order(column: str, kinds: str) -> str:
    return f"array_agg({column} ORDER BY version) FILTER (WHERE kind = ANY({kinds}::text[]))"


# One row a case, summed by the database: the service never holds the period's facts.
_CASE_OUTCOMES = f"""
SELECT case_id,
       count(*) FILTER (WHERE kind = 'plan_agreed' AND agreed IS NOT TRUE),
       count(*) FILTER (WHERE kind = 'plan_agreed' AND agreed AND co_created IS NOT TRUE),
       count(*) FILTER (WHERE kind = 'plan_agreed' AND co_created),
       count(*) FILTER (WHERE kind = 'step_completed'),
       count(*) FILTER (WHERE kind = 'step_uncompleted'),
       {_in_order("kind", "$5")}, {_in_order("occurred_on", "$5")},
       {_in_order("kind", "$6")}, {_in_order("goal_id", "$6")},
       {_in_order("domain", "$6")}, {_in_order("days", "$6")}
FROM records.outcome_facts
WHERE agency = $1 AND kind = ANY($4::text[]) AND occurred_on <= $3
  AND (occurred_on >= $2 OR kind = ANY($5::text[]))
GROUP BY case_id"""


@asynccontextmanager
async def reading(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """One connection and one snapshot for the reads of an answer (its cursors need a
    transaction): the cases and their reviews as they stood at one moment."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                        readonly=True):
        yield conn


async def case_outcomes(conn: asyncpg.Connection, agency: str, since: date,
                        until: date) -> AsyncIterator[CaseOutcomes]:
    """The agency's cases with facts from ``since`` through ``until``, or case-life facts
    (opened, closed, reopened) from the start: case-months need the cases open as the period
    began. ``READ_BATCH`` cases at a time, in no order. Review facts are left to
    ``case_reviews``."""
    async for row in conn.cursor(_CASE_OUTCOMES, agency, since, until,
                                 list(_COUNTED + CASE_LIFE + _GOAL_KINDS), list(CASE_LIFE),
                                 list(_GOAL_KINDS), prefetch=READ_BATCH):
        life_kinds, life_days, goal_kinds, goal_ids, domains, days = row[6:]
        yield CaseOutcomes(
            row[0], row[1], row[2], row[3], row[4], row[5],
            tuple(map(LifeEvent, life_kinds, life_days)) if life_kinds else (),
            tuple(map(GoalEvent, goal_kinds, goal_ids, domains, days)) if goal_kinds else ())


@dataclass(frozen=True)
class CaseReviews:
    """One case's reviews due in a period, as they stand today."""

    case_id: UUID  # who the figures rest on: analytics count participants, never name them
    not_held: int  # due before today and not held
    late: int  # held after the date they were due, or missed and held after a reschedule
    on_time: int  # held on or before it


# The reviews due from $2 through $3 by their date in force, except those whose case closed
# before they fell due: closing cancels a pending review, and a cancelled review was never
# missed. One due today ($4) and not held yet may still be held today: not counted.
#
# The date in force is the latest scheduling's, unless a reschedule was recorded on a day after
# the date then in force: the review had been missed on that date (a held review cannot be
# moved), and the first such reschedule fixes it there, not on time whatever follows. Moving a
# missed review used to make its miss leave the figures (decision 0011).
#
# One sort of the agency's schedulings, walked in order: each review's rows are read once, and
# its latest row carries the date it missed. Marking the misses in a table of their own, joined
# back, left PostgreSQL guessing one review, checked against every closing one at a time: a
# year of a 20,000-case agency took over 13 minutes, past the statement timeout (0.34 s now).
_CASE_REVIEWS = """
WITH scheduled AS (
    SELECT review_id, case_id, version, due_on, occurred_on,
           lag(due_on) OVER (PARTITION BY review_id ORDER BY version) AS was_due
    FROM records.outcome_facts WHERE agency = $1 AND kind = 'review_due'),
walked AS (
    SELECT review_id, case_id, version, due_on,
           (array_agg(was_due) FILTER (WHERE occurred_on > was_due) OVER whole)[1] AS missed_on,
           lead(version) OVER by_version IS NULL AS latest
    FROM scheduled
    WINDOW by_version AS (PARTITION BY review_id ORDER BY version),
           whole AS (by_version ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)),
in_force AS (
    SELECT review_id, case_id, version, coalesce(missed_on, due_on) AS due_on,
           missed_on IS NOT NULL AS missed
    FROM walked WHERE latest),
due AS (
    SELECT l.case_id, l.due_on, h.event_id IS NOT NULL AS held,
           coalesce(h.on_time, false) AND NOT l.missed AS on_time
    FROM in_force l
    LEFT JOIN records.outcome_facts h
        ON h.agency = $1 AND h.review_id = l.review_id AND h.kind = 'review_held'
    WHERE l.due_on BETWEEN $2 AND $3
      AND NOT EXISTS (
        SELECT FROM records.outcome_facts c
        WHERE c.case_id = l.case_id AND c.kind = 'case_closed' AND c.version > l.version
          AND c.occurred_on <= l.due_on AND (h.version IS NULL OR c.version < h.version)))
SELECT case_id, count(*) FILTER (WHERE NOT held AND due_on < $4),
       count(*) FILTER (WHERE held AND NOT on_time), count(*) FILTER (WHERE on_time)
FROM due GROUP BY case_id"""


async def case_reviews(conn: asyncpg.Connection, agency: str, since: date, until: date,
                       today: date) -> AsyncIterator[CaseReviews]:
    """Per case, the agency's reviews due from ``since`` through ``until``, ``READ_BATCH``
    cases at a time."""
    async for row in conn.cursor(_CASE_REVIEWS, agency, since, until, today,
                                 prefetch=READ_BATCH):
        yield CaseReviews(*row)
