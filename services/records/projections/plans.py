"""The current-plan projection (one row per case), which is also the caseload index.

Written in the same transaction as the events it reflects (read-your-writes) and rebuilt from
the events by ``projections.rebuild``. All SQL touching ``records.plans`` lives here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any
from uuid import UUID

import asyncpg

from schemas.events import EventPayload, parse_event
from services.records.domain import PlanState, evolve, plan_document
from services.records.store.events import CoWrite, RecordedEvent

_COLUMNS = ("case_id, agency, version, status, case_manager, risk_level, participant_name,"
            " next_review_due, open_step_due_dates, active_goals, opened_at, updated_at, view")

# Plan rows arrive as one JSON array (an object per case) in $1.
_INSERT_ROWS = f"""
INSERT INTO records.plans ({_COLUMNS})
SELECT * FROM jsonb_to_recordset($1::jsonb) AS p(case_id uuid, agency text, version int,
    status text, case_manager text, risk_level text, participant_name text,
    next_review_due date, open_step_due_dates date[], active_goals int,
    opened_at timestamptz, updated_at timestamptz, view jsonb)"""
_ON_CONFLICT = """
ON CONFLICT (case_id) DO UPDATE SET
    agency = EXCLUDED.agency, version = EXCLUDED.version, status = EXCLUDED.status,
    case_manager = EXCLUDED.case_manager, risk_level = EXCLUDED.risk_level,
    participant_name = EXCLUDED.participant_name, next_review_due = EXCLUDED.next_review_due,
    open_step_due_dates = EXCLUDED.open_step_due_dates, active_goals = EXCLUDED.active_goals,
    opened_at = EXCLUDED.opened_at, updated_at = EXCLUDED.updated_at, view = EXCLUDED.view
WHERE records.plans.version < EXCLUDED.version
"""
_UPSERT = _INSERT_ROWS + _ON_CONFLICT
# The same upsert as the co-write of a batch of appends: only the cases whose append succeeded.
_UPSERT_WHEN_APPENDED = _INSERT_ROWS + "\nWHERE p.case_id IN {appended}" + _ON_CONFLICT

_OPEN_STEP = {"not_started", "in_progress"}


def plan_row(state: PlanState) -> dict[str, Any]:
    """The plan's row by column name, its view the plan document."""
    pending = state.pending_review
    return {
        "case_id": state.case_id, "agency": state.agency, "version": state.version,
        "status": state.status, "case_manager": state.case_manager,
        "risk_level": state.risk_level, "participant_name": state.participant.name,
        "next_review_due": pending.due_date if pending is not None else None,
        "open_step_due_dates": _open_step_due_dates(state),
        "active_goals": state.active_goal_count, "opened_at": state.opened_at,
        "updated_at": state.updated_at, "view": plan_document(state),
    }


def _open_step_due_dates(state: PlanState) -> list[date]:
    """Due dates of the work still to do: open steps of active goals of an open case (a
    goal paused, set aside or reached, or a closed case, has no step to chase; the notifier
    nudges on the same steps)."""
    if state.status == "closed":
        return []
    active = {goal_id for goal_id, goal in state.goals.items() if goal.status == "active"}
    return sorted(step.due_date for step in state.steps.values()
                  if step.status in _OPEN_STEP and step.due_date is not None
                  and step.goal_id in active)


def plan_upsert(state: PlanState) -> CoWrite:
    """The projection row that commits with the events that produced ``state``."""
    return CoWrite(_UPSERT_WHEN_APPENDED, plan_row(state))


@dataclass(frozen=True)
class StoredPlan:
    agency: str
    case_manager: str
    version: int
    view: dict[str, Any]


async def load_plan(pool: asyncpg.Pool, case_id: UUID) -> StoredPlan | None:
    row = await pool.fetchrow(
        "SELECT agency, case_manager, version, view FROM records.plans WHERE case_id = $1",
        case_id)
    if row is None:
        return None
    return StoredPlan(row["agency"], row["case_manager"], row["version"], json.loads(row["view"]))


@dataclass(frozen=True)
class CaseloadFilter:
    agency: str
    case_manager: str | None
    status: str | None
    review_due_before: date | None
    today: date
    after_case_id: UUID | None
    limit: int


async def list_caseload(pool: asyncpg.Pool, query: CaseloadFilter) -> list[dict[str, Any]]:
    """One page of cases (by case id), each with next review due and overdue step count."""
    rows = await pool.fetch(
        "SELECT case_id, version, status, case_manager, risk_level, participant_name,"
        " next_review_due, active_goals, updated_at,"
        " (SELECT count(*) FROM unnest(open_step_due_dates) d WHERE d < $5) AS overdue_steps"
        " FROM records.plans WHERE agency = $1"
        " AND ($2::text IS NULL OR case_manager = $2)"
        " AND ($3::text IS NULL OR status = $3)"
        " AND ($4::date IS NULL OR next_review_due < $4)"
        " AND ($6::uuid IS NULL OR case_id > $6)"
        " ORDER BY case_id LIMIT $7",
        query.agency, query.case_manager, query.status, query.review_due_before, query.today,
        query.after_case_id, query.limit)
    return [{
        "case_id": str(r["case_id"]), "version": r["version"], "status": r["status"],
        "case_manager": r["case_manager"], "risk_level": r["risk_level"],
        "participant_name": r["participant_name"],
        "next_review_due": r["next_review_due"].isoformat() if r["next_review_due"] else None,
        "review_overdue": r["next_review_due"] is not None and r["next_review_due"] < query.today,
        "overdue_steps": r["overdue_steps"], "active_goals": r["active_goals"],
        "updated_at": r["updated_at"].isoformat(),
    } for r in rows]


Step = tuple[EventPayload, RecordedEvent, PlanState]  # an event and the state it leaves


def evolve_each(state: PlanState | None,
                recorded: Iterable[tuple[EventPayload, RecordedEvent]]) -> Iterator[Step]:
    """Each payload, with the event that records it and the state it leaves, in order."""
    for payload, event in recorded:
        state = evolve(state, payload, version=event.version, recorded_at=event.recorded_at,
                       case_id=event.stream_id)
        yield payload, event, state


def replay(events: list[RecordedEvent], state: PlanState | None = None) -> Iterator[Step]:
    """``evolve_each`` over stored events, each upcast and parsed."""
    return evolve_each(state, ((parse_event(e.type, e.schema_version, e.data), e)
                               for e in events))


def fold_recorded(events: list[RecordedEvent], state: PlanState | None = None) -> PlanState | None:
    folded = state
    for _, _, folded in replay(events, state):  # noqa: B007  (only the last state is wanted)
        pass
    return folded


async def clear_plans(conn: asyncpg.Connection) -> None:
    """Empty the plans for a rebuild in ``conn``'s transaction. EXCLUSIVE, not ACCESS
    EXCLUSIVE: appends wait for the rebuild, but reads go on seeing the old rows until it
    commits (with ACCESS EXCLUSIVE every plan read and caseload listing waited for the whole
    rebuild, and answered 503 once it took longer than the command timeout)."""
    await conn.execute("LOCK TABLE records.plans IN EXCLUSIVE MODE")
    await conn.execute("DELETE FROM records.plans")


async def upsert_plans(conn: asyncpg.Connection, rows: bytes) -> None:
    """Write plan rows given as a JSON array (the rebuild)."""
    await conn.execute(_UPSERT, rows.decode())
