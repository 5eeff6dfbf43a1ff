"""SQL of the notifier's case read model (tables cases, goals, steps, reviews)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

import asyncpg

from services.notifier.casemodel import CaseModel, Goal, Review, Step


async def load_cases(conn: asyncpg.Connection, case_ids: Iterable[UUID]) -> dict[UUID, CaseModel]:
    """The feed's cases of a page, locked for the transaction (in id order) before it touches
    any of their notices: what brings a dead letter back waits for it (``lock_cases_to_read``)."""
    ids = sorted(set(case_ids))
    rows = await conn.fetch("SELECT * FROM notifier.cases WHERE case_id = ANY($1::uuid[])"
                            " ORDER BY case_id FOR NO KEY UPDATE", ids)
    goals = await conn.fetch("SELECT * FROM notifier.goals WHERE case_id = ANY($1::uuid[])", ids)
    steps = await conn.fetch("SELECT * FROM notifier.steps WHERE case_id = ANY($1::uuid[])", ids)
    reviews = await conn.fetch("SELECT * FROM notifier.reviews WHERE case_id = ANY($1::uuid[])",
                               ids)
    cases = {r["case_id"]: CaseModel(
        r["case_id"], r["agency"], r["case_manager"], r["status"], r["participant_name"],
        r["preferred_name"], r["participant_email"], r["last_version"], {}, {}, {})
        for r in rows}
    for g in goals:
        cases[g["case_id"]].goals[g["goal_id"]] = Goal(
            g["goal_id"], g["title"], g["in_their_words"], g["status"], g["target_date"])
    for s in steps:
        cases[s["case_id"]].steps[s["step_id"]] = Step(
            s["step_id"], s["goal_id"], s["description"], s["due_date"], s["status"],
            s["owner"], s["support_name"])
    for v in reviews:
        cases[v["case_id"]].reviews[v["review_id"]] = Review(
            v["review_id"], v["due_date"], v["scheduled_at"])
    return cases


async def save_case(conn: asyncpg.Connection, case: CaseModel, now: datetime) -> None:
    """Write the whole case (it is small): the row, then its goals, steps and pending reviews."""
    await conn.execute(
        """INSERT INTO notifier.cases (case_id, agency, case_manager, status, participant_name,
                                       preferred_name, participant_email, last_version,
                                       updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (case_id) DO UPDATE SET
             agency = EXCLUDED.agency, case_manager = EXCLUDED.case_manager,
             status = EXCLUDED.status, participant_name = EXCLUDED.participant_name,
             preferred_name = EXCLUDED.preferred_name,
             participant_email = EXCLUDED.participant_email,
             last_version = EXCLUDED.last_version, updated_at = EXCLUDED.updated_at""",
        case.case_id, case.agency, case.case_manager, case.status, case.participant_name,
        case.preferred_name, case.participant_email, case.version, now)
    for table in ("goals", "steps", "reviews"):
        await conn.execute(f"DELETE FROM notifier.{table} WHERE case_id = $1", case.case_id)
    await conn.executemany(
        "INSERT INTO notifier.goals VALUES ($1, $2, $3, $4, $5, $6)",
        [(case.case_id, g.goal_id, g.title, g.in_their_words, g.status, g.target_date)
         for g in case.goals.values()])
    await conn.executemany(
        "INSERT INTO notifier.steps (case_id, step_id, goal_id, description, due_date, status,"
        " owner, support_name) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [(case.case_id, s.step_id, s.goal_id, s.description, s.due_date, s.status, s.owner,
          s.support_name)
         for s in case.steps.values()])
    await conn.executemany(
        "INSERT INTO notifier.reviews VALUES ($1, $2, $3, $4)",
        [(case.case_id, r.review_id, r.due_date, r.scheduled_at) for r in case.reviews.values()])


async def case_facts(conn: asyncpg.Connection | asyncpg.Pool,
                     case_id: UUID) -> asyncpg.Record | None:
    """Agency, case manager and participant address of one case (authorization, delivery)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT case_id, agency, case_manager, status, participant_name, preferred_name,"
        " participant_email FROM notifier.cases WHERE case_id = $1", case_id)
    return row


async def load_checkpoint(conn: asyncpg.Connection | asyncpg.Pool, name: str) -> str:
    position: str | None = await conn.fetchval(
        "SELECT position FROM notifier.checkpoint WHERE name = $1", name)
    return position or ""


async def advance_checkpoint(conn: asyncpg.Connection, name: str, expected: str, new: str,
                             now: datetime) -> bool:
    """Move the checkpoint from ``expected`` to ``new``; False when another instance moved it
    first (the row lock makes the second one wait, then find the position changed)."""
    updated = await conn.fetchval(
        "UPDATE notifier.checkpoint SET position = $3, updated_at = $4"
        " WHERE name = $1 AND position = $2 RETURNING 1", name, expected, new, now)
    return updated is not None


async def reset_checkpoint(conn: asyncpg.Connection | asyncpg.Pool, name: str,
                           now: datetime) -> None:
    await conn.execute("UPDATE notifier.checkpoint SET position = '', updated_at = $2"
                       " WHERE name = $1", name, now)


async def begin_history(conn: asyncpg.Connection | asyncpg.Pool, now: datetime) -> datetime:
    """When this schema's record of what was sent begins: ``now`` the first time, kept after."""
    await conn.execute("INSERT INTO notifier.history (began_at) VALUES ($1)"
                       " ON CONFLICT DO NOTHING", now)
    began: datetime = await conn.fetchval("SELECT began_at FROM notifier.history")
    return began
