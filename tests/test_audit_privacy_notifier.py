"""Privacy audit of the notifier API: an address a person gave in their own preferences reaches
only those who may read those preferences, never through a notification's error or attempts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient

from services.common.auth import issue_token
from services.notifier.rules import Kind, Notice, RecipientRole
from services.notifier.store.notifications import insert_notices
from tests.conftest import JWT_SECRET, FakeClock, TokenFactory, bearer, free_port
from tests.notifier_helpers import ClockFailingOnce, NotifierRig, Records, SmtpServer, make_rig
from tests.test_cli import CASETRAIL

PRIVATE = "jo.private.inbox@example.net"


async def _get(rig: NotifierRig, path: str, token: str, expect: int = 200) -> Any:
    response = await rig.client.get(path, headers=bearer(token))
    assert response.status == expect, await response.text()
    return await response.json()


async def _participant_notice_refused(rig: NotifierRig, records: Records, smtp: SmtpServer,
                                      token: TokenFactory) -> str:
    """A case of cm-1 whose participant opted in with an address of their own, and a
    milestone for them the mail server refused once, quoting that address as servers do."""
    case = await records.open_case()
    await rig.set_prefs("jo", token(role="participant", sub="jo", cases=[case]), email=PRIVATE)
    await records.achieve(case, await records.goal(case))
    await rig.catch_up()
    smtp.replies = [f"452 4.2.2 <{PRIVATE}>: mailbox full, try later"]
    await rig.dispatch()
    [row] = await rig.rows(recipient=f"participant:{case}")
    assert row["status"] == "failed"
    assert PRIVATE in str(row["last_error"])  # the database keeps the reply as it came
    return case


async def test_a_case_manager_reads_no_participant_address_in_notification_errors(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    case = await _participant_notice_refused(rig, records, smtp, token)
    manager = token()
    await _get(rig, "/v1/preferences/jo", manager, expect=403)  # not theirs to read
    listing = await _get(rig, f"/v1/notifications?case_id={case}", manager)
    [notice] = [n for n in listing["notifications"] if n["recipient"] == f"participant:{case}"]
    assert notice["last_error"] == "452: 4.2.2 <[address]>: mailbox full, try later"
    one = await _get(rig, f"/v1/notifications/{notice['id']}", manager)
    schedule = await _get(rig, f"/v1/schedule?case_id={case}", manager)
    for answer in (listing, one, schedule):
        assert PRIVATE not in str(answer)
    assert "[address]" in one["attempt_log"][0]["error"]


async def test_no_reader_gets_an_address_back_from_a_notification(
        rig: NotifierRig, records: Records, smtp: SmtpServer, token: TokenFactory) -> None:
    case = await _participant_notice_refused(rig, records, smtp, token)
    readers = [token(role="supervisor", sub="sup-1"), token(role="service", sub="notifier"),
               token(role="participant", sub="jo", cases=[case])]
    for reader in readers:
        listing = await _get(rig, f"/v1/notifications?case_id={case}", reader)
        assert listing["notifications"]
        assert PRIVATE not in str(listing)


async def test_the_public_readiness_check_never_quotes_a_failed_pages_error(
        aiohttp_client: Callable[..., Awaitable[TestClient]], fresh_database_url: str,
        records: Records, smtp: SmtpServer, clock: FakeClock) -> None:
    faulty = ClockFailingOnce(clock.now)
    faulty.error = ValueError("cannot use 'Jo Rivera, jo.rivera@example.org'")  # as a library may
    rig = await make_rig(aiohttp_client, fresh_database_url, records.client, smtp, faulty)
    await records.agree(await records.open_case())
    faulty.failures_left = 1
    following = asyncio.create_task(rig.notifier.subscriber.run())
    try:
        async with asyncio.timeout(10):
            while rig.notifier.subscriber.healthy or faulty.failures_left:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        ready = await rig.client.get("/readyz")  # the retry waits at least 0.25 s
        feed = (await ready.json())["checks"]["feed"]
        assert feed == ("last read failed: a feed page could not be applied (ValueError);"
                        " the log has the details")
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following


async def test_a_dead_letter_quoting_an_address_is_logged_masked_by_the_running_notifier(
        fresh_database_url: str, fresh_pool: asyncpg.Pool, smtp: SmtpServer) -> None:
    """The log a running notifier writes (`casetrail notifier`, configured as in production):
    the mail server's refusal quotes the address, the dead-letter warning keeps the reason and
    masks the address."""
    smtp.replies = ["550 5.1.1 <cm-1@example.org>: no such mailbox"]
    port = free_port()
    env = {**os.environ, "DATABASE_URL": fresh_database_url, "CASETRAIL_JWT_SECRET": JWT_SECRET,
           "CASETRAIL_LOG_LEVEL": "info", "RECORDS_URL": f"http://127.0.0.1:{free_port()}",
           "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port)}
    process = await asyncio.create_subprocess_exec(
        *CASETRAIL, "notifier", "--port", str(port), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            await _until_up(http)
            manager = issue_token(JWT_SECRET, sub="cm-1", role="case_manager", agency="agency-a")
            answer = await http.put("/v1/preferences/cm-1", headers=bearer(manager), json={
                "email": "cm-1@example.org", "delivery": "immediate", "timezone": "UTC",
                "celebrations": True})
            assert answer.status == 200, await answer.text()
        now = datetime.now(UTC)
        async with fresh_pool.acquire() as conn:
            await insert_notices(conn, [Notice(
                f"small_win:{uuid.uuid4()}", Kind.SMALL_WIN, uuid.uuid4(), "agency-a",
                RecipientRole.CASE_MANAGER, "cm-1", now,
                {"participant": "Jo", "description": "Visit the job centre"})],
                "test", now, cause_recorded_at=now)
        async with asyncio.timeout(30):
            while await fresh_pool.fetchval(  # noqa: ASYNC110  (the running notifier's work)
                    "SELECT status FROM notifier.notifications") != "dead":
                await asyncio.sleep(0.05)
    finally:
        process.terminate()
        output = (await asyncio.wait_for(process.communicate(), 30))[0].decode()
    [dead] = [line for line in map(json.loads, output.splitlines())
              if line["event"] == "notification dead-lettered"]
    assert (dead["level"], dead["smtp_code"]) == ("warning", 550)
    assert dead["reason"] == "refused permanently: 550: 5.1.1 <[address]>: no such mailbox"
    assert "example.org" not in output


async def _until_up(http: aiohttp.ClientSession) -> None:
    async with asyncio.timeout(60):
        while True:
            try:
                async with http.get("/healthz") as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
