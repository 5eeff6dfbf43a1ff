"""The current-plan projection (one row per case), which is also the caseload index.

Written in the same transaction as the events it reflects (read-your-writes) and rebuilt from
the events by ``projections.rebuild``. All SQL touching ``records.plans`` lives here, but for
the rebuild's swap, which ``projections/shadow.py`` does alike for every projection table.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any
from uuid import UUID

import asyncpg

from schemas.events import EventPayload, parse_event
from schemas.queries import CaseloadCursor, CaseloadOrder
from services.records.domain import PlanState, evolve, plan_document
from services.records.projections.shadow import Projection
from services.records.store.events import CoWrite, RecordedEvent

_COLUMNS = ("case_id, agency, version, status, case_manager, risk_level, participant_name,"
            " next_review_due, open_step_due_dates, active_goals, opened_at, updated_at, view")


def _insert_into(table: str) -> str:
    """Plan rows into ``table`` (the plans, or a rebuild's shadow of them), given as one JSON
    array (an object per case) in $1."""
    return f"""
INSERT INTO {table} ({_COLUMNS})
SELECT * FROM jsonb_to_recordset($1::jsonb) AS p(case_id uuid, agency text, version int,
    status text, case_manager text, risk_level text, participant_name text,
    next_review_due date, open_step_due_dates date[], active_goals int,
    opened_at timestamptz, updated_at timestamptz, view jsonb)"""


_INSERT_ROWS = _insert_into("records.plans")
_ON_CONFLICT = """
ON CONFLICT (case_id) DO UPDATE SET
    agency = EXCLUDED.agency, version = EXCLUDED.version, status = EXCLUDED.status,
    case_manager = EXCLUDED.case_manager, risk_level = EXCLUDED.risk_level,
    participant_name = EXCLUDED.participant_name, next_review_due = EXCLUDED.next_review_due,
    open_step_due_dates = EXCLUDED.open_step_due_dates, active_goals = EXCLUDED.active_goals,
    opened_at = EXCLUDED.opened_at, updated_at = EXCLUDED.updated_at, view = EXCLUDED.view
WHERE records.plans.version < EXCLUDED.version
"""
# The co-write of a batch of appends: only the cases whose append succeeded.
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
    # None: not read (``load_plan(with_view=False)``), or stored in an older shape
    view: dict[str, Any] | None


async def load_plan(pool: asyncpg.Pool, case_id: UUID, agency: str, *,
                    with_view: bool) -> StoredPlan | None:
    """The case's current plan, if it is ``agency``'s. Another agency's case is not read at
    all: answered as fast as an unknown id, it cannot be told apart by timing (an audit
    measured its plan being read and parsed before the agency was compared). Without
    ``with_view`` only who owns it and its version: the document grows with every goal and
    step the case ever had. A document stored in an older shape is not answered (``view`` is
    None): the reader folds the plan from the events instead."""
    row = await pool.fetchrow(
        f"SELECT agency, case_manager, version, {'view' if with_view else 'NULL AS view'}"
        " FROM records.plans WHERE case_id = $1 AND agency = $2", case_id, agency)
    if row is None:
        return None
    view = json.loads(row["view"]) if with_view else None
    if view is not None and not _in_current_shape(view):
        view = None
    return StoredPlan(row["agency"], row["case_manager"], row["version"], view)


async def store_refolded_view(pool: asyncpg.Pool, case_id: UUID, version: int,
                              view_json: str) -> None:
    """Store the document a read folded afresh because the stored one was in an older shape,
    so the next read need not fold the history again (each read of a 20,000-event case
    did, 1.1-1.4 s, until the case's next write or a rebuild). Only at the version folded: a
    write since stored its own. Skipped when the row cannot be had at once (a rebuild's last
    phase holds the table): the read has its answer, and a later one stores it."""
    with contextlib.suppress(asyncpg.LockNotAvailableError):
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '100ms'")
            await conn.execute("UPDATE records.plans SET view = $3::jsonb"
                               " WHERE case_id = $1 AND version = $2", case_id, version,
                               view_json)


def _in_current_shape(view: dict[str, Any]) -> bool:
    """False for a document stored before goals and steps showed ``status_reason``: filling
    in null would say that no reason was given where one was, so such a plan is folded from
    its events until its next write or ``rebuild-projections`` stores it anew."""
    return all("status_reason" in goal for goal in view["goals"])


@dataclass(frozen=True)
class CaseloadFilter:
    agency: str
    case_manager: str | None
    status: str | None
    review_due_before: date | None
    today: date
    order: CaseloadOrder
    after: CaseloadCursor | None
    limit: int


# The review order's sort key: no review sorts after every date. Written exactly as migration
# 0012's indexes are, so that a page reads one index range in order.
_REVIEW_KEY = "coalesce(next_review_due, 'infinity'::date)"
_ORDER_BY = {"case_id": "case_id", "next_review": f"{_REVIEW_KEY}, case_id"}


def caseload_statement(query: CaseloadFilter) -> tuple[str, list[Any]]:
    """The listing's SQL and arguments. Only the filters asked for are in it, so that even a
    prepared statement's generic plan reads the index for them."""
    args: list[Any] = [query.today, query.agency]
    where = ["agency = $2"]

    def condition(sql: str, *values: Any) -> None:
        where.append(sql.format(*(f"${len(args) + n}" for n in range(1, len(values) + 1))))
        args.extend(values)

    if query.case_manager is not None:
        condition("case_manager = {}", query.case_manager)
    if query.status is not None:
        condition("status = {}", query.status)
    if query.review_due_before is not None:
        condition(f"{_REVIEW_KEY} < {{}}", query.review_due_before)
    if query.after is not None and query.order == "next_review":
        condition(f"({_REVIEW_KEY}, case_id) > (coalesce({{}}::date, 'infinity'::date), {{}})",
                  query.after.review_due, query.after.case_id)
    elif query.after is not None:
        condition("case_id > {}", query.after.case_id)
    args.append(query.limit)
    return ("SELECT case_id, version, status, case_manager, risk_level, participant_name,"
            " next_review_due, active_goals, updated_at,"
            " (SELECT count(*) FROM unnest(open_step_due_dates) d WHERE d < $1) AS overdue_steps"
            f" FROM records.plans WHERE {' AND '.join(where)}"
            f" ORDER BY {_ORDER_BY[query.order]} LIMIT ${len(args)}", args)


async def list_caseload(pool: asyncpg.Pool, query: CaseloadFilter) -> list[dict[str, Any]]:
    """One page of cases in ``query.order``, each with next review due and overdue step
    count."""
    sql, args = caseload_statement(query)
    rows = await pool.fetch(sql, *args)
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


# What a rebuild writes to (projections/shadow.py).
PLANS = Projection("records.plans", "case_id", _insert_into)
