"""The global feed: every event once, in one order that never changes, with a checkpoint.

Events are read in commit order, (writing transaction id, global_position), up to the oldest
open transaction (``services/common/checkpoint.py``), so nothing can later appear behind a
checkpoint already handed out. The cost: a long-running writer holds the feed back until it
ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog

from services.common.checkpoint import (
    HORIZON,
    START,
    BadCheckpoint,
    Checkpoint,
    after_checkpoint,
    committed_after,
    refuse_ahead,
)
from services.common.database import DATABASE_UNAVAILABLE, keep_alive
from services.common.retry import doubling
from services.records.store.events import _EVENT_COLUMNS, RecordedEvent, _recorded

# The tables read in commit order (this feed, the access log), each with the column its newest
# row is found by through an index: migrate refuses a database whose rows run ahead of the
# cluster (services/common/database.py, check_transaction_ids).
COMMIT_ORDERED = {"records.events": "transaction_id", "records.access_log": "id"}
NOTIFY_CHANNEL = "records_events"
log = structlog.get_logger("casetrail.records.feed")


@dataclass(frozen=True)
class FeedEvent:
    event: RecordedEvent
    checkpoint: Checkpoint


@dataclass(frozen=True)
class FeedPage:
    """A page of the feed. A page shorter than asked for has caught up with the snapshot
    horizon; ``held_back`` then counts the committed events behind it that an older, still
    open transaction keeps back (the feed's liveness cost, made visible), and
    ``held_back_since`` is when the oldest of them was recorded."""

    events: list[FeedEvent]
    checkpoint: Checkpoint
    held_back: int = 0
    held_back_since: datetime | None = None


async def read_feed(pool: asyncpg.Pool, after: Checkpoint, limit: int) -> FeedPage:
    return await read_feed_waiting(pool, None, after, limit, 0)


async def _read_events(conn: asyncpg.Connection, after: Checkpoint, limit: int) -> FeedPage:
    rows = await conn.fetch(
        f"SELECT transaction_id::text AS tx, {_EVENT_COLUMNS} FROM records.events"
        f" WHERE {committed_after('global_position', 1)}"
        " ORDER BY transaction_id, global_position LIMIT $3",
        *after.parameters(), limit,
    )
    events = [FeedEvent(_recorded(r), Checkpoint.of_row(r, "global_position")) for r in rows]
    return FeedPage(events, events[-1].checkpoint if events else after)


async def _with_held_back(conn: asyncpg.Connection, page: FeedPage, limit: int) -> FeedPage:
    """The page, with what an open transaction holds back behind it once it has caught up."""
    if len(page.events) == limit:
        return page
    held = await conn.fetchrow(
        "SELECT count(*) AS events, min(recorded_at) AS since FROM records.events"
        f" WHERE {after_checkpoint('global_position', 1)} AND transaction_id >= {HORIZON}",
        *page.checkpoint.parameters())
    assert held is not None  # an aggregate always answers one row
    return FeedPage(page.events, page.checkpoint, held["events"], held["since"])


class FeedWaiter:
    """Wakes long-polling readers when events are appended.

    Appends made by this process wake local readers at once (``announce``). Other instances
    hear of them through a ``pg_notify`` sent after the append has committed: a NOTIFY inside
    the append transaction would take PostgreSQL's global notify lock at commit and serialise
    every append on the server. Those are paced, at most one per ``notify_interval_seconds``
    (the appends in between ride on the next one): each is a transaction of its own that
    wakes every listening instance, and sent once per append statement they cost as much CPU
    as a fifth of the appends themselves with two instances under load.

    Waking is only a hint. A woken reader whose events are still above the snapshot horizon
    re-checks every ``recheck_seconds``; a reader never woken re-checks every
    ``liveness_seconds`` (an append whose notification was lost, say by a crash right after
    commit, is seen that late, never skipped).
    """

    recheck_seconds = 0.2
    liveness_seconds = 1.0
    notify_interval_seconds = 0.02

    def __init__(self, dsn: str) -> None:
        self.released = False
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._changed = asyncio.Event()
        self._notifying: asyncio.Task[None] | None = None
        self._notify_again = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        await self._listen()

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=10)
        try:
            keep_alive(conn)
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        except BaseException:  # failed or cancelled (a stop) before it was ours to close
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_lost)
        self._conn = conn

    def _on_lost(self, conn: object) -> None:
        """The LISTEN connection is gone (a database restart, a network failure): listen
        again on a new one, else other instances' appends wake nobody here any more."""
        if conn is not self._conn or self._stopped:
            return
        self._conn = None
        self._reconnecting = asyncio.get_running_loop().create_task(self._listen_again())

    async def _listen_again(self) -> None:
        for delay in doubling(0.1, 5.0):
            if self._stopped:
                return
            try:
                await self._listen()
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as error:
                log.warning("feed listener lost; reconnecting", error=repr(error),
                            retry_in=delay)
                await asyncio.sleep(delay)
                continue
            log.info("feed listener reconnected")
            self._wake()  # appends made while nobody listened
            return

    async def stop(self) -> None:
        self._stopped = True
        for task in (self._notifying, self._reconnecting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    def announce(self) -> None:
        """Events were appended by this process and have committed."""
        self._wake()
        if self._notifying is not None and not self._notifying.done():
            self._notify_again = True
            return
        self._notifying = asyncio.get_running_loop().create_task(self._notify_others())

    async def _notify_others(self) -> None:
        self._notify_again = True
        while self._notify_again and self._conn is not None:
            self._notify_again = False
            try:
                await self._conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError):
                return  # other instances fall back to their liveness re-check
            await asyncio.sleep(self.notify_interval_seconds)

    def _on_notify(self, connection: object, pid: int, *_: object) -> None:
        if self._conn is not None and pid == self._conn.get_server_pid():
            return  # our own announcement: local readers were woken already
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def release_all(self) -> None:
        """The service is shutting down: long-polls answer what they have now."""
        self.released = True
        self._wake()

    async def wait(self, seconds: float) -> bool:
        """True when woken by an append, False on timeout."""
        try:
            await asyncio.wait_for(self._changed.wait(), seconds)
        except TimeoutError:
            return False
        return True


async def read_feed_waiting(pool: asyncpg.Pool, waiter: FeedWaiter | None, after: Checkpoint,
                            limit: int, wait_seconds: float) -> FeedPage:
    """Read the feed; when empty, wait up to ``wait_seconds`` for something to arrive (no
    ``waiter``: not at all)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    woken, first = False, True
    while True:
        remaining = deadline - loop.time()
        last = waiter is None or remaining <= 0 or waiter.released
        page = await _read_page(pool, after, limit, always_answer=last, checking_after=first)
        if page is not None:
            return page
        first = False
        assert waiter is not None
        # Nothing visible yet (woken, say, while an older transaction holds the horizon back)
        interval = waiter.recheck_seconds if woken else waiter.liveness_seconds
        woken = await waiter.wait(min(remaining, interval)) or woken


async def _read_page(pool: asyncpg.Pool, after: Checkpoint, limit: int, *,
                     always_answer: bool, checking_after: bool) -> FeedPage | None:
    """The page after ``after``, and what is held back behind it, from one snapshot (read
    apart, events committed in between were in neither, and a page behind them said it had
    caught up); None when it is empty and need not be answered. What is held back is counted
    only for a page handed out, and ``after`` checked only on the first read, not at every
    re-check."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                        readonly=True):
        if checking_after:
            await refuse_ahead(conn, after)
        page = await _read_events(conn, after, limit)
        if not page.events and not always_answer:
            return None
        return await _with_held_back(conn, page, limit)


def feed_event_json(item: FeedEvent) -> dict[str, object]:
    event = item.event
    return {
        "checkpoint": item.checkpoint.encode(),
        "global_position": event.global_position,
        "stream_id": str(event.stream_id),
        "case_id": str(event.stream_id),
        "version": event.version,
        "event_id": str(event.event_id),
        "type": event.type,
        "schema_version": event.schema_version,
        "data": event.data,
        "metadata": event.metadata,
        "agency": event.agency,
        "recorded_at": event.recorded_at.isoformat(),
        "hash": event.hash,
    }


__all__ = ["START", "BadCheckpoint", "Checkpoint", "FeedEvent", "FeedPage", "FeedWaiter",
           "feed_event_json", "read_feed", "read_feed_waiting"]
