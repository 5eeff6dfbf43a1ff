"""Places in commit order, for readers that must never skip a row: the feed, the access log.

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
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.common.database import MigrationError

_CHECKPOINT = re.compile(r"^([0-9]{1,20}):([0-9]{1,20})$")
_BIGINT_MAX = 2**63 - 1


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


class TransactionIdsAhead(MigrationError):
    """The database's rows carry transaction ids this PostgreSQL cluster has not reached."""


async def check_transaction_ids(conn: asyncpg.Connection) -> None:
    """Refuse a database restored into another cluster (pg_dump and pg_restore, logical
    replication): its rows keep the old cluster's transaction ids, and where this cluster's
    counter is behind, every reader in commit order would hold them back until the counter
    passed them, and order the rows written meanwhile before them (a notifier's checkpoint
    from before the move would skip those). An upgrade audit found the feed silently serving
    only what was written after such a move."""
    row = await conn.fetchrow(
        "SELECT (SELECT transaction_id FROM records.events ORDER BY transaction_id DESC"
        " LIMIT 1)::text AS newest, pg_snapshot_xmax(pg_current_snapshot())::text AS next")
    if row["newest"] is None or int(row["newest"]) < int(row["next"]):
        return
    newest = int(row["newest"])
    raise TransactionIdsAhead(
        f"this database's events carry transaction ids up to {newest}, ahead of this"
        f" PostgreSQL cluster ({row['next']}): it was copied from another cluster by a dump or"
        " logical replication. The feed orders events by those ids, so it would hold them"
        f" back. Stop this cluster and advance its counter past them ({_resetwal(newest + 1)}),"
        " or move databases with pg_upgrade or a physical replica, which keep the counter"
        " (deploy/README.md, Upgrading)")


def _resetwal(following: int) -> str:
    """The pg_resetwal that sets the counter to ``following`` (a full 64-bit id): the epoch
    and a 32-bit id, which is never one of the special ids 0-2."""
    epoch, xid = following >> 32, following & 0xFFFFFFFF
    return f"pg_resetwal --epoch={epoch} --next-transaction-id={max(xid, 3)}"
