"""A projection table and its shadow: the table a rebuild folds the events into while the live
one goes on serving reads and taking appends, then makes the live one equal to it
(``projections/rebuild.py``, decision 0014).

The shadow is a temporary table of the rebuild's own session, shaped ``LIKE`` the live one:
PostgreSQL drops it with the session however the rebuild ends (done, Ctrl-C, killed), so a
crash leaves nothing behind and two rebuilds never share one; it writes no WAL; and the role
the records service runs as may create it (``TEMPORARY`` on the database, which PostgreSQL
grants everyone), whereas it may not create tables in ``records``, nor rename the live ones,
which only their owner may do. The live table is never replaced, only its rows: its
indexes, constraints, owner and grants stay exactly as the migrations and
``deploy/production-roles.sql`` made them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg


@dataclass(frozen=True)
class Projection:
    table: str  # the live table, schema-qualified
    key: str  # its primary key
    insert_into: Callable[[str], str]  # the INSERT of rows given as a JSON array in $1

    @property
    def shadow(self) -> str:
        return f"{self.table.partition('.')[2]}_rebuild"

    async def create_shadow(self, conn: asyncpg.Connection) -> None:
        await conn.execute(f"CREATE TEMPORARY TABLE {self.shadow} (LIKE {self.table})")

    async def drop_shadow(self, conn: asyncpg.Connection) -> None:
        await conn.execute(f"DROP TABLE pg_temp.{self.shadow}")

    async def write_shadow(self, conn: asyncpg.Connection, rows: bytes) -> None:
        await conn.execute(self.insert_into(f"pg_temp.{self.shadow}"), rows.decode())

    async def forget(self, conn: asyncpg.Connection, case_ids: Sequence[UUID]) -> None:
        """Take the shadow's rows of these cases out, to fold them again."""
        await conn.execute(f"DELETE FROM pg_temp.{self.shadow} WHERE case_id = ANY($1::uuid[])",
                           case_ids)

    async def lock(self, conn: asyncpg.Connection) -> None:
        """EXCLUSIVE, in ``conn``'s transaction: appends wait, reads go on with the rows as they
        were until it commits (ACCESS EXCLUSIVE made every read wait, and 503 past 30 s)."""
        await conn.execute(f"LOCK TABLE {self.table} IN EXCLUSIVE MODE")

    async def swap_in(self, conn: asyncpg.Connection) -> None:
        """Make the live table's rows the shadow's, writing only the rows that differ: most of
        a rebuild usually finds the rows as they were, and each row written costs the time
        appends wait (decision 0014 has the figures)."""
        await conn.execute(
            f"DELETE FROM {self.table} AS live WHERE NOT EXISTS (SELECT FROM pg_temp.{self.shadow}"
            f" AS new WHERE new.{self.key} = live.{self.key}"
            " AND ROW(new.*) IS NOT DISTINCT FROM ROW(live.*))")
        await conn.execute(
            f"INSERT INTO {self.table} SELECT new.* FROM pg_temp.{self.shadow} AS new"
            f" WHERE NOT EXISTS (SELECT FROM {self.table} AS live"
            f" WHERE live.{self.key} = new.{self.key})")
