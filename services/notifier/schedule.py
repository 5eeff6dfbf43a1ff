"""From feed events to schedule rows: one page, one transaction, checkpoint included.

Each event is applied once per case (its version must be above the case's last applied
version), celebrations are keyed by the event and timed notices are reconciled with what the
case now calls for. A page replayed after a crash (handled, not checkpointed) therefore finds
everything in place and changes nothing.

An event this code cannot read, or whose rules fail, is left out (logged, counted) and the page
goes on: one odd event must not hold back every agency's reminders.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import asyncpg
import structlog

from schemas import events as ev
from services.notifier.casemodel import RELEVANT_TYPES, CaseModel, FeedItem, evolve
from services.notifier.rules import (
    Notice,
    Rewording,
    RuleSettings,
    Withdrawal,
    event_notices,
    reworded_celebrations,
    timed_notices,
    withdrawn_celebrations,
)
from services.notifier.store.cases import advance_checkpoint, load_cases, save_case
from services.notifier.store.notifications import (
    follow_transfer,
    insert_notices,
    reconcile_case,
    rename_participant,
    reword_celebrations,
    withdraw_celebrations,
)

log = structlog.get_logger("casetrail.notifier")
FEED_CHECKPOINT = "records-feed"

# why a feed event is left out (counted by casetrail_notifier_feed_events_skipped_total)
UNDECODABLE = "undecodable"
RULE_ERROR = "rule_error"
SKIP_REASONS = (UNDECODABLE, RULE_ERROR)


@dataclass(frozen=True)
class PageResult:
    applied: int
    celebrations: int
    skipped: dict[str, int]  # events left out, by why: one of SKIP_REASONS


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
    skipped: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class _Outcome:
    """What one event does to its case: the case after it and the notices it calls for."""

    case: CaseModel
    celebrations: list[Notice]
    timed: list[Notice]
    withdrawn: Withdrawal | None
    reworded: list[Rewording]


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
    return PageResult(page.applied, page.celebrations, dict(page.skipped))


async def _apply_event(page: _Page, item: FeedItem) -> None:
    case = page.cases.get(item.case_id)
    if item.type not in RELEVANT_TYPES or (case is not None and item.version <= case.version):
        return
    try:
        payload = item.payload()
    except ev.EventDecodeError as error:
        _skip(page, item, UNDECODABLE, error)
        return
    try:
        outcome = _outcome(case, item, payload, page.rules)
    except Exception as error:
        # The next bug in the rules must cost one event's notices, not every agency's feed.
        _skip(page, item, RULE_ERROR, error)
        return
    if outcome is None:
        return
    page.cases[item.case_id] = outcome.case
    page.changed.add(item.case_id)
    page.applied += 1
    page.celebrations += len(outcome.celebrations)
    await _write(page, case, item, outcome)


async def _write(page: _Page, before: CaseModel | None, item: FeedItem,
                 outcome: _Outcome) -> None:
    """Store what one event did to its case's notices."""
    after, reason = outcome.case, f"{item.type} (case version {item.version})"
    if outcome.withdrawn is not None:
        w = outcome.withdrawn
        await withdraw_celebrations(page.conn, after.case_id, str(w.kind), w.subject,
                                    w.subject_id, f"no longer called for after {reason}",
                                    page.now)
    for r in outcome.reworded:
        await reword_celebrations(page.conn, after.case_id, str(r.kind), r.subject,
                                  r.subject_id, r.words, page.now)
    await insert_notices(page.conn, outcome.celebrations, page.domain, page.now,
                         cause_recorded_at=item.recorded_at)
    if before is not None and before.participant_called != after.participant_called:
        await rename_participant(page.conn, after.case_id, after.participant_called, page.now)
    if before is not None and before.case_manager != after.case_manager:
        await follow_transfer(page.conn, after.case_id, after.case_manager, page.now)
    await reconcile_case(page.conn, after.case_id, outcome.timed,
                         closed=after.status == "closed", reason=reason, domain=page.domain,
                         now=page.now, cause_recorded_at=item.recorded_at)


def _outcome(case: CaseModel | None, item: FeedItem, payload: ev.EventPayload,
             rules: RuleSettings) -> _Outcome | None:
    """The pure part of applying an event (no I/O); None while its case is unknown."""
    after = evolve(case, item, payload)
    if after is None:
        return None
    return _Outcome(after, event_notices(after, item, payload, rules),
                    timed_notices(after, rules), withdrawn_celebrations(payload),
                    reworded_celebrations(case, after) if case is not None else [])


def _skip(page: _Page, item: FeedItem, why: str, error: Exception) -> None:
    """Leave an event out, loudly: its case keeps the state it had before it."""
    log.error("feed event left out", why=why, event_id=str(item.event_id),
              event_type=item.type, case_id=str(item.case_id), version=item.version,
              error=repr(error))
    page.skipped[why] += 1
