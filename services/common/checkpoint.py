"""Places in commit order, for readers that must never skip a row: the records feed, the
access logs of both services.

Rows commit out of the order their ids were taken, so a reader paging by id alone passes
over one that commits late. Rows are read in (writing transaction id, position) order, and
only those whose transaction id is below ``pg_snapshot_xmin(pg_current_snapshot())``: every
transaction that could still commit has a larger id, so nothing can later appear behind a
checkpoint already handed out.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import asyncpg

from services.common.problems import Problem

_CHECKPOINT = re.compile(r"^([0-9]{1,20}):([0-9]{1,20})$")
_BIGINT_MAX = 2**63 - 1
T = TypeVar("T")
# Reads an access log's entries after a checkpoint over the connection given.
ReadEntries = Callable[[asyncpg.Connection], Awaitable[list[tuple["Checkpoint", T]]]]


class BadCheckpoint(ValueError):
    pass


@dataclass(frozen=True, order=True)
class Checkpoint:
    """A place in commit order: the writing transaction's id, then the row's own position
    (an event's global_position, an access-log entry's id). Handed out as an opaque token."""

    transaction_id: int
    position: int

    def parameters(self) -> tuple[str, int]:
        """The two query parameters ``after_checkpoint`` takes."""
        return str(self.transaction_id), self.position

    @classmethod
    def of_row(cls, row: Any, position_column: str) -> Checkpoint:
        """The place of a row read with its transaction id as ``tx``."""
        return cls(int(row["tx"]), row[position_column])

    def encode(self) -> str:
        raw = f"{self.transaction_id}:{self.position}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Checkpoint:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError) as error:
            raise BadCheckpoint("checkpoint is not one this service handed out") from error
        match = _CHECKPOINT.match(raw)
        if match is None or len(token) > 64:
            raise BadCheckpoint("checkpoint is not one this service handed out")
        transaction_id, position = int(match.group(1)), int(match.group(2))
        if max(transaction_id, position) > _BIGINT_MAX:
            raise BadCheckpoint("checkpoint is not one this service handed out")
        return cls(transaction_id, position)


START = Checkpoint(0, 0)


HORIZON = "pg_snapshot_xmin(pg_current_snapshot())"  # the oldest transaction still open


def after_checkpoint(position_column: str, first_parameter: int) -> str:
    """The WHERE condition for rows after a checkpoint given as two parameters (its
    transaction id as text, then its position)."""
    tx, position = f"${first_parameter}", f"${first_parameter + 1}"
    return f"(transaction_id, {position_column}) > ({tx}::text::xid8, {position}::bigint)"


def committed_after(position_column: str, first_parameter: int) -> str:
    """Rows after a checkpoint, up to the oldest open transaction: those a reader may have."""
    return (f"{after_checkpoint(position_column, first_parameter)}"
            f" AND transaction_id < {HORIZON}")


@dataclass(frozen=True)
class HeldBack:
    """Committed entries after a checkpoint that an older, still open transaction keeps back,
    and when the oldest of them was written (None: there are none)."""

    entries: int
    since: datetime | None


async def _held_back(conn: asyncpg.Connection, table: str, *, agency: str,
                     case_id: UUID | None, after: Checkpoint) -> HeldBack:
    """What an access log (``records.access_log``, ``notifier.access_log``: the same columns)
    does not hand out yet after ``after``, as the feed's ``held_back`` (docs/decisions/0003)."""
    row = await conn.fetchrow(
        f"SELECT count(*) AS entries, min(at) AS since FROM {table}"
        " WHERE agency = $1 AND ($2::uuid IS NULL OR case_id = $2)"
        f" AND {after_checkpoint('id', 3)} AND transaction_id >= {HORIZON}",
        agency, case_id, *after.parameters())
    assert row is not None  # an aggregate always answers one row
    return HeldBack(row["entries"], row["since"])


def commit_order_page(rows: list[tuple[Checkpoint, T]], after: Checkpoint,
                      limit: int) -> dict[str, Any]:
    """A page of ``limit`` entries from ``rows`` (up to ``limit + 1`` read after ``after``,
    each with its place): where to go on from, while there is more, and where a later read
    resumes."""
    page, more = rows[:limit], len(rows) > limit
    reached = page[-1][0] if page else after
    return {"entries": [entry for _, entry in page],
            "next_after": reached.encode() if more else None,
            "checkpoint": reached.encode()}


def checkpoint_after(token: str | None) -> Checkpoint:
    """The ``after`` of a page read in commit order, as a query gave it (none: the start)."""
    try:
        return Checkpoint.decode(token) if token else START
    except BadCheckpoint as error:
        raise _refused(str(error)) from error


async def refuse_ahead(conn: asyncpg.Connection, after: Checkpoint) -> None:
    """A checkpoint past every transaction the database has begun was never handed out (one
    forged, or kept from another cluster): read after it, every row up to it was skipped,
    and the page said it had caught up (an audit of the feed)."""
    if await conn.fetchval("SELECT $1::text::xid8 >= pg_snapshot_xmax(pg_current_snapshot())",
                           str(after.transaction_id)):
        raise _refused("checkpoint is not one this service handed out: it lies past every"
                       " transaction of this database")


def _refused(why: str) -> Problem:
    return Problem(400, "Bad request", why, kind="bad-checkpoint",
                   errors=[{"field": "query.after", "message": why}])


async def access_log_page(pool: asyncpg.Pool, table: str, read: ReadEntries[T], *,
                          agency: str, case_id: UUID | None, after: Checkpoint,
                          limit: int) -> dict[str, Any]:
    """``commit_order_page`` of an access log (``read``: up to ``limit + 1`` entries after
    ``after``); a page that caught up also says what an open transaction still holds back
    after it, so that it is not taken for the whole log. Both come from one snapshot: read
    apart, an entry the transaction released in between was in neither, and the page said it
    was the whole log without it (a review found it)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                        readonly=True):
        await refuse_ahead(conn, after)
        rows = await read(conn)
        page = commit_order_page(rows, after, limit)
        held = HeldBack(0, None) if page["next_after"] is not None else await _held_back(
            conn, table, agency=agency, case_id=case_id, after=rows[-1][0] if rows else after)
    return {**page, "held_back": held.entries, "held_back_since": held.since}
