"""The access log says which part of a case an auditor was shown, not only what was asked."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import FakeClock, TokenFactory, bearer
from tests.records_api import CaseApi

HOUR = timedelta(hours=1)


async def _logged(db: asyncpg.Pool) -> list[str]:
    rows = await db.fetch("SELECT what FROM records.access_log ORDER BY id")
    return [row["what"] for row in rows]


@pytest.mark.parametrize(("read", "what"), [
    ("", "plan window_versions=1-3"),
    ("?as_of_version=2", "plan as_of_version=2 window_versions=1-3"),
    ("?as_of_version=4", "plan as_of_version=4 window_versions=1-3"),  # refused: 403
    ("/history", "history after_version=0 limit=100 window_versions=1-3"),
    ("/diff?from_version=1&to_version=3", "diff from_version=1 to_version=3 window_versions=1-3"),
    ("/verify", "verify window_versions=1-3"),
    ("/export?format=csv", "export format=csv window_versions=1-3"),
])
async def test_an_auditors_read_is_logged_with_the_versions_the_window_showed(
        clock: FakeClock, client: TestClient, cm: CaseApi, token: TokenFactory,
        fresh_pool: asyncpg.Pool, read: str, what: str) -> None:
    """A plain plan read by a court answers the plan as its window closed, and its history the
    window's events only; the entry said `plan` or `history …`, so a supervisor reading the
    log could not tell which versions the court was shown (the window is in the token, which
    the log does not keep)."""
    case_id = await cm.open_case()
    times = [clock.now]
    for n in range(3):
        clock.advance(days=1)
        times.append(clock.now)
        await cm.call("POST", f"/v1/cases/{case_id}/notes", {"text": f"Week {n}"}, expect=201)
    court = token(role="auditor", sub="court-1", cases=[case_id],
                  window_from=times[1] - HOUR, window_to=times[2] + HOUR)
    response = await client.get(f"/v1/cases/{case_id}{read}", headers=bearer(court))
    assert response.status in (200, 403), await response.text()
    await response.read()
    for _ in range(100):  # the entry commits with the read; the export's as it begins
        if await _logged(fresh_pool):
            break
        await asyncio.sleep(0.02)
    assert await _logged(fresh_pool) == [what]


async def test_a_supervisors_entries_stay_as_they_were(
        client: TestClient, cm: CaseApi, token: TokenFactory, fresh_pool: asyncpg.Pool) -> None:
    case_id = await cm.open_case()
    supervisor = CaseApi(client, token(role="supervisor", sub="sup-1"))
    await supervisor.plan(case_id)
    await supervisor.call("GET", f"/v1/cases/{case_id}/history", expect=200)
    assert await _logged(fresh_pool) == ["plan", "history after_version=0 limit=100"]
