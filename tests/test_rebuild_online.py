"""`casetrail rebuild-projections` while writes go on: the rebuild folds into shadows of its
own session and holds the live projections only for its last, brief transaction (decision
0014). Writes used to wait for the whole rebuild, and answered 503 past the command timeout."""

# ruff: noqa: F811
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from bench.rebuild import one_case
from services.common.database import migration_lock_key
from services.records.projections.outcomes import facts_insert, facts_of
from services.records.projections.plans import plan_upsert, replay
from services.records.projections.rebuild import LockWaitTimedOut, rebuild_projections
from services.records.store.events import CoWrite, EventStore, NewEvent, RecordedEvent
from tests.conftest import ClientFactory, FakeClock, TokenFactory, wait_until
from tests.records_api import CaseApi, event_count
from tests.test_audit_rebuild_live import (
    HERE,
    PROMPT_SECONDS,
    facts_held,
    rebuild_again_and_compare,
    wait_until_blocked_on_facts,
)
from tests.test_cli import CASETRAIL
from tests.test_production_roles import Roles, assert_exact_privileges, roles  # noqa: F401
from tests.test_rebuild import rebuild_and_compare, snapshot

EVENTS_PER_CASE = 50
# 30 writes take well under a second; writes held up by the rebuild never finish (it waits
# for them to end the transaction that holds the facts)
WRITES_SECONDS = 60.0
SHADOWS = ("plans_rebuild", "outcome_facts_rebuild")


def projected(recorded: list[RecordedEvent]) -> list[CoWrite]:
    """The projection rows an append of a whole case writes with its events (as the
    application's co-write does)."""
    steps = list(replay(recorded))
    return [plan_upsert(steps[-1][2]), *facts_insert(facts_of(steps))]


async def seed(pool: asyncpg.Pool, clock: FakeClock, cases: int) -> list[str]:
    """``cases`` cases of 50 events each, decided by the domain, with their live projections."""
    store = EventStore(pool, clock)
    ids = []
    for _ in range(cases):
        case = one_case(EVENTS_PER_CASE, agency="agency-a")
        new = [NewEvent(uuid4(), e.event_type, e.schema_version, e.model_dump(mode="json"))
               for e, _, _ in case.stream]
        await store.append(case.case_id, new, expected_version=0, agency="agency-a",
                           metadata={"actor": {"sub": "cm-1", "role": "case_manager"}},
                           co_write=projected)
        ids.append(str(case.case_id))
    return ids


async def write_to(cm: CaseApi, cases: list[str]) -> None:
    """A note, a goal set aside for later and an agreement, round the cases: each must land."""
    for n, case_id in enumerate(cases):
        match n % 3:
            case 0:
                await cm.call("POST", f"/v1/cases/{case_id}/notes",
                              {"text": "Jo met the bike shop owner"}, expect=201)
            case 1:
                await cm.goal(case_id, title="Take the forklift course", status="future")
            case _:
                await cm.agree(case_id)


def rows_of(cases: set[str], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if str(row["case_id"]) in cases]


async def test_writes_land_while_a_rebuild_waits_for_a_transaction_holding_the_facts(
        cm: CaseApi, fresh_pool: asyncpg.Pool) -> None:
    """The rebuild's lock request queued every append behind it for as long as it waited
    (here, for a transaction holding the outcome facts): writes waited, and answered 503 past
    the command timeout. It now steps aside, and folds in what was written meanwhile."""
    case_id = await cm.open_case()
    async with facts_held(fresh_pool):
        rebuilding = asyncio.create_task(rebuild_projections(fresh_pool))
        await wait_until_blocked_on_facts(fresh_pool)
        note = await asyncio.wait_for(cm.call(
            "POST", f"/v1/cases/{case_id}/notes", {"text": "Jo started at the bike shop"},
            expect=201), PROMPT_SECONDS)
        assert (await cm.plan(case_id))["version"] == note["version"] == 2
        assert not rebuilding.done()
    stats = await rebuilding
    assert (stats.cases, stats.events) == (1, 2)
    assert (await cm.plan(case_id))["version"] == 2


async def test_writes_during_a_rebuild_all_land_and_the_projections_equal_a_fresh_rebuild(
        cm: CaseApi, clock: FakeClock, fresh_database_url: str,
        fresh_pool: asyncpg.Pool) -> None:
    """Four writers add notes, goals and agreements to half of 60 cases (3,000 events) while
    the rebuild runs; it cannot finish before they are done (a transaction holds the facts
    until then). Every write lands; the rebuilt projections equal a fresh rebuild's, the
    cases nobody wrote to keep the rows their appends wrote, and each plan read equals the
    plan folded from its events."""
    cases = await seed(fresh_pool, clock, 60)
    touched, untouched = cases[:30], set(cases[30:])
    before = await snapshot(fresh_pool)
    events = await event_count(fresh_pool)
    async with facts_held(fresh_pool):
        rebuilding = asyncio.create_task(rebuild_projections(fresh_pool, batch_events=200))
        await asyncio.wait_for(asyncio.gather(*(write_to(cm, touched[n::4]) for n in range(4))),
                               WRITES_SECONDS)
        assert not rebuilding.done()
    stats = await rebuilding
    written = await event_count(fresh_pool) - events
    assert written >= len(touched)
    assert (stats.cases, stats.events) == (60, events + written)
    after = await snapshot(fresh_pool)
    assert [rows_of(untouched, rows) for rows in after] == [
        rows_of(untouched, rows) for rows in before]
    for case_id in touched:
        plan = await cm.plan(case_id)
        assert plan == await cm.plan(case_id, as_of_version=plan["version"])
    assert plan["version"] > EVENTS_PER_CASE
    await rebuild_and_compare(fresh_database_url)


CATALOG = """
SELECT c.oid, c.relname, c.relowner::regrole::text AS owner, c.relacl::text AS grants,
       c.relpersistence, c.relkind,
       ARRAY(SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = c.oid
             ORDER BY 1) AS indexes,
       ARRAY(SELECT conname || ' ' || pg_get_constraintdef(k.oid) FROM pg_constraint k
             WHERE k.conrelid = c.oid ORDER BY 1) AS constraints,
       ARRAY(SELECT tgname FROM pg_trigger t WHERE t.tgrelid = c.oid ORDER BY 1) AS triggers,
       ARRAY(SELECT attname || ' ' || format_type(atttypid, atttypmod) || ' ' || attnotnull
             FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped
             ORDER BY attnum) AS columns
FROM pg_class c WHERE c.oid IN ('records.plans'::regclass, 'records.outcome_facts'::regclass)
ORDER BY c.relname
"""


async def catalog(url: str) -> tuple[list[dict[str, Any]], int]:
    """The live projection tables as the catalog has them, and how many shadows exist."""
    conn = await asyncpg.connect(url)
    try:
        tables = [dict(row) for row in await conn.fetch(CATALOG)]
        shadows = await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE relname = ANY($1::text[])", list(SHADOWS))
        return tables, shadows
    finally:
        await conn.close()


async def test_a_rebuild_as_the_records_role_leaves_the_tables_exactly_as_migrated(
        make_records_client: ClientFactory, roles: Roles, token: TokenFactory) -> None:
    """The role the service runs as may not create tables in its schema nor rename the live
    ones: the shadows are temporary tables of the rebuild's session, and only rows move into
    the live tables, whose indexes, constraints, owner and grants stay as they were."""
    client = await make_records_client(roles.records_url)
    try:
        cm = CaseApi(client, token())
        for _ in range(3):
            case_id = await cm.open_case()
            await cm.goal(case_id)
            await cm.agree(case_id)
    finally:
        await client.close()
    tables, _ = await catalog(roles.owner_url)
    assert {table["owner"] for table in tables} != {roles.records}
    pool = await asyncpg.create_pool(roles.records_url, min_size=1, max_size=2)
    try:
        stats = await rebuild_projections(pool)
    finally:
        await pool.close()
    assert stats.cases == 3
    assert await catalog(roles.owner_url) == (tables, 0)
    await assert_exact_privileges(roles.owner_url, roles)


async def test_a_role_that_may_not_make_temporary_tables_is_told_and_nothing_changes(
        make_records_client: ClientFactory, roles: Roles, token: TokenFactory) -> None:
    """A hardened server may take TEMPORARY away from PUBLIC: the rebuild then names what it
    needs instead of a traceback, and changes nothing."""
    client = await make_records_client(roles.records_url)
    try:
        await CaseApi(client, token()).open_case()
    finally:
        await client.close()
    admin = await asyncpg.connect(roles.owner_url)
    try:
        await admin.execute("REVOKE TEMPORARY ON DATABASE"
                            f' "{await admin.fetchval("SELECT current_database()")}" FROM PUBLIC')
        before = await snapshot(admin)
    finally:
        await admin.close()
    result = await asyncio.to_thread(subprocess.run, [*CASETRAIL, "rebuild-projections"],
                                     capture_output=True, text=True, timeout=60,
                                     env={**os.environ, "DATABASE_URL": roles.records_url})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("casetrail: nothing rebuilt: permission denied")
    assert "grant TEMPORARY on the database to this role" in result.stderr
    admin = await asyncpg.connect(roles.owner_url)
    try:
        assert await snapshot(admin) == before
    finally:
        await admin.close()


@asynccontextmanager
async def streams_held(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Holds the stream heads, so that a rebuild starting now makes its shadows and then
    waits at its first read, in phase 1."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE records.streams IN ACCESS EXCLUSIVE MODE")
        yield


SHADOWS_MADE = "SELECT count(*) = 2 FROM pg_class WHERE relname = ANY($1::text[])"
WAITING_ON = (f"SELECT EXISTS (SELECT FROM pg_locks WHERE {HERE} AND NOT granted"
              " AND relation = $1::text::regclass)")
WAITING_FOR_TURN = (f"SELECT EXISTS (SELECT FROM pg_locks WHERE {HERE} AND NOT granted"
                    " AND locktype = 'advisory')")
LEFT_NOTHING = ("SELECT NOT EXISTS (SELECT FROM pg_class WHERE relname = ANY($1::text[]))"
                f" AND NOT EXISTS (SELECT FROM pg_locks WHERE {HERE} AND locktype = 'advisory')")


@pytest.mark.parametrize(("held", "table"), [(streams_held, "streams"),
                                             (facts_held, "outcome_facts")],
                         ids=["phase-1", "phase-2"])
async def test_a_rebuild_killed_in_either_phase_leaves_the_projections_whole_and_nothing_behind(
        cm: CaseApi, fresh_database_url: str, fresh_pool: asyncpg.Pool, held: Any,
        table: str) -> None:
    """kill -9 with the shadows made: PostgreSQL drops them with the session, the rebuild's
    turn is free again, the live projections are as they were, and a rebuild then works."""
    for _ in range(3):
        await cm.goal(await cm.open_case())
    before = await snapshot(fresh_pool)
    async with held(fresh_pool):
        process = await asyncio.create_subprocess_exec(
            *CASETRAIL, "rebuild-projections", stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env={**os.environ, "DATABASE_URL": fresh_database_url})
        try:
            await wait_until(fresh_pool, SHADOWS_MADE, list(SHADOWS))
            await wait_until(fresh_pool, WAITING_ON, f"records.{table}")
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
    await wait_until(fresh_pool, LEFT_NOTHING, list(SHADOWS))
    assert await snapshot(fresh_pool) == before
    await rebuild_again_and_compare(fresh_database_url, fresh_pool, before)


async def test_two_rebuilds_at_once_take_turns(
        cm: CaseApi, fresh_database_url: str, fresh_pool: asyncpg.Pool) -> None:
    """The second waits for the first to finish (and says so), then rebuilds: both end with
    the projections a rebuild makes, whatever was written in between."""
    case_id = await cm.open_case()
    await cm.goal(case_id)
    waits: list[list[str]] = [[], []]
    async with facts_held(fresh_pool):
        first = asyncio.create_task(rebuild_projections(fresh_pool, on_wait=waits[0].append))
        await wait_until_blocked_on_facts(fresh_pool)
        second = asyncio.create_task(rebuild_projections(fresh_pool, on_wait=waits[1].append))
        await wait_until(fresh_pool, WAITING_FOR_TURN)
        await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": "Jo fixed a bike"},
                      expect=201)
    first_stats, second_stats = await asyncio.gather(first, second)
    assert first_stats == second_stats
    assert (first_stats.cases, first_stats.events) == (1, 3)
    assert not any("another rebuild" in why for why in waits[0])
    assert [why for why in waits[1] if "another rebuild" in why] == [
        "another rebuild of this database is running; this one waits for it to finish, then"
        " rebuilds"]
    await rebuild_and_compare(fresh_database_url)


async def test_the_command_line_says_when_it_waits_for_another_rebuild(
        cm: CaseApi, fresh_database_url: str, fresh_pool: asyncpg.Pool) -> None:
    await cm.open_case()
    async with facts_held(fresh_pool):
        first = asyncio.create_task(rebuild_projections(fresh_pool))
        await wait_until_blocked_on_facts(fresh_pool)
        process = await asyncio.create_subprocess_exec(
            *CASETRAIL, "rebuild-projections", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "DATABASE_URL": fresh_database_url})
        await wait_until(fresh_pool, WAITING_FOR_TURN)
    await first
    output, errors = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, errors
    assert errors.decode() == ("casetrail: another rebuild of this database is running; this"
                               " one waits for it to finish, then rebuilds\n")
    assert output.decode() == "rebuilt 1 cases from 1 events\n"



@asynccontextmanager
async def holding(pool: asyncpg.Pool, statement: str) -> AsyncIterator[int]:
    """Another session holding the locks ``statement`` takes, in an open transaction (a psql
    session, a stuck client, a migration); yields its process id."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(statement)
        yield conn.get_server_pid()


def held(pool: asyncpg.Pool, table: str, mode: str) -> AbstractAsyncContextManager[int]:
    """Another session holding ``table`` in ``mode``."""
    return holding(pool, f"LOCK TABLE {table} IN {mode} MODE")


# (the table held, the mode it is held in, what the rebuild was doing when it gave up)
HELD_PAST_THE_BOUND = [
    ("records.plans", "ACCESS EXCLUSIVE", "to read records.streams, records.events,"
     " records.plans, records.outcome_facts"),  # a bare LOCK TABLE: it makes its shadows
    ("records.streams", "ACCESS EXCLUSIVE", "to read records.streams"),  # phase 1
    ("records.outcome_facts", "ROW EXCLUSIVE", "to lock records.outcome_facts EXCLUSIVE"),
]


@pytest.mark.parametrize(("table", "mode", "doing"), HELD_PAST_THE_BOUND,
                         ids=["shadows", "phase-1", "phase-2"])
async def test_a_table_held_past_the_lock_timeout_stops_the_rebuild_having_changed_nothing(
        cm: CaseApi, fresh_database_url: str, fresh_pool: asyncpg.Pool, table: str,
        mode: str, doing: str) -> None:
    """A session holding a table the rebuild needs kept it waiting without limit, silently
    in phase 1. It now stops after ``lock_timeout``, naming the table and who holds it,
    with the projections and events as they were (here one plan row is missing, which a
    finished rebuild would restore); once the table is free, a rebuild finishes."""
    cases = [await cm.open_case() for _ in range(3)]
    for case_id in cases:
        await cm.goal(case_id)
    await fresh_pool.execute("DELETE FROM records.plans WHERE case_id = $1", cases[0])
    before, events = await snapshot(fresh_pool), await event_count(fresh_pool)
    async with held(fresh_pool, table, mode) as holder:
        started = asyncio.get_running_loop().time()
        with pytest.raises(LockWaitTimedOut) as stopped:
            await asyncio.wait_for(rebuild_projections(fresh_pool, lock_timeout=1), 20)
        waited = asyncio.get_running_loop().time() - started
    message = str(stopped.value)
    assert message.startswith(f"waited 1 s (--lock-timeout) {doing}")
    assert f"process {holder} (idle in transaction) holds {table} in" in message
    assert "nothing was changed, the projections are as they were" in message
    assert 1 <= waited < 10
    assert await snapshot(fresh_pool) == before
    assert await event_count(fresh_pool) == events
    await wait_until(fresh_pool, LEFT_NOTHING, list(SHADOWS))
    assert (await rebuild_projections(fresh_pool, lock_timeout=1)).cases == 3
    assert len((await snapshot(fresh_pool))[0]) == 3
    await rebuild_and_compare(fresh_database_url)


MIGRATIONS_CHECK = ("waited 1 s (--lock-timeout) to check the records migrations"
                    " (records.schema_migrations, records.events, records.access_log, or"
                    " another migration running): process {holder} (idle in transaction)")


@pytest.mark.parametrize(("statement", "said"), [
    ("LOCK TABLE records.outcome_facts IN ROW EXCLUSIVE MODE",
     "waited 1 s (--lock-timeout) to lock records.outcome_facts EXCLUSIVE: process {holder}"
     " (idle in transaction) holds records.outcome_facts in RowExclusiveLock; nothing was"
     " changed, the projections are as they were. End that session's transaction, or run"
     " again with a longer --lock-timeout"),
    # the command line checks the migrations first, which reads the events
    ("LOCK TABLE records.events IN ACCESS EXCLUSIVE MODE",
     MIGRATIONS_CHECK + " holds records.events in AccessExclusiveLock; nothing was changed,"
     " the projections are as they were."),
    # after taking the migrations' turn, which a migration running holds
    (f"SELECT pg_advisory_xact_lock({migration_lock_key('records')})",
     MIGRATIONS_CHECK + " holds the records migrations' turn in ExclusiveLock; nothing was"
     " changed, the projections are as they were."),
], ids=["phase-2", "migrations", "migrations-turn"])
async def test_the_command_line_stops_at_its_lock_timeout_and_says_nothing_changed(
        cm: CaseApi, fresh_database_url: str, fresh_pool: asyncpg.Pool, statement: str,
        said: str) -> None:
    """The migrations check named neither the table nor the session holding it ("another
    session holds a lock it needs"), though the README promises both: it names them now, as
    the rebuild's own phases do, and the process id is what an operator needs."""
    await cm.goal(await cm.open_case())
    before = await snapshot(fresh_pool)
    command = [*CASETRAIL, "rebuild-projections", "--lock-timeout", "1"]
    env = {**os.environ, "DATABASE_URL": fresh_database_url}
    async with holding(fresh_pool, statement) as holder:
        stopped = await asyncio.to_thread(subprocess.run, command, capture_output=True,
                                          text=True, timeout=60, env=env)
    assert stopped.returncode == 2, stopped.stderr
    assert stopped.stdout == ""
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr.splitlines()[-1].startswith(
        "casetrail: nothing rebuilt: " + said.format(holder=holder))
    assert await snapshot(fresh_pool) == before
    again = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True,
                                    timeout=60, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "rebuilt 1 cases from 2 events\n"


@pytest.mark.parametrize("seconds", ["0", "-5", "soon"])
def test_a_lock_timeout_that_is_not_a_positive_number_of_seconds_is_refused(
        seconds: str) -> None:
    refused = subprocess.run([*CASETRAIL, "rebuild-projections", "--lock-timeout", seconds],
                             capture_output=True, text=True, timeout=60, check=False,
                             env={**os.environ, "DATABASE_URL": "postgresql://nowhere/x"})
    assert refused.returncode == 2
    assert "argument --lock-timeout" in refused.stderr


@pytest.mark.parametrize(("seconds", "status"), [("86401", 2), ("9999999", 2), ("86400", 0)])
async def test_a_lock_timeout_beyond_a_day_is_refused_as_an_argument(
        cm: CaseApi, fresh_database_url: str, seconds: str, status: int) -> None:
    """PostgreSQL's lock_timeout takes 2147483647 ms at most: --lock-timeout 9999999 passed
    the option and stopped at the server (`could not start: invalid value for parameter
    "lock_timeout"`). The option now takes a day at most, and refuses more by name."""
    await cm.goal(await cm.open_case())
    ran = await asyncio.to_thread(
        subprocess.run, [*CASETRAIL, "rebuild-projections", "--lock-timeout", seconds],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "DATABASE_URL": fresh_database_url})
    assert ran.returncode == status, ran.stderr
    if status:
        assert ran.stderr.splitlines()[-1] == ("casetrail rebuild-projections: error: argument"
                                               " --lock-timeout: must be at most 86400 seconds"
                                               " (a day)")
    else:
        assert ran.stdout == "rebuilt 1 cases from 2 events\n"
