"""From feed events to schedule rows: one page, one transaction, checkpoint included.

Each event is applied once per case (its version must be above the case's last applied
version), celebrations are keyed by the event and timed notices are reconciled with what the
case now calls for. A page replayed after a crash (handled, not checkpointed) therefore finds
everything in place and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import asyncpg
import structlog

from schemas.events import EventDecodeError
from services.notifier.casemodel import RELEVANT_TYPES, CaseModel, FeedItem, evolve
from services.notifier.rules import RuleSettings, event_notices, timed_notices
from services.notifier.store.cases import advance_checkpoint, load_cases, save_case
from services.notifier.store.notifications import insert_notices, reconcile_case

log = structlog.get_logger("casetrail.notifier")
FEED_CHECKPOINT = "records-feed"


@dataclass(frozen=True)
class PageResult:
    applied: int
    celebrations: int
    undecodable: int


@dataclass
class _Page:
    conn: asyncpg.Connection
    cases: dict[UUID, CaseModel]
    rules: RuleSettings
    domain: str
    now: datetime
    changed: set[UUID] = field(default_factory=set)
    applied: int = 0
    celebrations: int = 0
    undecodable: int = 0


async def apply_page(pool: asyncpg.Pool, items: Sequence[FeedItem], *, after: str,
                     checkpoint: str, rules: RuleSettings, domain: str,
                     now: datetime) -> PageResult | None:
    """Apply a page and move the checkpoint from ``after`` to ``checkpoint`` atomically.

    None when another notifier instance moved the checkpoint first (nothing was written).
    The schedule is reconciled after every event, not once per page, so where the pages
    happen to break never changes the resulting schedule.
    """
    async with pool.acquire() as conn, conn.transaction():
        if not await advance_checkpoint(conn, FEED_CHECKPOINT, after, checkpoint, now):
            return None
        page = _Page(conn, await load_cases(conn, (i.case_id for i in items)), rules, domain,
                     now)
        for item in items:
            await _apply_event(page, item)
        for case_id in page.changed:
            await save_case(conn, page.cases[case_id], now)
    return PageResult(page.applied, page.celebrations, page.undecodable)


async def _apply_event(page: _Page, item: FeedItem) -> None:
    case = page.cases.get(item.case_id)
    if item.type not in RELEVANT_TYPES or (case is not None and item.version <= case.version):
        return
    try:
        payload = item.payload()
    except EventDecodeError as error:
        # A payload this code cannot read must not stop every other case's reminders.
        log.error("feed event not understood; skipped", event_id=str(item.event_id),
                  case_id=str(item.case_id), error=str(error))
        page.undecodable += 1
        return
    after = evolve(case, item, payload)
    if after is None:
        return
    page.cases[item.case_id] = after
    page.changed.add(item.case_id)
    page.applied += 1
    celebrations = event_notices(after, item, payload)
    page.celebrations += len(celebrations)
    await insert_notices(page.conn, celebrations, page.domain, page.now)
    await reconcile_case(page.conn, after.case_id, timed_notices(after, page.rules),
                         case_manager=after.case_manager, closed=after.status == "closed",
                         reason=f"{item.type} (case version {item.version})",
                         domain=page.domain, now=page.now)
