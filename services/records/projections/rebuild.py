"""Rebuilding every projection from the events: `casetrail rebuild-projections`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

from schemas.events import EventDecodeError
from services.common.jsonenc import encode_json
from services.records.projections.outcomes import clear_facts, facts_of, insert_facts
from services.records.projections.plans import clear_plans, plan_row, replay, upsert_plans
from services.records.store.events import every_stream


@dataclass(frozen=True)
class RebuildStats:
    events: int
    cases: int


class UnreadableStream(Exception):
    """A case holds an event this code cannot decode; nothing was rebuilt."""


async def rebuild_projections(pool: asyncpg.Pool, batch_size: int = 500) -> RebuildStats:
    """Recompute the plans and the outcome facts from the events, atomically: readers see the
    old projections or the new, never half of either.

    The table locks make concurrent appends wait for the rebuild to commit; their own writes
    then land on top (a plan row carries the newer version; a fact is keyed by its event).
    Reads (plans, caseloads, analytics) go on answering from the old rows meanwhile: both
    locks are EXCLUSIVE, which readers pass.
    """
    events = cases = 0
    async with pool.acquire() as conn, conn.transaction():
        await clear_plans(conn)
        await clear_facts(conn)
        plans: list[dict[str, Any]] = []
        facts: list[dict[str, Any]] = []
        async for stream in every_stream(conn):
            try:
                steps = list(replay(stream))
            except EventDecodeError as error:
                raise UnreadableStream(f"case {stream[0].stream_id}: {error}") from error
            events += len(stream)
            if not steps:
                continue
            plans.append(plan_row(steps[-1][2]))
            facts += [asdict(fact) for fact in facts_of(steps)]
            cases += 1
            if len(plans) >= batch_size or len(facts) >= batch_size:
                await _write(conn, plans, facts)
                plans, facts = [], []
        await _write(conn, plans, facts)
    return RebuildStats(events, cases)


async def _write(conn: asyncpg.Connection, plans: list[dict[str, Any]],
                 facts: list[dict[str, Any]]) -> None:
    if plans:
        await upsert_plans(conn, encode_json(plans))
    if facts:
        await insert_facts(conn, encode_json(facts))
