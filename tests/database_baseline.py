"""What a test database held when it was handed out, and how to bring a used one back to it.

A database a test has used is put back to the template's state rather than dropped and cloned
again: a clone writes the whole template (about 8 MB) through the WAL and the disk, and every
DROP DATABASE forces a checkpoint, which a suite of ~3,000 test databases paid in kernel time
and disk flushes. Bringing one back empties the tables a test filled, restores the rows the
migrations wrote, and rewinds the sequences. It is used again only when its schema, owners,
grants, settings, functions and triggers are still the template's; anything else (a test that
migrated, altered or dropped something) and it is dropped instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

# One line per object a test could have changed, compared as a digest. Storage details that a
# TRUNCATE or VACUUM changes (file nodes, statistics, frozen xids) are left out on purpose.
SCHEMA_DIGEST = r"""
WITH spaces AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT IN ('information_schema') AND nspname NOT LIKE 'pg\_%'
), relations AS (
    SELECT c.* FROM pg_class c WHERE c.relnamespace IN (SELECT oid FROM spaces)
), lines(line) AS (
    SELECT format('schema %s %s %s', nspname, nspowner::regrole, nspacl)
    FROM pg_namespace WHERE oid IN (SELECT oid FROM spaces)
    UNION ALL
    SELECT format('relation %s %s %s %s %s %s %s', oid::regclass, relkind, relowner::regrole,
                  relacl, reloptions, relpersistence, relrowsecurity)
    FROM relations
    UNION ALL
    SELECT format('column %s.%s %s %s %s %s %s %s', a.attrelid::regclass, a.attname,
                  format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
                  a.attgenerated, pg_get_expr(d.adbin, d.adrelid), a.attacl)
    FROM pg_attribute a
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid IN (SELECT oid FROM relations) AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT format('constraint %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
    FROM pg_constraint WHERE connamespace IN (SELECT oid FROM spaces)
    UNION ALL
    SELECT format('index %s', pg_get_indexdef(indexrelid))
    FROM pg_index WHERE indrelid IN (SELECT oid FROM relations)
    UNION ALL
    SELECT format('trigger %s %s', pg_get_triggerdef(oid), tgenabled)
    FROM pg_trigger WHERE NOT tgisinternal AND tgrelid IN (SELECT oid FROM relations)
    UNION ALL
    SELECT format('view %s %s', oid::regclass, pg_get_viewdef(oid))
    FROM relations WHERE relkind IN ('v', 'm')
    UNION ALL
    SELECT format('sequence %s %s %s %s %s %s %s', seqrelid::regclass, seqtypid::regtype,
                  seqstart, seqincrement, seqmax, seqmin, seqcycle)
    FROM pg_sequence WHERE seqrelid IN (SELECT oid FROM relations)
    UNION ALL
    SELECT format('function %s %s %s %s %s %s', oid::regprocedure, proowner::regrole, proacl,
                  prosecdef, proconfig, md5(prosrc))
    FROM pg_proc WHERE pronamespace IN (SELECT oid FROM spaces)
    UNION ALL
    SELECT format('type %s %s', oid::regtype, typtype) FROM pg_type
    WHERE typnamespace IN (SELECT oid FROM spaces) AND typrelid = 0
    UNION ALL
    SELECT format('label %s %s', enumtypid::regtype, enumlabel) FROM pg_enum
    UNION ALL
    SELECT format('policy %s %s %s', polrelid::regclass, polname, pg_get_expr(polqual, polrelid))
    FROM pg_policy
    UNION ALL
    SELECT format('default privileges %s %s %s', defaclrole::regrole, defaclobjtype, defaclacl)
    FROM pg_default_acl
    UNION ALL
    SELECT format('extension %s %s', extname, extversion) FROM pg_extension
    UNION ALL
    SELECT format('event trigger %s %s', evtname, evtenabled) FROM pg_event_trigger
    UNION ALL
    SELECT format('database %s %s', datdba::regrole, datacl) FROM pg_database
    WHERE datname = current_database()
    UNION ALL
    SELECT format('setting %s %s', setrole, setconfig) FROM pg_db_role_setting
    WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
    UNION ALL
    SELECT format('large objects %s', count(*)) FROM pg_largeobject_metadata
)
SELECT md5(string_agg(line, E'\n' ORDER BY line)) FROM lines
"""

TABLES = r"""
SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
ORDER BY 1
"""

SEQUENCES = r"""
SELECT format('%I.%I', schemaname, sequencename), start_value, last_value FROM pg_sequences
WHERE schemaname <> 'information_schema' AND schemaname NOT LIKE 'pg\_%'
ORDER BY 1
"""


@dataclass(frozen=True)
class Baseline:
    """A fresh clone of the template, as read from one."""

    schema: str
    tables: tuple[str, ...]
    rows: dict[str, str]  # the rows, as JSON, of the tables the migrations wrote into
    sequences: dict[str, tuple[int, int | None]]  # start value, last value (None: never used)

    @classmethod
    async def read(cls, conn: asyncpg.Connection) -> Baseline:
        tables = tuple(row[0] for row in await conn.fetch(TABLES))
        occupied = await _occupied(conn, tables)
        sequences = await conn.fetch(SEQUENCES)
        return cls(schema=await conn.fetchval(SCHEMA_DIGEST), tables=tables,
                   rows={table: await _rows(conn, table) for table in sorted(occupied)},
                   sequences={name: (start, last) for name, start, last in sequences})

    async def restore(self, conn: asyncpg.Connection) -> None:
        """Bring ``conn``'s database back to this baseline, or raise DifferentDatabase (or
        PostgresError, when a test dropped what the baseline holds): the rows are reset
        first, then everything, the schema included, is read again and compared."""
        async with conn.transaction():
            # the events table refuses TRUNCATE by a trigger; the replica role skips triggers
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute("SET LOCAL lock_timeout = '5s'")
            occupied = await _occupied(conn, self.tables)
            seeded_changed = {table for table in occupied & self.rows.keys()
                              if await _rows(conn, table) != self.rows[table]}
            emptied = (occupied - self.rows.keys()) | seeded_changed
            if emptied:
                await conn.execute(f"TRUNCATE {', '.join(sorted(emptied))} CASCADE")
            for table in self.rows.keys() - await _occupied(conn, self.tables):
                await conn.execute(
                    f"INSERT INTO {table} OVERRIDING SYSTEM VALUE"
                    f" SELECT * FROM json_populate_recordset(null::{table}, $1::json)",
                    self.rows[table])
            for name, (start, last) in self.sequences.items():
                await conn.execute("SELECT setval($1::regclass, $2, $3)", name,
                                   start if last is None else last, last is not None)
            if await Baseline.read(conn) != self:
                raise DifferentDatabase("its schema changed, or its rows could not be reset")


class DifferentDatabase(Exception):
    """The database cannot be brought back to the template's state; it is dropped instead."""


async def _occupied(conn: asyncpg.Connection, tables: tuple[str, ...]) -> set[str]:
    """The tables with a row in them, in one round trip."""
    query = " UNION ALL ".join(
        f"SELECT '{table}' WHERE EXISTS (SELECT FROM {table})" for table in tables)
    return {row[0] for row in await conn.fetch(query)}


async def _rows(conn: asyncpg.Connection, table: str) -> str:
    return await conn.fetchval(  # type: ignore[no-any-return]
        f"SELECT json_agg(t ORDER BY t::text)::text FROM {table} t")
