"""A records database must belong to the PostgreSQL cluster it runs on: its feed and access
log are read in commit order by transaction id (``services/common/checkpoint.py``)."""

from __future__ import annotations

import asyncpg

from services.common.database import MigrationError


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
