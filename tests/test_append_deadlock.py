"""An append that PostgreSQL ends to break a lock cycle is a lost race, decided again.

Another instance's write can hold what an append statement needs next (here the case's plan
row) while it waits for what the statement already holds (the case's stream head).
PostgreSQL breaks the cycle by ending one of them: when it ends the append, nothing was
written, and the write is re-decided and retried as after any lost race (decision 0005).
It answered 500; the three-instance storm test caught it about once in fifty runs.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.conftest import wait_until
from tests.records_api import CaseApi, event_count

# requests of this database's sessions waiting for a lock (other test runs share the server)
WAITING = ("SELECT count(*) >= $1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
           " WHERE NOT l.granted AND a.datname = current_database()")


@pytest.mark.parametrize("keyed", [False, True], ids=["group-commit", "keyed"])
async def test_an_append_ended_by_a_deadlock_is_retried_and_written_once(
        cm: CaseApi, fresh_database_url: str, keyed: bool) -> None:
    """Unkeyed, the append goes in a group-commit statement; keyed, in one of its own."""
    case_id = await cm.open_case()
    other = await asyncpg.connect(fresh_database_url)
    try:
        before = await event_count(other)
        in_cycle = other.transaction()
        await in_cycle.start()
        # the other writer outwaits the append, so PostgreSQL ends the append, not it
        await other.execute("SET LOCAL deadlock_timeout = '60s'")
        await other.execute("SELECT FROM records.plans WHERE case_id = $1 FOR UPDATE", case_id)
        note = asyncio.create_task(cm.client.post(
            f"/v1/cases/{case_id}/notes", json={"text": "Talked about the new job"},
            headers={"Authorization": f"Bearer {cm.token}",
                     **({"Idempotency-Key": "note-1"} if keyed else {})}))
        await wait_until(other, WAITING, 1)  # the append holds the head, waits for the plan
        await other.execute("SELECT FROM records.streams WHERE stream_id = $1 FOR UPDATE",
                            case_id)  # returns once PostgreSQL has ended the append
        await in_cycle.commit()
        answer = await note
        assert answer.status == 201, await answer.text()
        assert (await answer.json())["version"] == 2
        assert await event_count(other) == before + 1
    finally:
        await other.close()
