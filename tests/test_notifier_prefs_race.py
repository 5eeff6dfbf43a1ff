"""Two changes to one reader's preferences at once, each leaving out what the other sets: the
fields a PUT leaves out keep their stored values, and stored means as stored when the PUT's
own change is written (the entry locked in its transaction), not as read before it waited.

The interleaving is made certain by holding the entry (or a first entry not yet committed)
from a connection of the test's own while both requests start; each request has then read
the stored entry and waits for it. Real notifier API over HTTP and real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiohttp import ClientResponse

from services.notifier.store import directory
from services.notifier.store.directory import Preferences
from tests.conftest import TokenFactory, bearer, wait_until
from tests.notifier_helpers import NotifierRig

FIRST_CASE = "6f1c1c55-93e4-4f57-bb8e-2a4f3f1f7a10"
SECOND_CASE = "0b9d6a4e-2f43-4f0e-9d51-8c3f0a1e7b22"
QUIET = {"start": "21:00", "end": "07:00"}


def required(**extra: Any) -> dict[str, Any]:
    return {
        "email": "jo@example.org",
        "delivery": "immediate",
        "timezone": "UTC",
        "celebrations": True,
        **extra,
    }


async def until_waiting_for_locks(pool: asyncpg.Pool, count: int) -> None:
    """Until ``count`` sessions of this test's database wait for a lock."""
    await wait_until(
        pool,
        "SELECT count(*) >= $1 FROM pg_stat_activity WHERE"
        " datname = current_database() AND wait_event_type = 'Lock'",
        count,
    )


async def entry(rig: NotifierRig, token: str, path: str) -> Any:
    response = await rig.client.get(path, headers=bearer(token))
    assert response.status == 200, await response.text()
    return await response.json()


async def both_answered(*puts: asyncio.Task[ClientResponse]) -> None:
    for put in puts:
        response = await put
        assert response.status == 200, await response.text()


async def test_two_partial_changes_at_once_keep_what_each_other_set(
    rig: NotifierRig, token: TokenFactory, fresh_pool: asyncpg.Pool
) -> None:
    """A supervisor sets Jo's quiet hours (leaving out the cases) while another adds Jo's
    second case (leaving out the quiet hours). Each read Jo's entry before the other's change
    was stored; the one stored last filled the field it left out from that read, and so
    undid the other: Jo's quiet hours were lost, or the second case."""
    supervisor = token(role="supervisor", sub="sup-1")
    path = "/v1/preferences/jo?role=participant"
    await rig.set_prefs("jo", supervisor, **required(role="participant", cases=[FIRST_CASE]))
    async with fresh_pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT FROM notifier.directory WHERE user_id = 'jo' FOR UPDATE")
        quiet = asyncio.create_task(
            rig.client.put(
                "/v1/preferences/jo",
                headers=bearer(supervisor),
                json=required(role="participant", quiet_hours=QUIET),
            )
        )
        await until_waiting_for_locks(fresh_pool, 1)
        cases = asyncio.create_task(
            rig.client.put(
                "/v1/preferences/jo",
                headers=bearer(supervisor),
                json=required(role="participant", cases=[FIRST_CASE, SECOND_CASE]),
            )
        )
        await until_waiting_for_locks(fresh_pool, 2)
    await both_answered(quiet, cases)
    stored = await entry(rig, supervisor, path)
    assert stored["quiet_hours"] == QUIET
    assert sorted(stored["cases"]) == sorted([FIRST_CASE, SECOND_CASE])


async def test_a_change_to_an_entry_first_stored_meanwhile_keeps_that_entrys_role(
    rig: NotifierRig, token: TokenFactory, fresh_pool: asyncpg.Pool
) -> None:
    """sup-2 is being entered as a supervisor when another supervisor sets sup-2's quiet
    hours (no role given: the stored one is kept). The PUT found no entry, so it took the
    default role, case manager, and, stored after the first entry, took sup-2 off the
    overdue notices that go to supervisors."""
    supervisor = token(role="supervisor", sub="sup-1")
    async with fresh_pool.acquire() as holder, holder.transaction():
        await directory.upsert(
            holder,
            Preferences(
                "agency-a",
                "sup-2",
                "supervisor",
                "sup-2@example.org",
                "immediate",
                "UTC",
                None,
                None,
                True,
            ),
            "sup-1",
            rig.clock.now,
        )
        quiet = asyncio.create_task(
            rig.client.put(
                "/v1/preferences/sup-2",
                headers=bearer(supervisor),
                json={**required(quiet_hours=QUIET), "email": "sup-2@example.org"},
            )
        )
        await until_waiting_for_locks(fresh_pool, 1)
    await both_answered(quiet)
    stored = await entry(rig, supervisor, "/v1/preferences/sup-2")
    assert (stored["role"], stored["quiet_hours"]) == ("supervisor", QUIET)
