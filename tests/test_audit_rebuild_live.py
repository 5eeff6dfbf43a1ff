"""`casetrail rebuild-projections` while the records service runs and writes arrive, and
interrupted half-way (an operator's audit)."""

# ruff: noqa: F811
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
from tests.records_api import (  # noqa: F401  (fixtures are found by name)
    CaseApi,
    client,
    clock,
    cm,
)
from tests.test_cli import CASETRAIL
from tests.test_rebuild import snapshot

# a request that waits longer than this for a rebuild is taken to be blocked by it
PROMPT_SECONDS = 5.0


@asynccontextmanager
async def facts_held(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Holds the outcome facts as an append does, so that a rebuild starting now clears the
    plans and then waits, half-way, until the block ends."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE records.outcome_facts IN ROW EXCLUSIVE MODE")
        yield


async def wait_until_blocked_on_facts(pool: asyncpg.Pool) -> None:
    for _ in range(200):
        if await pool.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted"
                " AND relation = 'records.outcome_facts'::regclass"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the rebuild never reached the outcome facts")


async def test_reads_answer_from_the_old_plans_while_a_rebuild_runs_and_writes_land_after(
        cm: CaseApi, fresh_pool: asyncpg.Pool, token: TokenFactory) -> None:
    """A rebuild locked the plans against readers too: every plan read and caseload listing
    waited for the whole rebuild, and answered 503 once it ran past the command timeout (30
    s: about 400,000 events on the audit machine). Reads now see the old rows until the
    rebuild commits; writes wait for it, land on top, and the projection keeps them."""
    case_id = await cm.open_case()
    await cm.goal(case_id)
    before = await cm.plan(case_id)
    async with facts_held(fresh_pool):
        rebuilding = asyncio.create_task(rebuild_projections(fresh_pool))
        await wait_until_blocked_on_facts(fresh_pool)
        plan = await asyncio.wait_for(cm.plan(case_id), PROMPT_SECONDS)
        assert plan == before
        supervisor = token(role="supervisor", sub="sup-1")
        listing = await asyncio.wait_for(
            cm.call("GET", "/v1/cases", expect=200, token=supervisor), PROMPT_SECONDS)
        assert [c["case_id"] for c in listing["cases"]] == [case_id]
        outcomes = await asyncio.wait_for(
            cm.call("GET", "/v1/analytics/outcomes", expect=200, token=supervisor),
            PROMPT_SECONDS)
        assert outcomes["cases_open"] == 1
        writing = asyncio.create_task(cm.call(
            "POST", f"/v1/cases/{case_id}/notes", {"text": "Jo started at the bike shop"},
            expect=201))
        await asyncio.sleep(0.5)
        assert not writing.done()  # appends wait for the rebuild to commit
    stats = await rebuilding
    note = await writing
    assert stats.cases == 1
    assert (await cm.plan(case_id))["version"] == note["version"] == before["version"] + 1
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
    again = await asyncio.to_thread(subprocess.run, [*CASETRAIL, "rebuild-projections"],
                                    capture_output=True, text=True, timeout=60,
                                    env={**os.environ, "DATABASE_URL": fresh_database_url})
    assert again.returncode == 0, again.stderr
    assert "rebuilt 3 cases from 6 events" in again.stdout
    assert await snapshot(fresh_pool) == before
