"""`casetrail rebuild-projections` while the records service runs and writes arrive, and
interrupted half-way (an operator's audit)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from services.records.projections.rebuild import rebuild_projections
from tests.conftest import TokenFactory
from tests.records_api import CaseApi
from tests.test_cli import CASETRAIL
from tests.test_rebuild import Rows, snapshot

# a request that waits longer than this for a rebuild is taken to be blocked by it
PROMPT_SECONDS = 5.0
# locks in this test's database: the run's databases are clones, their tables' oids alike
HERE = "database = (SELECT oid FROM pg_database WHERE datname = current_database())"


@asynccontextmanager
async def facts_held(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Holds the outcome facts as an append does, so that a rebuild starting now folds the
    events, locks the plans and then waits for the facts, stepping aside and trying again
    until the block ends."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE records.outcome_facts IN ROW EXCLUSIVE MODE")
        yield


async def wait_until_blocked_on_facts(pool: asyncpg.Pool) -> None:
    for _ in range(200):
        if await pool.fetchval(
                f"SELECT count(*) FROM pg_locks WHERE {HERE} AND NOT granted"
                " AND relation = 'records.outcome_facts'::regclass"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the rebuild never reached the outcome facts")


async def plans_lock_of_a_rebuild_waiting_for_the_facts(pool: asyncpg.Pool) -> str:
    """The mode in which the rebuild holds the plans while it waits for the facts (read in one
    look at the lock table: it steps aside now and then)."""
    for _ in range(200):
        mode = await pool.fetchval(
            f"SELECT mode FROM pg_locks WHERE {HERE} AND granted"
            " AND relation = 'records.plans'::regclass AND pid IN (SELECT pid FROM pg_locks"
            "     WHERE NOT granted AND relation = 'records.outcome_facts'::regclass)")
        if mode is not None:
            return str(mode)
        await asyncio.sleep(0.05)
    raise AssertionError("the rebuild never held the plans waiting for the facts")


async def rebuild_again_and_compare(database_url: str, pool: asyncpg.Pool,
                                    before: tuple[Rows, Rows]) -> None:
    """After a rebuild that did not finish: the command line rebuilds the three cases of two
    events each that the tests seed, and the projections are as they were before."""
    again = await asyncio.to_thread(subprocess.run, [*CASETRAIL, "rebuild-projections"],
                                    capture_output=True, text=True, timeout=60,
                                    env={**os.environ, "DATABASE_URL": database_url})
    assert again.returncode == 0, again.stderr
    assert "rebuilt 3 cases from 6 events" in again.stdout
    assert await snapshot(pool) == before


async def test_reads_answer_from_the_old_rows_while_a_rebuild_runs(
        cm: CaseApi, fresh_pool: asyncpg.Pool, token: TokenFactory) -> None:
    """A rebuild locked the plans against readers too: every plan read and caseload listing
    waited for the whole rebuild, and answered 503 once it ran past the command timeout (30
    s: about 400,000 events on the audit machine). Reads now see the old rows until the
    rebuild commits (writes, too, go on: see test_rebuild_online.py)."""
    case_id = await cm.open_case()
    await cm.goal(case_id)
    supervisor = token(role="supervisor", sub="sup-1")
    reads = [("GET", f"/v1/cases/{case_id}"), ("GET", "/v1/cases"),
             ("GET", "/v1/analytics/outcomes")]
    before = [await cm.call(method, path, expect=200, token=supervisor)
              for method, path in reads]
    async with facts_held(fresh_pool):
        rebuilding = asyncio.create_task(rebuild_projections(fresh_pool))
        assert await plans_lock_of_a_rebuild_waiting_for_the_facts(fresh_pool) == (
            "ExclusiveLock")  # which readers pass
        during = [await asyncio.wait_for(cm.call(method, path, expect=200, token=supervisor),
                                         PROMPT_SECONDS) for method, path in reads]
        assert during == before
        assert [c["case_id"] for c in during[1]["cases"]] == [case_id]
    stats = await rebuilding
    assert stats.cases == 1
    live = await snapshot(fresh_pool)
    await rebuild_projections(fresh_pool)
    assert await snapshot(fresh_pool) == live


async def test_an_interrupted_rebuild_leaves_the_projections_whole_and_says_so(
        cm: CaseApi, fresh_database_url: str, fresh_pool: asyncpg.Pool) -> None:
    """Ctrl-C half-way (the plans cleared in its transaction, the facts not yet) printed a
    40-line traceback and did not say what state the projections were left in."""
    for _ in range(3):
        await cm.goal(await cm.open_case())
    before = await snapshot(fresh_pool)
    async with facts_held(fresh_pool):
        process = await asyncio.create_subprocess_exec(
            *CASETRAIL, "rebuild-projections", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "DATABASE_URL": fresh_database_url},
            # a shell's background job starts with SIGINT ignored; Ctrl-C is what is tested
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            await wait_until_blocked_on_facts(fresh_pool)
            process.send_signal(signal.SIGINT)
            output, errors = await asyncio.wait_for(process.communicate(), 60)
        finally:
            if process.returncode is None:
                process.kill()
    out, err = output.decode(), errors.decode()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err
    assert "never half" in err
    assert out == ""
    assert await snapshot(fresh_pool) == before
    assert not await fresh_pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state = 'idle in transaction'")
    await rebuild_again_and_compare(fresh_database_url, fresh_pool, before)
